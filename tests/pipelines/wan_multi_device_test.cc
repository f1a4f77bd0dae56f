// The Wan pipeline with several devices, on CPU ranks (ModelOptions built in
// code with devices = {"cpu", "cpu"}: loopback groups stand in for NCCL)
// against the same checkpoint on one device: CFG parallel and Ulysses
// latents, cancellation, a lost rank, and the load refusals.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include <filesystem>

#include "pipelines/wan/wan_pipeline.h"
#include "tests/pipelines/pipeline_runs.h"
#include "tests/pipelines/wan_eight_head_checkpoint.h"
#include "tests/test_files.h"

namespace rainserve {
namespace {

using testing::Latents;

ModelOptions TinyEntry(int64_t devices) {
  ModelOptions e;
  e.name = "wan-tiny";
  e.path = testing::SourceDir() + "/models/wan-tiny";
  e.device = "cpu";
  e.dtype = "fp32";
  e.threads = 2;
  e.limits.max_prompt_tokens = 64;
  if (devices > 1) e.devices.assign(devices, "cpu");
  return e;
}

// 64x64, 5 frames, 3 steps; the latents without decoding.
GenerationRequest Small(double guidance) {
  GenerationRequest r;
  r.prompt = "a red fox runs through fresh snow";
  r.negative_prompt = "blurry";
  r.seed = 11;
  r.steps = 3;
  r.guidance_scale = guidance;
  r.flow_shift = 3.0;
  r.width = 64;
  r.height = 64;
  r.num_frames = 5;
  r.decode_frames = false;
  return r;
}

// Every element within 1e-5 of the reference's largest magnitude.
void ExpectClose(const std::vector<float>& got, const std::vector<float>& want,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  ASSERT_FALSE(want.empty()) << what;
  double scale = 0.0, worst = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    scale = std::max(scale, std::abs(static_cast<double>(want[i])));
    worst = std::max(worst, std::abs(static_cast<double>(got[i]) - want[i]));
  }
  EXPECT_LE(worst, 1e-5 * scale) << what << ": max |diff| " << worst << " of " << scale;
}

class WanMultiDeviceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto one = LoadWanPipeline(TinyEntry(1));
    ASSERT_TRUE(one.ok()) << one.status().ToString();
    single_ = std::move(one).value().release();
    auto two = LoadWanPipeline(TinyEntry(2));
    ASSERT_TRUE(two.ok()) << two.status().ToString();
    double_ = std::move(two).value().release();
  }
  static void TearDownTestSuite() {
    delete single_;
    delete double_;
    single_ = double_ = nullptr;
  }
  static Pipeline* single_;
  static Pipeline* double_;
};

Pipeline* WanMultiDeviceTest::single_ = nullptr;
Pipeline* WanMultiDeviceTest::double_ = nullptr;

TEST_F(WanMultiDeviceTest, CfgBranchesOnTwoRanksEqualOneDevice) {
  // Guidance: cfg degree 2 x Ulysses 1, each rank runs one branch.
  const GenerationRequest r = Small(5.0);
  ExpectClose(Latents(*double_, r), Latents(*single_, r), "2 ranks, CFG parallel");
}

TEST_F(WanMultiDeviceTest, UlyssesOverTwoRanksEqualsOneDevice) {
  // Guidance 1: one branch, its heads split over 2 Ulysses ranks.
  const GenerationRequest r = Small(1.0);
  ExpectClose(Latents(*double_, r), Latents(*single_, r), "2 Ulysses ranks");
}

TEST_F(WanMultiDeviceTest, DecodedFramesEqualOneDevice) {
  GenerationRequest r = Small(5.0);
  r.decode_frames = true;
  CancelToken cancel;
  auto one = single_->Generate(r, nullptr, cancel);
  auto two = double_->Generate(r, nullptr, cancel);
  ASSERT_TRUE(one.ok() && two.ok());
  ASSERT_EQ(one->rgb.size(), two->rgb.size());
  int worst = 0;
  for (size_t i = 0; i < one->rgb.size(); ++i) {
    worst = std::max(worst, std::abs(int{one->rgb[i]} - int{two->rgb[i]}));
  }
  EXPECT_LE(worst, 1);  // fp32 round-off may move a value across a rounding edge
  EXPECT_GT(two->peak_memory_bytes, 0u);
}

TEST_F(WanMultiDeviceTest, CancellationStopsEveryRankAndTheNextRequestRuns) {
  GenerationRequest r = Small(5.0);
  r.steps = 6;
  const testing::CancelledRun run = testing::GenerateCancellingAt(*double_, r, 2);
  EXPECT_EQ(run.status.code(), StatusCode::kCancelled);
  EXPECT_EQ(run.denoise_updates, 2);
  EXPECT_TRUE(double_->DeviceStatus().ok());
  // The groups are intact: the next request matches one device.
  ExpectClose(Latents(*double_, Small(5.0)), Latents(*single_, Small(5.0)), "after cancel");
}

TEST_F(WanMultiDeviceTest, StepCacheIsRefusedNamingTheField) {
  GenerationRequest r = Small(5.0);
  r.step_cache.mode = StepCacheMode::kFirstBlock;
  CancelToken cancel;
  auto out = double_->Generate(r, nullptr, cancel);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(out.status().message().find("step_cache"), std::string::npos)
      << out.status().message();
}

TEST(WanMultiDeviceRanksTest, FourAndEightCpuRanksOfAnEightHeadModelEqualOneDevice) {
  // With guidance: 4 ranks = 2 CFG groups x 2 Ulysses, 8 = 2 x 4; without:
  // 1 x 4 and 1 x 8. 12 x 20 latents over 3 frames: 180 tokens, a multiple
  // of neither 4 nor 8.
  const std::string path = testing::EightHeadWanCheckpoint();
  ModelOptions one = TinyEntry(1);
  one.path = path;
  auto single = LoadWanPipeline(one);
  ASSERT_TRUE(single.ok()) << single.status().ToString();
  for (const int64_t n : {4, 8}) {
    ModelOptions e = TinyEntry(n);
    e.path = path;
    auto many = LoadWanPipeline(e);
    ASSERT_TRUE(many.ok()) << many.status().ToString();
    for (const double guidance : {5.0, 1.0}) {
      GenerationRequest r = Small(guidance);
      r.width = 160;
      r.height = 96;
      r.num_frames = 9;
      ExpectClose(Latents(**many, r), Latents(**single, r),
                  std::to_string(n) + " ranks, guidance " + std::to_string(guidance));
    }
  }
  std::filesystem::remove_all(path);
}

TEST(WanMultiDeviceFailureTest, ALostRankFailsTheRequestAndMarksTheDevicesLost) {
  // Rank 1 is lost at its n-th collective; rank 0 waits on it in that
  // collective until the abort releases it. With guidance the CFG pair's
  // all-gather (one per step: n = 2 is the second step); without, inside a
  // block of the Ulysses forward.
  std::atomic<int> calls{0}, fail_at{0};
  WanPipelineHooks hooks;
  hooks.collective_fault = [&](int64_t rank) {
    return rank == 1 && ++calls == fail_at ? UnavailableError("injected device loss")
                                           : OkStatus();
  };
  for (const auto& [guidance, n] : std::vector<std::pair<double, int>>{{5.0, 2}, {1.0, 5}}) {
    calls = 0;
    fail_at = n;
    auto p = LoadWanPipelineWithHooks(TinyEntry(2), hooks);
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    GenerationRequest r = Small(guidance);
    CancelToken cancel;
    auto out = (*p)->Generate(r, nullptr, cancel);
    ASSERT_FALSE(out.ok());
    EXPECT_EQ(out.status().code(), StatusCode::kUnavailable);
    EXPECT_NE(out.status().message().find("denoise step "), std::string::npos)
        << out.status().message();
    EXPECT_NE(out.status().message().find("rank 1 (cpu): injected device loss"),
              std::string::npos)
        << out.status().message();
    // The server marks the model FAILED when DeviceStatus is not OK after a
    // failed request (JobManager's on_device_fault).
    const Status device = (*p)->DeviceStatus();
    EXPECT_EQ(device.code(), StatusCode::kUnavailable);
    EXPECT_NE(device.message().find("rank 1 (cpu)"), std::string::npos) << device.message();
  }
}

TEST(WanMultiDeviceLoadTest, TwoExpertModelsAreRefusedNamingDevices) {
  ModelOptions e = TinyEntry(2);
  e.name = "wan22-tiny";
  e.path = testing::SourceDir() + "/models/wan22-tiny";
  auto p = LoadWanPipeline(e);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(p.status().message().find("devices: a two-expert model"), std::string::npos)
      << p.status().message();
}

TEST(WanMultiDeviceLoadTest, MixedCpuAndCudaDevicesAreRefused) {
  ModelOptions e = TinyEntry(2);
  e.devices = {"cpu", "cuda:0"};
  auto p = LoadWanPipeline(e);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(p.status().message().find("devices: expected \"cuda:N\", got 'cpu'"),
            std::string::npos)
      << p.status().message();
}

}  // namespace
}  // namespace rainserve
