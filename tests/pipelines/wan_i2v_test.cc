// Image-to-video on the embedded models (CPU): Wan2.1-style I2V
// (models/i2v-tiny: CLIP image attention, mask + image latents concatenated)
// and Wan2.2 TI2V image mode (models/ti2v-tiny: the image is latent frame 0,
// its timestep 0), with the conditioning built as the reference builds it.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "common/files.h"
#include "pipelines/wan/wan_config.h"
#include "pipelines/wan/wan_image_conditioning.h"
#include "pipelines/wan/wan_transformer.h"
#include "pipelines/wan/wan_pipeline.h"
#include "pipelines/wan/wan_vae.h"
#include "tests/test_files.h"

namespace rainserve {
namespace {

std::string Model(const std::string& name) { return testing::SourceDir() + "/models/" + name; }

// A deterministic w x h RGB image: gradients plus a checker.
InputImage TestImage(int64_t w, int64_t h, int seed = 0) {
  InputImage img;
  img.width = w;
  img.height = h;
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) {
      img.rgb.push_back(static_cast<uint8_t>((x * 255) / w));
      img.rgb.push_back(static_cast<uint8_t>((y * 255) / h));
      img.rgb.push_back(static_cast<uint8_t>(((x / 4 + y / 4 + seed) % 2) * 200));
    }
  }
  return img;
}

std::unique_ptr<Pipeline> Load(const std::string& name) {
  ModelOptions e;
  e.name = name;
  e.path = Model(name);
  e.threads = 2;
  e.limits.max_prompt_tokens = 32;
  auto p = LoadWanPipeline(e);
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  return p.ok() ? std::move(p).value() : nullptr;
}

GenerationRequest Small(int64_t w, int64_t h) {
  GenerationRequest r;
  r.prompt = "a kite above the dunes";
  r.negative_prompt = "blurry";
  r.seed = 3;
  r.steps = 3;
  r.guidance_scale = 5.0;
  r.width = w;
  r.height = h;
  r.num_frames = 5;
  r.decode_frames = false;
  return r;
}

at::Tensor LatentsOf(const GenerationOutput& out) {
  return at::from_blob(const_cast<float*>(out.latents.data()), out.latent_shape, at::kFloat)
      .clone();
}

StatusOr<GenerationOutput> Generate(Pipeline& p, const GenerationRequest& r) {
  CancelToken cancel;
  return p.Generate(r, nullptr, cancel);
}

TEST(WanImageConditioningTest, VideoFrameIsTheResizedImageInMinusOneToOne) {
  InputImage white;
  white.width = 7;
  white.height = 5;
  white.rgb.assign(7 * 5 * 3, 255);
  auto frame = WanVideoFrame(white, 32, 16, at::kCPU);
  ASSERT_TRUE(frame.ok()) << frame.status().ToString();
  EXPECT_EQ(frame->sizes(), (std::vector<int64_t>{1, 3, 1, 16, 32}));
  EXPECT_TRUE(at::allclose(*frame, at::ones_like(*frame)));
  white.rgb.assign(7 * 5 * 3, 0);
  EXPECT_TRUE(at::allclose(*WanVideoFrame(white, 32, 16, at::kCPU), -at::ones({1, 3, 1, 16, 32})));
}

TEST(WanImageConditioningTest, ConcatConditionIsTheMaskThenTheEncodedImageVideo) {
  auto vae = WanVAE::Load(Model("i2v-tiny") + "/vae", at::kFloat, at::kCPU);
  ASSERT_TRUE(vae.ok()) << vae.status().ToString();
  const InputImage image = TestImage(40, 24);
  auto c = WanImageConditioning::Prepare(WanImageMode::kConcat, image, 32, 16, 9, **vae,
                                         nullptr, nullptr);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  const at::Tensor latents = at::randn({1, 16, 3, 2, 4});
  const at::Tensor x = c->ModelInput(latents, 2, at::kFloat);
  ASSERT_EQ(x.sizes(), (std::vector<int64_t>{2, 36, 3, 2, 4}));
  EXPECT_TRUE(at::equal(x[1].narrow(0, 0, 16), latents[0]));
  // Mask: 4 channels, 1 on latent frame 0 only.
  const at::Tensor mask = x[0].narrow(0, 16, 4);
  EXPECT_TRUE(at::equal(mask.select(1, 0), at::ones({4, 2, 4})));
  EXPECT_TRUE(at::equal(mask.narrow(1, 1, 2), at::zeros({4, 2, 2, 4})));
  // The image's latents: the image followed by 8 black frames, encoded.
  at::Tensor video = at::zeros({1, 3, 9, 16, 32});
  video.narrow(2, 0, 1).copy_(*WanVideoFrame(image, 32, 16, at::kCPU));
  const at::Tensor expected = *(*vae)->Encode(video);
  EXPECT_TRUE(at::equal(x[0].narrow(0, 20, 16), expected[0]));
  EXPECT_EQ(c->Timesteps(500.0, 2, 3, at::kCPU).sizes(), (std::vector<int64_t>{2}));
  EXPECT_FALSE(c->ImageEmbeds(2).defined());
}

TEST(WanImageConditioningTest, FirstFrameModeFixesFrameZeroAndItsTimestep) {
  auto vae = WanVAE::Load(Model("ti2v-tiny") + "/vae", at::kFloat, at::kCPU);
  ASSERT_TRUE(vae.ok()) << vae.status().ToString();
  const InputImage image = TestImage(64, 32);
  auto c = WanImageConditioning::Prepare(WanImageMode::kFirstFrame, image, 64, 32, 9, **vae,
                                         nullptr, nullptr);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  const at::Tensor first = *(*vae)->Encode(*WanVideoFrame(image, 64, 32, at::kCPU));
  const at::Tensor latents = at::randn({1, 48, 3, 2, 4});
  const at::Tensor x = c->ModelInput(latents, 1, at::kFloat);
  EXPECT_TRUE(at::equal(x.narrow(2, 0, 1), first));
  EXPECT_TRUE(at::equal(x.narrow(2, 1, 2), latents.narrow(2, 1, 2)));
  EXPECT_TRUE(at::equal(c->Finish(latents), x));
  const at::Tensor t = c->Timesteps(700.0, 2, 3, at::kCPU);
  EXPECT_TRUE(at::equal(t, at::tensor({0.0f, 700.0f, 700.0f, 0.0f, 700.0f, 700.0f}).view({2, 3})));
}

TEST(WanI2VPipelineTest, TasksFollowTheCheckpoint) {
  auto i2v = Load("i2v-tiny");
  auto ti2v = Load("ti2v-tiny");
  ASSERT_NE(i2v, nullptr);
  ASSERT_NE(ti2v, nullptr);
  EXPECT_EQ(i2v->Describe().tasks, (std::vector<Task>{Task::kImageToVideo}));
  EXPECT_EQ(ti2v->Describe().tasks, (std::vector<Task>{Task::kTextToVideo, Task::kTextToImage,
                                                        Task::kTextImageToVideo}));
  EXPECT_EQ(ti2v->Describe().limits.size_multiple, 32);  // VAE 16x, patch 2
  EXPECT_EQ(ti2v->Describe().defaults.num_frames, 121);  // the published defaults
  EXPECT_EQ(ti2v->Describe().defaults.fps, 24);
  EXPECT_EQ(i2v->Describe().defaults.sparse.sink_frames, 1);  // the image frame is the sink
  // An i2v-only model needs an image; a text model refuses one.
  auto no_image = Generate(*i2v, Small(32, 32));
  ASSERT_FALSE(no_image.ok());
  EXPECT_EQ(no_image.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(no_image.status().message().find("image"), std::string::npos);
  auto t2v = Load("wan22-tiny");
  ASSERT_NE(t2v, nullptr);
  GenerationRequest r = Small(32, 32);
  r.image = TestImage(32, 32);
  auto refused = Generate(*t2v, r);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("image"), std::string::npos);
}

TEST(WanI2VPipelineTest, ImageToVideoDependsOnTheImageAndIsDeterministic) {
  auto p = Load("i2v-tiny");
  ASSERT_NE(p, nullptr);
  GenerationRequest r = Small(32, 32);
  r.image = TestImage(48, 40);
  auto a = Generate(*p, r);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->latent_shape, (std::vector<int64_t>{16, 2, 4, 4}));
  EXPECT_GT(a->image_encode_seconds, 0.0);
  auto again = Generate(*p, r);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(at::equal(LatentsOf(*a), LatentsOf(*again)));
  r.image = TestImage(48, 40, /*seed=*/1);
  auto other = Generate(*p, r);
  ASSERT_TRUE(other.ok());
  EXPECT_FALSE(at::equal(LatentsOf(*a), LatentsOf(*other)));
  r.decode_frames = true;
  auto frames = Generate(*p, r);
  ASSERT_TRUE(frames.ok()) << frames.status().ToString();
  EXPECT_EQ(frames->rgb.size(), size_t{5 * 32 * 32 * 3});
}

TEST(WanI2VPipelineTest, TextImageToVideoKeepsTheImageAsLatentFrameZero) {
  auto p = Load("ti2v-tiny");
  ASSERT_NE(p, nullptr);
  auto vae = WanVAE::Load(Model("ti2v-tiny") + "/vae", at::kFloat, at::kCPU);
  ASSERT_TRUE(vae.ok());
  GenerationRequest r = Small(64, 32);
  r.image = TestImage(64, 32);
  auto out = Generate(*p, r);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  const at::Tensor latents = LatentsOf(*out);  // [48, 2, 2, 4]
  ASSERT_EQ(latents.sizes(), (std::vector<int64_t>{48, 2, 2, 4}));
  const at::Tensor first = *(*vae)->Encode(*WanVideoFrame(r.image, 64, 32, at::kCPU));
  EXPECT_TRUE(at::equal(latents.narrow(1, 0, 1), first[0]));
  // The text-to-video mode of the same model denoises frame 0 too.
  r.image = InputImage();
  auto t2v = Generate(*p, r);
  ASSERT_TRUE(t2v.ok()) << t2v.status().ToString();
  EXPECT_FALSE(at::equal(LatentsOf(*t2v).narrow(1, 0, 1), first[0]));
}

// Wan2.2-I2V-A14B's layout: WanImageToVideoPipeline with two experts of 36
// input channels and no CLIP, built from wan22-tiny's components.
std::string MakeI2V22Folder() {
  namespace fs = std::filesystem;
  const std::string dir = testing::MakeTempDir("i2v22");
  fs::copy(Model("wan22-tiny"), dir, fs::copy_options::recursive);
  std::string text;
  EXPECT_TRUE(ReadFile(dir + "/transformer/config.json", &text).ok());
  auto config = ParseWanTransformerConfig(text, "config.json");
  EXPECT_TRUE(config.ok());
  config->in_channels = 36;
  for (const char* name : {"transformer", "transformer_2"}) {
    fs::remove_all(dir + "/" + name);
    const uint64_t seed = std::string(name) == "transformer_2" ? 9 : 8;
    auto model = WanTransformer::Random(*config, at::kFloat, at::kCPU, seed);
    EXPECT_TRUE(model->Save(dir + "/" + name, int64_t{1} << 40).ok());
  }
  std::ofstream(dir + "/model_index.json", std::ios::trunc) << R"({
    "_class_name": "WanImageToVideoPipeline", "boundary_ratio": 0.9,
    "image_encoder": [null, null], "image_processor": [null, null],
    "transformer": ["diffusers", "WanTransformer3DModel"],
    "transformer_2": ["diffusers", "WanTransformer3DModel"]})";
  return dir;
}

TEST(WanI2VPipelineTest, TwoExpertImageToVideoWithoutClipSwitchesAtItsBoundary) {
  const std::string dir = MakeI2V22Folder();
  ModelOptions e;
  e.name = "i2v22";
  e.path = dir;
  e.threads = 2;
  e.limits.max_prompt_tokens = 32;
  auto p = LoadWanPipeline(e);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ((*p)->Describe().tasks, (std::vector<Task>{Task::kImageToVideo}));
  EXPECT_EQ((*p)->Describe().experts, 2);
  EXPECT_DOUBLE_EQ((*p)->Describe().boundary_timestep, 900.0);
  GenerationRequest r = Small(32, 32);
  r.steps = 4;
  r.guidance_scale_2 = 2.0;
  r.image = TestImage(40, 40);
  auto a = Generate(**p, r);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_EQ(a->steps.size(), 4u);
  EXPECT_EQ(a->steps.front().expert, 0);
  EXPECT_EQ(a->steps.back().expert, 1);
  r.image = TestImage(40, 40, /*seed=*/1);
  auto b = Generate(**p, r);
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE(at::equal(LatentsOf(*a), LatentsOf(*b)));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace rainserve
