// FP8 linear layers (pipelines/wan/wan_fp8.h, pipelines/wan/cuda/fp8_linear.cu):
// per-row e4m3 quantization against its error bound (plain and after
// GELU(tanh), vectorised and scalar rows, all-zero rows), the cuBLASLt FP8
// GEMM against the float64 product of the dequantized operands (so each
// row's and each column's scale must land where it belongs), the quantize
// fused into the residual + LayerNorm kernel against quantizing that
// kernel's output, and whole Wan transformers with linear_precision fp8
// against the same weights in bf16 (cosine >= 0.995, fewer parameter bytes).
// Skips without a CUDA device.
//
//   ctest --test-dir build-gpu -R wan_fp8_cuda_test --output-on-failure
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "attention/engine.h"
#include "pipelines/wan/wan_fp8.h"
#include "pipelines/wan/wan_ops.h"
#include "pipelines/wan/wan_transformer.h"
#include "tests/gpu/cuda_device.h"

namespace rainserve {
namespace {

using ::rainserve::testing::HasCudaDevice;

class WanFp8CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
    ASSERT_TRUE(at::hasCUDA()) << "a GPU is present but LibTorch was built without CUDA";
  }
};

// The value of an e4m3 bit pattern (1 sign, 4 exponent bits with bias 7, 3
// mantissa bits; exponent 0 is subnormal; S.1111.111 is NaN).
double DecodeE4m3(int b) {
  const int exp = (b >> 3) & 0xF, man = b & 7;
  double v = exp == 0 ? std::ldexp(man / 8.0, -6) : std::ldexp(1.0 + man / 8.0, exp - 7);
  if (exp == 15 && man == 7) v = NAN;
  return (b & 0x80) ? -v : v;
}

// rows' values data * scale as float64 [M, K] on the CPU.
at::Tensor Dequantize(const wan_ops::Fp8Rows& rows) {
  std::vector<double> table(256);
  for (int b = 0; b < 256; ++b) table[b] = DecodeE4m3(b);
  const at::Tensor lut = at::tensor(table, at::kDouble);
  const at::Tensor bytes = rows.data.cpu().contiguous();
  const at::Tensor values = lut.index_select(0, bytes.flatten().to(at::kLong)).view(bytes.sizes());
  return values * rows.scale.cpu().to(at::kDouble).unsqueeze(1);
}

// [rows, cols] values whose rows span six decades (each row its own scale),
// row `zero_row` all zero; bf16 on the GPU.
at::Tensor SpreadRows(int64_t rows, int64_t cols, int64_t zero_row, uint64_t seed) {
  at::manual_seed(seed);
  const at::Tensor magnitude = at::pow(10.0, at::rand({rows, 1}) * 6 - 3);
  at::Tensor x = at::randn({rows, cols}) * magnitude;
  if (zero_row >= 0) x[zero_row].zero_();
  return x.to(at::kBFloat16).cuda();
}

// Round to nearest e4m3 from value v / scale: at most half a step, which is
// 2^-4 of the value for normals and 2^-10 of the scale in the subnormal
// range; `slop` absorbs the fp32 arithmetic before the rounding.
void ExpectWithinHalfStep(const at::Tensor& ref, const wan_ops::Fp8Rows& q, double slop,
                          const std::string& what) {
  const at::Tensor dq = Dequantize(q);
  ASSERT_FALSE(dq.isnan().any().item<bool>()) << what;
  const at::Tensor scale = q.scale.cpu().to(at::kDouble).unsqueeze(1);
  const at::Tensor bound = ref.abs() * (std::ldexp(1.0, -4) + slop) + scale * std::ldexp(1.0, -10);
  const at::Tensor excess = (dq - ref).abs() - bound;
  EXPECT_LE(excess.max().item<double>(), 0.0)
      << what << ": worst |x - dq(q(x))| over its bound at " << excess.argmax().item<int64_t>();
}

TEST_F(WanFp8CudaTest, QuantizeRoundTripIsWithinHalfAStepAndScalesAreAmaxOver448) {
  // 80 and 1536: the vectorised path; 100: the element path (not a multiple of 8).
  for (const int64_t cols : {80, 100, 1536}) {
    const std::string what = "cols=" + std::to_string(cols);
    const at::Tensor x = SpreadRows(37, cols, 5, cols);
    auto q = wan_ops::QuantizeRows(x);
    ASSERT_TRUE(q.ok()) << q.status().ToString();
    ASSERT_EQ(q->data.sizes(), (std::vector<int64_t>{37, cols})) << what;
    ASSERT_EQ(q->data.scalar_type(), at::kByte) << what;
    const at::Tensor xf = x.cpu().to(at::kFloat);
    at::Tensor want = xf.abs().amax(1) / 448.0f;
    want[5] = 1.0f;  // the all-zero row
    EXPECT_TRUE(at::allclose(q->scale.cpu(), want, 1e-6, 0)) << what;
    EXPECT_EQ(q->data[5].cpu().sum().item<int64_t>(), 0) << what;
    // Each row's largest element lands on e4m3's largest finite value, +-448.
    const at::Tensor top = q->data.cpu().bitwise_and(0x7F).to(at::kInt).amax(1);
    EXPECT_EQ(top[0].item<int>(), 0x7E) << what;
    ExpectWithinHalfStep(xf.to(at::kDouble), *q, 1e-6, what);
  }
}

TEST_F(WanFp8CudaTest, GeluQuantizeIsWithinHalfAStepOfTheFloat64Gelu) {
  for (const int64_t cols : {96, 100}) {
    at::manual_seed(3);
    const at::Tensor x = (at::randn({33, cols}) * 3).to(at::kBFloat16).cuda();
    auto q = wan_ops::QuantizeRows(x, /*gelu_tanh=*/true);
    ASSERT_TRUE(q.ok()) << q.status().ToString();
    const at::Tensor ref = at::gelu(x.cpu().to(at::kDouble), "tanh");
    const at::Tensor want = ref.abs().amax(1) / 448.0;
    EXPECT_TRUE(at::allclose(q->scale.cpu().to(at::kDouble), want, 1e-5, 0)) << "cols=" << cols;
    ExpectWithinHalfStep(ref, *q, 1e-5, "gelu cols=" + std::to_string(cols));
  }
}

// A layer as the loader makes it: the weight quantized by QuantizeWanLinears.
WanLinear QuantizedLayer(const at::Tensor& weight, const at::Tensor& bias) {
  NamedTensors params = {{"blocks.0.attn1.to_q.weight", weight}};
  const Status s = QuantizeWanLinears(weight.device(), &params);
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(params.size(), 2u);
  EXPECT_EQ(params.at(1).first, "blocks.0.attn1.to_q.weight_scale");
  return {params.at(0).second, bias, params.at(1).second};
}

// Both paths: outer-vector scales in cuBLASLt where it takes them (the
// default), and the fallback's unscaled GEMM + scale kernel.
TEST_F(WanFp8CudaTest, Fp8LinearEqualsTheDequantizedProductWithEachRowAndColumnScale) {
  constexpr int64_t K = 160, N = 48;
  const at::Tensor w = SpreadRows(N, K, 7, 11);  // out channels of very different sizes
  const at::Tensor bias = (at::randn({N}) * 0.1).to(at::kBFloat16).cuda();
  const WanLinear layer = QuantizedLayer(w, bias);
  const wan_ops::Fp8Rows wq{layer.weight, layer.weight_scale};
  const at::Tensor w_dq = Dequantize(wq);
  for (const bool scale_kernel : {false, true}) {
    for (const int64_t M : {1, 77, 300}) {
      const at::Tensor x = SpreadRows(M, K, M > 1 ? M / 2 : -1, 20 + M);
      auto xq = wan_ops::QuantizeRows(x);
      ASSERT_TRUE(xq.ok());
      Fp8LinearOptions options;
      options.scale_kernel = scale_kernel;
      auto y = Fp8Linear(*xq, layer, options);
      ASSERT_TRUE(y.ok()) << y.status().ToString();
      ASSERT_EQ(y->sizes(), (std::vector<int64_t>{M, N}));
      ASSERT_EQ(y->scalar_type(), at::kBFloat16);
      const at::Tensor x_dq = Dequantize(*xq);
      const at::Tensor ref = at::matmul(x_dq, w_dq.t()) + bias.cpu().to(at::kDouble);
      // bf16 output rounding (2^-9 relative, allowed twice; of the product
      // before the bias too, which the scale-kernel path rounds once more) plus
      // the accumulation's rounding, 2^-12 of the sum of absolute products
      // (Hopper's FP8 tensor cores keep fewer bits than fp32 between cuBLAS's
      // promotions). A scale applied to the wrong row or column errs by orders
      // of magnitude (rows and channels span six decades); a lost bias shows
      // on the rows of tiny magnitude.
      const at::Tensor product = at::matmul(x_dq, w_dq.t());
      const at::Tensor mag = at::matmul(x_dq.abs(), w_dq.abs().t());
      const at::Tensor bound =
          (ref.abs() + product.abs()) * std::ldexp(1.0, -8) + mag * std::ldexp(1.0, -12);
      const at::Tensor excess = (y->cpu().to(at::kDouble) - ref).abs() - bound;
      EXPECT_LE(excess.max().item<double>(), 0.0)
          << "M=" << M << ", worst element " << excess.argmax().item<int64_t>() << ", path "
          << Fp8GemmPathUsed();
      if (!scale_kernel && M == 300) {
        std::printf("fp8 GEMM default path: %s\n", Fp8GemmPathUsed().c_str());
      }
    }
  }
}

TEST_F(WanFp8CudaTest, WeightsWhoseSizesAreNotMultiplesOf16AreRefusedNamingLinearPrecision) {
  NamedTensors params = {{"blocks.0.ffn.net.2.weight", at::ones({48, 24}, at::kBFloat16).cuda()}};
  const Status s = QuantizeWanLinears(at::Device(at::kCUDA, 0), &params);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message().rfind("linear_precision: fp8 needs linear weights whose sizes", 0), 0u)
      << s.message();
  EXPECT_EQ(params.at(0).second.scalar_type(), at::kBFloat16);  // unchanged
}

// The residual + LayerNorm kernel's e4m3 rows are exactly what quantizing
// its bf16 output gives (same bytes, same scales), for a modulated and an
// affine norm, at the Wan 1.3B and 14B widths, with an odd token count.
TEST_F(WanFp8CudaTest, NormFusedQuantizeEqualsQuantizingTheNormOutput) {
  for (const int64_t C : {1536, 5120}) {
    at::manual_seed(C);
    const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
    const at::Tensor x = at::randn({2, 45, C}, bf16) * 2 + 0.5;
    const at::Tensor y = at::randn({2, 45, C}, bf16);
    const at::Tensor table = at::randn({2, 3, C}, at::TensorOptions().device(at::kCUDA)) * 0.5;
    const at::Tensor gate = table.select(1, 0).unsqueeze(1),
                     scale = table.select(1, 1).unsqueeze(1),
                     shift = table.select(1, 2).unsqueeze(1);
    auto mod = wan_ops::GatedResidualModulatedLayerNorm(x, y, gate, scale, shift, 1e-6,
                                                        ElementwiseImpl::kFused, true);
    const at::Tensor w = at::randn({C}, at::TensorOptions().device(at::kCUDA));
    auto aff = wan_ops::GatedResidualAffineLayerNorm(x, y, gate, w, w * 0.1, 1e-6,
                                                     ElementwiseImpl::kFused, true);
    for (auto* r : {&mod, &aff}) {
      ASSERT_TRUE(r->ok()) << r->status().ToString();
      ASSERT_TRUE((*r)->norm_fp8.defined());
      auto ref = wan_ops::QuantizeRows((*r)->norm);
      ASSERT_TRUE(ref.ok());
      EXPECT_TRUE(at::equal((*r)->norm_fp8.data, ref->data)) << "C=" << C;
      EXPECT_TRUE(at::equal((*r)->norm_fp8.scale, ref->scale)) << "C=" << C;
    }
  }
}

double Cosine(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.cpu().to(at::kDouble).flatten(), y = b.cpu().to(at::kDouble).flatten();
  return (x.dot(y) / (x.norm() * y.norm())).item<double>();
}

// A small Wan transformer (2 heads x 64, ffn 256, 2 blocks) in bf16 on CUDA,
// with image cross-attention when image_dim > 0.
WanTransformerConfig SmallConfig(int64_t image_dim) {
  WanTransformerConfig c;
  c.num_attention_heads = 2;
  c.attention_head_dim = 64;  // the CUDA attention kernel takes 64 and 128
  c.in_channels = 16;
  c.out_channels = 16;
  c.text_dim = 64;
  c.freq_dim = 32;
  c.ffn_dim = 256;
  c.num_layers = 2;
  if (image_dim > 0) {
    c.image_dim = image_dim;
    c.added_kv_proj_dim = c.inner_dim();
  }
  return c;
}

// One forward shape of the fp8-vs-bf16 test.
struct ForwardCase {
  int64_t image_dim;            // 0: text-to-video
  std::vector<int64_t> latents;  // [B, 16, F, H, W]
};

// The same random weights in bf16 and with linear_precision fp8: one forward
// each (fused element-wise ops, and for fp8 the ATen ones too, whose norms
// quantize in a separate pass) has cosine >= 0.995 against bf16 and is not
// identical to it; the fp8 model holds fewer parameter bytes, by exactly
// the bf16 weights replaced with one byte per element plus an fp32 scale
// per output channel. The last case has 2 x 16,640 token rows: the FP8
// feed-forward runs in two chunks (32,768 rows and the rest).
TEST_F(WanFp8CudaTest, Fp8TransformerMatchesBf16WithFewerParameterBytes) {
  const at::Device cuda(at::kCUDA, 0);
  attention::AttentionEngine engine(2);
  const std::vector<ForwardCase> cases = {
      {0, {2, 16, 3, 8, 8}}, {32, {2, 16, 3, 8, 8}}, {0, {2, 16, 1, 256, 260}}};
  for (const ForwardCase& fc : cases) {
    const std::string what = "image_dim " + std::to_string(fc.image_dim) + ", latents " +
                             std::to_string(fc.latents[3]) + "x" + std::to_string(fc.latents[4]);
    const WanTransformerConfig c = SmallConfig(fc.image_dim);
    auto bf16 = WanTransformer::Random(c, at::kBFloat16, cuda, 5);
    auto fp8 = WanTransformer::Random(c, at::kBFloat16, cuda, 5);
    int64_t saved = 0;
    for (const auto& [name, t] : bf16->NamedParameters()) {
      if (WanFp8Linear(name)) saved += t.numel() - 4 * t.size(0);
    }
    ASSERT_GT(saved, 0);
    ASSERT_TRUE(fp8->QuantizeLinearsToFp8(cuda).ok());
    ASSERT_TRUE(fp8->fp8());
    EXPECT_EQ(ParameterBytes(fp8->NamedParameters()),
              ParameterBytes(bf16->NamedParameters()) - static_cast<uint64_t>(saved));

    at::manual_seed(9);
    const at::Tensor latents = at::randn(fc.latents).to(at::kBFloat16).cuda();
    const at::Tensor text = at::randn({2, 12, 64}).to(at::kBFloat16).cuda();
    const at::Tensor t = at::tensor({999.0f, 500.0f}).cuda();
    WanForwardOptions o;
    o.engine = &engine;
    if (fc.image_dim > 0) {
      o.image_embeds = at::randn({2, 7, fc.image_dim}).to(at::kBFloat16).cuda();
    }
    auto ref = bf16->Forward(latents, t, text, o);
    ASSERT_TRUE(ref.ok()) << ref.status().ToString();
    for (const ElementwiseImpl ew : {ElementwiseImpl::kFused, ElementwiseImpl::kAten}) {
      o.elementwise = ew;
      auto got = fp8->Forward(latents, t, text, o);
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      const double cosine = Cosine(*got, *ref);
      std::printf("%s, %s element-wise ops: fp8 vs bf16 cosine %.6f\n", what.c_str(),
                  ew == ElementwiseImpl::kFused ? "fused" : "aten", cosine);
      EXPECT_GE(cosine, 0.995) << what;
      EXPECT_LT(cosine, 1.0 - 1e-7) << what << ": equals bf16, the FP8 layers did not run";
    }
  }
}

}  // namespace
}  // namespace rainserve
