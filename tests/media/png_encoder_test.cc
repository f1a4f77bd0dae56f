#include "media/png_encoder.h"

#include <gtest/gtest.h>

#include "tests/media/test_frames.h"

namespace rainserve::media {
namespace {

using testing::DecodePng;

void ExpectRoundTrip(const std::vector<uint8_t>& rgb, int width, int height) {
  StatusOr<std::string> png = EncodePng(rgb.data(), width, height);
  ASSERT_TRUE(png.ok()) << png.status().ToString();
  ASSERT_GE(png->size(), 8u);
  EXPECT_EQ(png->substr(1, 3), "PNG");
  StatusOr<testing::DecodedPng> decoded = DecodePng(*png);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->width, width);
  EXPECT_EQ(decoded->height, height);
  EXPECT_EQ(decoded->rgb, rgb);  // lossless: every byte
}

TEST(PngEncoderTest, SmoothImageDecodesToTheSamePixels) {
  ExpectRoundTrip(testing::SmoothFrames(64, 48, 1), 64, 48);
}

TEST(PngEncoderTest, NoiseImageWithOddSizeDecodesToTheSamePixels) {
  ExpectRoundTrip(testing::NoiseFrame(37, 19, 7), 37, 19);
}

TEST(PngEncoderTest, OnePixelImageRoundTrips) {
  ExpectRoundTrip({12, 200, 255}, 1, 1);
}

TEST(PngEncoderTest, SameInputGivesSameBytes) {
  const std::vector<uint8_t> rgb = testing::NoiseFrame(31, 17, 3);
  EXPECT_EQ(*EncodePng(rgb.data(), 31, 17), *EncodePng(rgb.data(), 31, 17));
}

TEST(PngEncoderTest, BadArgumentsAreInvalidArgumentNamingTheArgument) {
  const std::vector<uint8_t> rgb(3 * 4 * 4, 0);
  struct Case {
    const uint8_t* rgb;
    int width;
    int height;
    const char* argument;
  };
  for (const Case& c : {Case{nullptr, 4, 4, "rgb"}, Case{rgb.data(), 0, 4, "width"},
                        Case{rgb.data(), 4, -1, "height"}, Case{rgb.data(), 4, 16385, "height"}}) {
    EXPECT_TRUE(testing::IsInvalidArgumentNaming(
        EncodePng(c.rgb, c.width, c.height).status(), c.argument));
  }
}

}  // namespace
}  // namespace rainserve::media
