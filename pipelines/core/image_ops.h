// Operations on decoded RGB images (InputImage, pipelines/core/pipeline.h)
// that the reference pipelines run through Pillow, torchvision and
// transformers, in plain C++ (no LibTorch), bit-identical with them:
//
//   ResizeImage      Pillow's Image.resize on an 8-bit RGB image for the
//                    convolution filters (libImaging's separable resampling:
//                    a horizontal pass, then a vertical pass, each with its
//                    own filter scaled by the reduction factor, weights in
//                    fixed point with 22 fractional bits, rounding and a clip
//                    to [0, 255] after each pass).
//   ResizeImageAten  torchvision's resize of a uint8 image tensor on the CPU
//                    with antialias=True: ATen's uint8 antialiased bilinear /
//                    bicubic kernel, the same separable scheme with int16
//                    weights of a per-axis precision (image_ops.cc).
//   CenterCrop       transformers' centre crops (the offset is
//                    floor((size - crop) / 2); a crop larger than the image
//                    pads with black, the image placed ceil((crop - size) / 2)
//                    in by image_transforms.center_crop, floor(...) by the
//                    torchvision image processors).
//
// The CLIP image processor (pipelines/text/clip_vision.h) resizes with
// ResizeImageAten (transformers 5's torchvision processor) or ResizeImage
// (the PIL processor); diffusers' VideoProcessor, which prepares the
// image-to-video conditioning frame, with Pillow's Lanczos.
#pragma once

#include <cstdint>

#include "common/status.h"
#include "pipelines/core/pipeline.h"

namespace rainserve {

// Largest width or height ResizeImage and CenterCrop take and produce.
inline constexpr int64_t kMaxImageSide = 8192;

// Pillow's convolution resampling filters, with Pillow's numbering (the
// `resample` value of transformers' preprocessor_config.json).
enum class ResampleFilter : int {
  kLanczos = 1,   // Image.LANCZOS: windowed sinc, support 3
  kBilinear = 2,  // Image.BILINEAR: triangle, support 1
  kBicubic = 3,   // Image.BICUBIC: Keys cubic with a = -0.5, support 2
  kBox = 4,       // Image.BOX: support 0.5
  kHamming = 5,   // Image.HAMMING: Hamming-windowed sinc, support 1
};

// The filter for Pillow's number; 0 (NEAREST) and anything else are
// UNIMPLEMENTED / INVALID_ARGUMENT naming `field`.
StatusOr<ResampleFilter> ResampleFilterFromPillow(int64_t value, const char* field);
// "lanczos", "bilinear", ...
const char* ResampleFilterName(ResampleFilter filter);

// `image` resampled to width x height as Pillow's Image.resize((width,
// height), filter) does, to the byte. Same size returns a copy. INVALID_ARGUMENT
// naming the argument for an empty or inconsistent image, an image side or a
// width / height outside [1, kMaxImageSide].
StatusOr<InputImage> ResizeImage(const InputImage& image, int64_t width, int64_t height,
                                 ResampleFilter filter);

// The interpolation modes of ATen's uint8 antialiased kernels
// (_upsample_bilinear2d_aa, _upsample_bicubic2d_aa).
enum class AtenInterpolation {
  kBilinear,  // triangle, support 1
  kBicubic,   // Keys cubic with a = -0.5, support 2
};

// `image` resampled to width x height as
// torchvision.transforms.v2.functional.resize(t, [height, width], mode,
// antialias=True) does for a uint8 [1, 3, H, W] tensor `t` on the CPU, which
// runs ATen's uint8 kernel directly (bicubic always; bilinear on CPUs with
// AVX2, i.e. every x86-64 server, and through float32 elsewhere), to the byte.
// Same size returns a copy. Errors as ResizeImage.
StatusOr<InputImage> ResizeImageAten(const InputImage& image, int64_t width, int64_t height,
                                     AtenInterpolation mode);

// Where CenterCrop places an image smaller than the crop along an axis.
enum class PadOffset {
  kCeil,   // transformers' image_transforms.center_crop (the PIL processors)
  kFloor,  // transformers' torchvision processors (TorchvisionBackend.center_crop)
};

// The width x height centre of `image`, as transformers' center_crop: the
// window starts at floor((image_width - width) / 2), floor((image_height -
// height) / 2); along an axis where the crop is larger than the image, the
// result is black with the image at ceil((width - image_width) / 2) (kCeil)
// or floor(...) (kFloor). INVALID_ARGUMENT as ResizeImage.
StatusOr<InputImage> CenterCrop(const InputImage& image, int64_t width, int64_t height,
                                PadOffset pad = PadOffset::kCeil);

}  // namespace rainserve
