// WanTransformer3DModel in LibTorch with RainFusion2.0 inside: shapes,
// determinism, the permute-once contract, sparse behaviour, parameter names
// and checkpoint loading.
#include "pipelines/wan/wan_transformer.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>

#include "pipelines/core/safetensors.h"
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
  bad(R"({"image_dim": 1280})", "image-conditioned");
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

}  // namespace
}  // namespace rainserve
