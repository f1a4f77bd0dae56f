// Parity rows of the fused element-wise kernels (pipelines/wan/cuda/fused_ops.cu,
// reached through pipelines/wan/wan_ops.h as WanTransformer does): LayerNorm +
// modulation, affine LayerNorm, RMSNorm with and without RoPE, gated
// residual, in bf16 and fp16, against a float64 ATen reference on the same
// 16-bit inputs. Tolerance: twice the error of rounding the float64 result to
// the output dtype (the best any 16-bit output can do). Then the whole Wan
// transformer on CUDA in bf16 with the fused ops against the CPU fp32 forward
// of the same weights (text-to-video, and image cross-attention with
// per-frame timesteps). Skips without a CUDA device.
//
//   ctest --test-dir build-gpu -R wan_ops_cuda_test --output-on-failure
#include <ATen/ATen.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <sstream>
#include <string>

#include "attention/engine.h"
#include "pipelines/wan/wan_ops.h"
#include "pipelines/wan/wan_transformer.h"
#include "tests/gpu/cuda_device.h"

namespace rainserve {
namespace {

using ::rainserve::testing::HasCudaDevice;

class WanOpsCudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HasCudaDevice()) GTEST_SKIP() << "no CUDA device";
    ASSERT_TRUE(at::hasCUDA()) << "a GPU is present but LibTorch was built without CUDA";
  }
};

struct Case {
  int64_t batch, tokens, channels;
  at::ScalarType dtype;
};

std::string Describe(const Case& c) {
  std::ostringstream s;
  s << "B=" << c.batch << " N=" << c.tokens << " C=" << c.channels << " " << c.dtype;
  return s.str();
}

// Inputs of one row: activations with a non-zero mean (so the LayerNorm
// mean matters), and a [B, 6, C] fp32 modulation table whose chunks (strided
// per-batch views, as in the model) differ between batch elements.
struct Inputs {
  at::Tensor x, y;  // [B, N, C] 16-bit, on the GPU
  at::Tensor table;  // [B, 6, C] fp32, on the GPU
};

Inputs MakeInputs(const Case& c, uint64_t seed) {
  at::manual_seed(seed);
  Inputs in;
  in.x = (at::randn({c.batch, c.tokens, c.channels}) * 2.0 + 0.75).to(c.dtype).cuda();
  in.y = at::randn({c.batch, c.tokens, c.channels}).to(c.dtype).cuda();
  in.table = (at::randn({c.batch, 6, c.channels}) * 0.5).cuda();
  return in;
}

at::Tensor Cpu64(const at::Tensor& t) { return t.cpu().to(at::kDouble); }

// Fails unless got (on the GPU) is within twice the rounding error of ref.
void ExpectWithinRounding(const at::Tensor& got, const at::Tensor& ref, at::ScalarType dtype,
                          const std::string& what) {
  ASSERT_EQ(got.scalar_type(), dtype) << what;
  ASSERT_EQ(got.sizes(), ref.sizes()) << what;
  const at::Tensor g = Cpu64(got);
  ASSERT_FALSE(g.isnan().any().item<bool>()) << what;
  const double err = (g - ref).abs().max().item<double>();
  const double rounding = (ref.to(dtype).to(at::kDouble) - ref).abs().max().item<double>();
  ASSERT_GT(rounding, 0.0) << what;
  EXPECT_LE(err, 2.0 * rounding) << what << ": rounding the reference errs " << rounding;
}

// LayerNorm over the last dim in float64, without affine.
at::Tensor LayerNorm64(const at::Tensor& x, double eps) {
  const at::Tensor xd = Cpu64(x);
  const at::Tensor mean = xd.mean(-1, /*keepdim=*/true);
  const at::Tensor var = (xd - mean).pow(2).mean(-1, /*keepdim=*/true);
  return (xd - mean) / at::sqrt(var + eps);
}

const Case kCases[] = {
    {2, 333, 1536, at::kBFloat16}, {2, 333, 1536, at::kHalf},  // Wan2.1-1.3B width
    {2, 77, 5120, at::kBFloat16},  {2, 77, 5120, at::kHalf},   // Wan2.1-14B: 2 vectors/thread
    {2, 1, 136, at::kBFloat16},    {1, 9, 136, at::kHalf},     // partial warp, one token
    {1, 33, 8192, at::kBFloat16},  // the widest row: 2 warps per CTA with a residual
};

TEST_F(WanOpsCudaTest, ModulatedLayerNormMatchesFloat64) {
  const double eps = 1e-6;
  for (const Case& c : kCases) {
    SCOPED_TRACE(Describe(c));
    const Inputs in = MakeInputs(c, 1 + c.channels);
    ASSERT_TRUE(wan_ops::FusedKernelsApply(in.x));
    const auto mod = in.table.chunk(6, 1);  // [B, 1, C] views, batch stride 6C
    auto got = wan_ops::ModulatedLayerNorm(in.x, mod[1], mod[0], eps);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    const at::Tensor ref = LayerNorm64(in.x, eps) * (1 + Cpu64(mod[1])) + Cpu64(mod[0]);
    ExpectWithinRounding(*got, ref, c.dtype, "modulated layer norm");
  }
}

TEST_F(WanOpsCudaTest, AffineLayerNormMatchesFloat64) {
  const double eps = 1e-6;
  for (const Case& c : kCases) {
    SCOPED_TRACE(Describe(c));
    const Inputs in = MakeInputs(c, 2 + c.channels);
    const at::Tensor w = in.table[0][2] + 1, b = in.table[0][3];  // [C]: broadcast over B
    auto got = wan_ops::AffineLayerNorm(in.x, w, b, eps);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    ExpectWithinRounding(*got, LayerNorm64(in.x, eps) * Cpu64(w) + Cpu64(b), c.dtype,
                         "affine layer norm");
  }
}

TEST_F(WanOpsCudaTest, RmsNormWithAndWithoutRopeMatchesFloat64) {
  const double eps = 1e-6;
  struct Heads {
    int64_t heads, head_dim;
  };
  // 12 x 128 (1.3B), 40 x 128 (14B), 6 x 20 (vectors of 8 span two heads).
  for (const Heads& h : {Heads{12, 128}, Heads{40, 128}, Heads{6, 20}}) {
    for (at::ScalarType dtype : {at::kBFloat16, at::kHalf}) {
      const Case c{2, 123, h.heads * h.head_dim, dtype};
      SCOPED_TRACE(Describe(c));
      const int64_t B = c.batch, N = c.tokens, H = h.heads, D = h.head_dim;
      const Inputs in = MakeInputs(c, 3 + c.channels);
      // The model keeps norm_q/norm_k weights in its own dtype.
      const at::Tensor w = (in.table[1][4] + 1).to(dtype);
      const at::Tensor angles = at::rand({N, D / 2}) * 6.2831853;
      const at::Tensor cos = at::cos(angles).cuda(), sin = at::sin(angles).cuda();

      const at::Tensor xd = Cpu64(in.x);
      const at::Tensor normed =
          (xd * at::rsqrt(xd.pow(2).mean(-1, /*keepdim=*/true) + eps) * Cpu64(w))
              .view({B, N, H, D});
      const at::Tensor pairs = normed.view({B, N, H, D / 2, 2});
      const at::Tensor x1 = pairs.select(-1, 0), x2 = pairs.select(-1, 1);
      const at::Tensor c64 = Cpu64(cos).view({1, N, 1, D / 2});
      const at::Tensor s64 = Cpu64(sin).view({1, N, 1, D / 2});
      const at::Tensor roped =
          at::stack({x1 * c64 - x2 * s64, x1 * s64 + x2 * c64}, -1).view({B, N, H, D});

      auto with_rope = wan_ops::RmsNormRope(in.x, w, eps, H, cos, sin);
      ASSERT_TRUE(with_rope.ok()) << with_rope.status().ToString();
      ExpectWithinRounding(*with_rope, roped, dtype, "rms norm + rope");
      auto without = wan_ops::RmsNormRope(in.x, w, eps, H, {}, {});
      ASSERT_TRUE(without.ok()) << without.status().ToString();
      ExpectWithinRounding(*without, normed, dtype, "rms norm");
    }
  }
}

TEST_F(WanOpsCudaTest, GatedResidualMatchesFloat64) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(Describe(c));
    const Inputs in = MakeInputs(c, 4 + c.channels);
    const at::Tensor gate = in.table.chunk(6, 1)[2];
    auto got = wan_ops::GatedResidual(in.x, in.y, gate);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    ExpectWithinRounding(*got, Cpu64(in.x) + Cpu64(in.y) * Cpu64(gate), c.dtype, "gated residual");
  }
}

// A residual fused with the norm after it: the sum within rounding of the
// exact sum, the norm within rounding of the exact norm of the stored sum.
TEST_F(WanOpsCudaTest, ResidualLayerNormsMatchFloat64) {
  const double eps = 1e-6;
  for (const Case& c : kCases) {
    SCOPED_TRACE(Describe(c));
    const Inputs in = MakeInputs(c, 7 + c.channels);
    const auto mod = in.table.chunk(6, 1);
    auto gated =
        wan_ops::GatedResidualModulatedLayerNorm(in.x, in.y, mod[2], mod[1], mod[0], eps);
    ASSERT_TRUE(gated.ok()) << gated.status().ToString();
    ExpectWithinRounding(gated->sum, Cpu64(in.x) + Cpu64(in.y) * Cpu64(mod[2]), c.dtype,
                         "gated residual sum");
    ExpectWithinRounding(gated->norm,
                         LayerNorm64(gated->sum, eps) * (1 + Cpu64(mod[1])) + Cpu64(mod[0]),
                         c.dtype, "modulated layer norm of the sum");

    const at::Tensor w = in.table[0][2] + 1, b = in.table[0][3];
    auto plain = wan_ops::GatedResidualAffineLayerNorm(in.x, in.y, {}, w, b, eps);
    ASSERT_TRUE(plain.ok()) << plain.status().ToString();
    ExpectWithinRounding(plain->sum, Cpu64(in.x) + Cpu64(in.y), c.dtype, "plain residual sum");
    ExpectWithinRounding(plain->norm, LayerNorm64(plain->sum, eps) * Cpu64(w) + Cpu64(b), c.dtype,
                         "affine layer norm of the sum");
  }
}

// Per-channel vectors the kernels cannot read 16 bytes at a time (a view 4
// bytes off alignment) are copied first: same result as an aligned copy.
TEST_F(WanOpsCudaTest, MisalignedVectorsGiveTheSameResult) {
  const Case c{2, 65, 1536, at::kBFloat16};
  const Inputs in = MakeInputs(c, 8);
  const at::Tensor wide = at::randn({c.batch, 1, c.channels + 1}, in.table.options());
  const at::Tensor gate = wide.narrow(2, 1, c.channels);  // data 4 bytes past alignment
  auto odd = wan_ops::GatedResidual(in.x, in.y, gate);
  auto even = wan_ops::GatedResidual(in.x, in.y, gate.contiguous());
  ASSERT_TRUE(odd.ok() && even.ok()) << odd.status().ToString();
  EXPECT_TRUE(at::equal(*odd, *even));
  auto odd_norm = wan_ops::ModulatedLayerNorm(in.x, gate, gate, 1e-6);
  auto even_norm = wan_ops::ModulatedLayerNorm(in.x, gate.contiguous(), gate.contiguous(), 1e-6);
  ASSERT_TRUE(odd_norm.ok() && even_norm.ok()) << odd_norm.status().ToString();
  EXPECT_TRUE(at::equal(*odd_norm, *even_norm));
}

TEST_F(WanOpsCudaTest, RowsTheKernelsRefuseRunOnAten) {
  // C = 12 is not a multiple of 8; fp32 activations have no fused kernel.
  for (const auto& [channels, dtype] : {std::pair<int64_t, at::ScalarType>{12, at::kBFloat16},
                                        {64, at::kFloat}}) {
    const Inputs in = MakeInputs({2, 5, channels, dtype}, 5);
    EXPECT_FALSE(wan_ops::FusedKernelsApply(in.x));
    const auto mod = in.table.chunk(6, 1);
    auto fused = wan_ops::ModulatedLayerNorm(in.x, mod[1], mod[0], 1e-6, ElementwiseImpl::kFused);
    auto aten = wan_ops::ModulatedLayerNorm(in.x, mod[1], mod[0], 1e-6, ElementwiseImpl::kAten);
    ASSERT_TRUE(fused.ok() && aten.ok()) << fused.status().ToString();
    EXPECT_TRUE(at::equal(*fused, *aten));
  }
}

// Per-token vectors [B, N, C] (per-frame timesteps): the kernels read
// per-batch vectors only, so kFused runs the ATen ops, bit for bit.
TEST_F(WanOpsCudaTest, PerTokenVectorsRunOnAten) {
  const Inputs in = MakeInputs({2, 65, 1536, at::kBFloat16}, 10);
  ASSERT_TRUE(wan_ops::FusedKernelsApply(in.x));
  const at::Tensor tok = at::randn({2, 65, 3, 1536}, in.table.options());
  const at::Tensor scale = tok.select(2, 0), shift = tok.select(2, 1), gate = tok.select(2, 2);
  for (ElementwiseImpl impl : {ElementwiseImpl::kFused, ElementwiseImpl::kAten}) {
    auto norm =
        wan_ops::GatedResidualModulatedLayerNorm(in.x, in.y, gate, scale, shift, 1e-6, impl);
    auto plain = wan_ops::ModulatedLayerNorm(in.x, scale, shift, 1e-6, impl);
    auto residual = wan_ops::GatedResidual(in.x, in.y, gate, impl);
    ASSERT_TRUE(norm.ok() && plain.ok() && residual.ok()) << norm.status().ToString();
    const at::Tensor ref = Cpu64(in.x) + Cpu64(in.y) * Cpu64(gate);
    ExpectWithinRounding(norm->sum, ref, at::kBFloat16, "per-token gated residual");
    ExpectWithinRounding(*plain, LayerNorm64(in.x, 1e-6) * (1 + Cpu64(scale)) + Cpu64(shift),
                         at::kBFloat16, "per-token modulated layer norm");
    EXPECT_TRUE(at::equal(norm->sum, *residual));
  }
}

TEST_F(WanOpsCudaTest, MismatchedInputsAreErrorsNotLaunches) {
  const Inputs in = MakeInputs({2, 7, 64, at::kBFloat16}, 6);
  auto cpu_gate = wan_ops::GatedResidual(in.x, in.y, in.table.chunk(6, 1)[2].cpu());
  ASSERT_FALSE(cpu_gate.ok());
  EXPECT_NE(cpu_gate.status().message().find("gate must be on x's device"), std::string::npos)
      << cpu_gate.status().ToString();
  auto bad_cos = wan_ops::RmsNormRope(in.x, at::ones({64}, in.table.options()), 1e-6, 2,
                                      at::ones({7, 15}, in.table.options()),
                                      at::ones({7, 16}, in.table.options()));
  ASSERT_FALSE(bad_cos.ok());
  EXPECT_NE(bad_cos.status().message().find("cos must be [7, 16]"), std::string::npos)
      << bad_cos.status().ToString();
}

// The Wan transformer `config` with RainFusion (dense) on CUDA in bf16, fused
// ops on and off, against the CPU fp32 forward of the same bf16-representable
// weights: the fused forward errs at most twice as much as the unfused one.
void ExpectCudaForwardMatchesCpu(const WanTransformerConfig& config, const at::Tensor& lat,
                                 const at::Tensor& t, const at::Tensor& text,
                                 const at::Tensor& image) {
  char tmpl[] = "/tmp/rainserve-wan-ops-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  ASSERT_TRUE(WanTransformer::Random(config, at::kBFloat16, at::kCPU, 3)->Save(dir, 1 << 30).ok());
  auto cpu = WanTransformer::Load(dir, at::kFloat, at::kCPU);
  auto gpu = WanTransformer::Load(dir, at::kBFloat16, at::Device(at::kCUDA, 0));
  ASSERT_TRUE(cpu.ok()) << cpu.status().ToString();
  ASSERT_TRUE(gpu.ok()) << gpu.status().ToString();

  attention::AttentionEngine engine(2);
  WanForwardOptions options;
  options.engine = &engine;  // dense (the default)
  options.image_embeds = image;
  auto ref = (*cpu)->Forward(lat, t, text, options);
  ASSERT_TRUE(ref.ok()) << ref.status().ToString();
  const auto bf16_cuda = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  ASSERT_TRUE(wan_ops::FusedKernelsApply(at::zeros({2, 240, config.inner_dim()}, bf16_cuda)));
  WanForwardOptions gpu_options = options;
  if (image.defined()) gpu_options.image_embeds = image.cuda();
  auto fused = (*gpu)->Forward(lat.cuda(), t.cuda(), text.cuda(), gpu_options);
  ASSERT_TRUE(fused.ok()) << fused.status().ToString();
  WanForwardOptions unfused_options = gpu_options;
  unfused_options.elementwise = ElementwiseImpl::kAten;
  auto unfused = (*gpu)->Forward(lat.cuda(), t.cuda(), text.cuda(), unfused_options);
  ASSERT_TRUE(unfused.ok()) << unfused.status().ToString();

  const at::Tensor r = ref->to(at::kDouble);
  const double scale = r.abs().max().item<double>();
  const double fused_err = (Cpu64(*fused) - r).abs().max().item<double>() / scale;
  const double unfused_err = (Cpu64(*unfused) - r).abs().max().item<double>() / scale;
  std::printf("bf16 CUDA vs fp32 CPU, max error / max |ref|: fused %.3g, unfused %.3g\n", fused_err,
              unfused_err);
  EXPECT_LE(fused_err, 2.0 * unfused_err);
  EXPECT_LT(fused_err, 0.1);
  // The fused RMSNorm + RoPE skips a bf16 rounding: the paths differ, so the
  // fused kernels did run.
  EXPECT_FALSE(at::equal(*fused, *unfused));
  // Plain C calls: PyTorch's libtorch carries its own std::filesystem.
  for (const char* file : {"/config.json", "/diffusion_pytorch_model.safetensors"}) {
    std::remove((dir + file).c_str());
  }
  rmdir(dir.c_str());
}

WanTransformerConfig SmallCudaConfig() {
  WanTransformerConfig config;
  config.num_attention_heads = 2;
  config.attention_head_dim = 64;  // the CUDA attention kernel takes 64 and 128
  config.in_channels = 4;
  config.out_channels = 4;
  config.text_dim = 16;
  config.freq_dim = 32;
  config.ffn_dim = 256;
  config.num_layers = 2;
  return config;
}

TEST_F(WanOpsCudaTest, TransformerForwardOnCudaMatchesCpu) {
  at::manual_seed(9);
  const at::Tensor lat = at::randn({2, 4, 5, 12, 16});  // 5 x 6 x 8 tokens: partial windows
  ExpectCudaForwardMatchesCpu(SmallCudaConfig(), lat, at::tensor({900.0f, 250.0f}),
                              at::randn({2, 7, 16}), {});
}

// Image cross-attention (I2V: 12 = 4 + 4 + 4 input channels) with per-frame
// timesteps (TI2V image mode: frame 0 at 0), whose modulation runs on ATen.
TEST_F(WanOpsCudaTest, ImageAttentionAndPerFrameTimestepsOnCudaMatchCpu) {
  WanTransformerConfig config = SmallCudaConfig();
  config.in_channels = 12;
  config.image_dim = 32;
  config.added_kv_proj_dim = config.inner_dim();
  at::manual_seed(10);
  const at::Tensor lat = at::randn({2, 12, 5, 12, 16});
  const at::Tensor t = at::tensor({0.0f, 900.0f, 900.0f, 900.0f, 900.0f,  //
                                   0.0f, 250.0f, 250.0f, 250.0f, 250.0f})
                           .view({2, 5});
  ExpectCudaForwardMatchesCpu(config, lat, t, at::randn({2, 7, 16}), at::randn({2, 9, 32}));
}

}  // namespace
}  // namespace rainserve
