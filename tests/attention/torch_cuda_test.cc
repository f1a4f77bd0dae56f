// The at::Tensor entry points on CUDA tensors: dense attention against
// LibTorch's SDPA (also with a row max that climbs across key tiles), a
// sparse call through the adapter against the float64 reference, the
// permutation of activations and RoPE tables on the device, unsupported
// inputs as errors, the quality probe against the CPU probe, and
// mass-targeted masks (uneven rows, each head's started longest first). The
// kernels themselves, both CUDA flash kernels chosen explicitly, are checked
// case by case in the parity suite (parity_test.cc); this suite runs the
// engine's default kernel, the one the server runs (RAINSERVE_FLASH_KERNEL=mma
// in the environment makes that the mma.sync one). Skips without a CUDA
// device.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/version.h>

#include <cmath>
#include <vector>

#include "attention/probe.h"
#include "attention/reference.h"
#include "attention/testing/inputs.h"
#include "attention/torch_adapter.h"
#include "tests/gpu/cuda_device.h"

namespace rainserve::attention {
namespace {

using ::rainserve::testing::HasCudaDevice;

// softmax(q k^T / sqrt(D)) v on [B, H, N, D]: LibTorch's fused kernel where
// it has one (2.0+), the plain composition otherwise.
at::Tensor Sdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
#if TORCH_VERSION_MAJOR >= 2
  if (q.is_cuda()) return at::scaled_dot_product_attention(q, k, v);
#endif
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  return at::matmul(at::softmax(at::matmul(q, k.transpose(-1, -2)) * scale, -1), v);
}

class TorchCudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
    ASSERT_NE(engine_.cuda(), nullptr) << "a GPU is present but this build has no CUDA backend";
  }
  AttentionEngine engine_{8};
};

TokenLayout Layout(int64_t t, int64_t h, int64_t w, int64_t sink, int64_t text = 0) {
  return testing::VideoLayout(t, h, w, sink, text);
}

// Our dense attention (through the whole RainFusion call) against a float64
// reference: at most twice LibTorch SDPA's error, plus 1e-3.
void ExpectDenseMatchesSdpa(AttentionEngine& engine, const AttentionPlan& plan,
                            const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  auto ours = RainFusionAttention(engine, q, k, v, plan, AttentionConfig{});
  ASSERT_TRUE(ours.ok()) << ours.status().ToString();
  EXPECT_EQ(ours->stats.backend.rfind("cuda-", 0), 0u) << ours->stats.backend;
  const at::Tensor sdpa =
      Sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2);
  const at::Tensor ref = Sdpa(q.transpose(1, 2).to(at::kDouble).cpu(),
                              k.transpose(1, 2).to(at::kDouble).cpu(),
                              v.transpose(1, 2).to(at::kDouble).cpu())
                             .transpose(1, 2);
  const double sdpa_err = (sdpa.cpu().to(at::kDouble) - ref).abs().max().item<double>();
  const double our_err = (ours->out.cpu().to(at::kDouble) - ref).abs().max().item<double>();
  EXPECT_LE(our_err, 2.0 * sdpa_err + 1e-3) << "SDPA error " << sdpa_err;
}

TEST_F(TorchCudaTest, DenseMatchesScaledDotProductAttention) {
  auto plan = AttentionPlan::Build(Layout(5, 16, 24, 1), WindowShape{2, 8, 8});
  ASSERT_TRUE(plan.ok());
  const int64_t N = plan->tokens();
  for (int64_t d : {64, 128}) {
    SCOPED_TRACE(d);
    at::manual_seed(d);
    const auto opts = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
    const at::Tensor q = at::randn({2, N, 4, d}, opts), k = at::randn({2, N, 4, d}, opts),
                     v = at::randn({2, N, 4, d}, opts);
    ExpectDenseMatchesSdpa(engine_, *plan, q, k, v);
  }
}

// The Hopper kernel moves a row's running max only when a key tile beats it
// by more than 2^8 (in exp2 units) and skips rescaling O otherwise. Here the
// scores climb from key tile to key tile, by ~5 (moves every other tile) or
// ~20 (every tile) exp2 units per tile depending on the head, and fall for
// rows whose query points the other way (the first tile keeps the max). The
// parity suite runs the same inputs (Inputs::kClimbing) against float64 with
// the naive bound, which is loose here (bf16 scores of ~200 round by ~0.5).
TEST_F(TorchCudaTest, DenseFollowsARowMaxThatClimbsAcrossKeyTiles) {
  auto plan = AttentionPlan::Build(Layout(5, 16, 24, 1), WindowShape{2, 8, 8});
  ASSERT_TRUE(plan.ok());
  const int64_t N = plan->tokens(), d = 128;
  at::manual_seed(7);
  at::Tensor q = at::randn({2, N, 2, d}) * 0.1, k = at::randn({2, N, 2, d}) * 0.1;
  const at::Tensor v = at::randn({2, N, 2, d});
  // Score of a query with q[..., 0] = +-1 against key n: +-(slope n) / sqrt(d).
  const at::Tensor sign = (at::rand({2, N, 2}) < 0.5).to(at::kFloat) * 2 - 1;
  q.select(3, 0).copy_(sign);
  const double per_tile[2] = {5.0, 20.0};  // exp2 units gained per 128 keys
  for (int h = 0; h < 2; ++h) {
    const double slope = per_tile[h] / 128 / std::log2(std::exp(1.0)) * std::sqrt(double(d));
    k.select(2, h).select(2, 0).copy_(at::arange(N).to(at::kFloat).mul(slope).expand({2, N}));
  }
  for (at::ScalarType dt : {at::kBFloat16, at::kHalf}) {
    SCOPED_TRACE(dt);
    const auto opts = at::TensorOptions().dtype(dt).device(at::kCUDA);
    ExpectDenseMatchesSdpa(engine_, *plan, q.to(opts), k.to(opts), v.to(opts));
  }
}

TensorView View(const at::Tensor& t) {
  return TensorView::Contiguous(t.data_ptr(), DType::kFloat32, t.size(0), t.size(1), t.size(2),
                                t.size(3));
}

// A sparse call the way a pipeline makes it: the mask predicted on the GPU
// (its kept count read on demand), then the forward with it, against the
// float64 reference with that mask (at most twice the naive bf16 error).
// The quality probe on CUDA tensors gives the CPU probe's figures for the
// same inputs, mask and sparse output (bf16 on the device, their fp32 copies
// on the host).
TEST_F(TorchCudaTest, QualityProbeMatchesTheCpuProbe) {
  auto plan = AttentionPlan::Build(Layout(5, 16, 24, 1), WindowShape{2, 8, 8});
  ASSERT_TRUE(plan.ok());
  const int64_t N = plan->tokens();
  at::manual_seed(3);
  const auto opts = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  const at::Tensor q = at::randn({2, N, 4, 64}, opts), k = at::randn({2, N, 4, 64}, opts),
                   v = at::randn({2, N, 4, 64}, opts);
  AttentionConfig config;
  config.sparsity = 0.8;
  auto mask = PredictBlockMask(engine_, q, k, *plan, config);
  ASSERT_TRUE(mask.ok()) << mask.status().ToString();
  auto out = BlockSparseAttention(engine_, q, k, v, *plan, *mask, false);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  const ProbeSample sample = SampleProbeRows(plan->blocks, 2, 4, 11, 0, 0);
  auto gpu = ProbeAttention(q, k, v, out->out, *plan, *mask, sample);
  ASSERT_TRUE(gpu.ok()) << gpu.status().ToString();
  TorchBlockMask host;
  host.counts = mask->counts.cpu();
  host.indices = mask->indices.cpu();
  auto f32 = [](const at::Tensor& t) { return t.cpu().to(at::kFloat); };
  auto cpu = ProbeAttention(f32(q), f32(k), f32(v), f32(out->out), *plan, host, sample);
  ASSERT_TRUE(cpu.ok()) << cpu.status().ToString();
  const ProbeRecord a = ProbeRecordFromSums(0, sample.rows.numel(), *gpu);
  const ProbeRecord b = ProbeRecordFromSums(0, sample.rows.numel(), *cpu);
  EXPECT_LT(a.cosine, 1.0);
  EXPECT_LT(a.kept_mass, 1.0);
  EXPECT_NEAR(a.cosine, b.cosine, 1e-4);
  EXPECT_NEAR(a.rel_l2, b.rel_l2, 1e-3 * b.rel_l2 + 1e-5);
  EXPECT_NEAR(a.kept_mass, b.kept_mass, 1e-4);
}

// Structured q, k, v [B, N, H, D] (bf16, host) in the plan's token order.
struct StructuredInputs {
  at::Tensor q, k, v;
};
StructuredInputs Structured(const TokenLayout& layout, const AttentionPlan& plan, int64_t B,
                            int64_t H, int64_t D, uint64_t seed) {
  testing::Qkv x = testing::StructuredQkv(layout, B, H, D, seed);
  auto to_tensor = [&](std::vector<float>& t) {
    return at::from_blob(testing::Permuted(plan.permutation, t, B, H, D).data(),
                         {B, plan.tokens(), H, D})
        .to(at::kBFloat16);
  };
  return {to_tensor(x.q), to_tensor(x.k), to_tensor(x.v)};
}

// A GPU result against the float64 reference under the same (host) mask,
// with the parity suite's bounds (parity.h): twice the naive bf16 error
// (LSE, when given: + 1e-4).
void ExpectMatchesReference(AttentionEngine& engine, const StructuredInputs& in,
                            const AttentionPlan& plan, const at::Tensor& counts,
                            const at::Tensor& indices, const AttentionResult& gpu) {
  const int64_t B = in.q.size(0), N = in.q.size(1), H = in.q.size(2), D = in.q.size(3);
  const int64_t nb = plan.num_blocks();
  const at::Tensor qf = in.q.to(at::kFloat), kf = in.k.to(at::kFloat), vf = in.v.to(at::kFloat);
  const BlockMaskView mv{B, H, nb, nb, counts.data_ptr<int32_t>(), indices.data_ptr<int32_t>()};
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  std::vector<double> ref, ref_lse;
  ReferenceAttention(View(qf), View(kf), View(vf), plan.blocks.view(), mv, scale, &ref, &ref_lse,
                     &engine.cpu().pool());
  std::vector<float> naive, naive_lse;
  NaiveAttention(View(qf), View(kf), View(vf), plan.blocks.view(), mv, scale, DType::kBFloat16,
                 &naive, &naive_lse, &engine.cpu().pool());
  auto max_diff = [](const at::Tensor& a, const at::Tensor& b) {
    return (a.to(at::kDouble) - b).abs().max().item<double>();
  };
  const at::Tensor ref_t = at::from_blob(ref.data(), {B, N, H, D}, at::kDouble);
  const double naive_err = max_diff(at::from_blob(naive.data(), {B, N, H, D}), ref_t);
  const at::Tensor out = gpu.out.cpu();
  ASSERT_FALSE(out.isnan().any().item<bool>());
  EXPECT_LE(max_diff(out, ref_t), 2.0 * naive_err) << "naive " << naive_err;
  if (!gpu.lse.defined()) return;
  const at::Tensor ref_lse_t = at::from_blob(ref_lse.data(), {B, H, N}, at::kDouble);
  const double naive_lse_err = max_diff(at::from_blob(naive_lse.data(), {B, H, N}), ref_lse_t);
  EXPECT_LE(max_diff(gpu.lse.cpu(), ref_lse_t), 2.0 * naive_lse_err + 1e-4)
      << "naive lse " << naive_lse_err;
}

TEST_F(TorchCudaTest, SparseCallThroughTheAdapterMatchesTheReference) {
  const TokenLayout layout = Layout(4, 32, 32, 1, 7);  // N = 4103: partial and text blocks
  auto plan = AttentionPlan::Build(layout, DefaultWindow(layout));
  ASSERT_TRUE(plan.ok());
  const StructuredInputs in = Structured(layout, *plan, 2, 1, 128, 99);
  AttentionConfig cfg;
  cfg.sparsity = 0.5;
  cfg.return_lse = true;
  auto mask = PredictBlockMask(engine_, in.q.cuda(), in.k.cuda(), *plan, cfg);
  ASSERT_TRUE(mask.ok()) << mask.status().ToString();
  const at::Tensor counts = mask->counts.cpu(), indices = mask->indices.cpu();
  EXPECT_EQ(KeptBlocks(*mask), counts.sum().item<int64_t>());
  auto gpu =
      BlockSparseAttention(engine_, in.q.cuda(), in.k.cuda(), in.v.cuda(), *plan, *mask, true);
  ASSERT_TRUE(gpu.ok()) << gpu.status().ToString();
  EXPECT_EQ(gpu->stats.backend.rfind("cuda-", 0), 0u);
  EXPECT_TRUE(gpu->stats.sparse);
  ExpectMatchesReference(engine_, in, *plan, counts, indices, *gpu);
}

// Mass-targeted masks on the GPU: rows keep uneven counts, the mask carries
// the launch order (a permutation of every row: rows keeping every block,
// then head by head, longest first within a head),
// the flash kernel started in that order gives the reference result, and the
// mask is the CPU's up to rows whose mass meets kept_mass within rounding.
// The places of `order` (row indices, (b * H + h) * nb + qb) that break the
// launch order: rows keeping all nb blocks first, then heads in order, counts
// non-increasing within a head.
int64_t LaunchOrderViolations(const at::Tensor& counts, const at::Tensor& order, int64_t nb) {
  const auto c = counts.accessor<int64_t, 1>();
  const auto o = order.accessor<int64_t, 1>();
  const int64_t rows = order.size(0);
  int64_t heavy = 0;
  while (heavy < rows && c[o[heavy]] == nb) ++heavy;
  int64_t bad = 0;
  for (int64_t i = heavy; i < rows; ++i) {
    if (c[o[i]] == nb) ++bad;
    if (i == heavy) continue;
    const int64_t head = o[i] / nb, prev_head = o[i - 1] / nb;
    if (head < prev_head || (head == prev_head && c[o[i]] > c[o[i - 1]])) ++bad;
  }
  return bad;
}

TEST_F(TorchCudaTest, MassTargetedMaskStartsEachHeadsLongRowsFirstAndMatchesTheReference) {
  const TokenLayout layout = Layout(9, 32, 48, 1, 7);
  auto plan = AttentionPlan::Build(layout, DefaultWindow(layout));
  ASSERT_TRUE(plan.ok());
  const int64_t B = 2, H = 3, nb = plan->num_blocks();
  const StructuredInputs in = Structured(layout, *plan, B, H, 128, 5);
  AttentionConfig cfg;
  cfg.kept_mass = 0.8;
  auto mask = PredictBlockMask(engine_, in.q.cuda(), in.k.cuda(), *plan, cfg);
  ASSERT_TRUE(mask.ok()) << mask.status().ToString();
  ASSERT_TRUE(mask->order.defined());
  const at::Tensor counts = mask->counts.cpu(), indices = mask->indices.cpu();
  const at::Tensor order = mask->order.cpu().to(at::kLong);
  EXPECT_TRUE(at::equal(std::get<0>(order.sort()), at::arange(B * H * nb, at::kLong)));
  EXPECT_EQ(LaunchOrderViolations(counts.reshape({-1}).to(at::kLong), order, nb), 0);
  EXPECT_GT(counts.max().item<int>(), counts.min().item<int>() + 1) << "rows are not uneven";
  EXPECT_EQ(KeptBlocks(*mask), counts.sum().item<int64_t>());

  auto cpu = PredictBlockMask(engine_, in.q.to(at::kFloat), in.k.to(at::kFloat), *plan, cfg);
  ASSERT_TRUE(cpu.ok()) << cpu.status().ToString();
  const int64_t rows = B * H * nb;
  const int64_t off_by_one = (counts - cpu->counts).abs().le(1).sum().item<int64_t>();
  const int64_t equal = counts.eq(cpu->counts).sum().item<int64_t>();
  EXPECT_EQ(off_by_one, rows) << "a row's count differs from the CPU's by more than one";
  EXPECT_GE(equal, rows - rows / 50) << "more than 2% of the rows differ from the CPU's";

  auto gpu =
      BlockSparseAttention(engine_, in.q.cuda(), in.k.cuda(), in.v.cuda(), *plan, *mask, false);
  ASSERT_TRUE(gpu.ok()) << gpu.status().ToString();
  ExpectMatchesReference(engine_, in, *plan, counts, indices, *gpu);
}

TEST_F(TorchCudaTest, PermutationKernelsEqualCpuPermutation) {
  auto plan = AttentionPlan::Build(Layout(7, 13, 29, 1, 5), WindowShape{2, 8, 8});
  ASSERT_TRUE(plan.ok());
  const at::Tensor x = at::randn({2, plan->tokens(), 3, 40}).to(at::kBFloat16);
  auto cpu = PermuteTokens(engine_, x, *plan);
  auto gpu = PermuteTokens(engine_, x.cuda(), *plan);
  ASSERT_TRUE(cpu.ok() && gpu.ok()) << gpu.status().ToString();
  EXPECT_TRUE(at::equal(gpu->cpu(), *cpu));
  auto back = UnpermuteTokens(engine_, *gpu, *plan);
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(at::equal(back->cpu(), x));
  const at::Tensor odd = at::randn({plan->tokens(), 3}).cuda();  // 12-byte rows: byte path
  auto po = PermuteTokens(engine_, odd, *plan, 0);
  ASSERT_TRUE(po.ok());
  EXPECT_TRUE(at::equal(po->cpu(), *PermuteTokens(engine_, odd.cpu(), *plan, 0)));
}

TEST_F(TorchCudaTest, UnsupportedInputsAreErrorsNotCrashes) {
  auto plan = AttentionPlan::Build(Layout(2, 8, 8, 0), WindowShape{2, 8, 8});
  ASSERT_TRUE(plan.ok());
  const auto f32 = at::TensorOptions().device(at::kCUDA);
  const at::Tensor q = at::randn({1, 128, 2, 64}, f32);
  auto r = RainFusionAttention(engine_, q, q, q, *plan, AttentionConfig{});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("dtype must be bfloat16 or float16"), std::string::npos);
  const at::Tensor q96 = at::randn({1, 128, 2, 96}, f32.dtype(at::kBFloat16));
  r = RainFusionAttention(engine_, q96, q96, q96, *plan, AttentionConfig{});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("head_dim must be 64 or 128"), std::string::npos);
}

}  // namespace
}  // namespace rainserve::attention
