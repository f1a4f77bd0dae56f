// Wan2.2 two-expert checkpoints: model_index.json, the switch at the
// boundary, each expert's guidance, and the step cache across the switch, on
// the embedded models/wan22-tiny (CPU).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <ATen/ATen.h>

#include "pipelines/core/schedulers.h"
#include "pipelines/wan/wan_experts.h"
#include "pipelines/wan/wan_model_index.h"
#include "pipelines/wan/wan_pipeline.h"
#include "tests/test_files.h"

namespace rainserve {
namespace {

namespace fs = std::filesystem;

TEST(WanModelIndexTest, ReadsTheWan22Switches) {
  auto index = ParseWanModelIndex(R"({"_class_name": "WanPipeline", "boundary_ratio": 0.875,
      "transformer": ["diffusers", "WanTransformer3DModel"],
      "transformer_2": ["diffusers", "WanTransformer3DModel"]})", "mi");
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  EXPECT_TRUE(index->has_transformer_2);
  EXPECT_DOUBLE_EQ(*index->boundary_ratio, 0.875);
  EXPECT_FALSE(index->expand_timesteps);

  index = ParseWanModelIndex(R"({"_class_name": "WanPipeline", "expand_timesteps": true,
      "boundary_ratio": null, "transformer": ["diffusers", "WanTransformer3DModel"],
      "transformer_2": [null, null]})", "mi");
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  EXPECT_FALSE(index->has_transformer_2);
  EXPECT_FALSE(index->boundary_ratio.has_value());
  EXPECT_TRUE(index->expand_timesteps);

  index = ParseWanModelIndex(R"({"_class_name": "WanImageToVideoPipeline",
      "transformer": ["diffusers", "WanTransformer3DModel"],
      "image_encoder": ["transformers", "CLIPVisionModel"],
      "image_processor": ["transformers", "CLIPImageProcessor"]})", "mi");
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  EXPECT_TRUE(index->image_to_video());
  EXPECT_TRUE(index->has_image_encoder);
}

TEST(WanModelIndexTest, InconsistentIndexesNameTheKey) {
  const std::string t = R"("transformer": ["diffusers", "WanTransformer3DModel"])";
  struct Case {
    std::string json, key;
  } cases[] = {
      {"{" + t + R"(, "transformer_2": ["diffusers", "WanTransformer3DModel"]})", "boundary_ratio"},
      {"{" + t + R"(, "boundary_ratio": 1.5})", "boundary_ratio"},
      {"{" + t + R"(, "boundary_ratio": "high"})", "boundary_ratio"},
      {"{" + t + R"(, "expand_timesteps": 1})", "expand_timesteps"},
      {R"({"transformer": [null, null]})", "transformer"},
      {R"({"_class_name": "WanImageToVideoPipeline", )" + t +
           R"(, "image_encoder": ["transformers", "CLIPVisionModel"]})",
       "image_processor"},
  };
  for (const Case& c : cases) {
    auto index = ParseWanModelIndex(c.json, "mi.json");
    ASSERT_FALSE(index.ok()) << c.json;
    EXPECT_EQ(index.status().code(), StatusCode::kInvalidArgument) << c.json;
    EXPECT_NE(index.status().message().find("mi.json: " + c.key), std::string::npos)
        << index.status().message();
  }
  auto vace = ParseWanModelIndex(R"({"_class_name": "WanVACEPipeline", )" + t + "}", "mi");
  EXPECT_EQ(vace.status().code(), StatusCode::kUnimplemented);
}

ModelOptions Entry(const std::string& path) {
  ModelOptions e;
  e.name = "wan22-tiny";
  e.path = path;
  e.threads = 2;
  e.limits.max_prompt_tokens = 32;
  return e;
}

std::unique_ptr<Pipeline> LoadOrDie(const ModelOptions& entry) {
  auto p = LoadWanPipeline(entry);
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  return p.ok() ? std::move(p).value() : nullptr;
}

GenerationRequest Small() {
  GenerationRequest r;
  r.prompt = "a lighthouse at dusk";
  r.negative_prompt = "blurry";
  r.seed = 7;
  r.steps = 6;
  r.guidance_scale = 4.0;
  r.guidance_scale_2 = 3.0;
  r.width = 32;
  r.height = 32;
  r.num_frames = 5;
  r.decode_frames = false;
  return r;
}

at::Tensor Latents(Pipeline& p, const GenerationRequest& r, GenerationOutput* out = nullptr) {
  CancelToken cancel;
  auto o = p.Generate(r, nullptr, cancel);
  EXPECT_TRUE(o.ok()) << o.status().ToString();
  if (!o.ok()) return at::Tensor();
  if (out != nullptr) *out = *o;
  return at::from_blob(o->latents.data(), {static_cast<int64_t>(o->latents.size())}, at::kFloat)
      .clone();
}

// A copy of wan22-tiny whose transformer_2 holds `expert_2`'s files.
std::string CopyWithSecondExpert(const std::string& expert_2) {
  const std::string src = testing::SourceDir() + "/models/wan22-tiny";
  const std::string dir = testing::MakeTempDir("wan22-experts");
  fs::copy(src, dir, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  fs::remove_all(dir + "/transformer_2");
  fs::copy(src + "/" + expert_2, dir + "/transformer_2", fs::copy_options::recursive);
  return dir;
}

TEST(WanExpertsTest, DescribesTwoExpertsAndTheBoundary) {
  auto p = LoadOrDie(Entry(testing::SourceDir() + "/models/wan22-tiny"));
  ASSERT_NE(p, nullptr);
  const PipelineDescription d = p->Describe();
  EXPECT_EQ(d.experts, 2);
  EXPECT_DOUBLE_EQ(d.boundary_timestep, 875.0);  // 0.875 x 1000
}

TEST(WanExpertsTest, StepsAtOrAboveTheBoundaryRunTheHighNoiseExpert) {
  auto p = LoadOrDie(Entry(testing::SourceDir() + "/models/wan22-tiny"));
  ASSERT_NE(p, nullptr);
  const GenerationRequest r = Small();
  GenerationOutput out;
  Latents(*p, r, &out);
  const std::string path = testing::SourceDir() + "/models/wan22-tiny/scheduler/scheduler_config.json";
  auto config = ParseSchedulerConfig(testing::ReadFileBytes(path), path);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  auto scheduler = MakeScheduler("unipc", *config);
  ASSERT_TRUE(scheduler.ok());
  ASSERT_TRUE((*scheduler)->SetTimesteps(static_cast<int>(r.steps), r.flow_shift).ok());
  ASSERT_EQ(out.steps.size(), 6u);
  int switches = 0;
  for (size_t i = 0; i < out.steps.size(); ++i) {
    const float t = (*scheduler)->timesteps()[i];
    EXPECT_EQ(out.steps[i].expert, t >= 875.0f ? 0 : 1) << "step " << i << " t " << t;
    if (i > 0 && out.steps[i].expert != out.steps[i - 1].expert) ++switches;
  }
  EXPECT_EQ(switches, 1);  // both experts ran, high-noise first
  EXPECT_EQ(out.steps.front().expert, 0);
  EXPECT_EQ(out.expert_switch_seconds, 0.0);  // both resident
}

TEST(WanExpertsTest, TheLowNoiseStepsRunTheSecondExpertsWeightsWithItsGuidance) {
  // transformer_2 = transformer: the switch changes nothing while both
  // guidance scales agree, so the result equals the one-expert model.
  const std::string same = CopyWithSecondExpert("transformer");
  auto twin = LoadOrDie(Entry(same));
  ASSERT_NE(twin, nullptr);
  const std::string single = testing::MakeTempDir("wan22-single");
  fs::copy(same, single, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  fs::remove_all(single + "/transformer_2");
  std::ofstream(single + "/model_index.json", std::ios::trunc)
      << R"({"_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"]})";
  auto one = LoadOrDie(Entry(single));
  ASSERT_NE(one, nullptr);
  EXPECT_EQ(one->Describe().experts, 1);

  GenerationRequest r = Small();
  r.guidance_scale_2 = r.guidance_scale;
  GenerationRequest r1 = r;
  r1.guidance_scale_2.reset();
  const at::Tensor a = Latents(*twin, r), b = Latents(*one, r1);
  EXPECT_TRUE(at::equal(a, b));
  // The low-noise steps use guidance_scale_2 ...
  r.guidance_scale_2 = 1.5;
  EXPECT_FALSE(at::equal(Latents(*twin, r), a));
  // ... and the published second expert's own weights.
  auto distinct = LoadOrDie(Entry(testing::SourceDir() + "/models/wan22-tiny"));
  r.guidance_scale_2 = r.guidance_scale;
  EXPECT_FALSE(at::equal(Latents(*distinct, r), a));
  // With one step only the high-noise expert runs: guidance_scale_2 is inert.
  r.steps = 1;
  const at::Tensor first = Latents(*distinct, r);
  r.guidance_scale_2 = 9.0;
  EXPECT_TRUE(at::equal(Latents(*distinct, r), first));
  fs::remove_all(same);
  fs::remove_all(single);
}

TEST(WanExpertsTest, TheStepCacheComputesTheFirstStepOfTheNewExpert) {
  auto p = LoadOrDie(Entry(testing::SourceDir() + "/models/wan22-tiny"));
  ASSERT_NE(p, nullptr);
  GenerationRequest r = Small();
  r.steps = 8;
  r.step_cache.mode = StepCacheMode::kFirstBlock;
  r.step_cache.threshold = 10.0;  // skip whenever allowed
  r.step_cache.warmup_steps = 1;
  GenerationOutput out;
  Latents(*p, r, &out);
  ASSERT_EQ(out.steps.size(), 8u);
  size_t switch_step = 0;
  for (size_t i = 1; i < out.steps.size(); ++i) {
    if (out.steps[i].expert != out.steps[i - 1].expert) switch_step = i;
  }
  ASSERT_GT(switch_step, 1u);
  EXPECT_TRUE(out.steps[switch_step - 1].cache_skipped);  // allowed before the switch
  EXPECT_FALSE(out.steps[switch_step].cache_skipped);     // a new expert computes
  EXPECT_TRUE(out.steps[switch_step + 1].cache_skipped);
}

TEST(WanExpertsTest, ExpertsWithDifferentConfigsAreRefused) {
  const std::string dir = CopyWithSecondExpert("transformer");
  std::string config = testing::ReadFileBytes(dir + "/transformer_2/config.json");
  const auto at = config.find("\"num_layers\": 2");
  ASSERT_NE(at, std::string::npos) << config;
  config.replace(at, 15, "\"num_layers\": 1");
  testing::WriteFileBytes(dir + "/transformer_2/config.json", config);
  auto p = LoadWanPipeline(Entry(dir));
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("transformer_2"), std::string::npos)
      << p.status().message();
  fs::remove_all(dir);
}

TEST(WanExpertsTest, GuidanceScale2IsRefusedByOneExpertModels) {
  ModelOptions e = Entry(testing::SourceDir() + "/models/wan-tiny");
  auto p = LoadOrDie(e);
  ASSERT_NE(p, nullptr);
  GenerationRequest r = Small();
  CancelToken cancel;
  auto out = p->Generate(r, nullptr, cancel);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(out.status().message().find("guidance_scale_2"), std::string::npos);
}

}  // namespace
}  // namespace rainserve

namespace rainserve {
namespace {

// Experts built in memory (benchmarks): the switch rule and residency.
TEST(WanExpertsTest, FromModelsKeepsBothExpertsUsable) {
  WanTransformerConfig c;
  c.num_attention_heads = 2;
  c.attention_head_dim = 32;
  c.text_dim = 32;
  c.freq_dim = 32;
  c.ffn_dim = 64;
  c.num_layers = 1;
  auto high = WanTransformer::Random(c, at::kFloat, at::kCPU, 1);
  auto low = WanTransformer::Random(c, at::kFloat, at::kCPU, 2);
  auto experts = WanExperts::FromModels(std::move(high), std::move(low), 875.0, at::kCPU,
                                        /*offload_idle=*/true);
  ASSERT_TRUE(experts.ok()) << experts.status().ToString();
  EXPECT_EQ((*experts)->count(), 2);
  EXPECT_FALSE((*experts)->offload_idle());  // nothing to offload to on the CPU
  EXPECT_EQ((*experts)->ExpertFor(875.0), 0);
  EXPECT_EQ((*experts)->ExpertFor(874.9), 1);
  double seconds = 0;
  auto second = (*experts)->Resident(1, &seconds);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(*second, &(*experts)->expert(1));
  EXPECT_EQ(seconds, 0.0);
}

}  // namespace
}  // namespace rainserve
