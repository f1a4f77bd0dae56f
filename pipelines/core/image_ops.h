// Operations on decoded RGB images (InputImage, pipelines/core/pipeline.h)
// that the reference pipelines run through Pillow and transformers, in plain
// C++ (no LibTorch), bit-identical with them:
//
//   ResizeImage  Pillow's Image.resize on an 8-bit RGB image for the
//                convolution filters (libImaging's separable resampling: a
//                horizontal pass, then a vertical pass, each with its own
//                filter scaled by the reduction factor, weights in 8-bit
//                fixed point with 22 fractional bits, rounding and a clip to
//                [0, 255] after each pass).
//   CenterCrop   transformers' image_transforms.center_crop (the offset is
//                floor((size - crop) / 2); a crop larger than the image pads
//                with black, the image placed ceil((crop - size) / 2) in).
//
// The CLIP image processor (pipelines/text/clip_vision.h) resizes with
// bicubic; diffusers' VideoProcessor, which prepares the image-to-video
// conditioning frame, with Lanczos.
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

// The width x height centre of `image`, as transformers' center_crop: the
// window starts at floor((image_width - width) / 2), floor((image_height -
// height) / 2); along an axis where the crop is larger than the image, the
// result is black with the image at ceil((width - image_width) / 2).
// INVALID_ARGUMENT as ResizeImage.
StatusOr<InputImage> CenterCrop(const InputImage& image, int64_t width, int64_t height);

}  // namespace rainserve
