// The Wan pipeline end to end on the embedded wan-tiny checkpoint (CPU):
// determinism, progress, cancellation, validation, sparse steps, images.
#include "pipelines/wan/wan_pipeline.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <thread>

#include <ATen/Parallel.h>

#include "pipelines/core/registry.h"
#include "pipelines/core/torch_device.h"
#include "pipelines/core/torch_status.h"
#include "tests/pipelines/pipeline_runs.h"
#include "tests/test_files.h"

namespace rainserve {
namespace {

ModelOptions TinyEntry() {
  ModelOptions e;
  e.name = "wan-tiny";
  e.path = testing::SourceDir() + "/models/wan-tiny";
  e.device = "cpu";
  e.dtype = "fp32";
  e.threads = 2;
  e.limits.max_prompt_tokens = 64;
  return e;
}

class WanPipelineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto p = LoadWanPipeline(TinyEntry());
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    pipeline_ = std::move(p).value().release();
  }
  static void TearDownTestSuite() {
    delete pipeline_;
    pipeline_ = nullptr;
  }

  // A small video request: 64x64, 5 frames, 2 steps.
  static GenerationRequest Small(uint64_t seed) {
    GenerationRequest r;
    r.prompt = "a red fox runs through fresh snow";
    r.negative_prompt = "blurry";
    r.seed = seed;
    r.steps = 2;
    r.guidance_scale = 5.0;
    r.flow_shift = 3.0;
    r.width = 64;
    r.height = 64;
    r.num_frames = 5;
    return r;
  }

  static GenerationOutput Run(const GenerationRequest& r) {
    CancelToken cancel;
    auto out = pipeline_->Generate(r, nullptr, cancel);
    EXPECT_TRUE(out.ok()) << out.status().ToString();
    return out.ok() ? std::move(out).value() : GenerationOutput{};
  }

  static Pipeline* pipeline_;
};

Pipeline* WanPipelineTest::pipeline_ = nullptr;

TEST_F(WanPipelineTest, DescribesLimitsFromTheCheckpointAndEntry) {
  const PipelineDescription d = pipeline_->Describe();
  EXPECT_EQ(d.name, "wan-tiny");
  EXPECT_EQ(d.pipeline, "wan");
  EXPECT_EQ(d.limits.size_multiple, 16);  // VAE 8x, patch 2
  EXPECT_EQ(d.limits.frame_multiple, 4);  // VAE 4x in time
  EXPECT_EQ(d.limits.max_prompt_tokens, 64);
  EXPECT_EQ(d.defaults.scheduler, "unipc");
  EXPECT_DOUBLE_EQ(d.defaults.flow_shift, 3.0);
}

TEST_F(WanPipelineTest, SameSeedGivesIdenticalFramesOfTheRequestedShape) {
  const GenerationOutput a = Run(Small(7));
  const GenerationOutput b = Run(Small(7));
  ASSERT_EQ(a.num_frames, 5);
  ASSERT_EQ(a.width, 64);
  ASSERT_EQ(a.height, 64);
  ASSERT_EQ(a.rgb.size(), size_t{5 * 64 * 64 * 3});
  EXPECT_EQ(a.rgb, b.rgb);
}

TEST_F(WanPipelineTest, DifferentSeedOrPromptGivesDifferentFrames) {
  const GenerationOutput a = Run(Small(7));
  const GenerationOutput b = Run(Small(8));
  GenerationRequest other = Small(7);
  other.prompt = "a city street at night in the rain";
  const GenerationOutput c = Run(other);
  ASSERT_EQ(a.rgb.size(), b.rgb.size());
  EXPECT_NE(a.rgb, b.rgb);
  EXPECT_NE(a.rgb, c.rgb);
}

TEST_F(WanPipelineTest, ReportsProgressOncePerStepAndStageTimings) {
  GenerationRequest r = Small(1);
  r.steps = 3;
  std::vector<int64_t> steps;
  std::vector<std::string> stages;
  CancelToken cancel;
  auto out = pipeline_->Generate(
      r,
      [&](const ProgressUpdate& u) {
        stages.push_back(u.stage);
        if (u.stage == "denoise") {
          steps.push_back(u.step);
          EXPECT_EQ(u.total_steps, 3);
        }
      },
      cancel);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(stages.front(), "text_encode");
  EXPECT_EQ(stages.back(), "decode");
  ASSERT_EQ(out->steps.size(), 3u);
  EXPECT_GT(out->text_encode_seconds, 0);
  EXPECT_GT(out->denoise_seconds, 0);
  EXPECT_GT(out->decode_seconds, 0);
  EXPECT_GT(out->peak_memory_bytes, 0u);
}

TEST_F(WanPipelineTest, CancellationStopsWithinOneStep) {
  GenerationRequest r = Small(1);
  r.steps = 6;
  const testing::CancelledRun run = testing::GenerateCancellingAt(*pipeline_, r, 2);
  EXPECT_EQ(run.status.code(), StatusCode::kCancelled);
  EXPECT_EQ(run.denoise_updates, 2);
  // The pipeline stays usable.
  EXPECT_EQ(Run(Small(1)).num_frames, 5);
}

TEST_F(WanPipelineTest, TextToImageIsOneFrameWithTheSinkDisabled) {
  GenerationRequest r = Small(3);
  r.num_frames = 1;
  r.sparse.sink_frames = 1;
  const GenerationOutput out = Run(r);
  EXPECT_EQ(out.num_frames, 1);
  EXPECT_EQ(out.rgb.size(), size_t{64 * 64 * 3});
}

TEST_F(WanPipelineTest, SparseStepsFollowTheWarmupAndRealizeSparsity) {
  // 256x256, 5 frames: 2 x 16 x 16 = 512 tokens, 4 key blocks of 128.
  GenerationRequest r = Small(5);
  r.width = 256;
  r.height = 256;
  r.num_frames = 5;
  r.steps = 3;
  r.sparse.sparsity = 0.5;
  r.sparse.sink_frames = 0;
  r.sparse.dense_warmup_steps = 1;
  const GenerationOutput out = Run(r);
  ASSERT_EQ(out.steps.size(), 3u);
  EXPECT_FALSE(out.steps[0].sparse);
  EXPECT_EQ(out.steps[0].realized_sparsity, 0.0);
  EXPECT_TRUE(out.steps[1].sparse);
  EXPECT_TRUE(out.steps[2].sparse);
  EXPECT_NEAR(out.steps[1].realized_sparsity, 0.5, 1e-9);
  EXPECT_NEAR(out.realized_sparsity, 0.5, 1e-9);
  EXPECT_DOUBLE_EQ(out.requested_sparsity, 0.5);

  r.sparse.mode = AttentionMode::kDense;
  const GenerationOutput dense = Run(r);
  for (const StepStat& s : dense.steps) EXPECT_FALSE(s.sparse);
  EXPECT_EQ(dense.realized_sparsity, 0.0);
  EXPECT_NE(dense.rgb, out.rgb);
}

// Mass mode on 4 key blocks of 128 (no sink): the two highest of 4
// probabilities hold at least half the mass, so kept_mass 0.5 keeps 1 or 2
// blocks per row: realized sparsity in [0.5, 0.75] on every sparse step.
TEST_F(WanPipelineTest, MassModeRealizesSparsityBetweenItsBounds) {
  GenerationRequest r = Small(5);
  r.width = 256;
  r.height = 256;
  r.steps = 2;
  r.sparse.mode = AttentionMode::kRainFusionMass;
  r.sparse.kept_mass = 0.5;
  r.sparse.sink_frames = 0;
  const GenerationOutput out = Run(r);
  ASSERT_EQ(out.steps.size(), 2u);
  for (const StepStat& s : out.steps) {
    EXPECT_TRUE(s.sparse);
    EXPECT_GE(s.realized_sparsity, 0.5);
    EXPECT_LE(s.realized_sparsity, 0.75);
  }
  EXPECT_GT(out.realized_sparsity, 0.0);
  EXPECT_LT(out.realized_sparsity, 1.0);
  EXPECT_EQ(out.requested_sparsity, 0.0);  // mass mode has no requested sparsity

  r.sparse.kept_mass = 1.0;  // keeps every block
  const GenerationOutput all = Run(r);
  EXPECT_EQ(all.realized_sparsity, 0.0);
}

TEST_F(WanPipelineTest, MassModeIsValidOnCpuAndCudaAttentionBackends) {
  GenerationRequest r = Small(1);
  r.sparse.mode = AttentionMode::kRainFusionMass;
  PipelineDescription d = pipeline_->Describe();
  EXPECT_TRUE(ValidateGenerationRequest(d, r).ok());
  d.attention_backends = {"cuda"};
  EXPECT_TRUE(ValidateGenerationRequest(d, r).ok());
}

// The quality probe at rate 1 (256x256, 5 frames: 4 key blocks of 128, so
// sparsity 0.8 keeps one block per row): every sparse step reports both
// layers of wan-tiny with cosine < 1 and a kept mass in (0, 1); the dense
// warm-up step and a sparsity-0 request (dense forwards) report nothing.
TEST_F(WanPipelineTest, QualityProbeReportsEverySparseStepAndNoDenseOne) {
  GenerationRequest r = Small(5);
  r.width = 256;
  r.height = 256;
  r.steps = 3;
  r.sparse.sparsity = 0.8;
  r.sparse.sink_frames = 0;
  r.sparse.dense_warmup_steps = 1;
  r.sparse.quality_probe_rate = 1.0;
  const GenerationOutput out = Run(r);
  ASSERT_EQ(out.quality_probes.size(), 4u);  // steps 2 and 3, layers 0 and 1
  for (size_t i = 0; i < out.quality_probes.size(); ++i) {
    const QualityProbeStat& p = out.quality_probes[i];
    EXPECT_EQ(p.step, 2 + static_cast<int64_t>(i) / 2);
    EXPECT_EQ(p.layer, static_cast<int64_t>(i) % 2);
    EXPECT_EQ(p.rows, 2 * 2 * 4 * 16);  // CFG batch x heads x blocks x rows
    EXPECT_LT(p.cosine, 1.0);
    EXPECT_GT(p.cosine, 0.0);
    EXPECT_GT(p.rel_l2, 0.0);
    EXPECT_GT(p.kept_mass, 0.0);
    EXPECT_LT(p.kept_mass, 1.0);
  }
  // The probe only reads: the frames are those of the same request unprobed.
  GenerationRequest off = r;
  off.sparse.quality_probe_rate = 0.0;
  const GenerationOutput unprobed = Run(off);
  EXPECT_TRUE(unprobed.quality_probes.empty());
  EXPECT_EQ(unprobed.rgb, out.rgb);

  r.sparse.sparsity = 0.0;
  EXPECT_TRUE(Run(r).quality_probes.empty());
}

struct InvalidCase {
  const char* field;
  void (*mutate)(GenerationRequest*);
};

// Step caching over 6 steps (CFG batch of 2): a huge threshold skips every
// step after the warm-up except the last; threshold 0 never skips, so its
// frames are those of caching off.
TEST_F(WanPipelineTest, StepCacheSkipsAfterWarmupExceptTheLastStep) {
  for (StepCacheMode mode : {StepCacheMode::kFirstBlock, StepCacheMode::kTeaCache}) {
    SCOPED_TRACE(StepCacheModeName(mode));
    GenerationRequest r = Small(5);
    r.steps = 6;
    const GenerationOutput off = Run(r);
    EXPECT_EQ(off.cache_skipped_steps, 0);

    r.step_cache = {mode, 10.0, 2};
    const GenerationOutput cached = Run(r);
    ASSERT_EQ(cached.steps.size(), 6u);
    const std::vector<bool> expected = {false, false, true, true, true, false};
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_EQ(cached.steps[i].cache_skipped, expected[i]) << "step " << i + 1;
    }
    EXPECT_EQ(cached.cache_skipped_steps, 3);
    EXPECT_NE(cached.rgb, off.rgb);  // the reused residual is not the computed one

    r.step_cache = {mode, 0.0, 0};
    const GenerationOutput zero = Run(r);
    EXPECT_EQ(zero.cache_skipped_steps, 0);
    for (const StepStat& s : zero.steps) EXPECT_FALSE(s.cache_skipped);
    EXPECT_EQ(zero.rgb, off.rgb);
  }
}

// The published 4-step distilled setting (lightx2v Wan2.1/2.2 4-step:
// denoising_step_list [1000, 750, 500, 250], sample_shift 5, no CFG).
GenerationRequest FourStepNoCfg(GenerationRequest r) {
  r.timesteps = {1000, 750, 500, 250};
  r.steps = 4;
  r.flow_shift = 5.0;
  r.scheduler = "euler";
  r.guidance_scale = 1.0;
  return r;
}

TEST_F(WanPipelineTest, FourExplicitStepsWithoutGuidanceRunFourForwardsOfBatchOne) {
  const GenerationRequest r = FourStepNoCfg(Small(8));
  CancelToken cancel;
  int denoise_reports = 0;
  auto out = pipeline_->Generate(r, [&](const ProgressUpdate& u) {
    if (u.stage == "denoise") ++denoise_reports;
  }, cancel);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  // One transformer forward per step, at f_5(t / 1000) * 1000 (Euler).
  ASSERT_EQ(out->steps.size(), 4u);
  EXPECT_EQ(denoise_reports, 4);
  const double expected[] = {1000.0, 937.5, 2500.0 / 3.0, 625.0};
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_NEAR(out->steps[i].timestep, expected[i], 1e-3) << "step " << i + 1;
    EXPECT_EQ(out->steps[i].batch, 1) << "guidance 1 runs no unconditional branch";
  }
  EXPECT_EQ(out->rgb.size(), 5u * 64 * 64 * 3);

  // With guidance the same schedule runs both branches: batch 2 every step.
  GenerationRequest guided = r;
  guided.guidance_scale = 5.0;
  const GenerationOutput cfg = Run(guided);
  ASSERT_EQ(cfg.steps.size(), 4u);
  for (const StepStat& s : cfg.steps) EXPECT_EQ(s.batch, 2);
  EXPECT_NE(cfg.rgb, out->rgb);
}

TEST_F(WanPipelineTest, ExplicitTimestepsOfTheEvenScheduleGiveIdenticalFrames) {
  // Euler, shift 1, 4 steps evenly spaced: timesteps 1000, 667, 334, 1
  // (scheduler_test's hand derivation). The same values given explicitly
  // must give the same sigmas and so the same frames; other values must not.
  GenerationRequest even = Small(9);
  even.scheduler = "euler";
  even.flow_shift = 1.0;
  even.steps = 4;
  const GenerationOutput a = Run(even);
  GenerationRequest explicit_steps = even;
  explicit_steps.timesteps = {1000, 667, 334, 1};
  const GenerationOutput b = Run(explicit_steps);
  ASSERT_FALSE(a.rgb.empty());
  EXPECT_EQ(a.rgb, b.rgb);
  explicit_steps.timesteps = {1000, 750, 500, 250};
  EXPECT_NE(Run(explicit_steps).rgb, a.rgb);
}

TEST(WanPipelineDefaultsTest, ModelDefaultsSelectTheExplicitScheduleWithoutGuidance) {
  ModelOptions e = TinyEntry();
  e.defaults.width = 64;
  e.defaults.height = 64;
  e.defaults.num_frames = 5;
  e.defaults.timesteps = std::vector<double>{1000, 750, 500, 250};
  e.defaults.steps = 50;  // the schedule's size wins over a plain step count
  e.defaults.guidance_scale = 1.0;
  e.defaults.flow_shift = 5.0;
  e.defaults.scheduler = "euler";
  auto p = LoadWanPipeline(e);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  const PipelineDescription d = (*p)->Describe();
  EXPECT_EQ(d.defaults.steps, 4);
  EXPECT_EQ(d.defaults.timesteps, (std::vector<double>{1000, 750, 500, 250}));
  EXPECT_EQ(d.num_train_timesteps, 1000);
  GenerationRequest r = DefaultRequest(d.defaults);
  r.prompt = "a lighthouse at dusk";
  EXPECT_EQ(r.steps, 4);
  CancelToken cancel;
  auto out = (*p)->Generate(r, nullptr, cancel);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  ASSERT_EQ(out->steps.size(), 4u);
  EXPECT_DOUBLE_EQ(out->steps[1].timestep, 937.5);
  for (const StepStat& s : out->steps) EXPECT_EQ(s.batch, 1);

  // Defaults outside the scheduler's range fail the load, naming the entry.
  e.defaults.timesteps = std::vector<double>{1001, 500};
  auto bad = LoadWanPipeline(e);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("timesteps[0]"), std::string::npos)
      << bad.status().message();
}

TEST(WanPipelineDenseKernelTest, SdpaDenseMatchesTheBlockKernelAndUnknownNamesFailTheLoad) {
  // Dense attention is exact with either kernel: fp32 frames agree to
  // rounding (at most 1 of 255 per value), but not bit for bit.
  GenerationRequest r;
  r.prompt = "a red fox runs through fresh snow";
  r.seed = 3;
  r.steps = 2;
  r.width = r.height = 64;
  r.num_frames = 5;
  r.sparse.mode = AttentionMode::kDense;
  std::vector<uint8_t> frames[2];
  const char* kernels[2] = {"ours", "sdpa"};
  for (int k = 0; k < 2; ++k) {
    ModelOptions e = TinyEntry();
    e.dense_attention = kernels[k];
    auto p = LoadWanPipeline(e);
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    CancelToken cancel;
    auto out = (*p)->Generate(r, nullptr, cancel);
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    frames[k] = out->rgb;
  }
  ASSERT_EQ(frames[0].size(), frames[1].size());
  ASSERT_FALSE(frames[0].empty());
  int max_diff = 0;
  for (size_t i = 0; i < frames[0].size(); ++i) {
    max_diff = std::max(max_diff, std::abs(int{frames[0][i]} - int{frames[1][i]}));
  }
  EXPECT_LE(max_diff, 1);
  EXPECT_NE(frames[0], frames[1]) << "the option must reach the attention (the kernels round "
                                     "differently)";

  ModelOptions bad = TinyEntry();
  bad.dense_attention = "flash";
  auto refused = LoadWanPipeline(bad);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().message().rfind("dense_attention", 0), 0u)
      << refused.status().message();
}

TEST_F(WanPipelineTest, InvalidRequestsNameTheField) {
  const InvalidCase cases[] = {
      {"width", [](GenerationRequest* r) { r->width = 72; }},
      {"height", [](GenerationRequest* r) { r->height = 0; }},
      {"num_frames", [](GenerationRequest* r) { r->num_frames = 6; }},
      {"steps", [](GenerationRequest* r) { r->steps = 0; }},
      {"guidance_scale", [](GenerationRequest* r) { r->guidance_scale = -1; }},
      {"guidance_scale", [](GenerationRequest* r) { r->guidance_scale = std::nan(""); }},
      {"flow_shift", [](GenerationRequest* r) { r->flow_shift = 0; }},
      {"prompt", [](GenerationRequest* r) { r->prompt.clear(); }},
      {"scheduler", [](GenerationRequest* r) { r->scheduler = "ddim"; }},
      {"sparse_attention.sparsity", [](GenerationRequest* r) { r->sparse.sparsity = 1.0; }},
      {"sparse_attention.sparsity", [](GenerationRequest* r) { r->sparse.sparsity = -0.1; }},
      {"sparse_attention.sink_frames", [](GenerationRequest* r) { r->sparse.sink_frames = 3; }},
      {"sparse_attention.dense_warmup_steps",
       [](GenerationRequest* r) { r->sparse.dense_warmup_steps = 3; }},
      {"sparse_attention.quality_probe.rate",
       [](GenerationRequest* r) { r->sparse.quality_probe_rate = 1.5; }},
      {"sparse_attention.kept_mass", [](GenerationRequest* r) { r->sparse.kept_mass = 0.0; }},
      {"sparse_attention.kept_mass", [](GenerationRequest* r) { r->sparse.kept_mass = 1.5; }},
      {"sparse_attention.min_kept_blocks",
       [](GenerationRequest* r) { r->sparse.min_kept_blocks = 0; }},
      {"sparse_attention.max_kept_blocks",
       [](GenerationRequest* r) {
         r->sparse.min_kept_blocks = 2;
         r->sparse.max_kept_blocks = 1;
       }},
      {"step_cache.threshold", [](GenerationRequest* r) { r->step_cache.threshold = -0.5; }},
      {"step_cache.threshold", [](GenerationRequest* r) { r->step_cache.threshold = 10.5; }},
      {"step_cache.threshold",
       [](GenerationRequest* r) { r->step_cache.threshold = std::nan(""); }},
      {"step_cache.warmup_steps", [](GenerationRequest* r) { r->step_cache.warmup_steps = 3; }},
      {"step_cache.warmup_steps", [](GenerationRequest* r) { r->step_cache.warmup_steps = -1; }},
      {"timesteps[1]", [](GenerationRequest* r) { r->timesteps = {1000, 1000}; }},
      {"timesteps[1]", [](GenerationRequest* r) { r->timesteps = {500, 750}; }},
      {"timesteps[1]", [](GenerationRequest* r) { r->timesteps = {1000, 0}; }},
      {"timesteps[0]", [](GenerationRequest* r) { r->timesteps = {1001, 500}; }},
      {"timesteps[0]", [](GenerationRequest* r) { r->timesteps = {std::nan(""), 500}; }},
      {"timesteps", [](GenerationRequest* r) { r->timesteps = {1000, 750, 500}; }},
      {"timesteps",
       [](GenerationRequest* r) {
         r->steps = 201;  // over max_steps (200): refused before the values are read
         r->timesteps.assign(201, 500.0);
       }},
  };
  for (const InvalidCase& c : cases) {
    GenerationRequest r = Small(1);
    c.mutate(&r);
    CancelToken cancel;
    int calls = 0;
    auto out = pipeline_->Generate(r, [&](const ProgressUpdate&) { ++calls; }, cancel);
    ASSERT_FALSE(out.ok()) << c.field;
    EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument) << c.field;
    EXPECT_EQ(out.status().message().rfind(c.field, 0), 0u)
        << c.field << ": " << out.status().message();
    EXPECT_EQ(calls, 0) << "an invalid request must not start: " << c.field;
  }
}

TEST_F(WanPipelineTest, OutOfRangeMessagesPrintIntegersInFullAndDecimalsShort) {
  PipelineDescription d = pipeline_->Describe();
  d.limits.max_width = d.limits.max_height = 65536;
  d.limits.max_pixels = 1 << 20;
  GenerationRequest r = Small(1);
  r.width = r.height = 65536;
  Status s = ValidateGenerationRequest(d, r);
  EXPECT_NE(s.message().find("(got 4294967296)"), std::string::npos) << s.message();

  r = Small(1);
  r.steps = 123456789;
  s = ValidateGenerationRequest(d, r);
  EXPECT_NE(s.message().find("(got 123456789)"), std::string::npos) << s.message();

  r = Small(1);
  r.guidance_scale = 1234567.5;
  s = ValidateGenerationRequest(d, r);
  EXPECT_NE(s.message().find("(got 1234567.5)"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("[0, 50]"), std::string::npos) << s.message();

  // A subnormal is a number like any other (the request fuzzer's find).
  r = Small(1);
  r.guidance_scale = -std::numeric_limits<double>::denorm_min();
  s = ValidateGenerationRequest(d, r);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("guidance_scale"), std::string::npos) << s.message();
}

TEST(WanPipelineLoadTest, MissingFolderIsNotFoundAndUnknownDeviceIsRejected) {
  ModelOptions e = TinyEntry();
  e.path = testing::SourceDir() + "/models/no-such-model";
  auto missing = LoadWanPipeline(e);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("no-such-model"), std::string::npos);

  PipelineRegistry registry;
  RegisterBuiltinPipelines(&registry);
  EXPECT_EQ(registry.Families(), std::vector<std::string>{"wan"});
}

// linear_precision is checked before anything loads: fp8 needs a CUDA
// device and dtype bf16, and only bf16 and fp8 exist.
TEST(WanPipelineLoadTest, LinearPrecisionFp8IsRefusedOnCpuAndUnknownValuesNameTheField) {
  ModelOptions e = TinyEntry();
  e.linear_precision = "fp8";
  for (const char* dtype : {"fp32", "bf16"}) {
    e.dtype = dtype;
    auto cpu = LoadWanPipeline(e);
    ASSERT_FALSE(cpu.ok());
    EXPECT_EQ(cpu.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(cpu.status().message().rfind("linear_precision: fp8 needs a CUDA device", 0), 0u)
        << cpu.status().message();
  }
  e.linear_precision = "int8";
  auto unknown = LoadWanPipeline(e);
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(unknown.status().message(), "linear_precision: expected bf16 or fp8, got 'int8'");
  e.linear_precision = "bf16";
  EXPECT_TRUE(LoadWanPipeline(e).ok());
}

TEST(WanPipelineLoadTest, SeveralDevicesAreCheckedAgainstHeadsAndGpus) {
  // wan-tiny has 2 attention heads: 4 devices cannot split them.
  ModelOptions e = TinyEntry();
  e.devices = {"cuda:0", "cuda:1", "cuda:2", "cuda:3"};
  e.device = "cuda:0";
  auto heads = LoadWanPipeline(e);
  ASSERT_FALSE(heads.ok());
  EXPECT_EQ(heads.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(heads.status().message().find(
                "devices: 4 devices do not divide the transformer's 2 attention heads"),
            std::string::npos)
      << heads.status().message();

  // 2 divides the heads; past that the GPUs must exist.
  e.devices = {"cuda:0", "cuda:7"};
  auto gpus = LoadWanPipeline(e);
  if (CudaDeviceCount() < 8) {
    ASSERT_FALSE(gpus.ok());
    EXPECT_EQ(gpus.status().code(), StatusCode::kFailedPrecondition);
    const std::string missing = CudaDeviceCount() < 1 ? "cuda:0" : "cuda:7";
    EXPECT_NE(gpus.status().message().find("devices: '" + missing + "' is not available"),
              std::string::npos)
        << gpus.status().message();
  } else {
    EXPECT_TRUE(gpus.ok()) << gpus.status().ToString();  // runs over both GPUs
  }
  e.devices = {"cuda:0", "gpu1"};
  auto bad = LoadWanPipeline(e);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("devices: expected \"cuda:N\", got 'gpu1'"),
            std::string::npos)
      << bad.status().message();
  // One entry in devices is the single-device path.
  e.devices = {"cpu"};
  e.device = "cpu";
  EXPECT_TRUE(LoadWanPipeline(e).ok());
}

TEST(WanPipelineMemoryTest, RequestsOverTheMemoryBudgetAreRefusedWithTheEstimate) {
  ModelOptions e = TinyEntry();
  e.limits.max_memory_gb = 0.05;  // 50 MB: the 64x64 defaults fit, 512x512x33 does not
  e.defaults.width = 64;
  e.defaults.height = 64;
  e.defaults.num_frames = 5;
  auto p = LoadWanPipeline(e);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  const PipelineDescription d = (*p)->Describe();
  EXPECT_EQ(d.limits.max_memory_bytes, 50000000u);
  const MemoryModel& m = d.memory;
  EXPECT_GT(m.fixed_bytes, 1000000u);  // the weights (~6 MB)
  EXPECT_LT(m.Estimate(64, 64, 5), m.Estimate(128, 64, 5));
  EXPECT_LT(m.Estimate(64, 64, 5), m.Estimate(64, 64, 9));

  GenerationRequest big;
  big.prompt = "a storm over the sea";
  big.steps = 1;
  big.width = 512;
  big.height = 512;
  big.num_frames = 33;
  e.limits.max_width = 512;
  CancelToken cancel;
  PipelineDescription wide = d;
  wide.limits.max_width = wide.limits.max_height = 512;
  wide.limits.max_pixels = 512 * 512;
  const Status s = ValidateGenerationRequest(wide, big);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
  EXPECT_NE(s.message().find("needs about"), std::string::npos) << s.message();

  GenerationRequest small = big;
  small.width = small.height = 64;
  small.num_frames = 5;
  EXPECT_TRUE(ValidateGenerationRequest(wide, small).ok());
}


// The model boundary's one rule: out of memory is RESOURCE_EXHAUSTED, any
// other LibTorch error INTERNAL, each with the first line of the message only.
TEST(TorchStatusTest, LibTorchErrorsBecomeStatusesWithTheirFirstLine) {
  auto status_of = [](const std::string& text) {
    try {
      TORCH_CHECK(false, text);
    } catch (const c10::Error& e) {
      return TorchExceptionStatus("model 'm' (decode)", e);
    }
    return OkStatus();
  };
  const Status oom = status_of("CUDA out of memory. Tried to allocate 2 GiB\nmore detail");
  EXPECT_EQ(oom.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(oom.message(),
            "model 'm' (decode) ran out of memory: CUDA out of memory. Tried to allocate 2 GiB");
  const Status other = status_of("shape mismatch");
  EXPECT_EQ(other.code(), StatusCode::kInternal);
  EXPECT_EQ(other.message(), "model 'm' (decode) failed: shape mismatch");
}

// Each model's `threads` applies on the thread that runs its requests: two
// models with different counts, run on one thread in turn, each see their own,
// and loading a model leaves the loading thread's setting alone.
TEST(WanPipelineThreadsTest, EachModelRunsWithItsOwnIntraOpThreadCount) {
  const int before = at::get_num_threads();
  ModelOptions one = TinyEntry(), two = TinyEntry();
  one.threads = 1;
  two.name = "wan-tiny-2";
  two.threads = 2;
  auto b = LoadWanPipeline(two);
  auto a = LoadWanPipeline(one);  // loaded last: a process-wide setting would stick at 1
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(at::get_num_threads(), before);

  GenerationRequest r;
  r.prompt = "threads";
  r.steps = 1;
  r.guidance_scale = 1.0;
  r.width = r.height = 32;
  r.num_frames = 1;
  r.decode_frames = false;
  auto seen_by = [&](Pipeline& p) {
    int seen = -1;
    CancelToken cancel;
    auto out = p.Generate(r, [&](const ProgressUpdate&) { seen = at::get_num_threads(); }, cancel);
    EXPECT_TRUE(out.ok()) << out.status().ToString();
    return seen;
  };
  std::thread worker([&] {
    EXPECT_EQ(seen_by(**a), 1);
    EXPECT_EQ(seen_by(**b), 2);
    EXPECT_EQ(seen_by(**a), 1);
  });
  worker.join();
}

}  // namespace
}  // namespace rainserve
