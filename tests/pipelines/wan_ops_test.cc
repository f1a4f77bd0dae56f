// The ATen (CPU) path of the Wan block's element-wise ops (pipelines/wan/wan_ops.h):
// accuracy against float64 in fp32 and bf16, the accepted shapes of the
// per-batch and per-token vectors, and input errors that name the tensor at fault. The
// CUDA kernels' rows are in tests/gpu/wan_ops_cuda_test.cc.
#include "pipelines/wan/wan_ops.h"

#include <gtest/gtest.h>

#include <string>

namespace rainserve {
namespace {

constexpr double kEps = 1e-6;

at::Tensor F64(const at::Tensor& t) { return t.to(at::kDouble); }

at::Tensor LayerNorm64(const at::Tensor& x) {
  const at::Tensor xd = F64(x);
  const at::Tensor mean = xd.mean(-1, /*keepdim=*/true);
  return (xd - mean) / at::sqrt((xd - mean).pow(2).mean(-1, /*keepdim=*/true) + kEps);
}

// Max |got - ref| in units of the error of rounding ref to got's dtype (for
// fp32 in units of 1e-6 max |ref|: fp32 rounding is below ATen's own error).
double ErrorRatio(const at::Tensor& got, const at::Tensor& ref) {
  const double err = (F64(got) - ref).abs().max().item<double>();
  const double unit =
      got.scalar_type() == at::kFloat
          ? 1e-6 * ref.abs().max().item<double>()
          : (ref.to(got.scalar_type()).to(at::kDouble) - ref).abs().max().item<double>();
  return err / unit;
}

class WanOpsTest : public ::testing::TestWithParam<at::ScalarType> {
 protected:
  void SetUp() override {
    at::manual_seed(3);
    x_ = (at::randn({B, N, C}) * 2 + 0.5).to(GetParam());
    y_ = at::randn({B, N, C}).to(GetParam());
    table_ = at::randn({B, 6, C}) * 0.5;
  }
  static constexpr int64_t B = 2, N = 37, C = 96;
  at::Tensor x_, y_, table_;
};

TEST_P(WanOpsTest, LayerNormsMatchFloat64) {
  const auto mod = table_.chunk(6, 1);
  auto modulated = wan_ops::ModulatedLayerNorm(x_, mod[1], mod[0], kEps);
  ASSERT_TRUE(modulated.ok()) << modulated.status().ToString();
  EXPECT_EQ(modulated->scalar_type(), GetParam());
  EXPECT_LE(ErrorRatio(*modulated, LayerNorm64(x_) * (1 + F64(mod[1])) + F64(mod[0])), 2.0);

  const at::Tensor w = table_[0][2], b = table_[1][3];
  auto affine = wan_ops::AffineLayerNorm(x_, w, b, kEps);
  ASSERT_TRUE(affine.ok()) << affine.status().ToString();
  EXPECT_LE(ErrorRatio(*affine, LayerNorm64(x_) * F64(w) + F64(b)), 2.0);
}

TEST_P(WanOpsTest, RmsNormRopeMatchesFloat64) {
  const int64_t H = 3, D = 32;
  const at::Tensor w = (table_[0][4] + 1).to(GetParam());
  const at::Tensor angles = at::rand({N, D / 2}) * 6.2831853;
  const at::Tensor cos = at::cos(angles), sin = at::sin(angles);
  const at::Tensor xd = F64(x_);
  const at::Tensor normed =
      (xd * at::rsqrt(xd.pow(2).mean(-1, true) + kEps) * F64(w)).view({B, N, H, D});
  const at::Tensor x1 = normed.view({B, N, H, D / 2, 2}).select(-1, 0);
  const at::Tensor x2 = normed.view({B, N, H, D / 2, 2}).select(-1, 1);
  const at::Tensor c = F64(cos).view({1, N, 1, D / 2}), s = F64(sin).view({1, N, 1, D / 2});
  const at::Tensor roped = at::stack({x1 * c - x2 * s, x1 * s + x2 * c}, -1).view({B, N, H, D});

  auto plain = wan_ops::RmsNormRope(x_, w, kEps, H, {}, {});
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  EXPECT_EQ(plain->sizes(), at::IntArrayRef({B, N, H, D}));
  EXPECT_LE(ErrorRatio(*plain, normed), 2.0);
  auto rotated = wan_ops::RmsNormRope(x_, w, kEps, H, cos, sin);
  ASSERT_TRUE(rotated.ok()) << rotated.status().ToString();
  // The ATen path rounds to the dtype between the norm and the rotation,
  // and the rotation mixes two rounded values: up to ~1 + sqrt(2) roundings.
  EXPECT_LE(ErrorRatio(*rotated, roped), 3.0);
}

TEST_P(WanOpsTest, GatedResidualMatchesFloat64) {
  const at::Tensor gate = table_.chunk(6, 1)[2];
  auto out = wan_ops::GatedResidual(x_, y_, gate);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_LE(ErrorRatio(*out, F64(x_) + F64(y_) * F64(gate)), 2.0);
}

TEST_P(WanOpsTest, PerBatchVectorShapesAgree) {
  const at::Tensor gate = table_.chunk(6, 1)[2];  // [B, 1, C], batch stride 6C
  auto a = wan_ops::GatedResidual(x_, y_, gate);
  auto b = wan_ops::GatedResidual(x_, y_, gate.reshape({B, C}).contiguous());
  ASSERT_TRUE(a.ok() && b.ok()) << b.status().ToString();
  EXPECT_TRUE(at::equal(*a, *b));
  const at::Tensor one = table_[0][5];  // [C], the same for every batch element
  auto c = wan_ops::GatedResidual(x_, y_, one);
  auto d = wan_ops::GatedResidual(x_, y_, one.expand({B, C}));
  ASSERT_TRUE(c.ok() && d.ok()) << d.status().ToString();
  EXPECT_TRUE(at::equal(*c, *d));
  EXPECT_FALSE(at::equal(*a, *c));
}

// The residual + LayerNorm ops are GatedResidual (or x + y without a gate)
// followed by the LayerNorm of the rounded sum, and as accurate as each.
TEST_P(WanOpsTest, ResidualLayerNormsAreTheResidualThenTheNorm) {
  const auto mod = table_.chunk(6, 1);
  auto gated = wan_ops::GatedResidualModulatedLayerNorm(x_, y_, mod[2], mod[1], mod[0], kEps);
  ASSERT_TRUE(gated.ok()) << gated.status().ToString();
  auto sum = wan_ops::GatedResidual(x_, y_, mod[2]);
  ASSERT_TRUE(sum.ok());
  EXPECT_TRUE(at::equal(gated->sum, *sum));
  auto norm = wan_ops::ModulatedLayerNorm(*sum, mod[1], mod[0], kEps);
  ASSERT_TRUE(norm.ok());
  EXPECT_TRUE(at::equal(gated->norm, *norm));
  EXPECT_LE(ErrorRatio(gated->sum, F64(x_) + F64(y_) * F64(mod[2])), 2.0);
  EXPECT_LE(ErrorRatio(gated->norm, LayerNorm64(gated->sum) * (1 + F64(mod[1])) + F64(mod[0])),
            2.0);

  const at::Tensor w = table_[0][2], b = table_[1][3];
  auto plain = wan_ops::GatedResidualAffineLayerNorm(x_, y_, {}, w, b, kEps);
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  EXPECT_TRUE(at::equal(plain->sum, x_ + y_));
  EXPECT_EQ(plain->norm.scalar_type(), GetParam());
  EXPECT_LE(ErrorRatio(plain->norm, LayerNorm64(x_ + y_) * F64(w) + F64(b)), 2.0);
}

// Per-token vectors [B, N, C] (per-frame timesteps gathered to the tokens):
// each token's row uses its own vector, as accurate as the per-batch form.
TEST_P(WanOpsTest, PerTokenVectorsApplyRowByRow) {
  const at::Tensor tok = at::randn({B, N, 3, C}) * 0.5;
  const at::Tensor scale = tok.select(2, 0), shift = tok.select(2, 1), gate = tok.select(2, 2);
  auto norm = wan_ops::ModulatedLayerNorm(x_, scale, shift, kEps);
  ASSERT_TRUE(norm.ok()) << norm.status().ToString();
  EXPECT_LE(ErrorRatio(*norm, LayerNorm64(x_) * (1 + F64(scale)) + F64(shift)), 2.0);
  auto fused = wan_ops::GatedResidualModulatedLayerNorm(x_, y_, gate, scale, shift, kEps);
  ASSERT_TRUE(fused.ok()) << fused.status().ToString();
  EXPECT_LE(ErrorRatio(fused->sum, F64(x_) + F64(y_) * F64(gate)), 2.0);
  auto residual = wan_ops::GatedResidual(x_, y_, gate);
  ASSERT_TRUE(residual.ok());
  EXPECT_TRUE(at::equal(fused->sum, *residual));
  // Token 5 of batch element 1 with its own vectors equals the per-batch op
  // given those vectors.
  auto one = wan_ops::ModulatedLayerNorm(x_, scale.select(1, 5).unsqueeze(1),
                                         shift.select(1, 5).unsqueeze(1), kEps);
  ASSERT_TRUE(one.ok());
  EXPECT_TRUE(at::equal((*norm)[1][5], (*one)[1][5]));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, WanOpsTest, ::testing::Values(at::kFloat, at::kBFloat16));

void ExpectInvalid(const StatusOr<at::Tensor>& r, const std::string& text) {
  ASSERT_FALSE(r.ok()) << "expected an error containing '" << text << "'";
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find(text), std::string::npos) << r.status().ToString();
}

TEST(WanOpsErrorsTest, BadInputsNameTheTensor) {
  const at::Tensor x = at::randn({2, 5, 16}), y = at::randn({2, 5, 16});
  const at::Tensor v = at::randn({2, 1, 16}), w = at::ones({16});
  ExpectInvalid(wan_ops::ModulatedLayerNorm(x[0], v, v, kEps), "x must be [B, N, C], got [5, 16]");
  ExpectInvalid(wan_ops::ModulatedLayerNorm(x, v.to(at::kBFloat16), v, kEps),
                "scale must be float32");
  ExpectInvalid(wan_ops::ModulatedLayerNorm(x, v, at::randn({3, 16}), kEps),
                "shift must be [B, 1, C]");
  ExpectInvalid(wan_ops::ModulatedLayerNorm(x.transpose(0, 1), v, v, kEps), "x must be contiguous");
  ExpectInvalid(wan_ops::ModulatedLayerNorm(x.to(at::kInt), v, v, kEps), "x must be float32");
  ExpectInvalid(wan_ops::AffineLayerNorm(x, v, w, kEps), "weight must be [C]");
  ExpectInvalid(wan_ops::AffineLayerNorm(x, w, at::Tensor(), kEps), "bias is undefined");
  ExpectInvalid(wan_ops::RmsNormRope(x, w, kEps, 3, {}, {}), "x must split into 3 heads");
  ExpectInvalid(wan_ops::RmsNormRope(x, at::ones({8}), kEps, 2, {}, {}), "weight must be [16]");
  ExpectInvalid(wan_ops::RmsNormRope(x, w, kEps, 2, at::ones({5, 4}), {}), "cos and sin must both");
  ExpectInvalid(wan_ops::RmsNormRope(x, w, kEps, 2, at::ones({5, 3}), at::ones({5, 4})),
                "cos must be [5, 4]");
  ExpectInvalid(wan_ops::RmsNormRope(x, w, kEps, 2, at::ones({5, 4}).to(at::kDouble),
                                     at::ones({5, 4})), "cos must be contiguous float32");
  ExpectInvalid(wan_ops::GatedResidual(x, at::randn({2, 4, 16}), v), "y must have x's shape");
  ExpectInvalid(wan_ops::GatedResidual(x, y.to(at::kBFloat16), v), "y must have x's dtype");
  ExpectInvalid(wan_ops::GatedResidual(x, y, at::Tensor()), "gate is undefined");
  auto residual_norm = [&](const at::Tensor& yy, const at::Tensor& gate, const at::Tensor& weight)
      -> StatusOr<at::Tensor> {
    auto r = wan_ops::GatedResidualAffineLayerNorm(x, yy, gate, weight, w, kEps);
    if (!r.ok()) return r.status();
    return r->norm;
  };
  ExpectInvalid(residual_norm(at::randn({2, 4, 16}), v, w), "y must have x's shape");
  ExpectInvalid(residual_norm(y, at::randn({3, 16}), w), "gate must be [B, 1, C]");
  ExpectInvalid(wan_ops::GatedResidual(x, y, at::randn({2, 4, 16})),
                "gate must be [B, 1, C], [B, N, C]");
  ExpectInvalid(residual_norm(y, v, v), "weight must be [C]");
  auto modulated = wan_ops::GatedResidualModulatedLayerNorm(x, y.to(at::kBFloat16), v, v, v, kEps);
  ASSERT_FALSE(modulated.ok());
  EXPECT_NE(modulated.status().message().find("GatedResidualModulatedLayerNorm: y must have x's dtype"),
            std::string::npos) << modulated.status().ToString();
}

TEST(WanOpsErrorsTest, CpuTensorsNeverTakeTheFusedKernels) {
  EXPECT_FALSE(wan_ops::FusedKernelsApply(at::randn({2, 5, 16}).to(at::kBFloat16)));
  EXPECT_FALSE(wan_ops::FusedKernelsApply(at::Tensor()));
}

}  // namespace
}  // namespace rainserve
