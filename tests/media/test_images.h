// Input images for the decoder and image-request tests, written at test time
// with libpng's and libjpeg's low-level APIs (every PNG colour type and bit
// depth, palettes with transparency, interlacing, gamma chunks; baseline,
// progressive, greyscale and CMYK JPEG). Failures abort the test binary: the
// inputs are the test's own.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rainserve::media::testing {

struct PngSpec {
  int width = 0, height = 0;
  int bit_depth = 8;   // 1, 2, 4, 8 or 16
  int color_type = 2;  // PNG_COLOR_TYPE_*: 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA
  // Packed samples, rows top to bottom, 16-bit samples big-endian, sub-byte
  // samples packed high bit first (as in the file).
  std::vector<uint8_t> samples;
  std::vector<uint8_t> palette;  // RGB triples (palette images)
  std::vector<uint8_t> alpha;    // tRNS: one alpha per palette entry
  bool interlaced = false;       // Adam7
  double gamma = 0;              // > 0 writes a gAMA chunk
  std::string exif;              // non-empty: an eXIf chunk (TIFF bytes) before IDAT
};
// The plain fields of a PngSpec (no palette, transparency, interlace or gamma).
PngSpec MakePng(int width, int height, int bit_depth, int color_type,
                std::vector<uint8_t> samples);
std::string EncodeTestPng(const PngSpec& spec);

enum class JpegKind { kRgb, kGrey, kProgressive, kCmyk };
// rgb: [height, width, 3] (kGrey takes the first channel, kCmyk writes
// C = 255 - R, M = 255 - G, Y = 255 - B, K = 0).
// `exif` non-empty: an APP1 "Exif\0\0" segment with these TIFF bytes.
std::string EncodeTestJpeg(const std::vector<uint8_t>& rgb, int width, int height, int quality,
                           JpegKind kind = JpegKind::kRgb, const std::string& exif = "");

// EXIF TIFF bytes whose IFD0 holds one entry, Orientation = `orientation`.
std::string ExifOrientation(int orientation, bool big_endian = false);

// A PNG whose IHDR claims width x height (CRC fixed up) over a 1x1 image's
// data: a small file that asks the decoder for a huge allocation.
std::string PngClaimingSize(uint32_t width, uint32_t height);

}  // namespace rainserve::media::testing
