// An input image (PNG or JPEG file bytes) -> RGB pixels, for image-to-video
// requests. Bounded before any pixel memory is taken; a corrupt, truncated,
// oversized or unsupported file is an INVALID_ARGUMENT naming "image".
//
//   auto image = DecodeImage(bytes, {16 << 20, 4096 * 4096});
//   // image->rgb: [height, width, 3] uint8
//
// The pixels are those PIL's Image.convert("RGB") gives for the file:
// greyscale is replicated, palettes are looked up, alpha (and PNG tRNS
// transparency) is dropped without compositing, 16-bit PNG channels keep
// their high byte, PNG gamma chunks are ignored. JPEG goes through
// libjpeg-turbo's default decoder (integer IDCT, fancy upsampling), as PIL
// does; warnings about lost data (a truncated or damaged stream) fail the
// image. An EXIF orientation (JPEG APP1, or a PNG eXIf chunk before the
// image data) turns the image upright, as PIL's ImageOps.exif_transpose in
// the reference's load_image does; width and height are the upright image's.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace rainserve::media {

struct ImageLimits {
  int64_t max_bytes = 16 << 20;          // the encoded file, checked first
  int64_t max_pixels = 4096 * 4096;      // width * height from the header, before decoding
};

struct DecodedImage {
  int64_t width = 0;
  int64_t height = 0;
  std::vector<uint8_t> rgb;  // [height, width, 3], rows top to bottom
  std::string mime_type;     // "image/png" or "image/jpeg"
};

// "image/png", "image/jpeg" from the file's first bytes, or "" for anything else.
std::string_view SniffImageType(std::string_view bytes);

// Decodes `bytes` (the type comes from its magic bytes, not a name). Errors,
// all INVALID_ARGUMENT with a message starting "image: ": empty, over
// max_bytes, not a PNG or JPEG, over max_pixels, corrupt or truncated, or a
// JPEG colour space without an RGB conversion (CMYK). Thread-safe; no global
// state.
StatusOr<DecodedImage> DecodeImage(std::string_view bytes, const ImageLimits& limits);

}  // namespace rainserve::media
