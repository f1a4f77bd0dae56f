// Block pooling and mask prediction.
#include "attention/mask.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "attention/bf16.h"
#include "attention/config.h"
#include "attention/cpu/cpu_backend.h"
#include "attention/testing/inputs.h"

namespace rainserve::attention {
namespace {

using testing::VideoLayout;

using testing::Qkv;

TEST(PoolBlocksTest, MatchesDirectMeanIncludingPartialBlocks) {
  const TokenLayout l = VideoLayout(3, 5, 7, 1);  // 105 tokens: windowed 70, sink 35
  auto table = BuildBlockTable(l, 16);      // blocks of 16 with partial tails
  ASSERT_TRUE(table.ok());
  Qkv x = testing::RandomQkv(2, l.total_tokens(), 3, 10, 7);
  const TensorView q = x.View(x.q);
  const int64_t nb = table->num_blocks();
  std::vector<float> pooled(static_cast<size_t>(2 * 3 * nb * 10));
  ThreadPool pool(2);
  PoolBlocks(q, table->view(), pooled.data(), &pool);
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t h = 0; h < 3; ++h) {
      for (int64_t blk = 0; blk < nb; ++blk) {
        for (int64_t d = 0; d < 10; ++d) {
          double sum = 0;
          const int64_t begin = table->starts[blk], end = table->starts[blk + 1];
          for (int64_t n = begin; n < end; ++n) sum += x.q[((b * l.total_tokens() + n) * 3 + h) * 10 + d];
          ASSERT_NEAR(pooled[((b * 3 + h) * nb + blk) * 10 + d], sum / double(end - begin), 1e-5);
        }
      }
    }
  }
}

TEST(PoolBlocksTest, ReadsBFloat16) {
  const TokenLayout l = VideoLayout(1, 4, 8, 0);
  auto table = BuildBlockTable(l, 16);
  ASSERT_TRUE(table.ok());
  std::vector<uint16_t> data(32);
  for (int i = 0; i < 32; ++i) data[i] = FloatToBFloat16(static_cast<float>(i));
  const TensorView v = TensorView::Contiguous(data.data(), DType::kBFloat16, 1, 32, 1, 1);
  std::vector<float> pooled(2);
  PoolBlocks(v, table->view(), pooled.data());
  EXPECT_FLOAT_EQ(pooled[0], 7.5f);   // mean of 0..15
  EXPECT_FLOAT_EQ(pooled[1], 23.5f);  // mean of 16..31
}

TEST(SelectRowTest, KeepsTopKPlusForcedInAscendingOrderWithLowIndexWinningTies) {
  const float scores[] = {0.1f, 0.9f, 0.5f, 0.9f, -1.0f, 0.5f, 0.2f};
  const uint8_t forced[] = {0, 0, 0, 0, 1, 0, 0};
  int32_t out[7];
  // top-3 by (score desc, index asc): 1, 3, 2 (2 beats 5 on the tie); + forced 4.
  ASSERT_EQ(SelectRow(scores, 7, forced, false, 3, out), 4);
  EXPECT_EQ(std::vector<int32_t>(out, out + 4), (std::vector<int32_t>{1, 2, 3, 4}));
  // A forced row keeps everything.
  ASSERT_EQ(SelectRow(scores, 7, forced, true, 3, out), 7);
  EXPECT_EQ(std::vector<int32_t>(out, out + 7), (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6}));
  // A forced block already in the top-k is not counted twice.
  const uint8_t forced_top[] = {0, 1, 0, 0, 0, 0, 0};
  ASSERT_EQ(SelectRow(scores, 7, forced_top, false, 2, out), 2);
  EXPECT_EQ(std::vector<int32_t>(out, out + 2), (std::vector<int32_t>{1, 3}));
}

// Logits whose softmax is exactly `probs` (up to rounding).
std::vector<float> LogitsOf(const std::vector<double>& probs) {
  std::vector<float> logits;
  for (double p : probs) logits.push_back(static_cast<float>(std::log(p)));
  return logits;
}

std::vector<int32_t> MassRow(const std::vector<float>& scores, const std::vector<uint8_t>& forced,
                             double kept_mass, int64_t min_blocks = 1, int64_t max_blocks = 0) {
  const int64_t nb = static_cast<int64_t>(scores.size());
  std::vector<int32_t> out(scores.size(), -1);
  SelectionRule rule;
  rule.kept_mass = kept_mass;
  rule.min_kept_blocks = min_blocks;
  rule.max_kept_blocks = max_blocks;
  const int32_t n = SelectRowByMass(scores.data(), nb, forced.data(), false, rule, out.data());
  out.resize(static_cast<size_t>(n));
  return out;
}

TEST(SelectRowByMassTest, KeepsTheFewestBlocksWhoseProbabilityReachesKeptMass) {
  // Probabilities 0.15, 0.5, 0.05, 0.3 (ranked: 1, 3, 0, 2).
  const std::vector<float> s = LogitsOf({0.15, 0.5, 0.05, 0.3});
  const std::vector<uint8_t> none(4, 0);
  EXPECT_EQ(MassRow(s, none, 0.5), (std::vector<int32_t>{1}));
  EXPECT_EQ(MassRow(s, none, 0.8), (std::vector<int32_t>{1, 3}));
  EXPECT_EQ(MassRow(s, none, 0.81), (std::vector<int32_t>{0, 1, 3}));
  EXPECT_EQ(MassRow(s, none, 0.96), (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(MassRow(s, none, 1.0), (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(MassRow(s, none, 0.1), (std::vector<int32_t>{1}));  // the floor of 1
}

TEST(SelectRowByMassTest, FloorAndCapBoundTheCount) {
  const std::vector<float> s = LogitsOf({0.15, 0.5, 0.05, 0.3});
  const std::vector<uint8_t> none(4, 0);
  EXPECT_EQ(MassRow(s, none, 0.5, 3), (std::vector<int32_t>{0, 1, 3}));      // floor 3
  EXPECT_EQ(MassRow(s, none, 0.96, 1, 2), (std::vector<int32_t>{1, 3}));     // cap 2
  EXPECT_EQ(MassRow(s, none, 0.5, 9), (std::vector<int32_t>{0, 1, 2, 3}));  // floor > nb: all
  EXPECT_EQ(MassRow(s, none, 0.96, 1, 9).size(), 4u);                        // cap > nb
}

TEST(SelectRowByMassTest, ForcedBlocksAreAlwaysKeptAndCountTowardTheMass) {
  const std::vector<float> s = LogitsOf({0.15, 0.5, 0.05, 0.3});
  // Forced block 2 (0.05) plus block 1 (0.5) reach 0.55.
  EXPECT_EQ(MassRow(s, {0, 0, 1, 0}, 0.55), (std::vector<int32_t>{1, 2}));
  // Forced block 3 (0.3) plus 1 (0.5) reach 0.8: block 0 is not needed.
  EXPECT_EQ(MassRow(s, {0, 0, 0, 1}, 0.8), (std::vector<int32_t>{1, 3}));
  // A forced block alone reaching the mass keeps only it.
  EXPECT_EQ(MassRow(s, {0, 1, 0, 0}, 0.5), (std::vector<int32_t>{1}));
  // Forced blocks stay kept above the cap; no block is added.
  EXPECT_EQ(MassRow(s, {1, 0, 1, 0}, 0.9, 1, 1), (std::vector<int32_t>{0, 2}));
  // A forced row keeps everything.
  const uint8_t forced[4] = {0, 0, 0, 0};
  int32_t out[4];
  SelectionRule rule;
  rule.kept_mass = 0.1;
  EXPECT_EQ(SelectRowByMass(s.data(), 4, forced, true, rule, out), 4);
}

TEST(SelectBlocksTest, MassRulePeakedRowsKeepFewerBlocksThanFlatRows) {
  // 8 blocks of 16 tokens, no sink: pooled q row 0 is large and aligned with
  // key block 0 (peaked softmax), row 1 is zero (flat softmax).
  const int64_t nb = 8, D = 4;
  std::vector<int32_t> starts(nb + 1);
  for (int64_t i = 0; i <= nb; ++i) starts[i] = static_cast<int32_t>(16 * i);
  const std::vector<uint8_t> forced(nb, 0);
  const BlockTableView blocks{nb, starts.data(), forced.data()};
  std::vector<float> pq(nb * D, 0.0f), pk(nb * D, 0.0f);
  for (int64_t kb = 0; kb < nb; ++kb) pk[kb * D + kb % D] = kb == 0 ? 1.0f : 0.1f;
  pq[0] = 20.0f;  // row 0 peaks on key block 0
  std::vector<int32_t> counts(nb), indices(nb * nb);
  SelectionRule rule;
  rule.kept_mass = 0.9;
  const int64_t kept = SelectBlocks(pq.data(), pk.data(), 1, 1, D, blocks, 1.0f, rule,
                                    counts.data(), indices.data());
  EXPECT_EQ(counts[0], 1);
  EXPECT_EQ(indices[0], 0);
  EXPECT_EQ(counts[1], 8);  // ceil(0.9 * 8) of equal probabilities
  int64_t sum = 0;
  for (int32_t c : counts) sum += c;
  EXPECT_EQ(kept, sum);
}

// Predicts masks for a layout with a sink and checks every rule against a
// direct brute-force recomputation from the pooled inputs.
class MaskPredictionTest : public ::testing::TestWithParam<double> {};

TEST_P(MaskPredictionTest, RowsKeepTopKPlusForcedAndSparsityIsACount) {
  const double sparsity = GetParam();
  const TokenLayout l = VideoLayout(5, 8, 12, 1);  // 480 tokens: windowed 384, sink 96
  auto plan = AttentionPlan::Build(l, WindowShape{2, 4, 4}, 32);
  ASSERT_TRUE(plan.ok());
  const int64_t B = 2, H = 3, D = 16, nb = plan->num_blocks();
  ASSERT_EQ(nb, 12 + 3);
  Qkv x = testing::StructuredQkv(l, B, H, D, 11);
  std::vector<float> q = testing::Permuted(plan->permutation, x.q, B, H, D);
  std::vector<float> k = testing::Permuted(plan->permutation, x.k, B, H, D);

  CpuBackend backend(2);
  BlockMask mask;
  mask.Resize(B, H, nb, nb);
  int64_t kept = -1;
  MaskArgs args;
  args.q = TensorView::Contiguous(q.data(), DType::kFloat32, B, l.total_tokens(), H, D);
  args.k = TensorView::Contiguous(k.data(), DType::kFloat32, B, l.total_tokens(), H, D);
  args.blocks = plan->blocks.view();
  args.scale = 0.25f;
  args.sparsity = sparsity;
  args.counts = mask.counts.data();
  args.indices = mask.indices.data();
  args.kept = &kept;
  ASSERT_TRUE(backend.PredictMask(args).ok());
  EXPECT_EQ(kept, mask.kept());

  // Brute force from pooled means.
  std::vector<float> pq(static_cast<size_t>(B * H * nb * D)), pk(pq.size());
  PoolBlocks(args.q, args.blocks, pq.data());
  PoolBlocks(args.k, args.blocks, pk.data());
  const int64_t top_k = TopKCount(nb, sparsity);
  int64_t expected_kept = 0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t qb = 0; qb < nb; ++qb) {
        const int64_t row = mask.view().Row(b, h, qb);
        std::set<int32_t> got(mask.indices.begin() + row * nb,
                              mask.indices.begin() + row * nb + mask.counts[row]);
        ASSERT_EQ(got.size(), static_cast<size_t>(mask.counts[row])) << "duplicates";
        ASSERT_TRUE(std::is_sorted(mask.indices.begin() + row * nb,
                                   mask.indices.begin() + row * nb + mask.counts[row]));
        std::set<int32_t> want;
        if (plan->blocks.forced[qb]) {
          for (int32_t j = 0; j < nb; ++j) want.insert(j);
        } else {
          std::vector<std::pair<double, int32_t>> ranked;
          for (int32_t j = 0; j < nb; ++j) {
            double dot = 0;
            for (int64_t d = 0; d < D; ++d) {
              dot += double(pq[((b * H + h) * nb + qb) * D + d]) * pk[((b * H + h) * nb + j) * D + d];
            }
            ranked.push_back({-dot, j});
          }
          std::sort(ranked.begin(), ranked.end());
          for (int64_t i = 0; i < top_k; ++i) want.insert(ranked[static_cast<size_t>(i)].second);
          for (int32_t j = 0; j < nb; ++j) {
            if (plan->blocks.forced[j]) want.insert(j);
          }
        }
        ASSERT_EQ(got, want) << "b=" << b << " h=" << h << " qb=" << qb;
        expected_kept += static_cast<int64_t>(want.size());
      }
    }
  }
  EXPECT_EQ(kept, expected_kept);
  EXPECT_DOUBLE_EQ(mask.sparsity(), 1.0 - double(expected_kept) / double(B * H * nb * nb));
  if (sparsity == 0.0) {
    EXPECT_EQ(kept, B * H * nb * nb);
  }
  if (sparsity >= 0.5) {
    EXPECT_GT(mask.sparsity(), 0.2);
  }
  // Realized sparsity is below the request: forced rows and columns.
  EXPECT_LE(mask.sparsity(), sparsity + 1e-12);
}

INSTANTIATE_TEST_SUITE_P(Sparsities, MaskPredictionTest, ::testing::Values(0.0, 0.5, 0.8, 0.9));

TEST(MaskPredictionTest2, BatchElementsGetTheirOwnMasks) {
  const TokenLayout l = VideoLayout(4, 8, 8, 0);
  auto plan = AttentionPlan::Build(l, WindowShape{2, 4, 4}, 32);
  ASSERT_TRUE(plan.ok());
  const int64_t N = l.total_tokens(), H = 2, D = 16, nb = plan->num_blocks();
  // Element 0 and 1 from different seeds.
  Qkv a = testing::StructuredQkv(l, 1, H, D, 1), c = testing::StructuredQkv(l, 1, H, D, 2);
  std::vector<float> q(a.q), k(a.k);
  q.insert(q.end(), c.q.begin(), c.q.end());
  k.insert(k.end(), c.k.begin(), c.k.end());
  BlockMask mask;
  mask.Resize(2, H, nb, nb);
  int64_t kept = 0;
  MaskArgs args;
  args.q = TensorView::Contiguous(q.data(), DType::kFloat32, 2, N, H, D);
  args.k = TensorView::Contiguous(k.data(), DType::kFloat32, 2, N, H, D);
  args.blocks = plan->blocks.view();
  args.scale = 0.25f;
  args.sparsity = 0.75;
  args.counts = mask.counts.data();
  args.indices = mask.indices.data();
  args.kept = &kept;
  CpuBackend backend(1);
  ASSERT_TRUE(backend.PredictMask(args).ok());
  const size_t half = mask.indices.size() / 2;
  EXPECT_FALSE(std::equal(mask.indices.begin(), mask.indices.begin() + half,
                          mask.indices.begin() + half));
}

TEST(DenseBlockMaskTest, KeepsEverythingInOrder) {
  const BlockMask m = DenseBlockMask(2, 3, 5);
  EXPECT_EQ(m.kept(), 2 * 3 * 5 * 5);
  EXPECT_DOUBLE_EQ(m.sparsity(), 0.0);
  for (int64_t row = 0; row < 30; ++row) {
    for (int64_t j = 0; j < 5; ++j) EXPECT_EQ(m.indices[row * 5 + j], j);
  }
}

}  // namespace
}  // namespace rainserve::attention
