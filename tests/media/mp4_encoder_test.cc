// Encodes small smooth videos and decodes them again with FFmpeg.
//
// Tolerance: the test converts decoded frames back to RGB with a plain BT.709
// formula. At the default crf 20 the smooth pattern comes back 1.2 (96x64) to
// 1.8 (65x37, padded) levels off per channel on average, about half of it
// from yuv420p chroma sharing alone (measured at crf 0); kMaxMeanError allows
// 3. A wrong colour matrix or range, swapped channels, or a dropped or
// reordered frame (neighbouring input frames differ by 8 levels or more) fails.
#include "media/mp4_encoder.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "media/artifacts.h"
#include "tests/media/test_frames.h"

namespace rainserve::media {
namespace {

using testing::DecodedVideo;
using testing::DecodeMp4;
using testing::MeanAbsError;
using testing::SmoothFrames;

constexpr double kMaxMeanError = 3.0;

DecodedVideo EncodeAndDecode(const std::vector<uint8_t>& rgb, int width, int height, int frames,
                             int fps, const Mp4Options& options = {}) {
  StatusOr<std::string> mp4 = EncodeMp4(rgb.data(), width, height, frames, fps, options);
  EXPECT_TRUE(mp4.ok()) << mp4.status().ToString();
  if (!mp4.ok()) return {};
  StatusOr<DecodedVideo> video = DecodeMp4(*mp4);
  EXPECT_TRUE(video.ok()) << video.status().ToString();
  return video.ok() ? *std::move(video) : DecodedVideo{};
}

// Each decoded frame against its input frame (the top-left width x height).
void ExpectFramesClose(const DecodedVideo& video, const std::vector<uint8_t>& rgb, int width,
                       int height) {
  const size_t frame_bytes = static_cast<size_t>(width) * height * 3;
  ASSERT_EQ(video.rgb_frames.size() * frame_bytes, rgb.size());
  for (size_t t = 0; t < video.rgb_frames.size(); ++t) {
    const double error = MeanAbsError(video.rgb_frames[t].data(), video.width,
                                      rgb.data() + t * frame_bytes, width, width, height);
    EXPECT_LT(error, kMaxMeanError) << "frame " << t;
    // The neighbouring input frame must be clearly worse: catches reordering.
    const size_t other = t + 1 < video.rgb_frames.size() ? t + 1 : (t > 0 ? t - 1 : t);
    if (other != t) {
      EXPECT_GT(MeanAbsError(video.rgb_frames[t].data(), video.width,
                             rgb.data() + other * frame_bytes, width, width, height),
                2 * error)
          << "frame " << t << " looks like frame " << other;
    }
  }
}

TEST(Mp4EncoderTest, DecodesToH264Yuv420pWithEveryFrameAtTheGivenRate) {
  const int width = 96, height = 64, frames = 12, fps = 16;
  const std::vector<uint8_t> rgb = SmoothFrames(width, height, frames);
  const DecodedVideo video = EncodeAndDecode(rgb, width, height, frames, fps);
  EXPECT_EQ(video.codec_name, "h264");
  EXPECT_EQ(video.pix_fmt, "yuv420p");
  EXPECT_EQ(video.width, width);
  EXPECT_EQ(video.height, height);
  EXPECT_EQ(video.rgb_frames.size(), static_cast<size_t>(frames));
  EXPECT_DOUBLE_EQ(video.frame_rate, fps);
  EXPECT_NEAR(video.duration_s, static_cast<double>(frames) / fps, 1e-3);
  ExpectFramesClose(video, rgb, width, height);
}

TEST(Mp4EncoderTest, OneFrameVideoDecodesToOneFrameLastingOnePeriod) {
  const std::vector<uint8_t> rgb = SmoothFrames(64, 48, 1);
  const DecodedVideo video = EncodeAndDecode(rgb, 64, 48, 1, 24);
  EXPECT_EQ(video.rgb_frames.size(), 1u);
  EXPECT_NEAR(video.duration_s, 1.0 / 24, 1e-3);
  ExpectFramesClose(video, rgb, 64, 48);
}

TEST(Mp4EncoderTest, OddSizesArePaddedToEvenWithTheLastColumnAndRowRepeated) {
  const int width = 65, height = 37, frames = 3;
  const std::vector<uint8_t> rgb = SmoothFrames(width, height, frames);
  const DecodedVideo video = EncodeAndDecode(rgb, width, height, frames, 8);
  EXPECT_EQ(video.width, 66);
  EXPECT_EQ(video.height, 38);
  EXPECT_EQ(Mp4Dimension(width), 66);
  EXPECT_EQ(Mp4Dimension(64), 64);
  ASSERT_EQ(video.rgb_frames.size(), static_cast<size_t>(frames));
  ExpectFramesClose(video, rgb, width, height);
  // The padding column/row look like their neighbours, not like black.
  const std::vector<uint8_t>& first = video.rgb_frames[0];
  const uint8_t* last_row = first.data() + static_cast<size_t>(37) * 66 * 3;
  const uint8_t* row_above = first.data() + static_cast<size_t>(36) * 66 * 3;
  EXPECT_LT(MeanAbsError(last_row, 66, row_above, 66, 66, 1), kMaxMeanError);
  const uint8_t* last_column = first.data() + 65 * 3;
  EXPECT_LT(MeanAbsError(last_column, 66, last_column - 3, 66, 1, 38), kMaxMeanError);
}

// Repeats within one process: x264's leftover heap contents once changed the
// B-frames from one encode to the next (see OpenH264Encoder), so both inputs
// are long enough for B-frames and their encodes are interleaved.
TEST(Mp4EncoderTest, SameInputGivesSameBytes) {
  const int width = 64, height = 48, frames = 9, fps = 8;
  std::vector<uint8_t> busy(static_cast<size_t>(width) * height * 3 * frames);
  for (size_t i = 0; i < busy.size(); ++i) busy[i] = static_cast<uint8_t>(i * 7 + i / 300);
  const std::vector<std::vector<uint8_t>> inputs = {SmoothFrames(width, height, frames), busy};
  constexpr int kRepeats = 4;
  std::vector<std::string> first_hash(inputs.size());
  for (int repeat = 0; repeat < kRepeats; ++repeat) {
    for (size_t input = 0; input < inputs.size(); ++input) {
      StatusOr<std::string> mp4 = EncodeMp4(inputs[input].data(), width, height, frames, fps);
      ASSERT_TRUE(mp4.ok()) << mp4.status().ToString();
      const std::string hash = Sha256Hex(*mp4);
      if (repeat == 0) {
        first_hash[input] = hash;
      } else {
        EXPECT_EQ(hash, first_hash[input]) << "input " << input << ", encode " << repeat + 1;
      }
    }
  }
  EXPECT_NE(first_hash[0], first_hash[1]);
}

TEST(Mp4EncoderTest, IndexComesBeforeTheMediaData) {
  const std::vector<uint8_t> rgb = SmoothFrames(64, 48, 4);
  StatusOr<std::string> mp4 = EncodeMp4(rgb.data(), 64, 48, 4, 16);
  ASSERT_TRUE(mp4.ok()) << mp4.status().ToString();
  const std::vector<std::string> boxes = testing::TopLevelBoxes(*mp4);
  const auto moov = std::find(boxes.begin(), boxes.end(), "moov");
  const auto mdat = std::find(boxes.begin(), boxes.end(), "mdat");
  ASSERT_NE(moov, boxes.end());
  ASSERT_NE(mdat, boxes.end());
  EXPECT_LT(moov, mdat);
}

TEST(Mp4EncoderTest, LowerCrfGivesALargerFile) {
  const int width = 64, height = 48, frames = 4;
  const std::vector<uint8_t> rgb = SmoothFrames(width, height, frames);
  StatusOr<std::string> fine = EncodeMp4(rgb.data(), width, height, frames, 16, {10, "fast"});
  StatusOr<std::string> coarse = EncodeMp4(rgb.data(), width, height, frames, 16, {40, "fast"});
  ASSERT_TRUE(fine.ok() && coarse.ok());
  EXPECT_GT(fine->size(), coarse->size());
}

TEST(Mp4EncoderTest, BadArgumentsAreInvalidArgumentNamingTheArgument) {
  const std::vector<uint8_t> rgb = SmoothFrames(8, 8, 2);
  struct Case {
    const uint8_t* rgb;
    int width, height, frames, fps;
    Mp4Options options;
    const char* argument;
  };
  const Case cases[] = {
      {nullptr, 8, 8, 2, 16, {}, "rgb"},
      {rgb.data(), 0, 8, 2, 16, {}, "width"},
      {rgb.data(), 8, 0, 2, 16, {}, "height"},
      {rgb.data(), 8, 8, 0, 16, {}, "frames"},
      {rgb.data(), 8, 8, 2, 0, {}, "fps"},
      {rgb.data(), 8, 8, 2, 241, {}, "fps"},
      {rgb.data(), 8, 8, 2, 16, {52, "medium"}, "crf"},
      {rgb.data(), 8, 8, 2, 16, {20, "warp"}, "preset"},
  };
  for (const Case& c : cases) {
    EXPECT_TRUE(testing::IsInvalidArgumentNaming(
        EncodeMp4(c.rgb, c.width, c.height, c.frames, c.fps, c.options).status(), c.argument));
  }
}

}  // namespace
}  // namespace rainserve::media
