// media/image_decoder: PNG and JPEG input images to RGB, with PIL's
// convert("RGB") conversions, and every way a file can be refused.
//   build/tests/media/image_decoder_test
#include "media/image_decoder.h"

#include <gtest/gtest.h>

#include <cstdlib>

#include "tests/media/test_images.h"

namespace rainserve::media {
namespace {

using testing::EncodeTestJpeg;
using testing::EncodeTestPng;
using testing::JpegKind;
using testing::MakePng;
using testing::PngSpec;

constexpr ImageLimits kLimits{1 << 20, 1 << 20};

// [height, width, 3]: gradients (JPEG keeps them close).
std::vector<uint8_t> Gradient(int width, int height) {
  std::vector<uint8_t> rgb(static_cast<size_t>(width) * height * 3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      uint8_t* p = &rgb[(static_cast<size_t>(y) * width + x) * 3];
      p[0] = static_cast<uint8_t>(255 * x / (width - 1));
      p[1] = static_cast<uint8_t>(255 * y / (height - 1));
      p[2] = static_cast<uint8_t>(128 + 64 * ((x + y) % 2));
    }
  }
  return rgb;
}

DecodedImage Decode(const std::string& bytes) {
  StatusOr<DecodedImage> image = DecodeImage(bytes, kLimits);
  EXPECT_TRUE(image.ok()) << image.status().ToString();
  return image.ok() ? *image : DecodedImage();
}

// INVALID_ARGUMENT whose message starts with "image: " and contains `detail`.
void ExpectRefused(const std::string& bytes, const std::string& detail,
                   const ImageLimits& limits = kLimits) {
  StatusOr<DecodedImage> image = DecodeImage(bytes, limits);
  ASSERT_FALSE(image.ok());
  EXPECT_EQ(image.status().code(), StatusCode::kInvalidArgument) << image.status().ToString();
  EXPECT_EQ(image.status().message().rfind("image: ", 0), 0u) << image.status().message();
  EXPECT_NE(image.status().message().find(detail), std::string::npos) << image.status().message();
}

TEST(ImageDecoderTest, RgbPngDecodesToItsExactPixels) {
  const std::vector<uint8_t> rgb = Gradient(37, 19);
  const DecodedImage image = Decode(EncodeTestPng(MakePng(37, 19, 8, 2, rgb)));
  EXPECT_EQ(image.width, 37);
  EXPECT_EQ(image.height, 19);
  EXPECT_EQ(image.mime_type, "image/png");
  EXPECT_EQ(image.rgb, rgb);
}

TEST(ImageDecoderTest, InterlacedPngGivesTheSamePixelsAsPlain) {
  const std::vector<uint8_t> rgb = Gradient(23, 17);
  PngSpec spec = MakePng(23, 17, 8, 2, rgb);
  spec.interlaced = true;
  EXPECT_EQ(Decode(EncodeTestPng(spec)).rgb, rgb);
}

TEST(ImageDecoderTest, GreyIsReplicatedIntoThreeChannels) {
  const DecodedImage image = Decode(EncodeTestPng(MakePng(3, 1, 8, 0, {0, 77, 255})));
  EXPECT_EQ(image.rgb, (std::vector<uint8_t>{0, 0, 0, 77, 77, 77, 255, 255, 255}));
}

TEST(ImageDecoderTest, OneBitGreyExpandsToBlackAndWhite) {
  // 10 pixels 1,0,1,1,0,0,0,1 | 1,0 packed high bit first.
  const DecodedImage image = Decode(EncodeTestPng(MakePng(10, 1, 1, 0, {0xb1, 0x80})));
  const int bits[10] = {1, 0, 1, 1, 0, 0, 0, 1, 1, 0};
  ASSERT_EQ(image.rgb.size(), 30u);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(image.rgb[3 * i + 1], bits[i] ? 255 : 0) << i;
}

TEST(ImageDecoderTest, PaletteIsLookedUpAndItsTransparencyDropped) {
  PngSpec spec = MakePng(4, 1, 2, 3, {0x1b});  // 2-bit indices 0, 1, 2, 3
  spec.palette = {10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120};
  spec.alpha = {0, 128};  // entries 0 and 1 transparent-ish: no compositing
  EXPECT_EQ(Decode(EncodeTestPng(spec)).rgb,
            (std::vector<uint8_t>{10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120}));
}

TEST(ImageDecoderTest, AlphaIsDroppedNotComposited) {
  // RGBA: a fully transparent red pixel stays red (PIL's convert("RGB")).
  EXPECT_EQ(Decode(EncodeTestPng(MakePng(2, 1, 8, 6, {255, 0, 0, 0, 1, 2, 3, 200}))).rgb,
            (std::vector<uint8_t>{255, 0, 0, 1, 2, 3}));
  // Grey + alpha.
  EXPECT_EQ(Decode(EncodeTestPng(MakePng(2, 1, 8, 4, {9, 0, 200, 255}))).rgb,
            (std::vector<uint8_t>{9, 9, 9, 200, 200, 200}));
}

TEST(ImageDecoderTest, SixteenBitKeepsTheHighByteAndGammaIsIgnored) {
  // Big-endian samples 0x12ff, 0x8001, 0xfe80; a gAMA of 1.0 changes nothing.
  PngSpec spec = MakePng(1, 1, 16, 2, {0x12, 0xff, 0x80, 0x01, 0xfe, 0x80});
  spec.gamma = 1.0;
  EXPECT_EQ(Decode(EncodeTestPng(spec)).rgb, (std::vector<uint8_t>{0x12, 0x80, 0xfe}));
  PngSpec grey = MakePng(2, 1, 16, 0, {0xab, 0xcd, 0x01, 0xff});
  EXPECT_EQ(Decode(EncodeTestPng(grey)).rgb, (std::vector<uint8_t>{0xab, 0xab, 0xab, 1, 1, 1}));
}

// Mean and max |a - b| over two equal-sized buffers.
std::pair<double, int> Error(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  double sum = 0;
  int worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const int d = std::abs(a[i] - b[i]);
    sum += d;
    worst = std::max(worst, d);
  }
  return {sum / static_cast<double>(a.size()), worst};
}

TEST(ImageDecoderTest, JpegDecodesCloseToTheEncodedPixels) {
  const std::vector<uint8_t> rgb = Gradient(48, 32);
  for (JpegKind kind : {JpegKind::kRgb, JpegKind::kProgressive}) {
    const DecodedImage image = Decode(EncodeTestJpeg(rgb, 48, 32, 100, kind));
    EXPECT_EQ(image.width, 48);
    EXPECT_EQ(image.height, 32);
    EXPECT_EQ(image.mime_type, "image/jpeg");
    ASSERT_EQ(image.rgb.size(), rgb.size());
    // Quality 100 with 4:2:0 chroma: small mean error, bounded worst case
    // (the checkerboard in blue is what chroma subsampling smooths).
    const auto [mean, worst] = Error(image.rgb, rgb);
    EXPECT_LT(mean, 12.0);
    EXPECT_LE(worst, 80);
  }
}

TEST(ImageDecoderTest, GreyJpegHasEqualChannels) {
  const DecodedImage image = Decode(EncodeTestJpeg(Gradient(16, 16), 16, 16, 95, JpegKind::kGrey));
  ASSERT_EQ(image.rgb.size(), 16u * 16 * 3);
  for (size_t i = 0; i < image.rgb.size(); i += 3) {
    ASSERT_EQ(image.rgb[i], image.rgb[i + 1]);
    ASSERT_EQ(image.rgb[i], image.rgb[i + 2]);
  }
  EXPECT_LE(std::abs(image.rgb[3 * 15] - 255), 3);  // top right: R of the gradient
}

TEST(ImageDecoderTest, EmptyOversizedAndForeignBytesAreRefusedBeforeDecoding) {
  ExpectRefused("", "empty");
  const std::string png = EncodeTestPng(MakePng(8, 8, 8, 2, Gradient(8, 8)));
  ExpectRefused(png, std::to_string(png.size()) + " bytes, at most 100", {100, 1 << 20});
  ExpectRefused("GIF89a\x01\x00\x01\x00\x00\x00\x00;", "not a PNG or JPEG");
  ExpectRefused("BM" + std::string(60, '\0'), "not a PNG or JPEG");
}

TEST(ImageDecoderTest, PixelLimitIsCheckedFromTheHeader) {
  const std::vector<uint8_t> rgb = Gradient(20, 20);
  ExpectRefused(EncodeTestPng(MakePng(20, 20, 8, 2, rgb)), "20x20 pixels, at most 399 in all",
                {1 << 20, 399});
  ExpectRefused(EncodeTestJpeg(rgb, 20, 20, 90), "20x20 pixels, at most 399 in all",
                {1 << 20, 399});
  // A 60-byte file that claims 2^31 x 2^31 pixels is refused without an
  // allocation (a decoder that allocated first would die here).
  ExpectRefused(testing::PngClaimingSize(0x7fffffff, 0x7fffffff), "2147483647x2147483647 pixels",
                {1 << 20, 1 << 24});
  EXPECT_TRUE(DecodeImage(EncodeTestPng(MakePng(20, 20, 8, 2, rgb)), {1 << 20, 400}).ok());
}

TEST(ImageDecoderTest, TruncatedAndDamagedFilesAreCorrupt) {
  const std::vector<uint8_t> rgb = Gradient(40, 30);
  const std::string png = EncodeTestPng(MakePng(40, 30, 8, 2, rgb));
  ExpectRefused(png.substr(0, png.size() / 2), "corrupt PNG");
  ExpectRefused(png.substr(0, 12), "corrupt PNG");
  std::string flipped = png;
  flipped[png.size() / 2] ^= 0x40;  // inside IDAT: its CRC no longer matches
  ExpectRefused(flipped, "corrupt PNG");
  const std::string jpeg = EncodeTestJpeg(rgb, 40, 30, 90);
  ExpectRefused(jpeg.substr(0, jpeg.size() / 2), "corrupt JPEG");
  ExpectRefused(jpeg.substr(0, 3), "corrupt JPEG");
  ExpectRefused(std::string("\xff\xd8\xff", 3) + std::string(200, 'x'), "corrupt JPEG");
  // A progressive file cut short is as corrupt as a baseline one.
  const std::string progressive = EncodeTestJpeg(rgb, 40, 30, 90, JpegKind::kProgressive);
  ExpectRefused(progressive.substr(0, progressive.size() * 2 / 3), "corrupt JPEG");
}

TEST(ImageDecoderTest, CmykJpegIsRefusedByName) {
  ExpectRefused(EncodeTestJpeg(Gradient(8, 8), 8, 8, 90, JpegKind::kCmyk), "CMYK");
}

// 3x2 image, pixel i (row-major) has red = 'a' + i: "abc" over "def".
std::string Oriented(int orientation, bool big_endian) {
  std::vector<uint8_t> rgb(3 * 2 * 3, 0);
  for (int i = 0; i < 6; ++i) rgb[3 * i] = static_cast<uint8_t>('a' + i);
  PngSpec spec = MakePng(3, 2, 8, 2, rgb);
  spec.exif = testing::ExifOrientation(orientation, big_endian);
  const DecodedImage image = Decode(EncodeTestPng(spec));
  std::string rows;
  for (int64_t y = 0; y < image.height; ++y) {
    if (y > 0) rows += "/";
    for (int64_t x = 0; x < image.width; ++x) {
      rows += static_cast<char>(image.rgb[(y * image.width + x) * 3]);
    }
  }
  return rows;
}

TEST(ImageDecoderTest, ExifOrientationTurnsThePngUprightAsExifTransposeDoes) {
  for (bool big_endian : {false, true}) {
    EXPECT_EQ(Oriented(1, big_endian), "abc/def");
    EXPECT_EQ(Oriented(2, big_endian), "cba/fed");     // mirrored
    EXPECT_EQ(Oriented(3, big_endian), "fed/cba");     // rotated 180
    EXPECT_EQ(Oriented(4, big_endian), "def/abc");     // flipped
    EXPECT_EQ(Oriented(5, big_endian), "ad/be/cf");    // transposed
    EXPECT_EQ(Oriented(6, big_endian), "da/eb/fc");    // rotated 90 clockwise
    EXPECT_EQ(Oriented(7, big_endian), "fc/eb/da");    // transversed
    EXPECT_EQ(Oriented(8, big_endian), "cf/be/ad");    // rotated 90 anticlockwise
  }
  EXPECT_EQ(Oriented(9, false), "abc/def");  // out of range: as stored
}

TEST(ImageDecoderTest, ExifOrientationTurnsTheJpegUprightToo) {
  const std::vector<uint8_t> rgb = Gradient(32, 16);
  const DecodedImage plain = Decode(EncodeTestJpeg(rgb, 32, 16, 90));
  const DecodedImage turned =
      Decode(EncodeTestJpeg(rgb, 32, 16, 90, JpegKind::kRgb, testing::ExifOrientation(6)));
  ASSERT_EQ(turned.width, 16);
  ASSERT_EQ(turned.height, 32);
  // Rotated 90 clockwise: output (x, y) is input (y, 15 - x), pixel for pixel
  // (the same compressed data decodes to the same pixels).
  for (int y = 0; y < 32; ++y) {
    for (int x = 0; x < 16; ++x) {
      for (int c = 0; c < 3; ++c) {
        ASSERT_EQ(turned.rgb[(y * 16 + x) * 3 + c], plain.rgb[((15 - x) * 32 + y) * 3 + c])
            << x << "," << y;
      }
    }
  }
}

TEST(ImageDecoderTest, SniffLooksOnlyAtMagicBytes) {
  EXPECT_EQ(SniffImageType(std::string("\x89PNG\r\n\x1a\n", 8)), "image/png");
  EXPECT_EQ(SniffImageType("\xff\xd8\xff\xe0"), "image/jpeg");
  EXPECT_EQ(SniffImageType("\x89PNG"), "");
  EXPECT_EQ(SniffImageType("GIF89a"), "");
}

}  // namespace
}  // namespace rainserve::media
