// Pillow-exact and ATen-exact resizing and transformers' centre crops
// (pipelines/core/image_ops.h): hand-computed one-row cases from Pillow's and
// ATen's formulas, invariants, bounds, and Pillow's own bytes for 2-D resizes
// (tests/pipelines/data/pillow_resize.json, written by
// tools/reference/pillow_resize_reference.py). ATen's kernel itself is
// compared in clip_vision_test, which links LibTorch.
#include "pipelines/core/image_ops.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/test_files.h"

namespace rainserve {
namespace {

constexpr ResampleFilter kAllFilters[] = {ResampleFilter::kLanczos, ResampleFilter::kBilinear,
                                          ResampleFilter::kBicubic, ResampleFilter::kBox,
                                          ResampleFilter::kHamming};

// A one-row image whose three channels all hold `values`.
InputImage GreyRow(const std::vector<uint8_t>& values) {
  InputImage image;
  image.width = static_cast<int64_t>(values.size());
  image.height = 1;
  for (uint8_t v : values) image.rgb.insert(image.rgb.end(), {v, v, v});
  return image;
}

// The red channel of a one-row image.
std::vector<int> RedRow(const InputImage& image) {
  std::vector<int> out;
  for (int64_t x = 0; x < image.width; ++x) out.push_back(image.rgb[x * 3]);
  return out;
}

// The input formula of tools/reference/pillow_resize_reference.py (pattern()).
InputImage Pattern(int64_t width, int64_t height, int64_t seed) {
  InputImage image;
  image.width = width;
  image.height = height;
  for (int64_t y = 0; y < height; ++y) {
    for (int64_t x = 0; x < width; ++x) {
      for (int64_t c = 0; c < 3; ++c) {
        int64_t v = (x * (7 + seed) + y * 13 + c * 50 + ((x * y + seed) % 17) * 9) % 256;
        if ((x / 3 + y / 2 + c) % 5 == 0) v = 255 - v;
        image.rgb.push_back(static_cast<uint8_t>(v));
      }
    }
  }
  return image;
}

std::string Hex(const std::vector<uint8_t>& bytes) {
  static const char kDigits[] = "0123456789abcdef";
  std::string s;
  for (uint8_t b : bytes) s += {kDigits[b >> 4], kDigits[b & 15]};
  return s;
}

std::string Fnv1a64(const std::vector<uint8_t>& bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (uint8_t b : bytes) h = (h ^ b) * 0x100000001b3ull;
  char text[17];
  snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(h));
  return text;
}

TEST(ResizeImageTest, SameSizeReturnsTheSameBytes) {
  const InputImage image = Pattern(11, 7, 2);
  for (ResampleFilter f : kAllFilters) {
    auto out = ResizeImage(image, 11, 7, f);
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    EXPECT_EQ(out->width, 11);
    EXPECT_EQ(out->height, 7);
    EXPECT_EQ(out->rgb, image.rgb) << ResampleFilterName(f);
  }
}

// Pillow, 4 -> 2 bilinear: scale 2 widens the triangle to support 2; output 0
// (centre 1.0) reads inputs 0..2 with raw weights 0.75, 0.75, 0.25 -> 3/7,
// 3/7, 1/7; output 1 (centre 3.0) reads inputs 1..3 with 1/7, 3/7, 3/7:
// 120/7 = 17.14 -> 17 and 230/7 = 32.86 -> 33.
TEST(ResizeImageTest, BilinearReductionMatchesPillowsWeightsByHand) {
  auto out = ResizeImage(GreyRow({10, 20, 30, 40}), 2, 1, ResampleFilter::kBilinear);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(RedRow(*out), (std::vector<int>{17, 33}));
}

// 2 -> 4 bilinear: centres 0.25, 0.75, 1.25, 1.75; the first and last read
// one input (weight normalised to 1), the middle ones 0.75 / 0.25 mixes:
// 0, 101/4 = 25.25 -> 25, 303/4 = 75.75 -> 76, 101.
TEST(ResizeImageTest, BilinearEnlargementMatchesPillowsWeightsByHand) {
  auto out = ResizeImage(GreyRow({0, 101}), 4, 1, ResampleFilter::kBilinear);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(RedRow(*out), (std::vector<int>{0, 25, 76, 101}));
}

// 4 -> 2 bicubic (a = -0.5, support 2 x 2): output 0 reads inputs 0..3 at
// distances 0.25, 0.25, 0.75, 1.25 -> raw 111/128, 111/128, 29/128, -9/128,
// normalised by 242/128: (1110 + 2220 + 870 - 360) / 242 = 15.87 -> 16;
// output 1 mirrored: (-90 + 580 + 3330 + 4440) / 242 = 34.13 -> 34.
TEST(ResizeImageTest, BicubicReductionMatchesPillowsWeightsByHand) {
  auto out = ResizeImage(GreyRow({10, 20, 30, 40}), 2, 1, ResampleFilter::kBicubic);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(RedRow(*out), (std::vector<int>{16, 34}));
}

// 2 -> 4 bicubic: output 0 (centre 0.25) has weights 37/34 and -3/34,
// output 1 (centre 0.75) 111/140 and 29/140; the last two mirror them. The
// negative lobe takes [255, 0] out of range on both sides: 277.5 -> 255 and
// -22.5 -> 0; 202.2 -> 202, 52.8 -> 53. [0, 200]: -17.6 -> 0, 41.4 -> 41,
// 158.6 -> 159, 217.6 -> 218.
TEST(ResizeImageTest, BicubicEnlargementRoundsAndClipsAsPillow) {
  auto a = ResizeImage(GreyRow({255, 0}), 4, 1, ResampleFilter::kBicubic);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(RedRow(*a), (std::vector<int>{255, 202, 53, 0}));
  auto b = ResizeImage(GreyRow({0, 200}), 4, 1, ResampleFilter::kBicubic);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(RedRow(*b), (std::vector<int>{0, 41, 159, 218}));
}

TEST(ResizeImageTest, ConstantImagesStayConstantUnderEveryFilter) {
  for (uint8_t value : {0, 1, 77, 128, 254, 255}) {
    InputImage image;
    image.width = 9;
    image.height = 6;
    image.rgb.assign(9 * 6 * 3, value);
    for (ResampleFilter f : kAllFilters) {
      for (const auto& [w, h] : std::vector<std::pair<int64_t, int64_t>>{{4, 3}, {23, 17}, {9, 2}, {1, 1}, {2, 40}}) {
        auto out = ResizeImage(image, w, h, f);
        ASSERT_TRUE(out.ok()) << out.status().ToString();
        ASSERT_EQ(out->rgb.size(), static_cast<size_t>(w * h * 3));
        for (uint8_t v : out->rgb) {
          ASSERT_EQ(v, value) << ResampleFilterName(f) << " " << w << "x" << h;
        }
      }
    }
  }
}

TEST(ResizeImageTest, MatchesPillowsBytesForEveryFilterAndShape) {
  const std::string text =
      testing::ReadFileBytes(testing::SourceDir() + "/tests/pipelines/data/pillow_resize.json");
  ASSERT_FALSE(text.empty());
  const nlohmann::json data = nlohmann::json::parse(text);
  ASSERT_GE(data["cases"].size(), 100u);
  for (const nlohmann::json& c : data["cases"]) {
    const InputImage image = Pattern(c["width"], c["height"], c["seed"]);
    auto filter = ResampleFilterFromPillow(c["filter"].get<int64_t>(), "filter");
    ASSERT_TRUE(filter.ok());
    auto out = ResizeImage(image, c["out_width"], c["out_height"], *filter);
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    const std::string what = std::string(ResampleFilterName(*filter)) + " " + c.dump();
    if (c.contains("bytes")) {
      EXPECT_EQ(Hex(out->rgb), c["bytes"].get<std::string>()) << what;
    } else {
      EXPECT_EQ(Fnv1a64(out->rgb), c["fnv1a64"].get<std::string>()) << what;
    }
  }
}

TEST(ResizeImageTest, RefusesBadSizesNamingTheArgument) {
  const InputImage image = Pattern(4, 4, 0);
  const struct {
    int64_t w, h;
    const char* field;
  } cases[] = {{0, 4, "width"}, {-3, 4, "width"}, {kMaxImageSide + 1, 4, "width"},
               {4, 0, "height"}, {4, kMaxImageSide + 1, "height"}};
  for (const auto& c : cases) {
    auto out = ResizeImage(image, c.w, c.h, ResampleFilter::kBicubic);
    ASSERT_FALSE(out.ok());
    EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(out.status().message().find(c.field), std::string::npos) << out.status().ToString();
    auto crop = CenterCrop(image, c.w, c.h);
    ASSERT_FALSE(crop.ok());
    EXPECT_NE(crop.status().message().find(c.field), std::string::npos) << crop.status().ToString();
  }
  InputImage broken = image;
  broken.rgb.pop_back();
  auto out = ResizeImage(broken, 2, 2, ResampleFilter::kBicubic);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("image"), std::string::npos);
  EXPECT_FALSE(ResizeImage(InputImage{}, 2, 2, ResampleFilter::kBicubic).ok());
  // A tall sliver within any pixel budget still has a side beyond the limit.
  InputImage sliver;
  sliver.width = 1;
  sliver.height = kMaxImageSide + 1;
  sliver.rgb.assign(sliver.height * 3, 9);
  auto tall = ResizeImage(sliver, 832, 480, ResampleFilter::kLanczos);
  ASSERT_FALSE(tall.ok());
  EXPECT_EQ(tall.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(tall.status().message().find("image"), std::string::npos) << tall.status().ToString();
  EXPECT_FALSE(CenterCrop(sliver, 1, 1).ok());
}

TEST(ResampleFilterTest, PillowNumbersMapToFiltersAndNearestIsRefused) {
  EXPECT_EQ(*ResampleFilterFromPillow(1, "resample"), ResampleFilter::kLanczos);
  EXPECT_EQ(*ResampleFilterFromPillow(2, "resample"), ResampleFilter::kBilinear);
  EXPECT_EQ(*ResampleFilterFromPillow(3, "resample"), ResampleFilter::kBicubic);
  EXPECT_EQ(*ResampleFilterFromPillow(4, "resample"), ResampleFilter::kBox);
  EXPECT_EQ(*ResampleFilterFromPillow(5, "resample"), ResampleFilter::kHamming);
  auto nearest = ResampleFilterFromPillow(0, "resample");
  ASSERT_FALSE(nearest.ok());
  EXPECT_EQ(nearest.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(nearest.status().message().find("resample"), std::string::npos);
  EXPECT_EQ(ResampleFilterFromPillow(6, "resample").status().code(), StatusCode::kInvalidArgument);
}

// The pixel at (x, y) of an image whose pixel value encodes its position.
InputImage Coordinates(int64_t width, int64_t height) {
  InputImage image;
  image.width = width;
  image.height = height;
  for (int64_t y = 0; y < height; ++y) {
    for (int64_t x = 0; x < width; ++x) image.rgb.insert(image.rgb.end(), {uint8_t(x), uint8_t(y), 7});
  }
  return image;
}

// transformers: top = (height - crop) // 2, so an odd difference puts the
// extra row / column after the crop: 7 -> 4 starts at 1, 10 -> 5 at 2.
TEST(CenterCropTest, OddDifferencesRoundTheOffsetDown) {
  auto out = CenterCrop(Coordinates(10, 7), 5, 4);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ASSERT_EQ(out->width, 5);
  ASSERT_EQ(out->height, 4);
  EXPECT_EQ(out->rgb[0], 2);  // first column is x = 2
  EXPECT_EQ(out->rgb[1], 1);  // first row is y = 1
  const size_t last = out->rgb.size() - 3;
  EXPECT_EQ(out->rgb[last], 6);
  EXPECT_EQ(out->rgb[last + 1], 4);
  // Same size: the image itself.
  auto same = CenterCrop(Coordinates(10, 7), 10, 7);
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(same->rgb, Coordinates(10, 7).rgb);
}

// A crop larger than the image pads with zeros, the image placed at
// ceil(difference / 2): 3 wide into 6 at column 2 (difference 3), 4 tall
// into 6 at row 1; the other axis is cropped as usual.
TEST(CenterCropTest, LargerCropPadsWithBlackAtTheCeilOffset) {
  auto out = CenterCrop(Coordinates(3, 4), 6, 2);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ASSERT_EQ(out->width, 6);
  ASSERT_EQ(out->height, 2);
  for (int64_t y = 0; y < 2; ++y) {
    for (int64_t x = 0; x < 6; ++x) {
      const uint8_t* px = &out->rgb[(y * 6 + x) * 3];
      if (x < 2 || x >= 5) {
        EXPECT_EQ(px[0] + px[1] + px[2], 0) << x << "," << y;
      } else {
        EXPECT_EQ(px[0], x - 2);
        EXPECT_EQ(px[1], y + 1);  // (4 - 2) // 2 = 1
        EXPECT_EQ(px[2], 7);
      }
    }
  }
  auto tall = CenterCrop(Coordinates(3, 4), 3, 7);
  ASSERT_TRUE(tall.ok());
  EXPECT_EQ(tall->rgb[(2 * 3 + 0) * 3 + 2], 7);  // row 2 is image row 0 (ceil(3 / 2) = 2)
  EXPECT_EQ(tall->rgb[(1 * 3 + 0) * 3 + 2], 0);
  EXPECT_EQ(tall->rgb[(6 * 3 + 0) * 3 + 2], 0);
}

// ---------------------------------------------------------------------------
// ResizeImageAten: ATen's uint8 antialiased kernels.

constexpr AtenInterpolation kAtenModes[] = {AtenInterpolation::kBilinear, AtenInterpolation::kBicubic};

// 4 -> 2 bicubic: the weights of Pillow's case above, 111/242, 111/242,
// 29/242, -9/242, in ATen's int16 fixed point: round(111/242 * 2^17) =
// 60120 >= 2^15 while 30060 < 2^15, so 16 fractional bits: 30060, 30060,
// 7853, -2437 (sum 65536). [228, 86, 182, 251] is exactly halfway at output 0
// (37873 / 242 = 156.5): (2^15 + 30060 * 314 + 7853 * 182 - 2437 * 251) =
// 10289167 >= 157 * 2^16 = 10289152 gives 157, where Pillow's 22-bit
// weights (1923834, 502623, -155987) fall 51 short of 156.5 and give 156.
// Output 1 (48505 / 242 = 200.43) is 200 for both.
TEST(ResizeImageAtenTest, BicubicReductionUsesSixteenBitWeightsByHand) {
  const InputImage row = GreyRow({228, 86, 182, 251});
  auto aten = ResizeImageAten(row, 2, 1, AtenInterpolation::kBicubic);
  ASSERT_TRUE(aten.ok()) << aten.status().ToString();
  EXPECT_EQ(RedRow(*aten), (std::vector<int>{157, 200}));
  auto pillow = ResizeImage(row, 2, 1, ResampleFilter::kBicubic);
  ASSERT_TRUE(pillow.ok());
  EXPECT_EQ(RedRow(*pillow), (std::vector<int>{156, 200}));
  // Away from halfway both agree (Pillow's hand case above).
  auto plain = ResizeImageAten(GreyRow({10, 20, 30, 40}), 2, 1, AtenInterpolation::kBicubic);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(RedRow(*plain), (std::vector<int>{16, 34}));
}

// 2 -> 4 bicubic enlarges: weights 37/34, -3/34 (outputs 0, 3 mirrored) and
// 111/140, 29/140 (outputs 1, 2); the largest, 37/34, allows 14 fractional
// bits: 17830, -1446, 12990, 3394. [0, 70] has two halfway outputs, 14.5 and
// 55.5: 2^13 + 70 * 3394 = 245772 >= 15 * 2^14 gives 15 and 2^13 + 70 *
// 12990 = 917492 < 56 * 2^14 gives 55; Pillow gives 14 and 56. The negative
// lobe still clips: [255, 0] -> 255 (278.0), 202, 53, 0 (-22.5).
TEST(ResizeImageAtenTest, BicubicEnlargementPicksItsPrecisionFromTheLargestWeight) {
  auto a = ResizeImageAten(GreyRow({0, 70}), 4, 1, AtenInterpolation::kBicubic);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(RedRow(*a), (std::vector<int>{0, 15, 55, 76}));
  auto pillow = ResizeImage(GreyRow({0, 70}), 4, 1, ResampleFilter::kBicubic);
  ASSERT_TRUE(pillow.ok());
  EXPECT_EQ(RedRow(*pillow), (std::vector<int>{0, 14, 56, 76}));
  auto clipped = ResizeImageAten(GreyRow({255, 0}), 4, 1, AtenInterpolation::kBicubic);
  ASSERT_TRUE(clipped.ok());
  EXPECT_EQ(RedRow(*clipped), (std::vector<int>{255, 202, 53, 0}));
}

// 4 -> 2 bilinear: 3/7, 3/7, 1/7 at 16 bits: 28087, 28087, 9362;
// (2^15 + 28087 * 30 + 9362 * 30) >> 16 = 17, output 1 33.
TEST(ResizeImageAtenTest, BilinearReductionByHand) {
  auto out = ResizeImageAten(GreyRow({10, 20, 30, 40}), 2, 1, AtenInterpolation::kBilinear);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(RedRow(*out), (std::vector<int>{17, 33}));
}

TEST(ResizeImageAtenTest, ConstantImagesStayConstantAndSameSizeIsACopy) {
  for (uint8_t value : {0, 1, 77, 128, 254, 255}) {
    InputImage image;
    image.width = 90;
    image.height = 61;
    image.rgb.assign(90 * 61 * 3, value);
    for (AtenInterpolation mode : kAtenModes) {
      for (const auto& [w, h] : std::vector<std::pair<int64_t, int64_t>>{
               {64, 43}, {224, 151}, {3, 2}, {1, 1}, {90, 7}, {13, 61}, {500, 300}}) {
        auto out = ResizeImageAten(image, w, h, mode);
        ASSERT_TRUE(out.ok()) << out.status().ToString();
        ASSERT_EQ(out->rgb.size(), static_cast<size_t>(w * h * 3));
        for (uint8_t v : out->rgb) ASSERT_EQ(v, value) << w << "x" << h;
      }
    }
  }
  const InputImage image = Pattern(11, 7, 2);
  for (AtenInterpolation mode : kAtenModes) {
    auto out = ResizeImageAten(image, 11, 7, mode);
    ASSERT_TRUE(out.ok());
    EXPECT_EQ(out->rgb, image.rgb);
  }
}

TEST(ResizeImageAtenTest, RefusesBadSizesNamingTheArgument) {
  auto wide = ResizeImageAten(Pattern(4, 4, 0), kMaxImageSide + 1, 4, AtenInterpolation::kBicubic);
  ASSERT_FALSE(wide.ok());
  EXPECT_EQ(wide.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(wide.status().message().find("width"), std::string::npos) << wide.status().ToString();
  auto empty = ResizeImageAten(InputImage{}, 2, 2, AtenInterpolation::kBilinear);
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.status().message().find("image"), std::string::npos);
}

// transformers' torchvision processors pad at floor((crop - size) / 2): 3
// wide into 6 at column 1, 4 tall into 7 at row 1 (kCeil: 2 and 2).
TEST(CenterCropTest, FloorPaddingPlacesTheImageOneEarlierOnOddDifferences) {
  auto out = CenterCrop(Coordinates(3, 4), 6, 2, PadOffset::kFloor);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  for (int64_t y = 0; y < 2; ++y) {
    for (int64_t x = 0; x < 6; ++x) {
      const uint8_t* px = &out->rgb[(y * 6 + x) * 3];
      if (x < 1 || x >= 4) {
        EXPECT_EQ(px[0] + px[1] + px[2], 0) << x << "," << y;
      } else {
        EXPECT_EQ(px[0], x - 1);
        EXPECT_EQ(px[1], y + 1);  // cropping is unchanged: (4 - 2) // 2 = 1
      }
    }
  }
  auto tall = CenterCrop(Coordinates(3, 4), 3, 7, PadOffset::kFloor);
  ASSERT_TRUE(tall.ok());
  EXPECT_EQ(tall->rgb[(1 * 3 + 0) * 3 + 2], 7);  // row 1 is image row 0
  EXPECT_EQ(tall->rgb[(0 * 3 + 0) * 3 + 2], 0);
  EXPECT_EQ(tall->rgb[(5 * 3 + 0) * 3 + 2], 0);
  // Even differences and plain crops place the same under both rules.
  EXPECT_EQ(CenterCrop(Coordinates(4, 4), 6, 2, PadOffset::kFloor)->rgb,
            CenterCrop(Coordinates(4, 4), 6, 2, PadOffset::kCeil)->rgb);
  EXPECT_EQ(CenterCrop(Coordinates(10, 7), 5, 4, PadOffset::kFloor)->rgb,
            CenterCrop(Coordinates(10, 7), 5, 4, PadOffset::kCeil)->rgb);
}

}  // namespace
}  // namespace rainserve
