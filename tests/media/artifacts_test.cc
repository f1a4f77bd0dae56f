#include "media/artifacts.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "tests/media/test_frames.h"

namespace rainserve::media {
namespace {

using testing::SmoothFrames;

std::vector<Artifact> Encode(const std::vector<uint8_t>& rgb, int width, int height, int frames,
                             int fps, ArtifactFormat format) {
  StatusOr<std::vector<Artifact>> artifacts =
      EncodeArtifacts(rgb.data(), width, height, frames, fps, format);
  EXPECT_TRUE(artifacts.ok()) << artifacts.status().ToString();
  return artifacts.ok() ? *std::move(artifacts) : std::vector<Artifact>{};
}

void ExpectArtifact(const Artifact& a, const char* mime_type, int width, int height, int frames,
                    int fps) {
  EXPECT_EQ(a.mime_type, mime_type);
  EXPECT_EQ(a.width, width);
  EXPECT_EQ(a.height, height);
  EXPECT_EQ(a.frames, frames);
  EXPECT_EQ(a.fps, fps);
  EXPECT_FALSE(a.data.empty());
  EXPECT_EQ(a.sha256, Sha256Hex(a.data));
}

TEST(Sha256HexTest, MatchesKnownVectors) {
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Sha256Hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(EncodeArtifactsTest, AutoGivesOnePngForOneFrame) {
  const std::vector<uint8_t> rgb = SmoothFrames(32, 16, 1);
  const std::vector<Artifact> artifacts = Encode(rgb, 32, 16, 1, 0, ArtifactFormat::kAuto);
  ASSERT_EQ(artifacts.size(), 1u);
  ExpectArtifact(artifacts[0], "image/png", 32, 16, 1, 0);
  EXPECT_EQ(testing::DecodePng(artifacts[0].data)->rgb, rgb);
}

TEST(EncodeArtifactsTest, AutoGivesOneMp4ForSeveralFrames) {
  const std::vector<uint8_t> rgb = SmoothFrames(32, 16, 3);
  const std::vector<Artifact> artifacts = Encode(rgb, 32, 16, 3, 8, ArtifactFormat::kAuto);
  ASSERT_EQ(artifacts.size(), 1u);
  ExpectArtifact(artifacts[0], "video/mp4", 32, 16, 3, 8);
  EXPECT_EQ(artifacts[0].data.substr(4, 4), "ftyp");
}

TEST(EncodeArtifactsTest, PngWithSeveralFramesGivesOnePngPerFrameInOrder) {
  const int width = 20, height = 10, frames = 3;
  const std::vector<uint8_t> rgb = SmoothFrames(width, height, frames);
  const std::vector<Artifact> artifacts = Encode(rgb, width, height, frames, 8, ArtifactFormat::kPng);
  ASSERT_EQ(artifacts.size(), static_cast<size_t>(frames));
  const size_t frame_bytes = static_cast<size_t>(width) * height * 3;
  for (int t = 0; t < frames; ++t) {
    ExpectArtifact(artifacts[t], "image/png", width, height, 1, 8);
    const std::vector<uint8_t> expected(rgb.begin() + t * frame_bytes,
                                        rgb.begin() + (t + 1) * frame_bytes);
    EXPECT_EQ(testing::DecodePng(artifacts[t].data)->rgb, expected) << "frame " << t;
  }
}

TEST(EncodeArtifactsTest, Mp4ForOneFrameAndOddSizeReportsThePaddedSize) {
  const std::vector<uint8_t> rgb = SmoothFrames(15, 9, 1);
  const std::vector<Artifact> artifacts = Encode(rgb, 15, 9, 1, 24, ArtifactFormat::kMp4);
  ASSERT_EQ(artifacts.size(), 1u);
  ExpectArtifact(artifacts[0], "video/mp4", 16, 10, 1, 24);
}

TEST(EncodeArtifactsTest, RawRgbIsTheInputBytesInOneArtifact) {
  const std::vector<uint8_t> rgb = SmoothFrames(7, 5, 4);
  const std::vector<Artifact> artifacts = Encode(rgb, 7, 5, 4, 16, ArtifactFormat::kRawRgb);
  ASSERT_EQ(artifacts.size(), 1u);
  ExpectArtifact(artifacts[0], "application/octet-stream", 7, 5, 4, 16);
  EXPECT_EQ(artifacts[0].data, std::string(rgb.begin(), rgb.end()));
}

TEST(EncodeArtifactsTest, BadArgumentsAreInvalidArgumentNamingTheArgument) {
  const std::vector<uint8_t> rgb = SmoothFrames(8, 8, 2);
  struct Case {
    const uint8_t* rgb;
    int width, height, frames, fps;
    ArtifactFormat format;
    const char* argument;
  };
  const Case cases[] = {
      {nullptr, 8, 8, 1, 16, ArtifactFormat::kRawRgb, "rgb"},
      {rgb.data(), -8, 8, 1, 16, ArtifactFormat::kPng, "width"},
      {rgb.data(), 8, 0, 1, 16, ArtifactFormat::kAuto, "height"},
      {rgb.data(), 8, 8, 0, 16, ArtifactFormat::kRawRgb, "frames"},
      {rgb.data(), 8, 8, 1, -1, ArtifactFormat::kPng, "fps"},
      {rgb.data(), 8, 8, 2, 0, ArtifactFormat::kAuto, "fps"},  // several frames: MP4
      {rgb.data(), 8, 8, 1, 0, ArtifactFormat::kMp4, "fps"},
  };
  for (const Case& c : cases) {
    EXPECT_TRUE(testing::IsInvalidArgumentNaming(
        EncodeArtifacts(c.rgb, c.width, c.height, c.frames, c.fps, c.format).status(), c.argument));
  }
}

TEST(LatentsArtifactTest, HoldsTheFloatsLittleEndianWithShapeAndGridSize) {
  const std::vector<float> latents = {1.0f, -2.5f, 0.0f, 3.25f, 4.0f, 5.0f};
  const Artifact a = LatentsArtifact(latents, {1, 2, 1, 3}, 16);
  EXPECT_EQ(a.mime_type, "application/octet-stream");
  ASSERT_EQ(a.data.size(), latents.size() * sizeof(float));
  EXPECT_EQ(std::memcmp(a.data.data(), latents.data(), a.data.size()), 0);
  EXPECT_EQ(a.sha256, Sha256Hex(a.data));
  EXPECT_EQ(a.shape, (std::vector<int64_t>{1, 2, 1, 3}));
  EXPECT_EQ(a.dtype, "float32");
  EXPECT_EQ(a.frames, 2);
  EXPECT_EQ(a.height, 1);
  EXPECT_EQ(a.width, 3);
  EXPECT_EQ(a.fps, 16);
}

}  // namespace
}  // namespace rainserve::media
