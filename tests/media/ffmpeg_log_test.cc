#include "media/ffmpeg_log.h"

#include <gtest/gtest.h>

#include "common/logging.h"
#include "media/mp4_encoder.h"
#include "tests/media/test_frames.h"

namespace rainserve::media {
namespace {

// stderr while one small MP4 is encoded at the given process log level.
std::string StderrOfOneEncode(LogLevel level) {
  const std::vector<uint8_t> rgb = testing::SmoothFrames(16, 16, 2);
  const LogLevel saved = GetLogLevel();
  SetLogLevel(level);
  ::testing::internal::CaptureStderr();
  EXPECT_TRUE(EncodeMp4(rgb.data(), 16, 16, 2, 8).ok());
  std::string output = ::testing::internal::GetCapturedStderr();
  SetLogLevel(saved);
  return output;
}

TEST(FfmpegLogTest, EncoderBannerIsADebugLineOfTheProcessLog) {
  ForwardFfmpegLogs();
  EXPECT_EQ(StderrOfOneEncode(LogLevel::kInfo), "");
  const std::string debug = StderrOfOneEncode(LogLevel::kDebug);
  EXPECT_EQ(debug.rfind("D ", 0), 0u) << debug;  // our log's debug prefix
  EXPECT_NE(debug.find("[libx264 @ "), std::string::npos) << debug;
}

}  // namespace
}  // namespace rainserve::media
