#include "tests/media/test_images.h"

// clang-format off: jpeglib.h needs <cstdio> first.
#include <cstdio>
#include <jpeglib.h>
// clang-format on
#include <png.h>

#include <csetjmp>
#include <cstdlib>

namespace rainserve::media::testing {
namespace {

void PngWrite(png_structp png, png_bytep data, size_t size) {
  static_cast<std::string*>(png_get_io_ptr(png))->append(reinterpret_cast<char*>(data), size);
}

uint32_t Crc32(const std::string& bytes) {
  uint32_t crc = 0xffffffffu;
  for (unsigned char c : bytes) {
    crc ^= c;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

void PutBigEndian(uint32_t v, char* out) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>(v >> (24 - 8 * i));
}

}  // namespace

PngSpec MakePng(int width, int height, int bit_depth, int color_type,
                std::vector<uint8_t> samples) {
  PngSpec spec;
  spec.width = width;
  spec.height = height;
  spec.bit_depth = bit_depth;
  spec.color_type = color_type;
  spec.samples = std::move(samples);
  return spec;
}

std::string EncodeTestPng(const PngSpec& spec) {
  std::string out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  if (png == nullptr || info == nullptr || setjmp(png_jmpbuf(png))) {
    std::fprintf(stderr, "EncodeTestPng: libpng failed\n");
    std::abort();
  }
  png_set_write_fn(png, &out, PngWrite, nullptr);
  png_set_IHDR(png, info, spec.width, spec.height, spec.bit_depth, spec.color_type,
               spec.interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (!spec.palette.empty()) {
    std::vector<png_color> colors(spec.palette.size() / 3);
    for (size_t i = 0; i < colors.size(); ++i) {
      colors[i] = {spec.palette[3 * i], spec.palette[3 * i + 1], spec.palette[3 * i + 2]};
    }
    png_set_PLTE(png, info, colors.data(), static_cast<int>(colors.size()));
  }
  if (!spec.alpha.empty()) {
    png_set_tRNS(png, info, spec.alpha.data(), static_cast<int>(spec.alpha.size()), nullptr);
  }
  if (spec.gamma > 0) png_set_gAMA(png, info, spec.gamma);
  if (!spec.exif.empty()) {
    png_set_eXIf_1(png, info, static_cast<png_uint_32>(spec.exif.size()),
                   reinterpret_cast<png_bytep>(const_cast<char*>(spec.exif.data())));
  }
  png_write_info(png, info);
  const size_t row_bytes = png_get_rowbytes(png, info);
  std::vector<png_bytep> rows(spec.height);
  for (int y = 0; y < spec.height; ++y) {
    rows[y] = const_cast<png_bytep>(&spec.samples[y * row_bytes]);
  }
  png_write_image(png, rows.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

std::string EncodeTestJpeg(const std::vector<uint8_t>& rgb, int width, int height, int quality,
                           JpegKind kind, const std::string& exif) {
  jpeg_compress_struct cinfo;
  jpeg_error_mgr errors;
  cinfo.err = jpeg_std_error(&errors);  // exits the test binary on an error
  jpeg_create_compress(&cinfo);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&cinfo, &buffer, &size);
  cinfo.image_width = width;
  cinfo.image_height = height;
  const int components = kind == JpegKind::kGrey ? 1 : kind == JpegKind::kCmyk ? 4 : 3;
  cinfo.input_components = components;
  cinfo.in_color_space =
      kind == JpegKind::kGrey ? JCS_GRAYSCALE : kind == JpegKind::kCmyk ? JCS_CMYK : JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, quality, TRUE);
  if (kind == JpegKind::kProgressive) jpeg_simple_progression(&cinfo);
  jpeg_start_compress(&cinfo, TRUE);
  if (!exif.empty()) {
    const std::string app1 = std::string("Exif\0\0", 6) + exif;
    jpeg_write_marker(&cinfo, JPEG_APP0 + 1, reinterpret_cast<const JOCTET*>(app1.data()),
                      static_cast<unsigned int>(app1.size()));
  }
  std::vector<uint8_t> row(static_cast<size_t>(width) * components);
  while (cinfo.next_scanline < cinfo.image_height) {
    const uint8_t* in = &rgb[static_cast<size_t>(cinfo.next_scanline) * width * 3];
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < components; ++c) {
        row[x * components + c] = c == 3 ? 0 : kind == JpegKind::kCmyk ? 255 - in[x * 3 + c]
                                                                       : in[x * 3 + c];
      }
    }
    JSAMPROW p = row.data();
    jpeg_write_scanlines(&cinfo, &p, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  std::string out(reinterpret_cast<char*>(buffer), size);
  std::free(buffer);
  return out;
}

std::string ExifOrientation(int orientation, bool big_endian) {
  auto u16 = [big_endian](uint32_t v) {
    std::string out(2, '\0');
    out[big_endian ? 1 : 0] = static_cast<char>(v & 0xff);
    out[big_endian ? 0 : 1] = static_cast<char>((v >> 8) & 0xff);
    return out;
  };
  auto u32 = [&](uint32_t v) {
    return big_endian ? u16(v >> 16) + u16(v & 0xffff) : u16(v & 0xffff) + u16(v >> 16);
  };
  // Header, IFD0 at offset 8: one entry (tag 0x0112, SHORT, count 1, value
  // left-justified), then the next-IFD offset 0.
  return std::string(big_endian ? "MM" : "II") + u16(42) + u32(8) + u16(1) + u16(0x0112) +
         u16(3) + u32(1) + u16(orientation) + u16(0) + u32(0);
}

std::string PngClaimingSize(uint32_t width, uint32_t height) {
  std::string png = EncodeTestPng(MakePng(1, 1, 8, 2, {1, 2, 3}));
  // Signature (8), then IHDR: length (4), "IHDR" (4), width, height, ..., CRC.
  PutBigEndian(width, &png[16]);
  PutBigEndian(height, &png[20]);
  PutBigEndian(Crc32(png.substr(12, 17)), &png[29]);
  return png;
}

}  // namespace rainserve::media::testing
