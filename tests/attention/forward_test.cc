// ForwardAttention: the dense-or-sparse decision, the dense kernel choice,
// the permute-once contract, mask refresh and the statistics.
#include "attention/forward.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace rainserve::attention {
namespace {

// 9 x 16 x 16 latent grid: 2,304 tokens, 18 blocks of 128 (sink: 2 blocks).
constexpr LatentGrid kGrid{9, 16, 16};

SparseSettings Sparse(double sparsity, int64_t warmup = 0) {
  SparseSettings s;
  s.sparsity = sparsity;
  s.dense_warmup_steps = warmup;
  return s;
}

SparseSettings Mass(double kept_mass) {
  SparseSettings s;
  s.mode = AttentionMode::kRainFusionMass;
  s.sparsity = 0.0;
  s.kept_mass = kept_mass;
  return s;
}

class ForwardAttentionTest : public ::testing::Test {
 protected:
  std::unique_ptr<ForwardAttention> Make(const SparseSettings& s, int64_t step = 0,
                                         const LatentGrid& grid = kGrid,
                                         DenseKernel dense = DenseKernel::kAuto) {
    ForwardOptions o;
    o.dense_kernel = dense;
    auto a = ForwardAttention::Create(engine_, s, grid, step, at::Device(at::kCPU), o);
    EXPECT_TRUE(a.ok()) << a.status().ToString();
    return a.ok() ? std::move(*a) : nullptr;
  }
  static at::Tensor Rand(int64_t n = 2304) { return at::randn({2, n, 2, 16}); }
  AttentionEngine engine_{2};
};

TEST_F(ForwardAttentionTest, DecidesDenseOrSparseFromModeWarmupSparsityAndLength) {
  EXPECT_FALSE(Make(Sparse(0.5, 2), 0)->sparse());  // warm-up step
  EXPECT_FALSE(Make(Sparse(0.5, 2), 1)->sparse());
  EXPECT_TRUE(Make(Sparse(0.5, 2), 2)->sparse());
  EXPECT_FALSE(Make(Sparse(0.0))->sparse());  // sparsity 0
  SparseSettings dense = Sparse(0.5);
  dense.mode = AttentionMode::kDense;
  EXPECT_FALSE(Make(dense)->sparse());
  EXPECT_FALSE(Make(Sparse(0.5), 0, LatentGrid{3, 8, 8})->sparse());  // 192 tokens: 2 blocks
}

TEST_F(ForwardAttentionTest, DenseKernelChoiceFollowsTheMeasurements) {
  EXPECT_EQ(ChooseDenseKernel("cpu-avx2", 1), DenseKernel::kOurs);
  EXPECT_EQ(ChooseDenseKernel("cuda-sm90", 257), DenseKernel::kOurs);  // W1: 1.13x SDPA
  EXPECT_EQ(ChooseDenseKernel("cuda-sm90", 32), DenseKernel::kTorch);  // W3: 0.93x
  EXPECT_EQ(ChooseDenseKernel("cuda-mma", 1000), DenseKernel::kTorch);
}

TEST_F(ForwardAttentionTest, PermuteIsUndoneExactlyAndIdentityForTorchDense) {
  const at::Tensor x = at::randn({2, 2304, 8});
  auto ours = Make(Sparse(0.0), 0, kGrid, DenseKernel::kOurs);
  auto p = ours->Permute(x);
  ASSERT_TRUE(p.ok());
  EXPECT_FALSE(at::equal(*p, x));
  EXPECT_TRUE(at::equal(*ours->Unpermute(*p), x));
  const at::Tensor table = at::randn({2304, 4});  // a per-token table, token dim 0
  EXPECT_TRUE(at::equal(*ours->Unpermute(*ours->Permute(table, 0), 0), table));

  auto torch = Make(Sparse(0.0), 0, kGrid, DenseKernel::kTorch);
  EXPECT_TRUE(torch->Permute(x)->is_same(x));
  EXPECT_TRUE(torch->Unpermute(x)->is_same(x));
}

TEST_F(ForwardAttentionTest, DenseKernelsAgreeAndReportNoSparsity) {
  const at::Tensor q = Rand(), k = Rand(), v = Rand();
  auto ours = Make(Sparse(0.0), 0, kGrid, DenseKernel::kOurs);
  auto torch = Make(Sparse(0.0), 0, kGrid, DenseKernel::kTorch);
  auto a = ours->SelfAttention(q, k, v);
  auto b = torch->SelfAttention(q, k, v);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_LT((*a - *b).abs().max().item<double>(), 1e-5);
  const ForwardStats st = ours->Stats();
  EXPECT_FALSE(st.sparse);
  EXPECT_EQ(st.realized_sparsity, 0.0);
  EXPECT_EQ(st.tokens, 2304);
}

TEST_F(ForwardAttentionTest, PerStepRefreshReusesTheFirstLayersMask) {
  const at::Tensor q1 = Rand(), k1 = Rand(), q2 = Rand(), k2 = Rand(), v = Rand();
  auto plan = AttentionPlan::Build(
      TokenLayout{kGrid.frames, kGrid.height, kGrid.width, 1},
      DefaultWindow(TokenLayout{kGrid.frames, kGrid.height, kGrid.width, 1}));
  ASSERT_TRUE(plan.ok());
  AttentionConfig cfg;
  cfg.sparsity = 0.5;
  auto with_mask = [&](const at::Tensor& mq, const at::Tensor& mk, const at::Tensor& q,
                       const at::Tensor& k) {
    auto mask = PredictBlockMask(engine_, mq, mk, *plan, cfg);
    EXPECT_TRUE(mask.ok());
    return BlockSparseAttention(engine_, q, k, v, *plan, *mask, false)->out;
  };
  SparseSettings per_step = Sparse(0.5);
  per_step.mask_refresh = MaskRefresh::kPerStep;
  auto shared = Make(per_step);
  ASSERT_TRUE(shared->SelfAttention(q1, k1, v).ok());
  EXPECT_TRUE(at::equal(*shared->SelfAttention(q2, k2, v), with_mask(q1, k1, q2, k2)));

  auto every = Make(Sparse(0.5));
  ASSERT_TRUE(every->SelfAttention(q1, k1, v).ok());
  EXPECT_TRUE(at::equal(*every->SelfAttention(q2, k2, v), with_mask(q2, k2, q2, k2)));
}

TEST_F(ForwardAttentionTest, SparseStatsCountSkippedPairsAndMaskTime) {
  auto attn = Make(Sparse(0.5));
  for (int layer = 0; layer < 2; ++layer) ASSERT_TRUE(attn->SelfAttention(Rand(), Rand(), Rand()).ok());
  const ForwardStats st = attn->Stats();
  EXPECT_TRUE(st.sparse);
  EXPECT_GT(st.realized_sparsity, 0.2);  // forced sink rows and columns keep it under 0.5
  EXPECT_LT(st.realized_sparsity, 0.5);
  EXPECT_GT(st.mask_seconds, 0.0);
  EXPECT_GT(st.attention_seconds, 0.0);

  SparsityTally tally;
  tally.Add(st);
  ForwardStats dense_step;  // warm-up: not averaged in
  tally.Add(dense_step);
  ForwardStats other = st;
  other.realized_sparsity = st.realized_sparsity + 0.1;
  tally.Add(other);
  EXPECT_DOUBLE_EQ(tally.Mean(), st.realized_sparsity + 0.05);
}

TEST_F(ForwardAttentionTest, MassModeWithKeptMassOneEqualsDense) {
  const at::Tensor q = Rand(), k = Rand(), v = Rand();
  auto mass = Make(Mass(1.0));
  ASSERT_TRUE(mass->sparse());
  auto dense = Make(Sparse(0.0), 0, kGrid, DenseKernel::kOurs);
  auto a = mass->SelfAttention(q, k, v);
  auto b = dense->SelfAttention(q, k, v);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_LT((*a - *b).abs().max().item<double>(), 1e-6);
  const ForwardStats st = mass->Stats();
  EXPECT_TRUE(st.sparse);
  EXPECT_EQ(st.realized_sparsity, 0.0);
}

// q and k in block order (the forward's): every token of block i is
// `scale` * e_(i mod 16), so pooled logits peak on the key blocks of the same
// residue (easy rows); scale 0 makes every row flat (hard rows).
at::Tensor Aligned(float scale) {
  at::Tensor x = at::zeros({2, 2304, 2, 16});
  for (int64_t blk = 0; blk < 18; ++blk) {
    x.slice(1, blk * 128, (blk + 1) * 128).select(3, blk % 16).fill_(scale);
  }
  return x;
}

TEST_F(ForwardAttentionTest, MassModeKeepsFewerBlocksOnPeakedRowsThanOnFlatRows) {
  const at::Tensor v = Rand();
  auto easy = Make(Mass(0.5));
  ASSERT_TRUE(easy->SelfAttention(Aligned(10.0f), Aligned(10.0f), v).ok());
  auto hard = Make(Mass(0.5));
  ASSERT_TRUE(hard->SelfAttention(Aligned(0.0f), Aligned(0.0f), v).ok());
  const double easy_sparsity = easy->Stats().realized_sparsity;
  const double hard_sparsity = hard->Stats().realized_sparsity;
  // Flat rows: 18 equal probabilities; the 2 forced sink blocks hold 2/18, so
  // each of the 16 non-forced rows keeps 9 blocks; the 2 sink rows keep 18.
  EXPECT_NEAR(hard_sparsity, 1.0 - (16.0 * 9 + 2 * 18) / (18.0 * 18), 1e-12);
  // Peaked rows keep their peak and the 2 forced blocks: at most 3.
  EXPECT_GE(easy_sparsity, 1.0 - (16.0 * 3 + 2 * 18) / (18.0 * 18) - 1e-12);
  EXPECT_LT(easy_sparsity, 1.0);
}

TEST_F(ForwardAttentionTest, TextTokensFollowTheVideoAndAreAttendedDensely) {
  const LatentGrid grid{9, 16, 16, 77};  // 2,304 video + 77 text tokens
  auto attn = Make(Sparse(0.8), 0, grid);
  ASSERT_TRUE(attn->sparse());
  const at::Tensor x = at::randn({1, 2381, 4});
  auto p = attn->Permute(x);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  // The text tokens keep their place at the end of the sequence.
  EXPECT_TRUE(at::equal(p->narrow(1, 2304, 77), x.narrow(1, 2304, 77)));
  const at::Tensor q = Rand(2381), k = Rand(2381), v = Rand(2381);
  ASSERT_TRUE(attn->SelfAttention(q, k, v).ok());
  // 19 blocks, 3 of them forced (2 sink, 1 text): without forcing, 0.8 would
  // skip ~0.79 of the pairs; the forced rows and columns keep far more.
  const ForwardStats st = attn->Stats();
  EXPECT_TRUE(st.sparse);
  EXPECT_GT(st.realized_sparsity, 0.3);
  EXPECT_LT(st.realized_sparsity, 0.6);
  EXPECT_EQ(st.tokens, 2381);
}

}  // namespace
}  // namespace rainserve::attention
