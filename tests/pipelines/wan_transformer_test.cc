// WanTransformer3DModel in LibTorch with RainFusion2.0 inside: shapes,
// determinism, the permute-once contract, sparse behaviour, parameter names
// and checkpoint loading; image cross-attention (I2V, FLF2V) and per-frame
// timesteps (TI2V) against a reference forward written from diffusers'
// formulas in plain ATen ops.
#include "pipelines/wan/wan_transformer.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "pipelines/core/safetensors.h"
#include "pipelines/wan/wan_fp8.h"
#include "tests/pipelines/wan_test_config.h"

namespace rainserve {
namespace {

std::string TempDir() {
  char tmpl[] = "/tmp/rainserve-wan-XXXXXX";
  return mkdtemp(tmpl);
}

// A smooth latent video (low-frequency waves over frames and space) + noise,
// so neighbouring tokens look alike the way real latents do.
at::Tensor SmoothLatents(int64_t b, int64_t f, int64_t h, int64_t w, uint64_t seed) {
  at::manual_seed(seed);
  const at::Tensor t = at::arange(f, at::kFloat).view({1, 1, f, 1, 1});
  const at::Tensor y = at::arange(h, at::kFloat).view({1, 1, 1, h, 1});
  const at::Tensor x = at::arange(w, at::kFloat).view({1, 1, 1, 1, w});
  const at::Tensor phase = at::rand({b, 4, 1, 1, 1}) * 6.28;
  return at::sin(0.4 * t + 0.25 * y + 0.2 * x + phase) + 0.1 * at::randn({b, 4, f, h, w});
}

class WanTransformerTest : public ::testing::Test {
 protected:
  std::unique_ptr<WanTransformer> model_ =
      WanTransformer::Random(testing::TinyWanTransformerConfig(), at::kFloat, at::kCPU, 7);
  attention::AttentionEngine engine_{2};
  at::Tensor text_ = at::randn({2, 5, 8});
  at::Tensor t_ = at::tensor({999.0f, 500.0f});
};

TEST_F(WanTransformerTest, OutputShapeAndDeterminism) {
  const at::Tensor lat = SmoothLatents(2, 3, 8, 12, 1);
  WanForwardOptions o;
  o.engine = &engine_;
  auto a = model_->Forward(lat, t_, text_, o);
  auto b = model_->Forward(lat, t_, text_, o);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->sizes(), lat.sizes());
  EXPECT_TRUE(at::equal(*a, *b));
  EXPECT_FALSE(a->isnan().any().item<bool>());
  // The two batch elements have different timesteps and text: different outputs.
  EXPECT_FALSE(at::allclose((*a)[0], (*a)[1]));
}

TEST_F(WanTransformerTest, PermutedDenseForwardEqualsUnpermutedPlainAttention) {
  const at::Tensor lat = SmoothLatents(2, 5, 16, 20, 2);  // 5 x 8 x 10 tokens: partial windows
  WanForwardOptions ours;
  ours.engine = &engine_;
  ours.attention.dense_kernel = attention::DenseKernel::kOurs;
  WanForwardOptions plain = ours;
  plain.attention.dense_kernel = attention::DenseKernel::kTorch;
  WanForwardStats st;
  auto a = model_->Forward(lat, t_, text_, ours, &st);
  auto b = model_->Forward(lat, t_, text_, plain);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_FALSE(st.sparse);
  EXPECT_LT((*a - *b).abs().max().item<double>(), 2e-5 * (1 + b->abs().max().item<double>()));
}

TEST_F(WanTransformerTest, SparseAttentionChangesOutputsSlightlyAndReportsSparsity) {
  const at::Tensor lat = SmoothLatents(2, 9, 32, 32, 3);  // 9 x 16 x 16 = 2304 tokens, 18 blocks
  WanForwardOptions dense;
  dense.engine = &engine_;
  WanForwardOptions sparse = dense;
  sparse.sparse.mode = attention::AttentionMode::kRainFusion;
  sparse.sparse.sparsity = 0.5;
  WanForwardStats ds, ss;
  auto a = model_->Forward(lat, t_, text_, dense, &ds);
  auto b = model_->Forward(lat, t_, text_, sparse, &ss);
  ASSERT_TRUE(a.ok() && b.ok()) << b.status().ToString();
  EXPECT_FALSE(ds.sparse);
  EXPECT_TRUE(ss.sparse);
  EXPECT_GT(ss.realized_sparsity, 0.2);
  EXPECT_LT(ss.realized_sparsity, 0.5);
  EXPECT_EQ(ss.tokens, 2304);
  const double rel = ((*b - *a).norm() / a->norm()).item<double>();
  EXPECT_GT(rel, 1e-6);  // really sparse
  EXPECT_LT(rel, 0.1);   // but close to dense
  // Sharing the first layer's mask across layers gives the same sparsity class.
  WanForwardOptions shared = sparse;
  shared.sparse.mask_refresh = MaskRefresh::kPerStep;
  WanForwardStats sh;
  auto c = model_->Forward(lat, t_, text_, shared, &sh);
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(sh.sparse);
  EXPECT_NEAR(sh.realized_sparsity, ss.realized_sparsity, 0.1);
}

TEST_F(WanTransformerTest, ParameterNamesAndShapesMatchDiffusers) {
  const char* env = std::getenv("RAINSERVE_SOURCE_DIR");
  std::ifstream in(std::string(env ? env : RAINSERVE_SOURCE_DIR_DEFAULT) +
                   "/tests/pipelines/data/wan_tiny_transformer_params.txt");
  ASSERT_TRUE(in.good());
  std::set<std::string> expected;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line[0] != '#') expected.insert(line);
  }
  std::set<std::string> ours;
  for (const auto& [name, t] : model_->NamedParameters()) {
    std::ostringstream s;
    s << name << " ";
    for (int64_t i = 0; i < t.dim(); ++i) s << (i ? "," : "") << t.size(i);
    ours.insert(s.str());
  }
  EXPECT_EQ(ours, expected);
}

TEST_F(WanTransformerTest, SaveLoadRoundTripAndCheckpointMismatchesAreReported) {
  const std::string dir = TempDir();
  ASSERT_TRUE(model_->Save(dir, 20000).ok());  // small shards: exercises the index
  std::ifstream index(dir + "/diffusion_pytorch_model.safetensors.index.json");
  EXPECT_TRUE(index.good());
  auto loaded = WanTransformer::Load(dir, at::kFloat, at::kCPU);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  const at::Tensor lat = SmoothLatents(2, 3, 8, 12, 4);
  WanForwardOptions o;
  o.engine = &engine_;
  EXPECT_TRUE(at::equal(*model_->Forward(lat, t_, text_, o), *(*loaded)->Forward(lat, t_, text_, o)));

  // A checkpoint missing one tensor, with one extra and one mis-shaped.
  auto params = model_->NamedParameters();
  params.erase(params.begin() + 3);
  params.push_back({"blocks.0.attn1.to_q.extra", at::ones({2})});
  for (auto& [name, t] : params) {
    if (name == "proj_out.bias") t = at::zeros({5});
  }
  const std::string bad = TempDir();
  std::ofstream(bad + "/config.json")
      << WanTransformerConfigJson(testing::TinyWanTransformerConfig());
  ASSERT_TRUE(WriteSafetensors(bad + "/diffusion_pytorch_model.safetensors", params).ok());
  auto err = WanTransformer::Load(bad, at::kFloat, at::kCPU);
  ASSERT_FALSE(err.ok());
  const std::string m = err.status().message();
  EXPECT_NE(m.find("1 missing (" + model_->NamedParameters()[3].first + ")"), std::string::npos) << m;
  EXPECT_NE(m.find("1 unexpected (blocks.0.attn1.to_q.extra)"), std::string::npos) << m;
  EXPECT_NE(m.find("proj_out.bias [5] (config expects [16])"), std::string::npos) << m;
}

// linear_precision fp8 quantizes exactly the blocks' attention and FFN
// linear weights (with image cross-attention: its key/value projections too).
TEST(WanFp8Test, Fp8QuantizesExactlyTheBlockLinearWeights) {
  WanTransformerConfig c = testing::TinyWanTransformerConfig();
  c.image_dim = 12;
  c.added_kv_proj_dim = c.inner_dim();
  std::set<std::string> picked;
  for (const auto& [name, shape] : WanExpectedParameters(c)) {
    if (WanFp8Linear(name)) picked.insert(name);
  }
  std::set<std::string> expected;
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    for (const char* l : {"attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q",
                          "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "attn2.add_k_proj",
                          "attn2.add_v_proj", "ffn.net.0.proj", "ffn.net.2"}) {
      expected.insert(b + l + ".weight");
    }
  }
  EXPECT_EQ(picked, expected);
}

// Models that cannot run FP8 are refused with an error naming
// linear_precision, and keep their weights.
TEST(WanFp8Test, Fp8IsRefusedForNonBf16AndCpuQuantizationLeavingTheModelUnchanged) {
  auto fp32 = WanTransformer::Random(testing::TinyWanTransformerConfig(), at::kFloat, at::kCPU, 3);
  const Status dtype = fp32->QuantizeLinearsToFp8(at::kCPU);
  EXPECT_EQ(dtype.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(dtype.message().rfind("linear_precision: fp8 needs dtype bf16", 0), 0u)
      << dtype.message();

  auto bf16 =
      WanTransformer::Random(testing::TinyWanTransformerConfig(), at::kBFloat16, at::kCPU, 3);
  const uint64_t bytes = ParameterBytes(bf16->NamedParameters());
  const Status cpu = bf16->QuantizeLinearsToFp8(at::kCPU);
  EXPECT_EQ(cpu.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(cpu.message(), "linear_precision: fp8 runs on CUDA devices only, got cpu");
  EXPECT_FALSE(bf16->fp8());
  EXPECT_EQ(ParameterBytes(bf16->NamedParameters()), bytes);
  attention::AttentionEngine engine(1);
  WanForwardOptions o;
  o.engine = &engine;
  auto out = bf16->Forward(SmoothLatents(1, 1, 4, 4, 2).to(at::kBFloat16), at::tensor({500.0f}),
                           at::randn({1, 3, 8}), o);
  EXPECT_TRUE(out.ok()) << out.status().ToString();
}

TEST(WanConfigTest, ParsesPublishedConfigAndRejectsBadValues) {
  const std::string published = R"({
    "_class_name": "WanTransformer3DModel", "_diffusers_version": "0.33.0.dev0",
    "added_kv_proj_dim": null, "attention_head_dim": 128, "cross_attn_norm": true,
    "eps": 1e-06, "ffn_dim": 8960, "freq_dim": 256, "image_dim": null, "in_channels": 16,
    "num_attention_heads": 12, "num_layers": 30, "out_channels": 16, "patch_size": [1, 2, 2],
    "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024, "text_dim": 4096})";
  auto c = ParseWanTransformerConfig(published, "config.json");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->inner_dim(), 1536);
  EXPECT_EQ(c->ffn_dim, 8960);
  EXPECT_EQ(c->num_layers, 30);
  auto bad = [](const std::string& json, const std::string& needle) {
    auto r = ParseWanTransformerConfig(json, "cfg.json");
    ASSERT_FALSE(r.ok()) << json;
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
  };
  bad(R"({"num_layers": 0})", "cfg.json: num_layers: expected integer in [1, 1024]");
  bad(R"({"patch_size": [1, 2]})", "patch_size: expected [t, h, w]");
  bad(R"({"qk_norm": "layer_norm"})", "qk_norm: only");
  bad(R"({"attention_head_dim": 15})", "must be even");
  bad(R"({"_class_name": "FluxTransformer2DModel"})", "expected WanTransformer3DModel");
  bad("{", "bad JSON");
  // Round trip through our writer.
  auto again = ParseWanTransformerConfig(WanTransformerConfigJson(*c), "x");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->ffn_dim, 8960);
}

TEST_F(WanTransformerTest, BadInputsAreErrors) {
  WanForwardOptions o;
  o.engine = &engine_;
  EXPECT_FALSE(model_->Forward(at::randn({2, 3, 3, 8, 8}), t_, text_, o).ok());   // channels
  EXPECT_FALSE(model_->Forward(at::randn({2, 4, 3, 7, 8}), t_, text_, o).ok());   // H odd
  EXPECT_FALSE(model_->Forward(at::randn({2, 4, 3, 8, 8}), at::ones({3}), text_, o).ok());
  EXPECT_FALSE(model_->Forward(at::randn({2, 4, 3, 8, 8}), t_, at::randn({2, 5, 9}), o).ok());
  o.engine = nullptr;
  auto r = model_->Forward(at::randn({2, 4, 3, 8, 8}), t_, text_, o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("engine"), std::string::npos);
}

// --- Image cross-attention and per-frame timesteps ---------------------------

// The reference forward, written from diffusers' WanTransformer3DModel with
// plain ATen ops in fp32, in the original token order, with one timestep per
// token ([B, N], the reference's ts_seq_len path) and no fusion: the oracle
// that our permuted, fused, per-frame forward must match.
class ReferenceWan {
 public:
  explicit ReferenceWan(const WanTransformer& m) : c_(m.config()) {
    for (const auto& [name, t] : m.NamedParameters()) p_[name] = t.to(at::kFloat);
  }

  // latents [B, C, F, H, W]; t_tok [B, N]; text [B, L, text_dim];
  // image [B, S, image_dim] or undefined.
  at::Tensor Forward(const at::Tensor& latents, const at::Tensor& t_tok, const at::Tensor& text,
                     const at::Tensor& image) const {
    const auto& ps = c_.patch_size;
    const int64_t B = latents.size(0), F = latents.size(2) / ps[0];
    const int64_t H = latents.size(3) / ps[1], W = latents.size(4) / ps[2], N = F * H * W;
    const int64_t inner = c_.inner_dim();
    at::Tensor x = at::conv3d(latents, P("patch_embedding.weight"), P("patch_embedding.bias"),
                              {ps[0], ps[1], ps[2]})
                       .flatten(2)
                       .transpose(1, 2);  // [B, N, inner]
    const int64_t half = c_.freq_dim / 2;
    const at::Tensor freqs = at::exp(at::arange(half, at::kFloat) * (-std::log(10000.0) / half));
    const at::Tensor args = t_tok.flatten().to(at::kFloat).unsqueeze(1) * freqs.unsqueeze(0);
    const at::Tensor ts = at::cat({at::cos(args), at::sin(args)}, 1);
    const std::string te = "condition_embedder.time_embedder.";
    const at::Tensor temb =
        Lin(at::silu(Lin(ts, te + "linear_1")), te + "linear_2").view({B, N, inner});
    const at::Tensor tproj =
        Lin(at::silu(temb), "condition_embedder.time_proj").view({B, N, 6, inner});
    const std::string tx = "condition_embedder.text_embedder.";
    const at::Tensor ctx = Lin(at::gelu(Lin(text, tx + "linear_1"), "tanh"), tx + "linear_2");
    const at::Tensor img = image.defined() ? ImageEmbedder(image) : at::Tensor();
    const auto [cos, sin] = Rope(F, H, W);
    for (int64_t i = 0; i < c_.num_layers; ++i) {
      const std::string b = "blocks." + std::to_string(i) + ".";
      x = Block(b, x, (P(b + "scale_shift_table").unsqueeze(0) + tproj).unbind(2), ctx, img, cos,
                sin);
    }
    const auto out = (P("scale_shift_table").unsqueeze(0) + temb.unsqueeze(2)).unbind(2);
    x = Lin(Ln(x) * (1 + out[1]) + out[0], "proj_out");
    return x.reshape({B, F, H, W, ps[0], ps[1], ps[2], c_.out_channels})
        .permute({0, 7, 1, 4, 2, 5, 3, 6})
        .reshape({B, c_.out_channels, F * ps[0], H * ps[1], W * ps[2]});
  }

 private:
  at::Tensor P(const std::string& name) const { return p_.at(name); }
  at::Tensor Lin(const at::Tensor& x, const std::string& n) const {
    return at::linear(x, P(n + ".weight"), P(n + ".bias"));
  }
  at::Tensor Ln(const at::Tensor& x) const {
    return at::layer_norm(x, {x.size(-1)}, {}, {}, c_.eps);
  }
  at::Tensor Rms(const at::Tensor& x, const std::string& w) const {
    return x * at::rsqrt(x.pow(2).mean(-1, true) + c_.eps) * P(w);
  }
  // q [B, Nq, inner], k, v [B, Nk, inner] -> softmax(q k^T / sqrt(hd)) v [B, Nq, inner].
  at::Tensor Attn(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) const {
    const int64_t heads = c_.num_attention_heads, hd = c_.attention_head_dim;
    auto split = [&](const at::Tensor& t) {
      return t.view({t.size(0), t.size(1), heads, hd}).transpose(1, 2);
    };
    const at::Tensor s = at::matmul(split(q), split(k).transpose(-1, -2)) / std::sqrt(double(hd));
    const at::Tensor o = at::matmul(at::softmax(s, -1), split(v));  // [B, heads, Nq, hd]
    return o.transpose(1, 2).reshape({q.size(0), q.size(1), heads * hd});
  }
  // Rotates interleaved pairs of each head by the token's angles [N, hd/2].
  at::Tensor Rotate(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const {
    const auto sz = x.sizes().vec();
    const at::Tensor p = x.view({sz[0], sz[1], c_.num_attention_heads, -1, 2});
    const at::Tensor a = p.select(-1, 0), b = p.select(-1, 1);
    const at::Tensor co = cos.view({1, sz[1], 1, -1}), si = sin.view({1, sz[1], 1, -1});
    return at::stack({a * co - b * si, a * si + b * co}, -1).view(sz);
  }
  std::pair<at::Tensor, at::Tensor> Rope(int64_t f, int64_t h, int64_t w) const {
    const int64_t D = c_.attention_head_dim, dh = 2 * (D / 6), dt = D - 2 * dh;
    auto axis = [](int64_t dim, int64_t len) {
      const at::Tensor inv =
          1.0 / at::pow(10000.0, at::arange(0, dim, 2, at::kDouble) / double(dim));
      return at::outer(at::arange(len, at::kDouble), inv);
    };
    const at::Tensor ang = at::cat({axis(dt, f).view({f, 1, 1, -1}).expand({f, h, w, dt / 2}),
                                    axis(dh, h).view({1, h, 1, -1}).expand({f, h, w, dh / 2}),
                                    axis(dh, w).view({1, 1, w, -1}).expand({f, h, w, dh / 2})},
                                   -1)
                               .reshape({f * h * w, D / 2});
    return {at::cos(ang).to(at::kFloat), at::sin(ang).to(at::kFloat)};
  }
  at::Tensor ImageEmbedder(at::Tensor x) const {
    const std::string e = "condition_embedder.image_embedder.";
    if (p_.count(e + "pos_embed")) x = x + P(e + "pos_embed");
    x = at::layer_norm(x, {x.size(-1)}, P(e + "norm1.weight"), P(e + "norm1.bias"), 1e-5);
    x = Lin(at::gelu(Lin(x, e + "ff.net.0.proj")), e + "ff.net.2");
    return at::layer_norm(x, {x.size(-1)}, P(e + "norm2.weight"), P(e + "norm2.bias"), 1e-5);
  }
  // mod: shift, scale, gate, c_shift, c_scale, c_gate, each [B, N, inner].
  at::Tensor Block(const std::string& b, at::Tensor x, const std::vector<at::Tensor>& mod,
                   const at::Tensor& ctx, const at::Tensor& img, const at::Tensor& cos,
                   const at::Tensor& sin) const {
    at::Tensor h = Ln(x) * (1 + mod[1]) + mod[0];
    const at::Tensor q = Rotate(Rms(Lin(h, b + "attn1.to_q"), b + "attn1.norm_q.weight"), cos, sin);
    const at::Tensor k = Rotate(Rms(Lin(h, b + "attn1.to_k"), b + "attn1.norm_k.weight"), cos, sin);
    x = x + Lin(Attn(q, k, Lin(h, b + "attn1.to_v")), b + "attn1.to_out.0") * mod[2];
    h = c_.cross_attn_norm
            ? at::layer_norm(x, {x.size(-1)}, P(b + "norm2.weight"), P(b + "norm2.bias"), c_.eps)
            : x;
    const at::Tensor q2 = Rms(Lin(h, b + "attn2.to_q"), b + "attn2.norm_q.weight");
    at::Tensor o = Attn(q2, Rms(Lin(ctx, b + "attn2.to_k"), b + "attn2.norm_k.weight"),
                        Lin(ctx, b + "attn2.to_v"));
    if (img.defined()) {
      o = o + Attn(q2, Rms(Lin(img, b + "attn2.add_k_proj"), b + "attn2.norm_added_k.weight"),
                   Lin(img, b + "attn2.add_v_proj"));
    }
    x = x + Lin(o, b + "attn2.to_out.0");
    h = Ln(x) * (1 + mod[4]) + mod[3];
    return x + Lin(at::gelu(Lin(h, b + "ffn.net.0.proj"), "tanh"), b + "ffn.net.2") * mod[5];
  }

  WanTransformerConfig c_;
  std::map<std::string, at::Tensor> p_;
};

// timestep [B, F] -> per token [B, N] in raster order (H * W tokens a frame).
at::Tensor PerToken(const at::Tensor& t, int64_t tokens_per_frame) {
  return t.repeat_interleave(tokens_per_frame, 1);
}

double MaxRelDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>() / (1 + b.abs().max().item<double>());
}

// The tiny I2V config: 36-style input (latents 4 + mask 4 + condition 4 =
// 12 channels), 4 output channels, image tokens of width 12.
WanTransformerConfig TinyI2vConfig(int64_t pos_embed_seq_len = 0) {
  WanTransformerConfig c = testing::TinyWanTransformerConfig();
  c.in_channels = 12;
  c.image_dim = 12;
  c.added_kv_proj_dim = c.inner_dim();
  c.pos_embed_seq_len = pos_embed_seq_len;
  return c;
}

class WanI2vTransformerTest : public ::testing::Test {
 protected:
  WanForwardOptions Options(const at::Tensor& image) {
    WanForwardOptions o;
    o.engine = &engine_;
    o.attention.dense_kernel = attention::DenseKernel::kOurs;  // the permuted order
    o.image_embeds = image;
    return o;
  }
  std::unique_ptr<WanTransformer> model_ =
      WanTransformer::Random(TinyI2vConfig(), at::kFloat, at::kCPU, 11);
  attention::AttentionEngine engine_{2};
  at::Tensor latents_ = at::cat(
      {SmoothLatents(2, 3, 8, 12, 5), SmoothLatents(2, 3, 8, 12, 6), SmoothLatents(2, 3, 8, 12, 7)},
      1);  // [2, 12, 3, 8, 12]
  at::Tensor text_ = at::randn({2, 5, 8});
  at::Tensor image_ = at::randn({2, 7, 12});
  at::Tensor t_ = at::tensor({999.0f, 500.0f});
};

TEST_F(WanI2vTransformerTest, ForwardShapeIsOutChannelsAndImageTokensMatter) {
  auto a = model_->Forward(latents_, t_, text_, Options(image_));
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->sizes(), (std::vector<int64_t>{2, 4, 3, 8, 12}));
  // Other image tokens (not a shifted copy: the embedder's LayerNorm removes shifts).
  auto b = model_->Forward(latents_, t_, text_, Options(at::randn({2, 7, 12})));
  ASSERT_TRUE(b.ok());
  EXPECT_GT(MaxRelDiff(*a, *b), 1e-3);
}

TEST_F(WanI2vTransformerTest, ImageCrossAttentionEqualsReferenceFormulas) {
  // Batch element 0 at 999, element 1 at 500: the per-token reference sees
  // each element's time on all its tokens.
  auto ours = model_->Forward(latents_, t_, text_, Options(image_));
  ASSERT_TRUE(ours.ok()) << ours.status().ToString();
  const at::Tensor t_tok = t_.unsqueeze(1).expand({2, 3 * 4 * 6});
  const at::Tensor ref = ReferenceWan(*model_).Forward(latents_, t_tok, text_, image_);
  EXPECT_LT(MaxRelDiff(*ours, ref), 2e-5);
}

TEST_F(WanI2vTransformerTest, PositionEmbeddedImageTokensEqualReferenceFormulas) {
  auto model = WanTransformer::Random(TinyI2vConfig(6), at::kFloat, at::kCPU, 12);
  for (const auto& [name, t] : model->NamedParameters()) {
    if (name == "condition_embedder.image_embedder.pos_embed") t.normal_();  // zeros at init
  }
  const at::Tensor image = at::randn({2, 6, 12});
  auto ours = model->Forward(latents_, t_, text_, Options(image));
  ASSERT_TRUE(ours.ok()) << ours.status().ToString();
  const at::Tensor ref =
      ReferenceWan(*model).Forward(latents_, t_.unsqueeze(1).expand({2, 72}), text_, image);
  EXPECT_LT(MaxRelDiff(*ours, ref), 2e-5);
  // The position embedding is applied: without it the output differs.
  for (const auto& [name, t] : model->NamedParameters()) {
    if (name == "condition_embedder.image_embedder.pos_embed") t.zero_();
  }
  EXPECT_GT(MaxRelDiff(*model->Forward(latents_, t_, text_, Options(image)), *ours), 1e-4);
  // pos_embed_seq_len fixes the image token count.
  auto wrong = model->Forward(latents_, t_, text_, Options(at::randn({2, 7, 12})));
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find("image_embeds must be [2, 6, 12]"), std::string::npos)
      << wrong.status().message();
}

TEST_F(WanI2vTransformerTest, ParametersSaveLoadRoundTripIdentical) {
  std::set<std::string> names;
  for (const auto& [name, t] : model_->NamedParameters()) names.insert(name);
  for (const char* n :
       {"condition_embedder.image_embedder.norm1.weight",
        "condition_embedder.image_embedder.norm1.bias",
        "condition_embedder.image_embedder.ff.net.0.proj.weight",
        "condition_embedder.image_embedder.ff.net.2.weight",
        "condition_embedder.image_embedder.norm2.bias", "blocks.1.attn2.add_k_proj.weight",
        "blocks.1.attn2.add_v_proj.bias", "blocks.0.attn2.norm_added_k.weight"}) {
    EXPECT_EQ(names.count(n), 1u) << n;
  }
  EXPECT_EQ(names.count("condition_embedder.image_embedder.pos_embed"), 0u);
  const std::string dir = TempDir();
  ASSERT_TRUE(model_->Save(dir, 20000).ok());
  auto loaded = WanTransformer::Load(dir, at::kFloat, at::kCPU);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ((*loaded)->config().image_dim, 12);
  EXPECT_EQ((*loaded)->config().in_channels, 12);
  EXPECT_TRUE(at::equal(*model_->Forward(latents_, t_, text_, Options(image_)),
                        *(*loaded)->Forward(latents_, t_, text_, Options(image_))));
}

TEST_F(WanI2vTransformerTest, ImageEmbedsRequiredExactlyWhenTheModelHasImageAttention) {
  auto missing = model_->Forward(latents_, t_, text_, Options({}));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find("image_embeds is required"), std::string::npos);
  auto bad_width = model_->Forward(latents_, t_, text_, Options(at::randn({2, 7, 5})));
  ASSERT_FALSE(bad_width.ok());
  EXPECT_NE(bad_width.status().message().find("image_embeds must be"), std::string::npos);
  auto t2v = WanTransformer::Random(testing::TinyWanTransformerConfig(), at::kFloat, at::kCPU, 3);
  auto extra = t2v->Forward(SmoothLatents(2, 3, 8, 12, 1), t_, text_, Options(image_));
  ASSERT_FALSE(extra.ok());
  EXPECT_EQ(extra.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(extra.status().message().find("image_embeds given"), std::string::npos);
}

// Per-frame timesteps on a text-to-video model in the permuted order (our
// dense kernel, 3 latent frames: windows of 2 frames and the frame-0 sink).
class WanPerFrameTimestepTest : public WanTransformerTest {
 protected:
  WanForwardOptions Options() {
    WanForwardOptions o;
    o.engine = &engine_;
    o.attention.dense_kernel = attention::DenseKernel::kOurs;
    return o;
  }
  at::Tensor lat_ = SmoothLatents(2, 3, 16, 20, 8);  // 3 x 8 x 10 tokens
};

TEST_F(WanPerFrameTimestepTest, EqualFrameTimesGiveTheBatchTimestepOutput) {
  const at::Tensor per_frame = t_.unsqueeze(1).expand({2, 3}).contiguous();
  auto a = model_->Forward(lat_, t_, text_, Options());
  auto b = model_->Forward(lat_, per_frame, text_, Options());
  ASSERT_TRUE(a.ok() && b.ok()) << b.status().ToString();
  // Equal up to fp32 round-off: the time MLP's GEMMs run on B * F rows
  // instead of B, which may sum in another order.
  EXPECT_LT(MaxRelDiff(*b, *a), 1e-6);
}

TEST_F(WanPerFrameTimestepTest, EachTokenTakesItsFramesTimeAsTheReferenceDoes) {
  // Image mode of TI2V: frame 0 at 0, the others at t; and fully distinct times.
  for (const at::Tensor& per_frame :
       {at::tensor({0.0f, 900.0f, 900.0f, 0.0f, 300.0f, 300.0f}).view({2, 3}),
        at::tensor({999.0f, 10.0f, 500.0f, 250.0f, 750.0f, 0.0f}).view({2, 3})}) {
    auto ours = model_->Forward(lat_, per_frame, text_, Options());
    ASSERT_TRUE(ours.ok()) << ours.status().ToString();
    const at::Tensor ref =
        ReferenceWan(*model_).Forward(lat_, PerToken(per_frame, 8 * 10), text_, {});
    EXPECT_LT(MaxRelDiff(*ours, ref), 2e-5);
    // And differs from the forward at batch times (the frames' times matter).
    EXPECT_GT(MaxRelDiff(*ours, *model_->Forward(lat_, t_, text_, Options())), 1e-3);
  }
  // The same through the step cache's seam and the LibTorch dense order.
  WanForwardOptions plain = Options();
  plain.attention.dense_kernel = attention::DenseKernel::kTorch;
  const at::Tensor per_frame =
      at::tensor({0.0f, 900.0f, 900.0f, 0.0f, 300.0f, 300.0f}).view({2, 3});
  const at::Tensor ref = ReferenceWan(*model_).Forward(lat_, PerToken(per_frame, 80), text_, {});
  EXPECT_LT(MaxRelDiff(*model_->Forward(lat_, per_frame, text_, plain), ref), 2e-5);
}

TEST_F(WanPerFrameTimestepTest, TimestepShapeIsChecked) {
  auto r = model_->Forward(lat_, at::ones({2, 4}), text_, Options());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("timestep must be [B] or [B, F]"), std::string::npos)
      << r.status().message();
  EXPECT_NE(r.status().message().find("F = 3, got [2, 4]"), std::string::npos);
  EXPECT_FALSE(model_->Forward(lat_, at::ones({2, 3, 1}), text_, Options()).ok());
  // One latent frame: [B, 1] is the [B] form.
  const at::Tensor one = SmoothLatents(2, 1, 16, 20, 9);
  EXPECT_TRUE(at::equal(*model_->Forward(one, t_.view({2, 1}), text_, Options()),
                        *model_->Forward(one, t_, text_, Options())));
}

TEST(WanConfigTest, ParsesPublishedImageToVideoAndTi2vConfigs) {
  // Wan2.1-I2V-14B-480P-Diffusers/transformer/config.json
  const std::string i2v = R"({
    "_class_name": "WanTransformer3DModel", "_diffusers_version": "0.33.0.dev0",
    "added_kv_proj_dim": 5120, "attention_head_dim": 128, "cross_attn_norm": true,
    "eps": 1e-06, "ffn_dim": 13824, "freq_dim": 256, "image_dim": 1280, "in_channels": 36,
    "num_attention_heads": 40, "num_layers": 40, "out_channels": 16, "patch_size": [1, 2, 2],
    "pos_embed_seq_len": null, "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024,
    "text_dim": 4096})";
  auto c = ParseWanTransformerConfig(i2v, "config.json");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(c->has_image_attention());
  EXPECT_EQ(c->image_dim, 1280);
  EXPECT_EQ(c->added_kv_proj_dim, 5120);
  EXPECT_EQ(c->pos_embed_seq_len, 0);
  EXPECT_EQ(c->in_channels, 36);
  EXPECT_EQ(c->out_channels, 16);
  EXPECT_EQ(*WanLatentInputOf(*c, "config.json"), WanLatentInput::kMaskAndCondition);
  auto again = ParseWanTransformerConfig(WanTransformerConfigJson(*c), "x");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->image_dim, 1280);
  EXPECT_EQ(again->added_kv_proj_dim, 5120);
  EXPECT_EQ(again->in_channels, 36);

  // Wan2.2-TI2V-5B-Diffusers/transformer/config.json
  const std::string ti2v = R"({
    "_class_name": "WanTransformer3DModel", "_diffusers_version": "0.35.0.dev0",
    "added_kv_proj_dim": null, "attention_head_dim": 128, "cross_attn_norm": true,
    "eps": 1e-06, "ffn_dim": 14336, "freq_dim": 256, "image_dim": null, "in_channels": 48,
    "num_attention_heads": 24, "num_layers": 30, "out_channels": 48, "patch_size": [1, 2, 2],
    "pos_embed_seq_len": null, "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024,
    "text_dim": 4096})";
  auto t = ParseWanTransformerConfig(ti2v, "config.json");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_FALSE(t->has_image_attention());
  EXPECT_EQ(t->inner_dim(), 3072);
  EXPECT_EQ(t->in_channels, 48);
  EXPECT_EQ(*WanLatentInputOf(*t, "config.json"), WanLatentInput::kLatents);

  // FLF2V: image tokens with a learned position.
  auto flf = ParseWanTransformerConfig(
      R"({"num_attention_heads": 2, "attention_head_dim": 16, "image_dim": 8,
          "added_kv_proj_dim": 32, "pos_embed_seq_len": 514})",
      "f.json");
  ASSERT_TRUE(flf.ok()) << flf.status().ToString();
  EXPECT_EQ(flf->pos_embed_seq_len, 514);
  EXPECT_EQ(ParseWanTransformerConfig(WanTransformerConfigJson(*flf), "x")->pos_embed_seq_len, 514);
}

TEST(WanConfigTest, BadImageKeysAndChannelPairsNameTheKey) {
  auto bad = [](const std::string& json, const std::string& needle) {
    auto r = ParseWanTransformerConfig(json, "cfg.json");
    ASSERT_FALSE(r.ok()) << json;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
  };
  bad(R"({"image_dim": 1280})", "cfg.json: added_kv_proj_dim: is null while image_dim is set");
  bad(R"({"added_kv_proj_dim": 1536})",
      "cfg.json: added_kv_proj_dim: is set while image_dim is null");
  bad(R"({"image_dim": 1280, "added_kv_proj_dim": 5120})",
      "added_kv_proj_dim: must equal num_attention_heads * attention_head_dim = 1536");
  bad(R"({"pos_embed_seq_len": 514})",
      "cfg.json: pos_embed_seq_len: is set while image_dim is null");
  bad(R"({"image_dim": "1280"})", "cfg.json: image_dim: expected integer");
  bad(R"({"image_dim": 0})", "cfg.json: image_dim: expected integer in [1,");
  bad(R"({"image_dim": 1280, "added_kv_proj_dim": 1536, "pos_embed_seq_len": -2})",
      "cfg.json: pos_embed_seq_len: expected integer in [1, 4096]");
  bad(R"({"in_channels": 0})", "cfg.json: in_channels: expected integer");
  // Any channel pair loads; the pipelines drive two layouts.
  auto odd = ParseWanTransformerConfig(R"({"in_channels": 20, "out_channels": 16})", "cfg.json");
  ASSERT_TRUE(odd.ok());
  auto layout = WanLatentInputOf(*odd, "cfg.json");
  ASSERT_FALSE(layout.ok());
  EXPECT_NE(layout.status().message().find("cfg.json: in_channels: 20 with out_channels 16"),
            std::string::npos)
      << layout.status().message();
  auto null_out = ParseWanTransformerConfig(R"({"in_channels": 48, "out_channels": null})", "c");
  ASSERT_TRUE(null_out.ok());
  EXPECT_EQ(null_out->out_channels, 48);
}

}  // namespace
}  // namespace rainserve
