// The step-cache policy on synthetic change values.
#include "pipelines/core/step_cache.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace rainserve {
namespace {

const TeaCacheCoefficients kLinear = {0, 0, 0, 1, 0};  // rescaled change = change

std::vector<bool> Decisions(const StepCacheSettings& s, const std::vector<double>& changes,
                            const TeaCacheCoefficients& c = kLinear) {
  StepCachePolicy policy(s, static_cast<int64_t>(changes.size()), c);
  std::vector<bool> skips;
  for (size_t i = 0; i < changes.size(); ++i) {
    skips.push_back(policy.Skip(static_cast<int64_t>(i), i > 0, changes[i]));
  }
  return skips;
}

TEST(StepCachePolicyTest, ThresholdZeroNeverSkips) {
  const std::vector<double> tiny(8, 0.0);
  EXPECT_EQ(Decisions({StepCacheMode::kFirstBlock, 0.0, 0}, tiny), std::vector<bool>(8, false));
  EXPECT_EQ(Decisions({StepCacheMode::kTeaCache, 0.0, 0}, tiny), std::vector<bool>(8, false));
  // The Wan polynomial is negative at 0; it still must not skip at threshold 0.
  EXPECT_EQ(Decisions({StepCacheMode::kTeaCache, 0.0, 0}, tiny, WanTeaCacheCoefficients(1536)),
            std::vector<bool>(8, false));
}

TEST(StepCachePolicyTest, OffNeverSkips) {
  EXPECT_EQ(Decisions({StepCacheMode::kOff, 10.0, 0}, std::vector<double>(5, 0.0)),
            std::vector<bool>(5, false));
}

TEST(StepCachePolicyTest, FirstBlockRespectsWarmupReferenceAndLastStep) {
  // Step 0 has no reference; steps 1-2 are warm-up; step 5 is last.
  const std::vector<double> changes = {0.0, 0.0, 0.0, 0.05, 0.5, 0.0};
  EXPECT_EQ(Decisions({StepCacheMode::kFirstBlock, 0.1, 3}, changes),
            (std::vector<bool>{false, false, false, true, false, false}));
  StepCachePolicy policy({StepCacheMode::kFirstBlock, 0.1, 0}, 4, kLinear);
  EXPECT_FALSE(policy.Skip(0, false, 0.0));
  EXPECT_TRUE(policy.Skip(1, true, 0.01));
  EXPECT_TRUE(policy.Skip(2, true, 0.01));
  EXPECT_FALSE(policy.Skip(3, true, 0.01));
  EXPECT_EQ(policy.skipped(), 2);
}

TEST(StepCachePolicyTest, TeaCacheAccumulatesUntilThresholdThenResets) {
  StepCachePolicy policy({StepCacheMode::kTeaCache, 0.25, 1}, 10, kLinear);
  EXPECT_FALSE(policy.Skip(0, false, 0.0));  // warm-up
  EXPECT_TRUE(policy.Skip(1, true, 0.1));    // 0.1
  EXPECT_DOUBLE_EQ(policy.accumulated(), 0.1);
  EXPECT_TRUE(policy.Skip(2, true, 0.1));    // 0.2
  EXPECT_FALSE(policy.Skip(3, true, 0.1));   // 0.3 >= 0.25: compute, reset
  EXPECT_DOUBLE_EQ(policy.accumulated(), 0.0);
  EXPECT_TRUE(policy.Skip(4, true, 0.2));    // 0.2 after the reset
  EXPECT_FALSE(policy.Skip(5, true, 0.3));   // 0.5
  EXPECT_EQ(policy.skipped(), 3);
}

TEST(StepCachePolicyTest, NonFiniteChangeComputes) {
  StepCachePolicy policy({StepCacheMode::kFirstBlock, 1.0, 0}, 5, kLinear);
  EXPECT_FALSE(policy.Skip(1, true, std::nan("")));
}

TEST(StepCachePolicyTest, TeaCachePolynomialValues) {
  // Horner evaluation in numpy.poly1d order.
  EXPECT_DOUBLE_EQ(TeaCachePolynomial({1, 2, 3, 4, 5}, 2.0), 16 + 16 + 12 + 8 + 5);
  const TeaCacheCoefficients small = WanTeaCacheCoefficients(1536);
  EXPECT_DOUBLE_EQ(TeaCachePolynomial(small, 0.0), -4.99875664e-02);
  const double x = 0.1;
  EXPECT_NEAR(TeaCachePolynomial(small, x),
              -5.21862437e+04 * 1e-4 + 9.23041404e+03 * 1e-3 - 5.28275948e+02 * 1e-2 +
                  1.36987616e+01 * 0.1 - 4.99875664e-02,
              1e-9);
  EXPECT_DOUBLE_EQ(TeaCachePolynomial(WanTeaCacheCoefficients(5120), 0.0), -3.15583525e-01);
}

TEST(StepCacheModeTest, ParseNamesTheField) {
  EXPECT_EQ(*ParseStepCacheMode("teacache", "step_cache.mode"), StepCacheMode::kTeaCache);
  EXPECT_EQ(*ParseStepCacheMode("first_block", "step_cache.mode"), StepCacheMode::kFirstBlock);
  const auto bad = ParseStepCacheMode("magcache", "step_cache.mode");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("step_cache.mode"), std::string::npos);
}

}  // namespace
}  // namespace rainserve
