// The quality probe: exact against dense when every block is kept, below 1
// when few are, the kept mass of a hand-computed case, its deterministic
// sampling, and what ForwardAttention probes.
#include "attention/probe.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <set>

#include "attention/forward.h"

namespace rainserve::attention {
namespace {

// 9 x 16 x 16 latent grid: 2,304 tokens, 18 blocks of 128 (sink: 2 blocks).
AttentionPlan Plan() {
  TokenLayout layout;
  layout.frames = 9;
  layout.height = 16;
  layout.width = 16;
  layout.sink_frames = 1;
  auto plan = AttentionPlan::Build(layout, DefaultWindow(layout));
  EXPECT_TRUE(plan.ok()) << plan.status().ToString();
  return *plan;
}

at::Tensor Rand() { return at::randn({2, 2304, 2, 16}, at::TensorOptions().dtype(at::kFloat)); }

class ProbeTest : public ::testing::Test {
 protected:
  // Probes the sparse kernel's output at `sparsity` on random q, k, v.
  ProbeRecord ProbeAt(double sparsity) {
    const AttentionPlan plan = Plan();
    const at::Tensor q = Rand(), k = Rand(), v = Rand();
    AttentionConfig config;
    config.sparsity = sparsity;
    auto mask = PredictBlockMask(engine_, q, k, plan, config);
    EXPECT_TRUE(mask.ok()) << mask.status().ToString();
    auto out = BlockSparseAttention(engine_, q, k, v, plan, *mask, false);
    EXPECT_TRUE(out.ok()) << out.status().ToString();
    const ProbeSample sample = SampleProbeRows(plan.blocks, 2, 2, /*seed=*/7, 0, 0);
    auto sums = ProbeAttention(q, k, v, out->out, plan, *mask, sample);
    EXPECT_TRUE(sums.ok()) << sums.status().ToString();
    return ProbeRecordFromSums(0, sample.rows.numel(), *sums);
  }
  AttentionEngine engine_{2};
};

TEST_F(ProbeTest, EveryBlockKeptMatchesDenseExactly) {
  const ProbeRecord r = ProbeAt(0.0);
  EXPECT_EQ(r.rows, 2 * 2 * kProbeBlocksPerHead * kProbeRowsPerBlock);
  EXPECT_NEAR(r.cosine, 1.0, 1e-6);
  EXPECT_LT(r.rel_l2, 1e-5);
  EXPECT_NEAR(r.kept_mass, 1.0, 1e-5);
}

TEST_F(ProbeTest, FewKeptBlocksLoseMassAndCosine) {
  const ProbeRecord r = ProbeAt(0.8);
  EXPECT_LT(r.cosine, 0.999);
  EXPECT_GT(r.rel_l2, 1e-3);
  EXPECT_GT(r.kept_mass, 0.0);
  EXPECT_LT(r.kept_mass, 0.9);
}

// 64 tokens in 4 blocks of 16; q = 1 and k_j = log(j + 1) (D = 1) make the
// softmax of every row p_j = (j + 1) / 2080, so block b holds
// (256 b + 136) / 2080. Row block 0 keeps {0}, row block r > 0 keeps {0, r}:
// mean mass = (136 + 528 + 784 + 1040) / (4 * 2080).
TEST_F(ProbeTest, KeptMassEqualsTheHandComputation) {
  TokenLayout layout;
  layout.height = 8;
  layout.width = 8;
  auto plan = AttentionPlan::Build(layout, DefaultWindow(layout), /*block_size=*/16);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  ASSERT_EQ(plan->blocks.starts, (std::vector<int32_t>{0, 16, 32, 48, 64}));
  const at::Tensor q = at::ones({1, 64, 1, 1});
  const at::Tensor k = at::log(at::arange(1, 65, at::kFloat)).view({1, 64, 1, 1});
  const at::Tensor v = at::randn({1, 64, 1, 1});
  TorchBlockMask mask;
  mask.counts = at::tensor(std::vector<int32_t>{1, 2, 2, 2}).view({1, 1, 4});
  // Slots past each row's count hold stale indices; they must not count.
  mask.indices =
      at::tensor(std::vector<int32_t>{0, 3, 3, 3, 0, 1, 1, 2, 0, 2, 3, 3, 0, 3, 1, 1})
          .view({1, 1, 4, 4});
  const ProbeSample sample = SampleProbeRows(plan->blocks, 1, 1, 1, 0, 0);
  auto sums = ProbeAttention(q, k, v, v, *plan, mask, sample);
  ASSERT_TRUE(sums.ok()) << sums.status().ToString();
  const ProbeRecord r = ProbeRecordFromSums(0, sample.rows.numel(), *sums);
  EXPECT_EQ(r.rows, 64);  // 4 blocks x 16 rows: every row once
  EXPECT_NEAR(r.kept_mass, (136.0 + 528.0 + 784.0 + 1040.0) / (4.0 * 2080.0), 1e-6);
}

TEST_F(ProbeTest, BadTensorsAreNamed) {
  const AttentionPlan plan = Plan();
  const at::Tensor q = Rand();
  const ProbeSample sample = SampleProbeRows(plan.blocks, 2, 2, 7, 0, 0);
  TorchBlockMask mask;
  auto r = ProbeAttention(q, q, q.narrow(1, 0, 100), q, plan, mask, sample);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message().rfind("v must be", 0), 0u) << r.status().message();
}

TEST(ProbeSamplingTest, DrawsAreDeterministicAndDependOnSeedStepAndLayer) {
  const AttentionPlan plan = Plan();
  const ProbeSample a = SampleProbeRows(plan.blocks, 2, 3, 42, 5, 1);
  const ProbeSample b = SampleProbeRows(plan.blocks, 2, 3, 42, 5, 1);
  EXPECT_TRUE(at::equal(a.rows, b.rows));
  EXPECT_TRUE(at::equal(a.blocks, b.blocks));
  EXPECT_FALSE(at::equal(a.blocks, SampleProbeRows(plan.blocks, 2, 3, 42, 5, 2).blocks));
  EXPECT_FALSE(at::equal(a.blocks, SampleProbeRows(plan.blocks, 2, 3, 43, 5, 1).blocks));
  // Rows lie in their block; each head draws kProbeBlocksPerHead distinct blocks.
  const auto starts = at::tensor(std::vector<int64_t>(plan.blocks.starts.begin(),
                                                      plan.blocks.starts.end()));
  EXPECT_TRUE(at::all(a.rows >= starts.index({a.blocks})).item<bool>());
  EXPECT_TRUE(at::all(a.rows < starts.index({a.blocks + 1})).item<bool>());
  for (int64_t h = 0; h < 3; ++h) {
    EXPECT_EQ(std::get<0>(at::_unique(a.blocks[1][h])).numel(), kProbeBlocksPerHead);
  }

  EXPECT_EQ(ProbeLayers(42, 5, 30), ProbeLayers(42, 5, 30));
  int probed = 0;
  for (int64_t step = 0; step < 1000; ++step) {
    EXPECT_FALSE(ProbeStep(42, step, 0.0));
    EXPECT_TRUE(ProbeStep(42, step, 1.0));
    probed += ProbeStep(42, step, 0.25) ? 1 : 0;
    const std::vector<int64_t> layers = ProbeLayers(42, step, 30);
    ASSERT_EQ(layers.size(), 2u);
    EXPECT_LT(layers[0], layers[1]);
    EXPECT_LT(layers[1], 30);
  }
  EXPECT_NEAR(probed, 250, 60);
  EXPECT_EQ(ProbeLayers(1, 0, 1), std::vector<int64_t>{0});
}

// ForwardAttention probes sparse forwards at rate 1 in the drawn layers, and
// never a dense forward or a rate-0 request.
TEST(ForwardProbeTest, ProbesTheDrawnLayersOfSparseForwardsOnly) {
  AttentionEngine engine{2};
  auto run = [&](double sparsity, double rate) {
    SparseSettings s;
    s.sparsity = sparsity;
    s.quality_probe_rate = rate;
    ForwardOptions o;
    o.probe_seed = 9;
    o.layers = 4;
    auto attn = ForwardAttention::Create(engine, s, {9, 16, 16}, 3, at::Device(at::kCPU), o);
    EXPECT_TRUE(attn.ok());
    for (int layer = 0; layer < 4; ++layer) {
      EXPECT_TRUE((*attn)->SelfAttention(Rand(), Rand(), Rand()).ok());
    }
    return (*attn)->Stats().probes;
  };
  const std::vector<ProbeRecord> sparse = run(0.8, 1.0);
  const std::vector<int64_t> drawn = ProbeLayers(9, 3, 4);
  ASSERT_EQ(sparse.size(), drawn.size());
  for (size_t i = 0; i < sparse.size(); ++i) {
    EXPECT_EQ(sparse[i].layer, drawn[i]);
    EXPECT_LT(sparse[i].cosine, 1.0);
    EXPECT_GT(sparse[i].kept_mass, 0.0);
    EXPECT_LT(sparse[i].kept_mass, 1.0);
  }
  EXPECT_TRUE(run(0.0, 1.0).empty());  // dense: nothing to compare
  EXPECT_TRUE(run(0.8, 0.0).empty());
}

}  // namespace
}  // namespace rainserve::attention
