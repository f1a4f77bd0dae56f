// PNG through libpng's progressive-free read API with explicit transforms (no
// gamma handling, unlike libpng's simplified API: PIL ignores gAMA and sRGB
// chunks, and so do we), JPEG through libjpeg-turbo's libjpeg API. Both
// libraries report errors by longjmp: each decoder keeps everything it owns in
// one state struct that outlives the setjmp frame, and the function that
// calls setjmp holds no C++ object with a destructor, so a longjmp skips no
// destructor.
#include "media/image_decoder.h"

// clang-format off: jpeglib.h needs <cstdio> first.
#include <cstdio>
#include <jpeglib.h>
#include <jerror.h>
// clang-format on
#include <png.h>

#include <csetjmp>
#include <cstring>

namespace rainserve::media {
namespace {

constexpr std::string_view kPngMagic("\x89PNG\r\n\x1a\n", 8);
constexpr std::string_view kJpegMagic("\xff\xd8\xff", 3);
// A progressive JPEG may hold any number of scans, each a pass over the whole
// coefficient buffer; real encoders write about ten.
constexpr int kMaxJpegScans = 256;

Status ImageError(const std::string& what) { return InvalidArgumentError("image: " + what); }

Status CheckPixels(int64_t width, int64_t height, const ImageLimits& limits) {
  if (width < 1 || height < 1) {
    return ImageError(std::to_string(width) + "x" + std::to_string(height) + " pixels (empty)");
  }
  if (width * height > limits.max_pixels) {
    return ImageError(std::to_string(width) + "x" + std::to_string(height) + " pixels, at most " +
                      std::to_string(limits.max_pixels) + " in all");
  }
  return OkStatus();
}

// Packed 8-bit pixels of `channels` (grey, grey+alpha, RGB, RGBA) -> RGB;
// alpha is dropped, grey replicated.
std::vector<uint8_t> ToRgb(std::vector<uint8_t> pixels, int channels, int64_t count) {
  if (channels == 3) return pixels;
  std::vector<uint8_t> rgb(static_cast<size_t>(count) * 3);
  for (int64_t i = 0; i < count; ++i) {
    const uint8_t* p = &pixels[static_cast<size_t>(i * channels)];
    uint8_t* q = &rgb[static_cast<size_t>(i * 3)];
    if (channels <= 2) {
      q[0] = q[1] = q[2] = p[0];
    } else {
      q[0] = p[0], q[1] = p[1], q[2] = p[2];
    }
  }
  return rgb;
}

// ---------------------------------------------------------------- EXIF

// The EXIF orientation (1..8) in a TIFF structure (the body of a JPEG's
// "Exif\0\0" APP1 segment, or a PNG eXIf chunk): IFD0's tag 0x0112. 1 (as
// stored) when absent or malformed.
int ExifOrientation(const uint8_t* tiff, size_t size) {
  if (size < 8) return 1;
  const bool little = tiff[0] == 'I' && tiff[1] == 'I';
  if (!little && !(tiff[0] == 'M' && tiff[1] == 'M')) return 1;
  auto u16 = [&](size_t at) -> uint32_t {
    return little ? tiff[at] | tiff[at + 1] << 8 : tiff[at] << 8 | tiff[at + 1];
  };
  auto u32 = [&](size_t at) -> uint32_t {
    return little ? u16(at) | u16(at + 2) << 16 : u16(at) << 16 | u16(at + 2);
  };
  const size_t ifd = u32(4);
  if (ifd > size - 2) return 1;
  const size_t entries = u16(ifd);
  for (size_t i = 0; i < entries && ifd + 2 + 12 * (i + 1) <= size; ++i) {
    const size_t entry = ifd + 2 + 12 * i;
    if (u16(entry) != 0x0112) continue;
    const uint32_t value = u16(entry + 8);  // a SHORT, left-justified in the value field
    return u16(entry + 2) == 3 && value >= 1 && value <= 8 ? static_cast<int>(value) : 1;
  }
  return 1;
}

// Turns `image` upright as PIL's ImageOps.exif_transpose does (which the
// reference's load_image applies): 2 mirror, 3 rotate 180, 4 flip, 5
// transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 anticlockwise.
void ApplyOrientation(int orientation, DecodedImage* image) {
  if (orientation <= 1 || orientation > 8) return;
  const int64_t w = image->width, h = image->height;
  const bool swap = orientation >= 5;
  const int64_t out_w = swap ? h : w, out_h = swap ? w : h;
  std::vector<uint8_t> out(image->rgb.size());
  for (int64_t y = 0; y < out_h; ++y) {
    for (int64_t x = 0; x < out_w; ++x) {
      int64_t sx = x, sy = y;  // the source pixel of output (x, y)
      switch (orientation) {
        case 2: sx = w - 1 - x; break;
        case 3: sx = w - 1 - x, sy = h - 1 - y; break;
        case 4: sy = h - 1 - y; break;
        case 5: sx = y, sy = x; break;
        case 6: sx = y, sy = h - 1 - x; break;
        case 7: sx = w - 1 - y, sy = h - 1 - x; break;
        case 8: sx = w - 1 - y, sy = x; break;
      }
      std::memcpy(&out[(y * out_w + x) * 3], &image->rgb[(sy * w + sx) * 3], 3);
    }
  }
  image->rgb = std::move(out);
  image->width = out_w;
  image->height = out_h;
}

// ---------------------------------------------------------------- PNG

struct PngState {
  std::string_view bytes;
  size_t offset = 0;
  ImageLimits limits;
  png_structp png = nullptr;
  png_infop info = nullptr;
  jmp_buf jump;
  char message[256] = "";
  int64_t width = 0, height = 0;
  int channels = 0;
  bool over_limit = false;  // the header asked for too many pixels
  int orientation = 1;      // an eXIf chunk before the image data
  std::vector<uint8_t> pixels;
  std::vector<png_bytep> rows;

  ~PngState() { png_destroy_read_struct(&png, &info, nullptr); }
};

void PngErrorFn(png_structp png, png_const_charp message) {
  auto* s = static_cast<PngState*>(png_get_error_ptr(png));
  std::snprintf(s->message, sizeof(s->message), "%s", message);
  std::longjmp(s->jump, 1);
}

void PngWarningFn(png_structp, png_const_charp) {}

void PngReadFn(png_structp png, png_bytep out, size_t size) {
  auto* s = static_cast<PngState*>(png_get_io_ptr(png));
  if (size > s->bytes.size() - s->offset) png_error(png, "truncated file");
  std::memcpy(out, s->bytes.data() + s->offset, size);
  s->offset += size;
}

// The libpng calls, under setjmp. False on an error (s->message) or when the
// header is over the pixel limit (s->over_limit).
bool RunPng(PngState* s) {
  if (setjmp(s->jump)) return false;
  png_set_read_fn(s->png, s, PngReadFn);
  // Any size the format allows reaches CheckPixels (libpng's own default
  // caps each side at a million and calls more "invalid").
  png_set_user_limits(s->png, PNG_UINT_31_MAX, PNG_UINT_31_MAX);
  png_read_info(s->png, s->info);
  png_uint_32 width = 0, height = 0;
  int depth = 0, color = 0;
  png_get_IHDR(s->png, s->info, &width, &height, &depth, &color, nullptr, nullptr, nullptr);
  s->width = width;
  s->height = height;
  if (!CheckPixels(s->width, s->height, s->limits).ok()) {
    s->over_limit = true;
    return false;
  }
  png_uint_32 exif_size = 0;
  png_bytep exif = nullptr;
  if (png_get_eXIf_1(s->png, s->info, &exif_size, &exif) != 0 && exif != nullptr) {
    s->orientation = ExifOrientation(exif, exif_size);
  }
  if (depth == 16) png_set_strip_16(s->png);  // the high byte, as PIL keeps
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(s->png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(s->png);
  png_set_interlace_handling(s->png);
  png_read_update_info(s->png, s->info);
  s->channels = png_get_channels(s->png, s->info);
  const size_t row_bytes = png_get_rowbytes(s->png, s->info);
  if (row_bytes != static_cast<size_t>(s->width) * s->channels) {
    png_error(s->png, "unexpected row size");
  }
  s->pixels.resize(row_bytes * s->height);
  s->rows.resize(s->height);
  for (int64_t y = 0; y < s->height; ++y) s->rows[y] = &s->pixels[y * row_bytes];
  png_read_image(s->png, s->rows.data());
  return true;
}

StatusOr<DecodedImage> DecodePng(std::string_view bytes, const ImageLimits& limits) {
  PngState s;
  s.bytes = bytes;
  s.limits = limits;
  s.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &s, PngErrorFn, PngWarningFn);
  if (s.png != nullptr) s.info = png_create_info_struct(s.png);
  if (s.info == nullptr) return ResourceExhaustedError("image: out of memory for a PNG decoder");
  if (!RunPng(&s)) {
    if (s.over_limit) return CheckPixels(s.width, s.height, limits);
    return ImageError(std::string("corrupt PNG (") + s.message + ")");
  }
  DecodedImage out;
  out.width = s.width;
  out.height = s.height;
  out.rgb = ToRgb(std::move(s.pixels), s.channels, s.width * s.height);
  out.mime_type = "image/png";
  ApplyOrientation(s.orientation, &out);
  return out;
}

// ---------------------------------------------------------------- JPEG

struct JpegState {
  std::string_view bytes;
  ImageLimits limits;
  jpeg_decompress_struct cinfo;
  jpeg_error_mgr errors;
  jpeg_progress_mgr progress;
  bool created = false;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX] = "";
  bool damaged = false;  // a warning that means lost image data
  bool over_limit = false;
  bool cmyk = false;
  int orientation = 1;  // from an EXIF APP1 segment
  std::vector<uint8_t> rgb;

  ~JpegState() {
    if (created) jpeg_destroy_decompress(&cinfo);
  }
};

JpegState* StateOf(j_common_ptr cinfo) { return static_cast<JpegState*>(cinfo->client_data); }

void JpegErrorExit(j_common_ptr cinfo) {
  JpegState* s = StateOf(cinfo);
  cinfo->err->format_message(cinfo, s->message);
  std::longjmp(s->jump, 1);
}

// Warnings (level -1) about data lost to truncation or damage fail the image
// (PIL refuses a truncated JPEG); benign ones (extraneous bytes, an unknown
// JFIF revision or Adobe transform) are ignored, as are trace messages.
void JpegEmitMessage(j_common_ptr cinfo, int level) {
  if (level >= 0) return;
  const int code = cinfo->err->msg_code;
  if (code == JWRN_JPEG_EOF || code == JWRN_HIT_MARKER || code == JWRN_HUFF_BAD_CODE ||
      code == JWRN_MUST_RESYNC) {
    JpegState* s = StateOf(cinfo);
    if (!s->damaged) cinfo->err->format_message(cinfo, s->message);
    s->damaged = true;
  }
}

void JpegProgress(j_common_ptr cinfo) {
  auto* d = reinterpret_cast<j_decompress_ptr>(cinfo);
  if (d->input_scan_number > kMaxJpegScans) {
    std::snprintf(StateOf(cinfo)->message, JMSG_LENGTH_MAX, "more than %d scans", kMaxJpegScans);
    std::longjmp(StateOf(cinfo)->jump, 1);
  }
}

bool RunJpeg(JpegState* s) {
  if (setjmp(s->jump)) return false;
  s->cinfo.err = jpeg_std_error(&s->errors);
  s->errors.error_exit = JpegErrorExit;
  s->errors.emit_message = JpegEmitMessage;
  s->cinfo.client_data = s;
  jpeg_create_decompress(&s->cinfo);  // keeps err and client_data
  s->created = true;
  s->progress.progress_monitor = JpegProgress;
  s->cinfo.progress = &s->progress;
  jpeg_mem_src(&s->cinfo, reinterpret_cast<const unsigned char*>(s->bytes.data()),
               static_cast<unsigned long>(s->bytes.size()));
  jpeg_save_markers(&s->cinfo, JPEG_APP0 + 1, 0xffff);  // EXIF
  jpeg_read_header(&s->cinfo, TRUE);
  // Saved markers live until the decompression ends: read EXIF now.
  for (jpeg_saved_marker_ptr m = s->cinfo.marker_list; m != nullptr; m = m->next) {
    if (m->marker == JPEG_APP0 + 1 && m->data_length > 6 &&
        std::memcmp(m->data, "Exif\0\0", 6) == 0) {
      s->orientation = ExifOrientation(m->data + 6, m->data_length - 6);
      break;
    }
  }
  const int64_t width = s->cinfo.image_width, height = s->cinfo.image_height;
  if (!CheckPixels(width, height, s->limits).ok()) {
    s->over_limit = true;
    return false;
  }
  if (s->cinfo.jpeg_color_space == JCS_CMYK || s->cinfo.jpeg_color_space == JCS_YCCK) {
    s->cmyk = true;
    return false;
  }
  // A progressive image buffers its coefficients (2 bytes each, up to three
  // full-resolution components); nothing legitimate needs more.
  s->cinfo.mem->max_memory_to_use = static_cast<long>(width * height * 8 + (32 << 20));
  s->cinfo.out_color_space = JCS_RGB;
  jpeg_start_decompress(&s->cinfo);
  if (s->cinfo.output_components != 3) ERREXIT(&s->cinfo, JERR_BAD_J_COLORSPACE);
  s->rgb.resize(static_cast<size_t>(width * height * 3));
  while (s->cinfo.output_scanline < s->cinfo.output_height) {
    JSAMPROW row = &s->rgb[static_cast<size_t>(s->cinfo.output_scanline) * width * 3];
    jpeg_read_scanlines(&s->cinfo, &row, 1);
  }
  jpeg_finish_decompress(&s->cinfo);
  return true;
}

StatusOr<DecodedImage> DecodeJpeg(std::string_view bytes, const ImageLimits& limits) {
  JpegState s;
  s.bytes = bytes;
  s.limits = limits;
  if (!RunJpeg(&s)) {
    if (s.over_limit) return CheckPixels(s.cinfo.image_width, s.cinfo.image_height, limits);
    if (s.cmyk) return ImageError("CMYK JPEG is not supported (send RGB or greyscale)");
    return ImageError(std::string("corrupt JPEG (") + s.message + ")");
  }
  if (s.damaged) return ImageError(std::string("corrupt JPEG (") + s.message + ")");
  DecodedImage out;
  out.width = s.cinfo.image_width;
  out.height = s.cinfo.image_height;
  out.rgb = std::move(s.rgb);
  out.mime_type = "image/jpeg";
  ApplyOrientation(s.orientation, &out);
  return out;
}

}  // namespace

std::string_view SniffImageType(std::string_view bytes) {
  if (bytes.substr(0, kPngMagic.size()) == kPngMagic) return "image/png";
  if (bytes.substr(0, kJpegMagic.size()) == kJpegMagic) return "image/jpeg";
  return "";
}

StatusOr<DecodedImage> DecodeImage(std::string_view bytes, const ImageLimits& limits) {
  if (bytes.empty()) return ImageError("empty (expected PNG or JPEG bytes)");
  if (static_cast<int64_t>(bytes.size()) > limits.max_bytes) {
    return ImageError(std::to_string(bytes.size()) + " bytes, at most " +
                      std::to_string(limits.max_bytes));
  }
  const std::string_view type = SniffImageType(bytes);
  if (type == "image/png") return DecodePng(bytes, limits);
  if (type == "image/jpeg") return DecodeJpeg(bytes, limits);
  return ImageError("not a PNG or JPEG");
}

}  // namespace rainserve::media
