// The at::Tensor entry points: checks at the edge, backend dispatch, stats,
// and the permute-once contract pipelines rely on.
#include "attention/torch_adapter.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "attention/testing/inputs.h"

#include "attention/reference.h"

namespace rainserve::attention {
namespace {

using testing::VideoLayout;

class TorchAdapterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    at::manual_seed(3);
    auto plan = AttentionPlan::Build(VideoLayout(4, 6, 10, 1), WindowShape{2, 4, 4}, 32);
    ASSERT_TRUE(plan.ok());
    plan_ = *plan;
  }
  at::Tensor Rand(int64_t b = 2, int64_t h = 3, int64_t d = 32) {
    return at::randn({b, plan_.tokens(), h, d});
  }
  AttentionEngine engine_{2};
  AttentionPlan plan_;
};

// Plain attention in LibTorch: softmax(q k^T / sqrt(D)) v, [B, N, H, D].
at::Tensor TorchDense(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const at::Tensor qt = q.transpose(1, 2).to(at::kDouble), kt = k.transpose(1, 2).to(at::kDouble);
  const at::Tensor vt = v.transpose(1, 2).to(at::kDouble);
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  const at::Tensor p = at::softmax(at::matmul(qt, kt.transpose(-1, -2)) * scale, -1);
  return at::matmul(p, vt).transpose(1, 2);
}

TEST_F(TorchAdapterTest, DenseEqualsPlainTorchAttention) {
  const at::Tensor q = Rand(), k = Rand(), v = Rand();
  AttentionConfig cfg;
  cfg.return_lse = true;
  auto r = RainFusionAttention(engine_, q, k, v, plan_, cfg);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->stats.sparse);
  EXPECT_EQ(r->stats.realized_sparsity, 0.0);
  EXPECT_EQ(r->stats.mask_seconds, 0.0);
  EXPECT_GT(r->stats.attention_seconds, 0.0);
  EXPECT_EQ(r->stats.backend.rfind("cpu-", 0), 0u);
  EXPECT_LT((r->out.to(at::kDouble) - TorchDense(q, k, v)).abs().max().item<double>(), 1e-5);
  // LSE = logsumexp of the scaled scores.
  const double scale = 1.0 / std::sqrt(32.0);
  const at::Tensor scores = at::matmul(q.transpose(1, 2).to(at::kDouble),
                                       k.transpose(1, 2).to(at::kDouble).transpose(-1, -2)) * scale;
  EXPECT_LT((r->lse.to(at::kDouble) - at::logsumexp(scores, -1)).abs().max().item<double>(), 1e-5);
}

TEST_F(TorchAdapterTest, SparseMatchesReferenceWithItsOwnMaskAndReportsStats) {
  const at::Tensor q = Rand(), k = Rand(), v = Rand();
  AttentionConfig cfg;
  cfg.sparsity = 0.8;
  auto mask = PredictBlockMask(engine_, q, k, plan_, cfg);
  ASSERT_TRUE(mask.ok()) << mask.status().ToString();
  EXPECT_FALSE(mask->dense);
  auto r = BlockSparseAttention(engine_, q, k, v, plan_, *mask, false);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->stats.sparse);
  EXPECT_FALSE(r->lse.defined());
  const int64_t nb = plan_.num_blocks();
  EXPECT_EQ(r->stats.total_blocks, 2 * 3 * nb * nb);
  EXPECT_EQ(r->stats.kept_blocks, mask->counts.sum().item<int64_t>());
  EXPECT_GT(r->stats.realized_sparsity, 0.3);
  EXPECT_LT(r->stats.realized_sparsity, 0.8);

  std::vector<double> ref;
  const TensorView qv = TensorView::Contiguous(q.data_ptr(), DType::kFloat32, 2, plan_.tokens(), 3, 32);
  const TensorView kv = TensorView::Contiguous(k.data_ptr(), DType::kFloat32, 2, plan_.tokens(), 3, 32);
  const TensorView vv = TensorView::Contiguous(v.data_ptr(), DType::kFloat32, 2, plan_.tokens(), 3, 32);
  const BlockMaskView mv{2, 3, nb, nb, mask->counts.data_ptr<int32_t>(), mask->indices.data_ptr<int32_t>()};
  ReferenceAttention(qv, kv, vv, plan_.blocks.view(), mv, 1.0 / std::sqrt(32.0), &ref, nullptr);
  const at::Tensor ref_t = at::from_blob(ref.data(), r->out.sizes(), at::kDouble);
  EXPECT_LT((r->out.to(at::kDouble) - ref_t).abs().max().item<double>(), 1e-5);
  // And it differs from dense: the mask really skipped blocks.
  EXPECT_GT((r->out.to(at::kDouble) - TorchDense(q, k, v)).abs().max().item<double>(), 1e-3);
}

// Mass-targeted masks give rows of uneven length; the kernel follows each
// row's own count. Head 0 has q = 0 (flat pooled softmax: many blocks), head 2
// a large q (peaked: few blocks).
TEST_F(TorchAdapterTest, MassMaskKeepsUnevenRowsAndMatchesReference) {
  at::Tensor q = Rand();
  const at::Tensor k = Rand(), v = Rand();
  q.select(2, 0).zero_();
  q.select(2, 2).mul_(40.0);
  AttentionConfig cfg;
  cfg.kept_mass = 0.6;
  auto mask = PredictBlockMask(engine_, q, k, plan_, cfg);
  ASSERT_TRUE(mask.ok()) << mask.status().ToString();
  EXPECT_FALSE(mask->dense);
  const double flat = mask->counts.select(1, 0).to(at::kDouble).mean().item<double>();
  const double peaked = mask->counts.select(1, 2).to(at::kDouble).mean().item<double>();
  EXPECT_GT(flat, peaked + 1.0);
  auto r = BlockSparseAttention(engine_, q, k, v, plan_, *mask, false);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->stats.kept_blocks, mask->counts.sum().item<int64_t>());
  const int64_t nb = plan_.num_blocks(), n = plan_.tokens();
  std::vector<double> ref;
  const TensorView qv = TensorView::Contiguous(q.data_ptr(), DType::kFloat32, 2, n, 3, 32);
  const TensorView kv = TensorView::Contiguous(k.data_ptr(), DType::kFloat32, 2, n, 3, 32);
  const TensorView vv = TensorView::Contiguous(v.data_ptr(), DType::kFloat32, 2, n, 3, 32);
  const BlockMaskView mv{2, 3, nb, nb, mask->counts.data_ptr<int32_t>(),
                         mask->indices.data_ptr<int32_t>()};
  ReferenceAttention(qv, kv, vv, plan_.blocks.view(), mv, 1.0 / std::sqrt(32.0), &ref, nullptr);
  const at::Tensor ref_t = at::from_blob(ref.data(), r->out.sizes(), at::kDouble);
  // Head 2's token logits reach about 200: fp32 rounding costs ~1e-5 there.
  EXPECT_LT((r->out.to(at::kDouble) - ref_t).abs().max().item<double>(), 1e-4);
}

TEST_F(TorchAdapterTest, PermuteOnceIsExactForDenseAttention) {
  // Attention is permutation-equivariant: permuting tokens, attending densely
  // and unpermuting gives the same as attending in the original order.
  const at::Tensor q = Rand(1, 2, 16), k = Rand(1, 2, 16), v = Rand(1, 2, 16);
  auto qp = PermuteTokens(engine_, q, plan_), kp = PermuteTokens(engine_, k, plan_),
       vp = PermuteTokens(engine_, v, plan_);
  ASSERT_TRUE(qp.ok() && kp.ok() && vp.ok());
  EXPECT_FALSE(at::equal(*qp, q));
  auto r = RainFusionAttention(engine_, *qp, *kp, *vp, plan_, AttentionConfig{});
  ASSERT_TRUE(r.ok());
  auto back = UnpermuteTokens(engine_, r->out, plan_);
  ASSERT_TRUE(back.ok());
  EXPECT_LT((back->to(at::kDouble) - TorchDense(q, k, v)).abs().max().item<double>(), 1e-5);
}

TEST_F(TorchAdapterTest, PermutesRopeTablesAndRoundTrips) {
  const at::Tensor table = at::randn({plan_.tokens(), 7});  // per-token table, token dim 0
  auto p = PermuteTokens(engine_, table, plan_, 0);
  ASSERT_TRUE(p.ok());
  for (int64_t i = 0; i < plan_.tokens(); i += 17) {
    EXPECT_TRUE(at::equal((*p)[i], table[plan_.permutation.gather[static_cast<size_t>(i)]]));
  }
  auto back = UnpermuteTokens(engine_, *p, plan_, 0);
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(at::equal(*back, table));
  // Non-contiguous input is handled too.
  const at::Tensor x = at::randn({2, 5, plan_.tokens()}).transpose(1, 2);  // [2, N, 5]
  auto px = PermuteTokens(engine_, x, plan_, 1);
  ASSERT_TRUE(px.ok());
  auto bx = UnpermuteTokens(engine_, *px, plan_, 1);
  ASSERT_TRUE(bx.ok());
  EXPECT_TRUE(at::equal(*bx, x));
}

TEST_F(TorchAdapterTest, StridedAndBFloat16InputsWork) {
  // q, k, v as views into one packed [B, N, 3, H, D] projection (strided tokens).
  const at::Tensor qkv = at::randn({1, plan_.tokens(), 3, 2, 32});
  const at::Tensor q = qkv.select(2, 0), k = qkv.select(2, 1), v = qkv.select(2, 2);
  ASSERT_FALSE(q.is_contiguous());
  auto r = RainFusionAttention(engine_, q, k, v, plan_, AttentionConfig{});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_LT((r->out.to(at::kDouble) - TorchDense(q, k, v)).abs().max().item<double>(), 1e-5);

  auto rb = RainFusionAttention(engine_, q.to(at::kBFloat16), k.to(at::kBFloat16),
                                v.to(at::kBFloat16), plan_, AttentionConfig{});
  ASSERT_TRUE(rb.ok()) << rb.status().ToString();
  EXPECT_EQ(rb->out.scalar_type(), at::kBFloat16);
  EXPECT_LT((rb->out.to(at::kDouble) - TorchDense(q, k, v)).abs().max().item<double>(), 5e-2);
}

TEST_F(TorchAdapterTest, BadInputsAreInvalidArgumentNamingTheTensor) {
  const at::Tensor q = Rand(), k = Rand(), v = Rand();
  auto expect = [&](const StatusOr<AttentionResult>& r, const std::string& needle) {
    ASSERT_FALSE(r.ok()) << needle;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().ToString();
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
  };
  AttentionConfig cfg;
  expect(RainFusionAttention(engine_, q[0], k, v, plan_, cfg), "q must be 4-d [B, N, H, D]");
  expect(RainFusionAttention(engine_, q, k.narrow(3, 0, 16), v, plan_, cfg), "k must have the shape of q");
  expect(RainFusionAttention(engine_, q, k, v.to(at::kDouble), plan_, cfg), "v must have q's dtype");
  expect(RainFusionAttention(engine_, q.to(at::kInt), k.to(at::kInt), v.to(at::kInt), plan_, cfg),
         "q must be float32, bfloat16 or float16");
  expect(RainFusionAttention(engine_, q.narrow(1, 0, 10), k, v, plan_, cfg), "q must have N = 240");
  expect(RainFusionAttention(engine_, at::Tensor(), k, v, plan_, cfg), "q is undefined");
  cfg.sparsity = 1.0;
  expect(RainFusionAttention(engine_, q, k, v, plan_, cfg), "sparsity must be in [0, 1)");
  auto p = PermuteTokens(engine_, at::randn({3, 4}), plan_, 0);
  EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument);
  TorchBlockMask wrong;
  wrong.counts = at::zeros({1}, at::kInt);
  auto r = BlockSparseAttention(engine_, q, k, v, plan_, wrong, false);
  EXPECT_NE(r.status().message().find("mask must hold int32 counts"), std::string::npos);
}

TEST_F(TorchAdapterTest, ShortSequencesRunDense) {
  const at::Tensor q = Rand(), k = Rand(), v = Rand();
  AttentionConfig cfg;
  cfg.sparsity = 0.9;
  cfg.min_sparse_blocks = plan_.num_blocks() + 1;
  auto r = RainFusionAttention(engine_, q, k, v, plan_, cfg);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->stats.sparse);
  EXPECT_EQ(r->stats.realized_sparsity, 0.0);
}

}  // namespace
}  // namespace rainserve::attention
