#include "attention/bf16.h"

#include <gtest/gtest.h>

#include <cmath>

namespace rainserve::attention {
namespace {

TEST(HalfConversionTest, BFloat16RoundsToNearestEven) {
  EXPECT_EQ(FloatToBFloat16(1.0f), 0x3f80);
  // 1 + 2^-8 is exactly halfway between 1 and 1 + 2^-7: ties to even (1.0).
  EXPECT_EQ(FloatToBFloat16(1.00390625f), 0x3f80);
  // 1 + 3 * 2^-8 is halfway between 1+2^-7 (odd) and 1+2^-6: rounds up to even.
  EXPECT_EQ(FloatToBFloat16(1.01171875f), 0x3f82);
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(std::nanf("")))));
}

TEST(HalfConversionTest, EveryFloat16RoundTrips) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = Float16ToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToFloat16(f), h) << "half 0x" << std::hex << h;
  }
  EXPECT_FLOAT_EQ(Float16ToFloat(0x3c00), 1.0f);
  EXPECT_FLOAT_EQ(Float16ToFloat(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(FloatToFloat16(1e6f), 0x7c00);                          // overflow -> inf
  EXPECT_EQ(FloatToFloat16(std::ldexp(1.0f, -26)), 0x0000);         // below half the subnormal
  EXPECT_EQ(FloatToFloat16(std::ldexp(3.0f, -26)), 0x0001);         // rounds up to it
}

TEST(HalfConversionTest, EveryBFloat16RoundTrips) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = BFloat16ToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToBFloat16(f), h);
  }
}

}  // namespace
}  // namespace rainserve::attention
