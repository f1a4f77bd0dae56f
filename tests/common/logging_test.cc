// RAINSERVE_LOG (levels, unbraced use) and LogRateLimiter (lines per second,
// the count of what it held back).
#include "common/logging.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>

namespace rainserve {
namespace {

// Restores the process-wide level after each test.
class LoggingTest : public ::testing::Test {
 protected:
  void SetUp() override { saved_ = GetLogLevel(); }
  void TearDown() override { SetLogLevel(saved_); }

 private:
  LogLevel saved_ = LogLevel::kInfo;
};

int Count(int* calls) { return ++*calls; }

// This file is compiled with -Werror=dangling-else (tests/common/CMakeLists.txt):
// with the macro as an if statement, the unbraced ifs below would not build.
TEST_F(LoggingTest, LogsInsideAnUnbracedIfElse) {
  SetLogLevel(LogLevel::kInfo);
  for (const bool fail : {true, false}) {
    ::testing::internal::CaptureStderr();
    if (fail)
      RAINSERVE_LOG(ERROR) << "failed " << 7;
    else
      RAINSERVE_LOG(INFO) << "fine";
    const std::string text = ::testing::internal::GetCapturedStderr();
    if (fail) {
      EXPECT_EQ(text.rfind("E ", 0), 0u) << text;
      EXPECT_NE(text.find("logging_test.cc:"), std::string::npos) << text;
      EXPECT_NE(text.find("] failed 7\n"), std::string::npos) << text;
      EXPECT_EQ(text.find("fine"), std::string::npos) << text;
    } else {
      EXPECT_EQ(text.rfind("I ", 0), 0u) << text;
      EXPECT_NE(text.find("] fine\n"), std::string::npos) << text;
      EXPECT_EQ(text.find("failed"), std::string::npos) << text;
    }
  }
}

TEST_F(LoggingTest, MessagesBelowTheLevelAreNotEvaluated) {
  SetLogLevel(LogLevel::kWarning);
  int calls = 0;
  ::testing::internal::CaptureStderr();
  if (calls == 0) RAINSERVE_LOG(INFO) << "count " << Count(&calls);
  RAINSERVE_LOG(DEBUG) << Count(&calls);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  EXPECT_EQ(calls, 0);

  ::testing::internal::CaptureStderr();
  if (calls == 0) RAINSERVE_LOG(WARNING) << "count " << Count(&calls);
  EXPECT_NE(::testing::internal::GetCapturedStderr().find("] count 1\n"), std::string::npos);
  EXPECT_EQ(calls, 1);
}

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
