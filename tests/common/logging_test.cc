// LogRateLimiter: lines per one-second window and the count of what it held back.
//   ctest --test-dir build -R common_test
#include "common/logging.h"

#include <gtest/gtest.h>

namespace rainserve {
namespace {

using std::chrono::milliseconds;

TEST(LogRateLimiterTest, PassesNPerSecondThenCountsWhatItHeldBackInTheNextLine) {
  LogRateLimiter limiter(3);
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t suppressed = 99;
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(limiter.AllowAt(t0 + milliseconds(i), &suppressed));
    EXPECT_EQ(suppressed, 0u);
  }
  for (int i = 0; i < 50; ++i) {
    EXPECT_FALSE(limiter.AllowAt(t0 + milliseconds(10 + i), &suppressed));
  }
  // The next window lets lines through again; the first one carries the count.
  EXPECT_TRUE(limiter.AllowAt(t0 + milliseconds(1001), &suppressed));
  EXPECT_EQ(suppressed, 50u);
  EXPECT_EQ(SuppressedNote(suppressed), " (50 similar lines suppressed)");
  EXPECT_TRUE(limiter.AllowAt(t0 + milliseconds(1002), &suppressed));
  EXPECT_EQ(suppressed, 0u);
  EXPECT_EQ(SuppressedNote(0), "");
}

}  // namespace
}  // namespace rainserve
