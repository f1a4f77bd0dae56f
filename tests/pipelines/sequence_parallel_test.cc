// The Wan transformer on the CPU as P Ulysses ranks (threads joined by the
// loopback collective), and as CFG pairs times Ulysses ranks, against the
// single-device forward.
#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "pipelines/core/collective.h"
#include "pipelines/core/parallel_plan.h"
#include "pipelines/wan/wan_parallel.h"
#include "pipelines/wan/wan_transformer.h"
#include "tests/pipelines/rank_threads.h"
#include "tests/pipelines/wan_test_config.h"

namespace rainserve {
namespace {

using testing::ExpectAllOk;
using testing::RunRanks;

// A tiny model with 4 heads (so P = 2 and 4 both divide them).
WanTransformerConfig FourHeadConfig() {
  WanTransformerConfig c = testing::TinyWanTransformerConfig();
  c.num_attention_heads = 4;
  c.attention_head_dim = 8;
  return c;
}

at::Tensor Latents(int64_t b, int64_t f, int64_t h, int64_t w) {
  at::manual_seed(5);
  return at::randn({b, 4, f, h, w});
}

class SequenceParallelTest : public ::testing::Test {
 protected:
  // The forward of each of `ranks` Ulysses ranks, each with its own engine.
  std::vector<at::Tensor> ParallelForward(int64_t ranks, const at::Tensor& lat,
                                          const at::Tensor& t, const at::Tensor& text,
                                          const WanForwardOptions& base,
                                          std::vector<WanForwardStats>* stats = nullptr) {
    LoopbackGroup group(ranks);
    std::vector<at::Tensor> out(ranks);
    if (stats) stats->assign(ranks, {});
    ExpectAllOk(RunRanks(ranks, [&](int64_t r) -> Status {
      attention::AttentionEngine engine(1);
      WanForwardOptions o = base;
      o.engine = &engine;
      o.sequence_parallel = &group.rank(r);
      RAINSERVE_ASSIGN_OR_RETURN(
          out[r], model_->Forward(lat, t, text, o, stats ? &(*stats)[r] : nullptr));
      return OkStatus();
    }));
    return out;
  }
  at::Tensor SingleForward(const at::Tensor& lat, const at::Tensor& t, const at::Tensor& text,
                           const WanForwardOptions& base) {
    WanForwardOptions o = base;
    o.engine = &engine_;
    auto r = model_->Forward(lat, t, text, o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : at::Tensor();
  }
  static void ExpectClose(const at::Tensor& a, const at::Tensor& b, const std::string& what) {
    ASSERT_TRUE(a.defined() && b.defined()) << what;
    ASSERT_EQ(a.sizes(), b.sizes()) << what;
    const double err = (a - b).abs().max().item<double>();
    EXPECT_LT(err, 1e-5 * (1 + b.abs().max().item<double>())) << what << ": max error " << err;
  }

  std::unique_ptr<WanTransformer> model_ =
      WanTransformer::Random(FourHeadConfig(), at::kFloat, at::kCPU, 21);
  attention::AttentionEngine engine_{2};
  at::Tensor text_ = at::randn({2, 5, 8});
  at::Tensor t_ = at::tensor({900.0f, 300.0f});
};

TEST_F(SequenceParallelTest, UlyssesRanksEqualTheSingleDeviceDenseForward) {
  // 3 x 5 x 7 = 105 tokens: uneven shards for P = 2 (53, 52) and 4 (27, 26, 26, 26).
  const at::Tensor lat = Latents(2, 3, 10, 14);
  WanForwardOptions o;
  o.attention.dense_kernel = attention::DenseKernel::kOurs;
  const at::Tensor want = SingleForward(lat, t_, text_, o);
  for (int64_t p : {2, 4}) {
    const std::vector<at::Tensor> got = ParallelForward(p, lat, t_, text_, o);
    for (int64_t r = 0; r < p; ++r) {
      ExpectClose(got[r], want, "P=" + std::to_string(p) + " rank " + std::to_string(r));
    }
  }
}

TEST_F(SequenceParallelTest, UlyssesRanksEqualTheSingleDeviceSparseForward) {
  // 9 x 12 x 14 = 1512 tokens (12 blocks, uneven over 4 ranks), 50% sparse
  // with the first-frame sink: each rank's mask over the full sequence for
  // its heads is the single device's mask of those heads.
  const at::Tensor lat = Latents(2, 9, 24, 28);
  WanForwardOptions o;
  o.sparse.mode = attention::AttentionMode::kRainFusion;
  o.sparse.sparsity = 0.5;
  WanForwardStats single_stats;
  WanForwardOptions so = o;
  so.engine = &engine_;
  auto want = model_->Forward(lat, t_, text_, so, &single_stats);
  ASSERT_TRUE(want.ok()) << want.status().ToString();
  ASSERT_TRUE(single_stats.sparse);
  for (int64_t p : {2, 4}) {
    std::vector<WanForwardStats> stats;
    const std::vector<at::Tensor> got = ParallelForward(p, lat, t_, text_, o, &stats);
    for (int64_t r = 0; r < p; ++r) {
      ExpectClose(got[r], *want, "P=" + std::to_string(p) + " rank " + std::to_string(r));
      // Each rank ran RainFusion over the whole sequence for its heads.
      EXPECT_TRUE(stats[r].sparse);
      EXPECT_EQ(stats[r].tokens, 1512);
      EXPECT_GT(stats[r].realized_sparsity, 0.2);
    }
  }
}

TEST_F(SequenceParallelTest, PerFrameTimestepsFollowTheShards) {
  const at::Tensor lat = Latents(2, 3, 10, 14);
  const at::Tensor t = at::tensor({900.0f, 700.0f, 500.0f, 300.0f, 200.0f, 100.0f}).view({2, 3});
  const at::Tensor want = SingleForward(lat, t, text_, {});
  for (const at::Tensor& got : ParallelForward(2, lat, t, text_, {})) {
    ExpectClose(got, want, "per-frame timesteps");
  }
}

TEST_F(SequenceParallelTest, CfgPairTimesUlyssesEqualsTheBatchedForward) {
  // 4 devices with guidance: 2 CFG branches x 2 Ulysses ranks. Branch c runs
  // batch element c; the CFG pair exchanges the outputs (all-gather, dim 0).
  auto plan = MakeParallelPlan(4, /*cfg=*/true, FourHeadConfig().num_attention_heads);
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->cfg_degree, 2);
  ASSERT_EQ(plan->ulysses_degree, 2);
  const at::Tensor lat = Latents(2, 3, 10, 14);
  const at::Tensor want = SingleForward(lat, t_, text_, {});
  LoopbackGroup ulysses0(2), ulysses1(2), pair0(2), pair1(2);
  LoopbackGroup* ulysses[2] = {&ulysses0, &ulysses1};
  LoopbackGroup* pairs[2] = {&pair0, &pair1};
  std::vector<at::Tensor> out(4);
  ExpectAllOk(RunRanks(4, [&](int64_t r) -> Status {
    const int64_t c = plan->CfgRank(r), u = plan->UlyssesRank(r);
    attention::AttentionEngine engine(1);
    WanForwardOptions o;
    o.engine = &engine;
    o.sequence_parallel = &ulysses[c]->rank(u);
    RAINSERVE_ASSIGN_OR_RETURN(const at::Tensor mine,
                               model_->Forward(lat.narrow(0, c, 1), t_.narrow(0, c, 1),
                                               text_.narrow(0, c, 1), o));
    RAINSERVE_ASSIGN_OR_RETURN(out[r], AllGather(pairs[u]->rank(c), mine, 0, {1, 1}));
    return OkStatus();
  }));
  for (int64_t r = 0; r < 4; ++r) ExpectClose(out[r], want, "rank " + std::to_string(r));
}

// The groups of a plan as loopback groups, and each rank's WanRank.
struct LoopbackRanks {
  std::vector<std::unique_ptr<LoopbackGroup>> ulysses, cfg;
  std::vector<std::unique_ptr<attention::AttentionEngine>> engines;
  std::vector<WanRank> ranks;
};

LoopbackRanks MakeRanks(const ParallelPlan& plan, const WanTransformer* model) {
  LoopbackRanks l;
  for (int64_t c = 0; c < plan.cfg_degree; ++c) {
    l.ulysses.push_back(std::make_unique<LoopbackGroup>(plan.ulysses_degree));
  }
  for (int64_t u = 0; u < plan.ulysses_degree; ++u) {
    l.cfg.push_back(std::make_unique<LoopbackGroup>(plan.cfg_degree));
  }
  for (int64_t r = 0; r < plan.world; ++r) {
    l.engines.push_back(std::make_unique<attention::AttentionEngine>(1));
    const int64_t c = plan.CfgRank(r), u = plan.UlyssesRank(r);
    l.ranks.push_back({model, l.engines.back().get(), &l.ulysses[c]->rank(u), &l.cfg[u]->rank(c)});
  }
  return l;
}

TEST_F(SequenceParallelTest, ParallelWanForwardEqualsTheBatchedForwardForEveryPlan) {
  const at::Tensor lat = Latents(2, 3, 10, 14);
  WanForwardOptions o;
  o.sparse.mode = attention::AttentionMode::kRainFusion;
  o.sparse.sparsity = 0.5;
  o.attention.min_sparse_blocks = 1;  // sparse even on 105 tokens
  const at::Tensor want = SingleForward(lat, t_, text_, o);
  for (const auto& [devices, cfg] : std::vector<std::pair<int64_t, bool>>{
           {1, true}, {2, true}, {2, false}, {4, true}, {4, false}}) {
    auto plan = MakeParallelPlan(devices, cfg, FourHeadConfig().num_attention_heads);
    ASSERT_TRUE(plan.ok());
    LoopbackRanks l = MakeRanks(*plan, model_.get());
    WanForwardStats stats;
    auto got = ParallelWanForward(*plan, l.ranks, lat, t_, text_, o, &stats);
    const std::string what = std::to_string(plan->cfg_degree) + " x " +
                             std::to_string(plan->ulysses_degree);
    ASSERT_TRUE(got.ok()) << what << ": " << got.status().ToString();
    ExpectClose(*got, want, what);
    EXPECT_EQ(stats.tokens, 105) << what;
    EXPECT_TRUE(stats.sparse) << what;
  }
}

TEST_F(SequenceParallelTest, ParallelWanForwardRefusesRanksThatDoNotMatchThePlan) {
  auto plan = MakeParallelPlan(4, true, 4);
  ASSERT_TRUE(plan.ok());
  LoopbackRanks l = MakeRanks(*plan, model_.get());
  const at::Tensor lat = Latents(2, 1, 4, 4);
  std::vector<WanRank> three(l.ranks.begin(), l.ranks.begin() + 3);
  auto r = ParallelWanForward(*plan, three, lat, t_, text_, {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("3 ranks for a plan of 4"), std::string::npos);
  std::swap(l.ranks[0].ulysses, l.ranks[1].ulysses);
  r = ParallelWanForward(*plan, l.ranks, lat, t_, text_, {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("rank 0: its Ulysses group"), std::string::npos);
  LoopbackRanks ok = MakeRanks(*plan, model_.get());
  r = ParallelWanForward(*plan, ok.ranks, lat.narrow(0, 0, 1), t_.narrow(0, 0, 1),
                         text_.narrow(0, 0, 1), {});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("CFG parallel needs batch 2"), std::string::npos);
}

// The ranks of a plan over the communicators of WanParallelGroups.
std::vector<WanRank> GroupRanks(const WanParallelGroups& g, const WanTransformer* model,
                                std::vector<std::unique_ptr<attention::AttentionEngine>>* engines) {
  std::vector<WanRank> ranks;
  for (int64_t r = 0; r < g.plan().world; ++r) {
    engines->push_back(std::make_unique<attention::AttentionEngine>(1));
    ranks.push_back({model, engines->back().get(), g.ulysses(r), g.cfg(r)});
  }
  return ranks;
}

TEST_F(SequenceParallelTest, ParallelGroupsOnCpuRanksMatchTheBatchedForward) {
  const at::Tensor lat = Latents(2, 3, 10, 14);
  const at::Tensor want = SingleForward(lat, t_, text_, {});
  for (const bool cfg : {true, false}) {
    auto plan = MakeParallelPlan(4, cfg, FourHeadConfig().num_attention_heads);
    ASSERT_TRUE(plan.ok());
    auto groups = WanParallelGroups::Create(*plan, std::vector<at::Device>(4, at::kCPU));
    ASSERT_TRUE(groups.ok()) << groups.status().ToString();
    std::vector<std::unique_ptr<attention::AttentionEngine>> engines;
    auto got = ParallelWanForward(*plan, GroupRanks(**groups, model_.get(), &engines), lat, t_,
                                  text_, {});
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    ExpectClose(*got, want, cfg ? "2 x 2" : "1 x 4");
  }
}

TEST_F(SequenceParallelTest, ALostRankFailsTheForwardOnEveryRankWithoutHanging) {
  // 2 CFG groups x 2 Ulysses ranks; rank 3 is lost at its third collective
  // (inside a block). Its Ulysses peer waits in that collective and ranks 0
  // and 1 would wait in the CFG all-gather: the abort releases all of them.
  auto plan = MakeParallelPlan(4, true, FourHeadConfig().num_attention_heads);
  ASSERT_TRUE(plan.ok());
  std::atomic<int> calls{0};
  auto groups = WanParallelGroups::Create(
      *plan, std::vector<at::Device>(4, at::kCPU), [&](int64_t rank) {
        return rank == 3 && ++calls == 3 ? UnavailableError("injected device loss")
                                         : OkStatus();
      });
  ASSERT_TRUE(groups.ok()) << groups.status().ToString();
  std::vector<std::unique_ptr<attention::AttentionEngine>> engines;
  auto got = ParallelWanForward(*plan, GroupRanks(**groups, model_.get(), &engines),
                                Latents(2, 3, 10, 14), t_, text_, {});
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(got.status().message(), "rank 3 (cpu): injected device loss");
}

TEST_F(SequenceParallelTest, StepCacheIsRefused) {
  LoopbackGroup group(1);
  WanStepCacheHook hook;
  hook.mode = StepCacheMode::kFirstBlock;
  hook.skip = [](const at::Tensor&) { return false; };
  WanForwardOptions o;
  o.engine = &engine_;
  o.sequence_parallel = &group.rank(0);
  o.step_cache = &hook;
  auto r = model_->Forward(Latents(2, 1, 4, 4), t_, text_, o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("step_cache"), std::string::npos);
}

}  // namespace
}  // namespace rainserve
