// Fuzzes the input-image decoder (media/image_decoder.h): arbitrary bytes as
// a PNG or JPEG file. Any input decodes to width x height x 3 bytes within the
// limits, or is INVALID_ARGUMENT with a message starting "image: "; never a
// crash, leak or allocation past the pixel limit.
//
//   build-fuzz/tests/fuzz/fuzz_image tests/fuzz/corpus/image
#include <cstdint>
#include <string_view>

#include "media/image_decoder.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace rainserve;
  // Small enough that the fuzzer's RSS limit is never the finding.
  constexpr media::ImageLimits kLimits{1 << 16, 1 << 20};
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  StatusOr<media::DecodedImage> image = media::DecodeImage(bytes, kLimits);
  if (!image.ok()) {
    RAINSERVE_FUZZ_CHECK(image.status().code() == StatusCode::kInvalidArgument);
    RAINSERVE_FUZZ_CHECK(image.status().message().rfind("image: ", 0) == 0);
    return 0;
  }
  RAINSERVE_FUZZ_CHECK(image->width >= 1 && image->height >= 1);
  RAINSERVE_FUZZ_CHECK(image->width * image->height <= kLimits.max_pixels);
  RAINSERVE_FUZZ_CHECK(image->rgb.size() == static_cast<size_t>(image->width * image->height * 3));
  RAINSERVE_FUZZ_CHECK(image->mime_type == media::SniffImageType(bytes));
  return 0;
}
