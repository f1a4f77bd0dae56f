// TopKMatcher (bench/topk_match.h): the requested sparsity of each top-k
// count, and the bisection that matches a target realized sparsity.
#include "bench/topk_match.h"

#include <gtest/gtest.h>

#include <vector>

#include "attention/config.h"

namespace rainserve::bench {
namespace {

TEST(TopKMatcherTest, SparsityForGivesEveryCountOnEveryBlockCount) {
  for (int64_t nb = 1; nb <= 600; ++nb) {
    for (int64_t k = 1; k <= nb; ++k) {
      const double s = TopKMatcher::SparsityFor(nb, k);
      ASSERT_GE(s, 0.0) << nb << " " << k;
      ASSERT_LT(s, 1.0) << nb << " " << k;
      ASSERT_EQ(attention::TopKCount(nb, s), k) << nb << " " << k;
    }
  }
}

// A realized sparsity per count (index k - 1), non-increasing, as forced
// blocks make it: dyadic values, so that distances compare exactly.
class TableMatch : public ::testing::Test {
 protected:
  const std::vector<double> table_ = {0.875, 0.75, 0.625, 0.5, 0.5, 0.375, 0.25, 0.125, 0.0625, 0.0};
  const int64_t nb_ = static_cast<int64_t>(table_.size());
  int calls_ = 0;
  TopKMatcher matcher_{nb_, [this](double sparsity) {
                         ++calls_;
                         return table_[static_cast<size_t>(attention::TopKCount(nb_, sparsity) - 1)];
                       }};
};

TEST_F(TableMatch, PicksTheCountWithTheClosestRealizedSparsity) {
  EXPECT_EQ(matcher_.Match(0.74).count, 2);   // 0.75 beats 0.625
  EXPECT_EQ(matcher_.Match(0.64).count, 3);   // 0.625 beats 0.75
  EXPECT_EQ(matcher_.Match(0.26).count, 7);   // 0.25 beats 0.375
  const TopKMatch m = matcher_.Match(0.1);    // 0.125 and 0.0625: 0.125 is closer
  EXPECT_EQ(m.count, 8);
  EXPECT_EQ(m.realized, 0.125);
  EXPECT_EQ(attention::TopKCount(nb_, m.sparsity), 8);
}

TEST_F(TableMatch, ExactTargetsAndTheEndsOfTheRange) {
  EXPECT_EQ(matcher_.Match(0.5).realized, 0.5);
  EXPECT_EQ(matcher_.Match(0.95).count, 1);  // sparser than any count reaches
  EXPECT_EQ(matcher_.Match(0.0).count, 10);  // every block kept
  EXPECT_EQ(matcher_.Match(0.0).realized, 0.0);
}

TEST_F(TableMatch, TieGoesToTheDenserCount) {
  EXPECT_EQ(matcher_.Match(0.6875).count, 3);  // halfway between 0.75 (k 2) and 0.625 (k 3)
  EXPECT_EQ(matcher_.Match(0.3125).count, 7);  // halfway between 0.375 (k 6) and 0.25 (k 7)
}

TEST_F(TableMatch, MeasuresEachCountOnceAcrossMatches) {
  matcher_.Match(0.74);
  const int first = calls_;
  EXPECT_LE(first, 6);  // bisection over 10 counts and one neighbour
  matcher_.Match(0.74);
  EXPECT_EQ(calls_, first);
  EXPECT_EQ(matcher_.probes(), calls_);
}

}  // namespace
}  // namespace rainserve::bench
