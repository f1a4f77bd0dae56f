// End to end with the example configs of the embedded Wan2.2 and
// image-to-video models (random weights, CPU): each configs/<model>.yaml is
// read with the server's own loader (so the shipped files are what is
// tested), served in-process by ServerApp on 127.0.0.1:0, and driven over
// loopback gRPC. wan22-tiny: two experts switching at timestep 875 and
// guidance_scale_2; ti2v-tiny: text and text+image requests; i2v-tiny: a PNG
// in and an MP4 out, requests without an image or with a corrupt one, and
// sizing from max_area. Videos are decoded with FFmpeg (tests/media/test_frames.cc).
//
//   ctest --test-dir build -R e2e_models_test --output-on-failure
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "media/png_encoder.h"
#include "media/sha256.h"
#include "pipelines/core/pipeline.h"
#include "rainserve/v1/generation.grpc.pb.h"
#include "rainserve/v1/models.grpc.pb.h"
#include "server/config.h"
#include "server/server_app.h"
#include "tests/media/test_frames.h"
#include "tests/server/e2e_client.h"
#include "tests/test_files.h"

namespace rainserve {
namespace {

using media::testing::DecodeMp4;
using media::testing::DecodedVideo;
using testing::Client;
using testing::Generated;
using testing::SharedServerTest;
using testing::Summarize;

constexpr char kWan22[] = "wan22-tiny";
constexpr char kTi2v[] = "ti2v-tiny";
constexpr char kI2v[] = "i2v-tiny";

// configs/<kName>.yaml as the server loads it, on free loopback ports; the
// models are served exactly as the file says.
template <const char* kName>
std::unique_ptr<ServerApp> StartExample() {
  StatusOr<ServerConfig> config =
      LoadServerConfig(testing::SourceDir() + "/configs/" + kName + ".yaml");
  if (!config.ok()) {
    ADD_FAILURE() << "configs/" << kName << ".yaml: " << config.status().ToString();
    return nullptr;
  }
  config->server.listen_address = "127.0.0.1:0";
  config->server.metrics_address = "127.0.0.1:0";
  return testing::StartApp(*config);
}

// [height, width, 3] gradients, encoded with the server's PNG encoder.
std::string GradientPng(int width, int height) {
  std::vector<uint8_t> rgb(static_cast<size_t>(width) * height * 3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      uint8_t* p = &rgb[(static_cast<size_t>(y) * width + x) * 3];
      p[0] = static_cast<uint8_t>(255 * x / width);
      p[1] = static_cast<uint8_t>(255 * y / height);
      p[2] = static_cast<uint8_t>(128 + x - y);
    }
  }
  StatusOr<std::string> png = media::EncodePng(rgb.data(), width, height);
  EXPECT_TRUE(png.ok()) << png.status().ToString();
  return png.ok() ? *png : "";
}

v1::GenerateRequest Request(const std::string& model, uint32_t width, uint32_t height,
                            uint32_t frames, uint32_t steps) {
  v1::GenerateRequest r;
  r.set_model(model);
  r.set_prompt("a lighthouse in a storm");
  r.set_width(width);
  r.set_height(height);
  r.set_num_frames(frames);
  r.set_steps(steps);
  r.set_seed(7);
  return r;
}

// The one MP4 of a successful stream, decoded, with `frames` frames of
// width x height (the header's and the decoded stream's).
void ExpectOneMp4(const Generated& g, uint32_t width, uint32_t height, uint32_t frames) {
  ASSERT_TRUE(g.status.ok()) << g.status.error_message();
  ASSERT_EQ(g.artifacts.size(), 1u);
  const v1::ArtifactInfo& info = g.artifacts[0].info;
  EXPECT_EQ(info.mime_type(), "video/mp4");
  EXPECT_EQ(info.width(), width);
  EXPECT_EQ(info.height(), height);
  EXPECT_EQ(info.frames(), frames);
  StatusOr<DecodedVideo> video = DecodeMp4(g.artifacts[0].data);
  ASSERT_TRUE(video.ok()) << video.status().ToString();
  EXPECT_EQ(video->width, static_cast<int>(width));
  EXPECT_EQ(video->height, static_cast<int>(height));
  EXPECT_EQ(video->rgb_frames.size(), frames);
}

void ExpectInvalidArgumentNaming(const Generated& g, const std::string& field) {
  EXPECT_EQ(g.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << g.status.error_message();
  EXPECT_NE(g.status.error_message().find(field), std::string::npos) << g.status.error_message();
  EXPECT_TRUE(g.artifacts.empty());
}

std::vector<std::string> Tasks(const v1::ModelInfo& info) {
  return {info.tasks().begin(), info.tasks().end()};
}

double Seconds(const google::protobuf::Duration& d) { return d.seconds() + d.nanos() * 1e-9; }

// A request that sets only the prompt (and `image` when given) gets the
// example config's defaults: 128x128, 9 frames, 8 steps.
Generated DefaultRequest(Client* client, const std::string& model, const std::string& image) {
  v1::GenerateRequest r;
  r.set_model(model);
  r.set_prompt("a lighthouse in a storm");
  r.set_image(image);
  Generated g = Summarize(client->Generate(r));
  ExpectOneMp4(g, 128, 128, 9);
  EXPECT_EQ(g.result.applied().steps(), 8u);
  EXPECT_EQ(g.result.steps_size(), 8);
  return g;
}

// One server per example config, shared by the tests of its suite.
using Wan22TinyConfigTest = SharedServerTest<StartExample<kWan22>>;
using Ti2vTinyConfigTest = SharedServerTest<StartExample<kTi2v>>;
using I2vTinyConfigTest = SharedServerTest<StartExample<kI2v>>;

// ---------------------------------------------------------------- wan22-tiny

TEST_F(Wan22TinyConfigTest, DescribeShowsTwoExpertsSwitchingAtTimestep875) {
  const v1::ModelInfo info = client_->Describe(kWan22);
  EXPECT_EQ(info.state(), v1::MODEL_STATE_READY) << info.state_reason();
  EXPECT_EQ(info.experts(), 2u);
  EXPECT_DOUBLE_EQ(info.boundary_timestep(), 875.0);  // boundary_ratio 0.875 x 1000
  EXPECT_EQ(Tasks(info), (std::vector<std::string>{"t2v", "t2i"}));
  // The file's defaults.
  ASSERT_TRUE(info.defaults().has_guidance_scale_2());
  EXPECT_DOUBLE_EQ(info.defaults().guidance_scale_2(), 3.0);
  EXPECT_EQ(info.defaults().num_frames(), 9u);
}

TEST_F(Wan22TinyConfigTest, VideoRunsTheHighNoiseExpertThenTheLowNoiseOne) {
  v1::GenerateRequest r = Request(kWan22, 64, 48, 9, 4);
  r.set_guidance_scale_2(2.5);
  const Generated g = Summarize(client_->Generate(r));
  ExpectOneMp4(g, 64, 48, 9);
  ASSERT_TRUE(g.resolved.has_guidance_scale_2());
  EXPECT_DOUBLE_EQ(g.resolved.guidance_scale_2(), 2.5);
  EXPECT_DOUBLE_EQ(g.result.applied().guidance_scale_2(), 2.5);
  // Flow shift 3, 4 UniPC steps: timesteps ~999.7, 899.6, 749.6, 499.7, so
  // the first two are at or above 875 (expert 0) and the last two below.
  std::vector<uint32_t> experts;
  for (const v1::StepStats& s : g.result.steps()) experts.push_back(s.expert());
  EXPECT_EQ(experts, (std::vector<uint32_t>{0, 0, 1, 1}));
}

TEST_F(Wan22TinyConfigTest, UnsetFieldsGetTheConfigsDefaultsWithItsGuidanceScale2) {
  const Generated g = DefaultRequest(client_.get(), kWan22, "");
  EXPECT_DOUBLE_EQ(g.resolved.guidance_scale(), 4.0);
  EXPECT_DOUBLE_EQ(g.resolved.guidance_scale_2(), 3.0);
  EXPECT_EQ(g.result.steps(0).expert(), 0u);
  EXPECT_EQ(g.result.steps(7).expert(), 1u);
}

// ---------------------------------------------------------------- ti2v-tiny

TEST_F(Ti2vTinyConfigTest, TextRequestReturnsAnMp4OfTheRequestedSize) {
  const v1::ModelInfo info = client_->Describe(kTi2v);
  EXPECT_EQ(info.state(), v1::MODEL_STATE_READY) << info.state_reason();
  EXPECT_EQ(Tasks(info), (std::vector<std::string>{"t2v", "t2i", "ti2v"}));
  EXPECT_EQ(info.limits().size_multiple(), 32u);  // Wan2.2 VAE: 16x, patch 2

  const Generated g = Summarize(client_->Generate(Request(kTi2v, 96, 64, 9, 2)));
  ExpectOneMp4(g, 96, 64, 9);
  EXPECT_FALSE(g.resolved.has_input_image());
  EXPECT_EQ(Seconds(g.result.timings().image_encode()), 0.0);
}

TEST_F(Ti2vTinyConfigTest, ImageRequestReturnsAnMp4OfTheRequestedSize) {
  const std::string png = GradientPng(80, 60);
  v1::GenerateRequest r = Request(kTi2v, 96, 64, 9, 2);
  r.set_image(png);
  const Generated g = Summarize(client_->Generate(r));
  ExpectOneMp4(g, 96, 64, 9);
  EXPECT_EQ(g.resolved.image(), "");  // never echoed
  EXPECT_EQ(g.resolved.input_image().mime_type(), "image/png");
  EXPECT_EQ(g.resolved.input_image().width(), 80u);
  EXPECT_EQ(g.resolved.input_image().height(), 60u);
  EXPECT_EQ(g.resolved.input_image().sha256(), media::Sha256Hex(png));
  EXPECT_GT(Seconds(g.result.timings().image_encode()), 0.0);
}

TEST_F(Ti2vTinyConfigTest, UnsetFieldsGetTheConfigsDefaults) {
  DefaultRequest(client_.get(), kTi2v, "");
}

// ---------------------------------------------------------------- i2v-tiny

TEST_F(I2vTinyConfigTest, PngInMp4OutWithTheRequestedFramesAndSize) {
  const v1::ModelInfo info = client_->Describe(kI2v);
  EXPECT_EQ(info.state(), v1::MODEL_STATE_READY) << info.state_reason();
  EXPECT_EQ(Tasks(info), (std::vector<std::string>{"i2v"}));
  EXPECT_EQ(info.defaults().sparse_attention().sink_frames(), 1u);

  v1::GenerateRequest r = Request(kI2v, 64, 64, 9, 2);
  r.set_image(GradientPng(64, 64));
  const Generated g = Summarize(client_->Generate(r));
  ExpectOneMp4(g, 64, 64, 9);
  EXPECT_EQ(g.resolved.input_image().width(), 64u);
  EXPECT_GT(Seconds(g.result.timings().image_encode()), 0.0);
}

TEST_F(I2vTinyConfigTest, ImageRequestWithWidthAndHeightUnsetGetsTheConfigsDefaultArea) {
  // A square image at max_area 128 x 128 (the defaults) is 128x128.
  const Generated g = DefaultRequest(client_.get(), kI2v, GradientPng(64, 64));
  EXPECT_EQ(g.resolved.max_area(), 128u * 128u);
}

TEST_F(I2vTinyConfigTest, RequestWithoutAnImageIsInvalidArgumentNamingImage) {
  ExpectInvalidArgumentNaming(Summarize(client_->Generate(Request(kI2v, 64, 64, 9, 2))), "image");
}

TEST_F(I2vTinyConfigTest, CorruptPngIsInvalidArgumentNamingImageAndTheNextRequestSucceeds) {
  const std::string png = GradientPng(64, 64);
  std::string corrupt = png;
  // The signature and IHDR (33 bytes) stay; every byte from 40 up to IEND
  // (the last 12) is inverted: chunk types, data and CRCs.
  for (size_t i = 40; i < corrupt.size() - 12; ++i) corrupt[i] = static_cast<char>(~corrupt[i]);
  v1::GenerateRequest bad = Request(kI2v, 64, 64, 9, 2);
  bad.set_image(corrupt);
  ExpectInvalidArgumentNaming(Summarize(client_->Generate(bad)), "image");

  v1::GenerateRequest truncated = bad;
  truncated.set_image(png.substr(0, png.size() / 2));
  ExpectInvalidArgumentNaming(Summarize(client_->Generate(truncated)), "image");

  v1::GenerateRequest good = bad;
  good.set_image(png);
  ExpectOneMp4(Summarize(client_->Generate(good)), 64, 64, 9);
}

TEST_F(I2vTinyConfigTest, MaxAreaAloneSizesTheVideoFromTheImagesAspectRatio) {
  // 96x48 (aspect 1/2) at max_area 4096: height floor(round(sqrt(2048)) / 16)
  // * 16 = 32, width floor(round(sqrt(8192)) / 16) * 16 = 80 (not the
  // config's default 128x128).
  v1::GenerateRequest r = Request(kI2v, 0, 0, 9, 2);
  r.clear_width();
  r.clear_height();
  r.set_max_area(4096);
  r.set_image(GradientPng(96, 48));
  const ImageSize expected = SizeForImage(96, 48, 4096, 16);
  ASSERT_EQ(expected.width, 80);
  ASSERT_EQ(expected.height, 32);
  const Generated g = Summarize(client_->Generate(r));
  ExpectOneMp4(g, 80, 32, 9);
  EXPECT_EQ(g.resolved.width(), 80u);
  EXPECT_EQ(g.resolved.height(), 32u);
  EXPECT_EQ(g.resolved.max_area(), 4096u);
}

}  // namespace
}  // namespace rainserve
