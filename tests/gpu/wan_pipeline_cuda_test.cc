// The whole Wan pipeline on the GPU in bf16 (embedded wan-tiny model):
// shapes, determinism, sparse steps, and closeness to the CPU fp32 run.
// Skips without a CUDA device (or with a LibTorch that has no CUDA).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>

#include "pipelines/wan/wan_pipeline.h"
#include "tests/test_files.h"

namespace rainserve {
namespace {

ModelOptions Entry(const std::string& device, const std::string& dtype) {
  ModelOptions e;
  e.name = "wan-tiny";
  e.path = testing::SourceDir() + "/models/wan-tiny";
  e.device = device;
  e.dtype = dtype;
  e.threads = 4;
  e.limits.max_prompt_tokens = 64;
  return e;
}

GenerationRequest Request() {
  GenerationRequest r;
  r.prompt = "a paper boat drifts down a rainy street";
  r.negative_prompt = "blurry";
  r.seed = 11;
  r.steps = 4;
  r.guidance_scale = 5.0;
  r.flow_shift = 3.0;
  r.width = 256;
  r.height = 256;
  r.num_frames = 17;
  r.sparse.sparsity = 0.5;
  r.sparse.sink_frames = 1;
  r.sparse.dense_warmup_steps = 1;
  return r;
}

TEST(WanPipelineCudaTest, Bf16RunIsDeterministicSparseAndCloseToCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  auto gpu = LoadWanPipeline(Entry("cuda:0", "bf16"));
  ASSERT_TRUE(gpu.ok()) << gpu.status().ToString();
  CancelToken cancel;
  int progress = 0;
  auto a = (*gpu)->Generate(Request(), [&](const ProgressUpdate& u) {
    if (u.stage == "denoise") ++progress;
  }, cancel);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(progress, 4);
  EXPECT_EQ(a->num_frames, 17);
  ASSERT_EQ(a->rgb.size(), size_t{17 * 256 * 256 * 3});
  EXPECT_FALSE(a->steps[0].sparse);
  EXPECT_TRUE(a->steps[1].sparse);
  EXPECT_GT(a->realized_sparsity, 0.2);
  EXPECT_GT(a->peak_memory_bytes, 0u);

  auto b = (*gpu)->Generate(Request(), nullptr, cancel);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(a->rgb, b->rgb) << "same seed, same device: same frames";

  // The same request on the CPU in fp32 (same noise: it is drawn on the CPU).
  // bf16 rounding over 4 steps moves pixels a little, never the picture.
  auto cpu = LoadWanPipeline(Entry("cpu", "fp32"));
  ASSERT_TRUE(cpu.ok()) << cpu.status().ToString();
  auto c = (*cpu)->Generate(Request(), nullptr, cancel);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  double diff = 0;
  for (size_t i = 0; i < c->rgb.size(); ++i) diff += std::abs(int(a->rgb[i]) - int(c->rgb[i]));
  const double mean_abs = diff / static_cast<double>(c->rgb.size());
  std::printf("mean |gpu bf16 - cpu fp32| = %.3f of 255\n", mean_abs);
  EXPECT_LT(mean_abs, 8.0);
}

}  // namespace
}  // namespace rainserve

namespace rainserve {
namespace {

// Two experts with the idle one in host memory: the same frames as with both
// resident, the switch time reported, and the next request starts again on
// the high-noise expert.
TEST(WanPipelineCudaTest, OffloadedIdleExpertGivesTheResidentResult) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  ModelOptions e = Entry("cuda:0", "bf16");
  e.name = "wan22-tiny";
  e.path = testing::SourceDir() + "/models/wan22-tiny";
  auto resident = LoadWanPipeline(e);
  ASSERT_TRUE(resident.ok()) << resident.status().ToString();
  e.offload_idle_expert = true;
  auto offloaded = LoadWanPipeline(e);
  ASSERT_TRUE(offloaded.ok()) << offloaded.status().ToString();
  GenerationRequest r = Request();
  r.steps = 6;
  r.guidance_scale_2 = 3.0;
  CancelToken cancel;
  auto a = (*resident)->Generate(r, nullptr, cancel);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->expert_switch_seconds, 0.0);
  for (int run = 0; run < 2; ++run) {
    auto b = (*offloaded)->Generate(r, nullptr, cancel);
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    EXPECT_EQ(b->rgb, a->rgb) << "run " << run;
    EXPECT_GT(b->expert_switch_seconds, 0.0) << "run " << run;
    EXPECT_EQ(b->steps.front().expert, 0);
    EXPECT_EQ(b->steps.back().expert, 1);
  }
  EXPECT_LT((*offloaded)->Describe().memory.fixed_bytes,
            (*resident)->Describe().memory.fixed_bytes);
}

}  // namespace
}  // namespace rainserve
