// CUDA attention backend parity rows: against the float64 reference and the
// CPU backend (same masks), dense against LibTorch SDPA, GPU mask prediction
// against the CPU's, and the permutation kernels against the CPU's.
// Tolerance as in tests/attention/kernel_test.cc: at most twice the error of
// a naive same-precision run against float64 (plus 1e-3 for SDPA rounding).
// Skips without a CUDA device.
#include <ATen/ATen.h>
#include <cuda_runtime.h>
#include <torch/version.h>
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <sstream>
#include <vector>

#include "attention/mask.h"
#include "attention/reference.h"
#include "attention/testing/inputs.h"
#include "attention/torch_adapter.h"
#include "tests/gpu/cuda_device.h"

namespace rainserve::attention {
namespace {

// softmax(q k^T / sqrt(D)) v on [B, H, N, D]: LibTorch's fused kernel where
// it has one (2.0+), the plain composition otherwise.
at::Tensor Sdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
#if TORCH_VERSION_MAJOR >= 2
  if (q.is_cuda()) return at::scaled_dot_product_attention(q, k, v);
#endif
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  return at::matmul(at::softmax(at::matmul(q, k.transpose(-1, -2)) * scale, -1), v);
}

using ::rainserve::testing::HasCudaDevice;

class CudaAttentionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
    ASSERT_NE(engine_.cuda(), nullptr) << "a GPU is present but this build has no CUDA backend";
  }
  AttentionEngine engine_{8};
};

struct Case {
  TokenLayout layout;
  int64_t batch, heads, head_dim;
  at::ScalarType dtype;
  double sparsity;
};

std::string Describe(const Case& c) {
  std::ostringstream s;
  s << c.batch << "x" << c.layout.frames << "x" << c.layout.height << "x" << c.layout.width
    << " sink=" << c.layout.sink_frames << " text=" << c.layout.text_tokens << " H=" << c.heads
    << " D=" << c.head_dim << " " << c.dtype << " sparsity=" << c.sparsity;
  return s.str();
}

DType ToDType(at::ScalarType t) { return t == at::kBFloat16 ? DType::kBFloat16 : DType::kFloat16; }

TensorView View(const at::Tensor& t) {
  return TensorView::Contiguous(t.data_ptr(), t.scalar_type() == at::kFloat ? DType::kFloat32 : ToDType(t.scalar_type()),
                                t.size(0), t.size(1), t.size(2), t.size(3));
}

// Runs one parity row: CPU mask (from the same low-precision inputs), CUDA
// forward with that mask, float64 reference, naive bound, CPU backend.
void RunParity(AttentionEngine& engine, const Case& c) {
  SCOPED_TRACE(Describe(c));
  auto plan = AttentionPlan::Build(c.layout, DefaultWindow(c.layout), 128);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  const int64_t B = c.batch, N = plan->tokens(), H = c.heads, D = c.head_dim;
  testing::Qkv x = testing::StructuredQkv(c.layout, B, H, D, 99 + N + D);
  auto to_tensor = [&](std::vector<float>& v) {
    return at::from_blob(testing::Permuted(plan->permutation, v, B, H, D).data(), {B, N, H, D})
        .clone()
        .to(c.dtype);
  };
  const at::Tensor q = to_tensor(x.q), k = to_tensor(x.k), v = to_tensor(x.v);

  AttentionConfig cfg;
  cfg.sparsity = c.sparsity;
  cfg.min_sparse_blocks = 1;
  auto cpu_mask = PredictBlockMask(engine, q, k, *plan, cfg);
  ASSERT_TRUE(cpu_mask.ok()) << cpu_mask.status().ToString();
  TorchBlockMask gpu_mask = *cpu_mask;
  gpu_mask.counts = cpu_mask->counts.cuda();
  gpu_mask.indices = cpu_mask->indices.cuda();

  auto gpu = BlockSparseAttention(engine, q.cuda(), k.cuda(), v.cuda(), *plan, gpu_mask, true);
  ASSERT_TRUE(gpu.ok()) << gpu.status().ToString();
  EXPECT_EQ(gpu->stats.backend.rfind("cuda-", 0), 0u);
  auto cpu = BlockSparseAttention(engine, q, k, v, *plan, *cpu_mask, true);
  ASSERT_TRUE(cpu.ok());

  const at::Tensor qf = q.to(at::kFloat).contiguous(), kf = k.to(at::kFloat).contiguous(),
                   vf = v.to(at::kFloat).contiguous();
  const int64_t nb = plan->num_blocks();
  const BlockMaskView mv{B, H, nb, nb, cpu_mask->counts.data_ptr<int32_t>(),
                         cpu_mask->indices.data_ptr<int32_t>()};
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  std::vector<double> ref, ref_lse;
  ReferenceAttention(View(qf), View(kf), View(vf), plan->blocks.view(), mv, scale, &ref, &ref_lse);
  std::vector<float> naive, naive_lse;
  NaiveAttention(View(qf), View(kf), View(vf), plan->blocks.view(), mv, scale, ToDType(c.dtype),
                 &naive, &naive_lse);
  const at::Tensor ref_t = at::from_blob(ref.data(), {B, N, H, D}, at::kDouble);
  const at::Tensor ref_lse_t = at::from_blob(ref_lse.data(), {B, H, N}, at::kDouble);
  const double naive_err =
      (at::from_blob(naive.data(), {B, N, H, D}).to(at::kDouble) - ref_t).abs().max().item<double>();
  const double naive_lse_err =
      (at::from_blob(naive_lse.data(), {B, H, N}).to(at::kDouble) - ref_lse_t).abs().max().item<double>();

  const at::Tensor out = gpu->out.cpu().to(at::kDouble);
  ASSERT_FALSE(out.isnan().any().item<bool>());
  const double err = (out - ref_t).abs().max().item<double>();
  const double lse_err = (gpu->lse.cpu().to(at::kDouble) - ref_lse_t).abs().max().item<double>();
  const double cpu_err = (out - cpu->out.to(at::kDouble)).abs().max().item<double>();
  EXPECT_LE(err, 2.0 * naive_err) << "naive " << naive_err;
  EXPECT_LE(lse_err, 2.0 * naive_lse_err + 1e-4) << "naive lse " << naive_lse_err;
  EXPECT_LE(cpu_err, 2.0 * naive_err) << "vs the CPU backend";
}

TokenLayout Layout(int64_t t, int64_t h, int64_t w, int64_t sink, int64_t text = 0) {
  return testing::VideoLayout(t, h, w, sink, text);
}

TEST_F(CudaAttentionTest, ParityRowsSmallAndMedium) {
  for (int64_t d : {64, 128}) {
    for (at::ScalarType dt : {at::kBFloat16, at::kHalf}) {
      for (double s : {0.0, 0.5, 0.9}) {
        for (int64_t sink : {0, 1}) {
          RunParity(engine_, {Layout(2, 8, 8, sink), 2, 2, d, dt, s});       // N = 128
          RunParity(engine_, {Layout(10, 10, 10, sink), 2, 2, d, dt, s});   // N = 1000
        }
      }
    }
  }
}

TEST_F(CudaAttentionTest, ParityRowsLargeWithText) {
  // N = 4096 + 7 text tokens: a 7-token text block, partial everything.
  for (at::ScalarType dt : {at::kBFloat16, at::kHalf}) {
    RunParity(engine_, {Layout(4, 32, 32, 1, 7), 2, 1, 128, dt, 0.5});
  }
  RunParity(engine_, {Layout(4, 32, 32, 0, 7), 2, 1, 64, at::kBFloat16, 0.9});
  RunParity(engine_, {Layout(4, 32, 32, 1, 7), 2, 1, 128, at::kBFloat16, 0.0});
}

// Our dense attention (through the whole RainFusion call) against a float64
// reference: at most twice LibTorch SDPA's error, plus 1e-3.
void ExpectDenseMatchesSdpa(AttentionEngine& engine, const AttentionPlan& plan,
                            const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  auto ours = RainFusionAttention(engine, q, k, v, plan, AttentionConfig{});
  ASSERT_TRUE(ours.ok()) << ours.status().ToString();
  const at::Tensor sdpa = Sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2);
  const at::Tensor ref = Sdpa(q.transpose(1, 2).to(at::kDouble).cpu(),
                              k.transpose(1, 2).to(at::kDouble).cpu(),
                              v.transpose(1, 2).to(at::kDouble).cpu())
                             .transpose(1, 2);
  const double sdpa_err = (sdpa.cpu().to(at::kDouble) - ref).abs().max().item<double>();
  const double our_err = (ours->out.cpu().to(at::kDouble) - ref).abs().max().item<double>();
  EXPECT_LE(our_err, 2.0 * sdpa_err + 1e-3) << "SDPA error " << sdpa_err;
}

TEST_F(CudaAttentionTest, DenseMatchesScaledDotProductAttention) {
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

// The kernel moves a row's running max only when a key tile beats it by
// more than 2^8 (in exp2 units) and skips rescaling O otherwise. Here the
// scores climb from key tile to key tile, by ~5 (moves every other tile) or
// ~20 (every tile) exp2 units per tile depending on the head, and fall for
// rows whose query points the other way (the first tile keeps the max).
TEST_F(CudaAttentionTest, DenseFollowsARowMaxThatClimbsAcrossKeyTiles) {
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

TEST_F(CudaAttentionTest, GpuMaskEqualsCpuMaskUpToTies) {
  // 27 blocks (one score tile per head, partly past nb), and W1's 257 (5 x 5
  // score tiles, the last row and column of them holding one block each).
  struct MaskCase {
    TokenLayout layout;
    int64_t batch, heads;
    double sparsity;
  };
  std::vector<MaskCase> cases;
  for (double s : {0.5, 0.8, 0.9}) cases.push_back({Layout(9, 16, 24, 1), 2, 3, s});
  cases.push_back({Layout(21, 30, 52, 1), 1, 2, 0.9});
  for (const MaskCase& mc : cases) {
    const TokenLayout& layout = mc.layout;
    const double s = mc.sparsity;
    auto plan = AttentionPlan::Build(layout, WindowShape{2, 8, 8});
    ASSERT_TRUE(plan.ok());
    const int64_t B = mc.batch, H = mc.heads, D = 128, N = plan->tokens(), nb = plan->num_blocks();
    testing::Qkv x = testing::StructuredQkv(layout, B, H, D, 5);
    const at::Tensor q = at::from_blob(testing::Permuted(plan->permutation, x.q, B, H, D).data(), {B, N, H, D}).to(at::kBFloat16);
    const at::Tensor k = at::from_blob(testing::Permuted(plan->permutation, x.k, B, H, D).data(), {B, N, H, D}).to(at::kBFloat16);
    AttentionConfig cfg;
    cfg.sparsity = s;
    auto cpu = PredictBlockMask(engine_, q, k, *plan, cfg);
    auto gpu = PredictBlockMask(engine_, q.cuda(), k.cuda(), *plan, cfg);
    ASSERT_TRUE(cpu.ok() && gpu.ok()) << gpu.status().ToString();
    const at::Tensor gc = gpu->counts.cpu(), gi = gpu->indices.cpu();
    EXPECT_EQ(KeptBlocks(*gpu), gc.sum().item<int64_t>());
    // Pooled scores on the CPU, to judge any difference as a near-tie.
    std::vector<float> pq(B * H * nb * D), pk(pq.size());
    const at::Tensor qf = q.to(at::kFloat), kf = k.to(at::kFloat);
    PoolBlocks(View(qf), plan->blocks.view(), pq.data());
    PoolBlocks(View(kf), plan->blocks.view(), pk.data());
    int64_t differing = 0;
    for (int64_t row = 0; row < B * H * nb; ++row) {
      const int32_t* a = cpu->indices.data_ptr<int32_t>() + row * nb;
      const int32_t* b = gi.data_ptr<int32_t>() + row * nb;
      std::set<int32_t> sa(a, a + cpu->counts.data_ptr<int32_t>()[row]);
      std::set<int32_t> sb(b, b + gc.data_ptr<int32_t>()[row]);
      ASSERT_TRUE(std::is_sorted(b, b + gc.data_ptr<int32_t>()[row]));
      if (sa == sb) continue;
      ++differing;
      // Every block in one set only must score within 1e-3 (relative) of a
      // block in the other set only: a tie broken differently by rounding.
      const int64_t bh = row / nb, qb = row % nb;
      auto score = [&](int32_t j) {
        double dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += double(pq[(bh * nb + qb) * D + d]) * pk[(bh * nb + j) * D + d];
        return dot;
      };
      std::vector<double> only_a, only_b;
      for (int32_t j : sa) if (!sb.count(j)) only_a.push_back(score(j));
      for (int32_t j : sb) if (!sa.count(j)) only_b.push_back(score(j));
      ASSERT_EQ(only_a.size(), only_b.size());
      for (size_t i = 0; i < only_a.size(); ++i) {
        EXPECT_NEAR(only_a[i], only_b[i], 1e-3 * (1.0 + std::abs(only_a[i]))) << "row " << row;
      }
    }
    EXPECT_LE(differing, B * H * nb / 100) << "rows with different masks";
  }
}

// Equal scores everywhere (block-constant q and k): every row is one big tie,
// which both backends must break the same way, toward the lower block index.
TEST_F(CudaAttentionTest, GpuMaskBreaksExactTiesLikeCpu) {
  auto plan = AttentionPlan::Build(Layout(9, 16, 24, 1), WindowShape{2, 8, 8});
  ASSERT_TRUE(plan.ok());
  const int64_t B = 2, H = 3, D = 64, N = plan->tokens();
  const at::Tensor q = at::full({B, N, H, D}, 0.5).to(at::kBFloat16);
  const at::Tensor k = at::full({B, N, H, D}, -0.25).to(at::kBFloat16);
  for (double s : {0.5, 0.9}) {
    AttentionConfig cfg;
    cfg.sparsity = s;
    auto cpu = PredictBlockMask(engine_, q, k, *plan, cfg);
    auto gpu = PredictBlockMask(engine_, q.cuda(), k.cuda(), *plan, cfg);
    ASSERT_TRUE(cpu.ok() && gpu.ok()) << gpu.status().ToString();
    EXPECT_TRUE(at::equal(gpu->counts.cpu(), cpu->counts)) << "sparsity " << s;
    // Entries past a row's count are unused: compare the kept prefixes.
    const at::Tensor gc = cpu->counts.flatten(), gi = gpu->indices.cpu().flatten(0, 2),
                     ci = cpu->indices.flatten(0, 2);
    for (int64_t row = 0; row < gc.numel(); ++row) {
      const int64_t n = gc[row].item<int64_t>();
      ASSERT_TRUE(at::equal(gi[row].slice(0, 0, n), ci[row].slice(0, 0, n))) << "row " << row;
    }
  }
}

TEST_F(CudaAttentionTest, PermutationKernelsEqualCpuPermutation) {
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

TEST_F(CudaAttentionTest, UnsupportedInputsAreErrorsNotCrashes) {
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
