// PNG through libpng's simplified API, which keeps libpng's setjmp/longjmp
// error handling inside libpng and reports failures as a message instead.
#include "media/png_encoder.h"

#include <png.h>

#include <cstring>

#include "media/frames.h"

namespace rainserve::media {

namespace {

// Frees libpng's state in `image` on every path (a no-op once it is freed).
struct PngImageGuard {
  png_image* image;
  ~PngImageGuard() { png_image_free(image); }
};

Status PngError(const png_image& image) {
  return InternalError(std::string("PNG encoding failed: ") + image.message);
}

}  // namespace

StatusOr<std::string> EncodePng(const uint8_t* rgb, int width, int height) {
  RAINSERVE_RETURN_IF_ERROR(ValidateFrames(rgb, width, height, /*frames=*/1));

  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(width);
  image.height = static_cast<png_uint_32>(height);
  image.format = PNG_FORMAT_RGB;
  PngImageGuard guard{&image};
  const png_int_32 row_stride = width * 3;

  // One compression pass into a buffer of libpng's worst-case size, then trim.
  png_alloc_size_t size = PNG_IMAGE_PNG_SIZE_MAX(image);
  std::string png(size, '\0');
  if (!png_image_write_to_memory(&image, png.data(), &size, /*convert_to_8_bit=*/0, rgb,
                                 row_stride, /*colormap=*/nullptr)) {
    return PngError(image);
  }
  png.resize(size);
  return png;
}

}  // namespace rainserve::media
