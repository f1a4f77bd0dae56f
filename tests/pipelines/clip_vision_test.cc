// CLIP vision encoder and image processor (pipelines/text/clip_vision.h):
// config parsing, published parameter names, checkpoint round trips and
// extra keys, which hidden state the Wan pipeline gets, a float64 hand-written
// reference of the embeddings and one layer, the preprocessing numbers of
// both processor backends, ATen's own resize kernels against
// ResizeImageAten, and transformers' outputs (clip_parity, clip_fast_parity).
#include "pipelines/text/clip_vision.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <torch/version.h>

#include <cmath>
#include <fstream>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "pipelines/core/safetensors.h"
#include "tests/test_files.h"

namespace rainserve {
namespace {

// 28x28 images in 7x7 patches: a 4x4 grid, 17 tokens.
ClipVisionConfig TinyConfig(const std::string& act = "gelu", int64_t layers = 3) {
  ClipVisionConfig c;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 4;
  c.image_size = 28;
  c.patch_size = 7;
  c.hidden_act = act;
  c.projection_dim = 16;
  return c;
}

at::Tensor Pixels(int64_t batch, const ClipVisionConfig& c, uint64_t seed,
                  at::ScalarType dtype = at::kFloat) {
  at::manual_seed(seed);
  return at::randn({batch, c.num_channels, c.image_size, c.image_size}, at::kDouble).to(dtype);
}

std::map<std::string, at::Tensor> ByName(const ClipVisionEncoder& model) {
  std::map<std::string, at::Tensor> m;
  for (const auto& [name, t] : model.NamedParameters()) m[name] = t;
  return m;
}

void ExpectErrorNaming(const StatusOr<ClipVisionConfig>& r, StatusCode code, const std::string& key,
                       const std::string& what) {
  ASSERT_FALSE(r.ok()) << what;
  EXPECT_EQ(r.status().code(), code) << what << ": " << r.status().ToString();
  EXPECT_NE(r.status().message().find(key), std::string::npos) << r.status().ToString();
  EXPECT_NE(r.status().message().find("ie/config.json"), std::string::npos) << r.status().ToString();
}

TEST(ClipVisionConfigTest, ParsesThePublishedWanImageEncoderConfig) {
  // The key set of Wan2.1-I2V-14B-*-Diffusers image_encoder/config.json (ViT-H/14).
  const std::string text = R"({
    "architectures": ["CLIPVisionModel"], "attention_dropout": 0.0, "dropout": 0.0,
    "hidden_act": "gelu", "hidden_size": 1280, "image_size": 224, "initializer_factor": 1.0,
    "initializer_range": 0.02, "intermediate_size": 5120, "layer_norm_eps": 1e-05,
    "model_type": "clip_vision_model", "num_attention_heads": 16, "num_channels": 3,
    "num_hidden_layers": 32, "patch_size": 14, "projection_dim": 1024,
    "torch_dtype": "float32", "transformers_version": "4.48.0.dev0"})";
  auto c = ParseClipVisionConfig(text, "config.json");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->hidden_size, 1280);
  EXPECT_EQ(c->intermediate_size, 5120);
  EXPECT_EQ(c->num_hidden_layers, 32);
  EXPECT_EQ(c->num_attention_heads, 16);
  EXPECT_EQ(c->head_dim(), 80);
  EXPECT_EQ(c->image_size, 224);
  EXPECT_EQ(c->patch_size, 14);
  EXPECT_EQ(c->num_positions(), 257);
  EXPECT_EQ(c->hidden_act, "gelu");
  EXPECT_DOUBLE_EQ(c->layer_norm_eps, 1e-5);
  EXPECT_EQ(c->projection_dim, 1024);
  // Unset keys take CLIPVisionConfig's defaults.
  auto d = ParseClipVisionConfig("{}", "config.json");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->hidden_size, 768);
  EXPECT_EQ(d->patch_size, 32);
  EXPECT_EQ(d->hidden_act, "quick_gelu");
}

TEST(ClipVisionConfigTest, ReadsTheVisionConfigOfAWholeClipConfig) {
  auto c = ParseClipVisionConfig(
      R"({"model_type": "clip", "text_config": {"hidden_size": 512},
          "vision_config": {"hidden_size": 64, "num_attention_heads": 4, "patch_size": 16}})",
      "config.json");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->hidden_size, 64);
  EXPECT_EQ(c->patch_size, 16);
  ExpectErrorNaming(ParseClipVisionConfig(R"({"model_type": "clip"})", "ie/config.json"),
                    StatusCode::kInvalidArgument, "vision_config", "no vision_config");
  ExpectErrorNaming(ParseClipVisionConfig(R"({"model_type": "clip", "vision_config": {"hidden_size": 0}})",
                                          "ie/config.json"),
                    StatusCode::kInvalidArgument, "vision_config: hidden_size", "nested key");
}

TEST(ClipVisionConfigTest, ErrorsNameTheKeyAndTheFile) {
  const std::vector<std::tuple<std::string, std::string, StatusCode>> cases = {
      {R"({"hidden_size": "big"})", "hidden_size", StatusCode::kInvalidArgument},
      {R"({"hidden_size": 0})", "hidden_size", StatusCode::kInvalidArgument},
      {R"({"intermediate_size": -1})", "intermediate_size", StatusCode::kInvalidArgument},
      {R"({"num_hidden_layers": 0})", "num_hidden_layers", StatusCode::kInvalidArgument},
      {R"({"hidden_size": 30, "num_attention_heads": 4})", "num_attention_heads",
       StatusCode::kInvalidArgument},
      {R"({"image_size": 14, "patch_size": 16})", "patch_size", StatusCode::kInvalidArgument},
      {R"({"num_channels": 0})", "num_channels", StatusCode::kInvalidArgument},
      {R"({"layer_norm_eps": 0})", "layer_norm_eps", StatusCode::kInvalidArgument},
      {R"({"layer_norm_eps": "small"})", "layer_norm_eps", StatusCode::kInvalidArgument},
      {R"({"hidden_act": 3})", "hidden_act", StatusCode::kInvalidArgument},
      {R"({"hidden_act": "relu"})", "hidden_act", StatusCode::kUnimplemented},
      {R"({"hidden_act": "gelu_new"})", "hidden_act", StatusCode::kUnimplemented},
      {R"({"model_type": "siglip_vision_model"})", "model_type", StatusCode::kUnimplemented},
  };
  for (const auto& [text, key, code] : cases) {
    ExpectErrorNaming(ParseClipVisionConfig(text, "ie/config.json"), code, key, text);
  }
  EXPECT_FALSE(ParseClipVisionConfig("{", "x").ok());
  EXPECT_FALSE(ParseClipVisionConfig("[1]", "x").ok());
}

TEST(ClipVisionConfigTest, WrittenConfigParsesBackUnchanged) {
  ClipVisionConfig c = TinyConfig("quick_gelu");
  c.layer_norm_eps = 1e-6;
  const std::string text = ClipVisionConfigJson(c);
  EXPECT_NE(text.find("\"CLIPVisionModel\""), std::string::npos);
  EXPECT_NE(text.find("\"clip_vision_model\""), std::string::npos);
  auto back = ParseClipVisionConfig(text, "x");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->hidden_size, c.hidden_size);
  EXPECT_EQ(back->intermediate_size, c.intermediate_size);
  EXPECT_EQ(back->num_hidden_layers, c.num_hidden_layers);
  EXPECT_EQ(back->num_attention_heads, c.num_attention_heads);
  EXPECT_EQ(back->num_channels, c.num_channels);
  EXPECT_EQ(back->image_size, c.image_size);
  EXPECT_EQ(back->patch_size, c.patch_size);
  EXPECT_EQ(back->hidden_act, c.hidden_act);
  EXPECT_EQ(back->layer_norm_eps, c.layer_norm_eps);
  EXPECT_EQ(back->projection_dim, c.projection_dim);
}

TEST(ClipVisionParametersTest, PublishedNamesAndShapesForVitH14) {
  ClipVisionConfig c;
  c.hidden_size = 1280;
  c.intermediate_size = 5120;
  c.num_hidden_layers = 32;
  c.num_attention_heads = 16;
  c.patch_size = 14;
  const auto params = ClipVisionEncoder::ExpectedParameters(c);
  // The embeddings (3), pre_layrnorm (2), 16 per layer, post_layernorm (2).
  EXPECT_EQ(params.size(), 5u + 32u * 16u + 2u);
  std::map<std::string, std::vector<int64_t>> by_name(params.begin(), params.end());
  EXPECT_EQ(by_name.size(), params.size());
  const std::vector<std::pair<std::string, std::vector<int64_t>>> want = {
      {"vision_model.embeddings.class_embedding", {1280}},
      {"vision_model.embeddings.patch_embedding.weight", {1280, 3, 14, 14}},
      {"vision_model.embeddings.position_embedding.weight", {257, 1280}},
      {"vision_model.pre_layrnorm.weight", {1280}},
      {"vision_model.pre_layrnorm.bias", {1280}},
      {"vision_model.encoder.layers.0.self_attn.q_proj.weight", {1280, 1280}},
      {"vision_model.encoder.layers.0.self_attn.k_proj.bias", {1280}},
      {"vision_model.encoder.layers.31.self_attn.out_proj.weight", {1280, 1280}},
      {"vision_model.encoder.layers.7.layer_norm1.weight", {1280}},
      {"vision_model.encoder.layers.7.mlp.fc1.weight", {5120, 1280}},
      {"vision_model.encoder.layers.7.mlp.fc1.bias", {5120}},
      {"vision_model.encoder.layers.7.mlp.fc2.weight", {1280, 5120}},
      {"vision_model.encoder.layers.31.layer_norm2.bias", {1280}},
      {"vision_model.post_layernorm.weight", {1280}},
  };
  for (const auto& [name, shape] : want) {
    ASSERT_TRUE(by_name.count(name)) << name;
    EXPECT_EQ(by_name[name], shape) << name;
  }
}

TEST(ClipVisionEncoderTest, OutputIsOneTokenPerPatchPlusTheClassToken) {
  const ClipVisionConfig c = TinyConfig();
  auto model = ClipVisionEncoder::Random(c, at::kFloat, at::kCPU, 7);
  auto out = model->Forward(Pixels(2, c, 1));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->sizes().vec(), (std::vector<int64_t>{2, 17, 32}));
  EXPECT_EQ(out->scalar_type(), at::kFloat);
  EXPECT_TRUE(at::isfinite(*out).all().item<bool>());
  // Batch elements are independent: the second image alone gives the same row.
  auto single = model->Forward(Pixels(2, c, 1).slice(0, 1, 2));
  ASSERT_TRUE(single.ok());
  EXPECT_TRUE(at::allclose(*single, out->slice(0, 1, 2), 1e-5, 1e-5));
  // bf16 model: output in bf16, close to the fp32 one.
  auto bf16 = ClipVisionEncoder::Random(c, at::kBFloat16, at::kCPU, 7);
  auto out16 = bf16->Forward(Pixels(2, c, 1));
  ASSERT_TRUE(out16.ok()) << out16.status().ToString();
  EXPECT_EQ(out16->scalar_type(), at::kBFloat16);
  EXPECT_LT((out16->to(at::kFloat) - *out).abs().max().item<double>(), 0.15);
}

TEST(ClipVisionEncoderTest, RandomWeightsDependOnlyOnTheSeed) {
  const ClipVisionConfig c = TinyConfig();
  auto a = ClipVisionEncoder::Random(c, at::kFloat, at::kCPU, 3);
  auto b = ClipVisionEncoder::Random(c, at::kFloat, at::kCPU, 3);
  auto other = ClipVisionEncoder::Random(c, at::kFloat, at::kCPU, 4);
  auto pa = a->NamedParameters(), pb = b->NamedParameters(), po = other->NamedParameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_TRUE(at::equal(pa[i].second, pb[i].second)) << pa[i].first;
    EXPECT_FALSE(at::equal(pa[i].second, po[i].second)) << pa[i].first;
  }
}

TEST(ClipVisionEncoderTest, RejectsBadPixelValuesNamingThem) {
  const ClipVisionConfig c = TinyConfig();
  auto model = ClipVisionEncoder::Random(c, at::kFloat, at::kCPU, 7);
  for (const at::Tensor& bad :
       {at::Tensor(), at::zeros({3, 28, 28}), at::zeros({1, 3, 28, 27}), at::zeros({1, 4, 28, 28}),
        at::zeros({0, 3, 28, 28}), at::zeros({1, 3, 28, 28}, at::kLong)}) {
    auto out = model->Forward(bad);
    ASSERT_FALSE(out.ok());
    EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(out.status().message().find("pixel_values"), std::string::npos) << out.status().ToString();
  }
  auto index = model->HiddenState(Pixels(1, c, 1), 4);
  ASSERT_FALSE(index.ok());
  EXPECT_NE(index.status().message().find("index"), std::string::npos);
}

// hidden_states[-2] of a 3-layer model is the output of layer 1: the last
// layer's weights and post_layernorm cannot change it, layers 0 and 1 must.
TEST(ClipVisionEncoderTest, PenultimateHiddenStateIsTheInputOfTheLastLayer) {
  const ClipVisionConfig c = TinyConfig("gelu", 3);
  auto model = ClipVisionEncoder::Random(c, at::kFloat, at::kCPU, 11);
  const at::Tensor pixels = Pixels(1, c, 2);
  const at::Tensor before = *model->Forward(pixels);
  EXPECT_TRUE(at::equal(before, *model->HiddenState(pixels, 2)));
  EXPECT_FALSE(at::allclose(before, *model->HiddenState(pixels, 3)));
  auto params = ByName(*model);
  for (const auto& [name, t] : params) {
    if (name.find("layers.2.") != std::string::npos || name.find("post_layernorm") != std::string::npos) {
      t.add_(0.5);
    }
  }
  EXPECT_TRUE(at::equal(before, *model->Forward(pixels)));
  params["vision_model.encoder.layers.1.mlp.fc2.bias"].add_(0.5);
  const at::Tensor after_layer1 = *model->Forward(pixels);
  EXPECT_FALSE(at::allclose(before, after_layer1));
  params["vision_model.encoder.layers.0.self_attn.v_proj.weight"].mul_(1.5);
  EXPECT_FALSE(at::allclose(after_layer1, *model->Forward(pixels)));
  // One layer: hidden_states[-2] is the pre-LayerNormed embeddings.
  auto one = ClipVisionEncoder::Random(TinyConfig("gelu", 1), at::kFloat, at::kCPU, 11);
  EXPECT_TRUE(at::equal(*one->Forward(pixels), *one->HiddenState(pixels, 0)));
}

// The formulas of transformers' CLIPVisionEmbeddings, pre_layrnorm and
// CLIPEncoderLayer written out with plain ATen ops in float64: patches cut
// by reshaping (no convolution), LayerNorm from its mean and biased
// variance, softmax from exp, GELU from erf.
at::Tensor HandLayerNorm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps) {
  const at::Tensor mean = x.mean(-1, true);
  const at::Tensor var = (x - mean).pow(2).mean(-1, true);
  return (x - mean) / at::sqrt(var + eps) * w + b;
}

at::Tensor HandEmbeddings(const at::Tensor& pixels, const ClipVisionConfig& c,
                          std::map<std::string, at::Tensor>& p) {
  const int64_t B = pixels.size(0), C = c.num_channels, g = c.grid(), s = c.patch_size, D = c.hidden_size;
  // [B, C, g, s, g, s] -> [B, g, g, C, s, s] -> [B, g*g, C*s*s]
  const at::Tensor patches = pixels.view({B, C, g, s, g, s}).permute({0, 2, 4, 1, 3, 5}).reshape({B, g * g, C * s * s});
  const at::Tensor w = p["vision_model.embeddings.patch_embedding.weight"].reshape({D, C * s * s});
  const at::Tensor tokens = at::cat(
      {p["vision_model.embeddings.class_embedding"].view({1, 1, D}).expand({B, 1, D}), at::matmul(patches, w.t())}, 1);
  const at::Tensor x = tokens + p["vision_model.embeddings.position_embedding.weight"].unsqueeze(0);
  return HandLayerNorm(x, p["vision_model.pre_layrnorm.weight"], p["vision_model.pre_layrnorm.bias"], c.layer_norm_eps);
}

at::Tensor HandLayer(const at::Tensor& x, const ClipVisionConfig& c, std::map<std::string, at::Tensor>& p,
                     int64_t layer) {
  const std::string l = "vision_model.encoder.layers." + std::to_string(layer) + ".";
  auto W = [&](const std::string& n) { return p[l + n]; };
  const int64_t B = x.size(0), N = x.size(1), H = c.num_attention_heads, K = c.head_dim();
  auto lin = [&](const at::Tensor& t, const std::string& n) {
    return at::matmul(t, W(n + ".weight").t()) + W(n + ".bias");
  };
  at::Tensor h = HandLayerNorm(x, W("layer_norm1.weight"), W("layer_norm1.bias"), c.layer_norm_eps);
  auto heads = [&](const at::Tensor& t) { return t.view({B, N, H, K}).permute({0, 2, 1, 3}); };
  const at::Tensor q = heads(lin(h, "self_attn.q_proj")), k = heads(lin(h, "self_attn.k_proj"));
  const at::Tensor v = heads(lin(h, "self_attn.v_proj"));
  const at::Tensor scores = at::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(K));
  const at::Tensor e = at::exp(scores - std::get<0>(scores.max(-1, true)));
  const at::Tensor probs = e / e.sum(-1, true);
  const at::Tensor context = at::matmul(probs, v).permute({0, 2, 1, 3}).reshape({B, N, H * K});
  const at::Tensor y = x + lin(context, "self_attn.out_proj");
  h = lin(HandLayerNorm(y, W("layer_norm2.weight"), W("layer_norm2.bias"), c.layer_norm_eps), "mlp.fc1");
  h = c.hidden_act == "gelu" ? 0.5 * h * (1.0 + at::erf(h / std::sqrt(2.0)))
                            : h / (1.0 + at::exp(-1.702 * h));
  return y + lin(h, "mlp.fc2");
}

TEST(ClipVisionEncoderTest, EmbeddingsAndLayersMatchAHandWrittenFloat64Reference) {
  for (const std::string act : {"gelu", "quick_gelu"}) {
    ClipVisionConfig c = TinyConfig(act, 3);
    c.layer_norm_eps = 1e-5;
    auto model = ClipVisionEncoder::Random(c, at::kDouble, at::kCPU, 5);
    auto p = ByName(*model);
    const at::Tensor pixels = Pixels(2, c, 9, at::kDouble);
    const at::Tensor ref0 = HandEmbeddings(pixels, c, p);
    const at::Tensor ref1 = HandLayer(ref0, c, p, 0);
    const at::Tensor ref2 = HandLayer(ref1, c, p, 1);
    auto h0 = model->HiddenState(pixels, 0);
    ASSERT_TRUE(h0.ok()) << h0.status().ToString();
    EXPECT_LT((*h0 - ref0).abs().max().item<double>(), 1e-12) << act;
    // LibTorch before 2 has no SDPA: the dense fallback runs attention in fp32.
    const double tol = TORCH_VERSION_MAJOR >= 2 ? 1e-12 : 1e-5;
    EXPECT_LT((*model->HiddenState(pixels, 1) - ref1).abs().max().item<double>(), tol) << act;
    EXPECT_LT((*model->Forward(pixels) - ref2).abs().max().item<double>(), tol) << act;
    // The layers change their input substantially (the comparison can fail).
    EXPECT_GT((ref1 - ref0).abs().max().item<double>(), 1e-2) << act;
  }
}

TEST(ClipVisionEncoderTest, SaveThenLoadGivesTheSameWeightsAndOutputs) {
  const ClipVisionConfig c = TinyConfig("quick_gelu");
  auto model = ClipVisionEncoder::Random(c, at::kFloat, at::kCPU, 21);
  const std::string dir = testing::MakeTempDir("clip-vision");
  ASSERT_FALSE(dir.empty());
  for (int64_t shard_bytes : {int64_t{1} << 30, int64_t{20000}}) {
    const std::string out = dir + "/ie" + std::to_string(shard_bytes);
    ASSERT_TRUE(model->Save(out, shard_bytes).ok());
    auto loaded = ClipVisionEncoder::Load(out, at::kFloat, at::kCPU);
    ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
    EXPECT_EQ((*loaded)->config().hidden_act, "quick_gelu");
    const auto a = model->NamedParameters(), b = (*loaded)->NamedParameters();
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].first, b[i].first);
      EXPECT_TRUE(at::equal(a[i].second, b[i].second)) << a[i].first;
    }
    const at::Tensor pixels = Pixels(1, c, 4);
    EXPECT_TRUE(at::equal(*model->Forward(pixels), *(*loaded)->Forward(pixels)));
  }
  EXPECT_TRUE(std::ifstream(dir + "/ie20000/model.safetensors.index.json").good());
}

// A CLIPModel or CLIPVisionModelWithProjection checkpoint carries weights the
// encoder does not use: exactly those are skipped; any other name, a missing
// one or a wrong shape is an error listing it.
TEST(ClipVisionEncoderTest, LoadSkipsOnlyTheNamedExtrasAndReportsTheRest) {
  const ClipVisionConfig c = TinyConfig();
  auto model = ClipVisionEncoder::Random(c, at::kFloat, at::kCPU, 2);
  const std::string dir = testing::MakeTempDir("clip-vision-extra");
  auto write = [&](std::vector<std::pair<std::string, at::Tensor>> tensors) {
    EXPECT_TRUE(WriteModelFolder(dir, ClipVisionConfigJson(c), "model", tensors, int64_t{1} << 30).ok());
    return ClipVisionEncoder::Load(dir, at::kFloat, at::kCPU);
  };
  auto extras = model->NamedParameters();
  extras.push_back({"visual_projection.weight", at::zeros({16, 32})});
  extras.push_back({"text_projection.weight", at::zeros({16, 32})});
  extras.push_back({"logit_scale", at::zeros({})});
  extras.push_back({"vision_model.embeddings.position_ids", at::zeros({1, 17})});
  extras.push_back({"text_model.embeddings.token_embedding.weight", at::zeros({10, 8})});
  auto ok = write(extras);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_TRUE(at::equal(*(*ok)->Forward(Pixels(1, c, 3)), *model->Forward(Pixels(1, c, 3))));

  auto unknown = model->NamedParameters();
  unknown.push_back({"vision_model.head.weight", at::zeros({4})});
  auto r = write(unknown);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("vision_model.head.weight"), std::string::npos) << r.status().ToString();

  auto missing = model->NamedParameters();
  missing.erase(missing.begin() + 7);
  r = write(missing);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(model->NamedParameters()[7].first), std::string::npos);

  auto misshaped = model->NamedParameters();
  misshaped[2].second = at::zeros({16, 32});  // position_embedding needs [17, 32]
  r = write(misshaped);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("position_embedding"), std::string::npos) << r.status().ToString();
}

// transformers 5's save_pretrained drops the vision_model. prefix: the
// same weights under the short names load the same; a name missing under
// both is reported with both spellings.
TEST(ClipVisionEncoderTest, LoadsNamesWithoutTheVisionModelPrefix) {
  const ClipVisionConfig c = TinyConfig();
  auto model = ClipVisionEncoder::Random(c, at::kFloat, at::kCPU, 8);
  std::vector<std::pair<std::string, at::Tensor>> renamed;
  for (const auto& [name, t] : model->NamedParameters()) {
    renamed.push_back({name.substr(std::string("vision_model.").size()), t});
  }
  const std::string dir = testing::MakeTempDir("clip-vision-v5");
  ASSERT_TRUE(WriteModelFolder(dir, ClipVisionConfigJson(c), "model", renamed, int64_t{1} << 30).ok());
  auto loaded = ClipVisionEncoder::Load(dir, at::kFloat, at::kCPU);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_TRUE(at::equal(*(*loaded)->Forward(Pixels(1, c, 5)), *model->Forward(Pixels(1, c, 5))));
  renamed.erase(renamed.begin());
  ASSERT_TRUE(WriteModelFolder(dir, ClipVisionConfigJson(c), "model", renamed, int64_t{1} << 30).ok());
  auto r = ClipVisionEncoder::Load(dir, at::kFloat, at::kCPU);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("vision_model.embeddings.class_embedding (or embeddings.class_embedding)"),
            std::string::npos) << r.status().ToString();
}

// ---------------------------------------------------------------------------
// CLIPImageProcessor

TEST(ClipImageProcessorConfigTest, ParsesThePublishedWanPreprocessorConfig) {
  const std::string text = R"({
    "crop_size": {"height": 224, "width": 224}, "do_center_crop": true, "do_convert_rgb": true,
    "do_normalize": true, "do_rescale": true, "do_resize": true,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3,
    "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 224}})";
  auto c = ParseClipImageProcessorConfig(text, "preprocessor_config.json");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->shortest_edge, 224);
  EXPECT_EQ(c->crop_height, 224);
  EXPECT_EQ(c->crop_width, 224);
  EXPECT_EQ(c->resample, ResampleFilter::kBicubic);
  EXPECT_EQ(c->rescale_factor, 1.0 / 255.0);
  EXPECT_EQ(c->image_mean[1], 0.4578275);
  EXPECT_EQ(c->image_std[2], 0.27577711);
  // Older layouts: bare integers for size and crop_size; a height/width size.
  auto old = ParseClipImageProcessorConfig(R"({"size": 256, "crop_size": 240, "resample": 2})", "x");
  ASSERT_TRUE(old.ok()) << old.status().ToString();
  EXPECT_EQ(old->shortest_edge, 256);
  EXPECT_EQ(old->crop_height, 240);
  EXPECT_EQ(old->crop_width, 240);
  EXPECT_EQ(old->resample, ResampleFilter::kBilinear);
  auto hw = ParseClipImageProcessorConfig(R"({"size": {"height": 100, "width": 50}})", "x");
  ASSERT_TRUE(hw.ok());
  EXPECT_EQ(hw->shortest_edge, 0);
  EXPECT_EQ(hw->resize_height, 100);
  EXPECT_EQ(hw->resize_width, 50);
}

TEST(ClipImageProcessorConfigTest, ErrorsNameTheKeyAndTheFile) {
  const std::vector<std::tuple<std::string, std::string, StatusCode>> cases = {
      {R"({"size": {"shortest_edge": 0}})", "size.shortest_edge", StatusCode::kInvalidArgument},
      {R"({"size": {"longest_edge": 10}})", "size", StatusCode::kInvalidArgument},
      {R"({"size": 99999})", "size", StatusCode::kInvalidArgument},
      {R"({"crop_size": {"height": 224}})", "crop_size", StatusCode::kInvalidArgument},
      {R"({"crop_size": {"shortest_edge": 224}})", "crop_size", StatusCode::kInvalidArgument},
      {R"({"crop_size": {"height": 224, "width": -1}})", "crop_size.width", StatusCode::kInvalidArgument},
      {R"({"resample": 0})", "resample", StatusCode::kUnimplemented},
      {R"({"resample": 9})", "resample", StatusCode::kInvalidArgument},
      {R"({"resample": "bicubic"})", "resample", StatusCode::kInvalidArgument},
      {R"({"image_std": [0.2, 0, 0.2]})", "image_std", StatusCode::kInvalidArgument},
      {R"({"image_mean": [0.5, 0.5]})", "image_mean", StatusCode::kInvalidArgument},
      {R"({"do_resize": "yes"})", "do_resize", StatusCode::kInvalidArgument},
      {R"({"do_normalize": 1})", "do_normalize", StatusCode::kInvalidArgument},
      {R"({"rescale_factor": -1})", "rescale_factor", StatusCode::kInvalidArgument},
  };
  for (const auto& [text, key, code] : cases) {
    auto r = ParseClipImageProcessorConfig(text, "ip/preprocessor_config.json");
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_EQ(r.status().code(), code) << text << ": " << r.status().ToString();
    EXPECT_NE(r.status().message().find(key), std::string::npos) << r.status().ToString();
    EXPECT_NE(r.status().message().find("ip/preprocessor_config.json"), std::string::npos)
        << r.status().ToString();
  }
}

TEST(ClipImageProcessorConfigTest, SavedConfigLoadsBackUnchanged) {
  ClipImageProcessorConfig c;
  c.shortest_edge = 0;
  c.resize_height = 40;
  c.resize_width = 60;
  c.crop_height = 32;
  c.crop_width = 48;
  c.resample = ResampleFilter::kLanczos;
  c.image_mean = {0.5, 0.25, 0.125};
  c.image_std = {0.1, 0.2, 0.3};
  c.do_rescale = false;
  const std::string dir = testing::MakeTempDir("clip-processor");
  ASSERT_TRUE(ClipImageProcessor(c).SavePreprocessorConfig(dir + "/image_processor").ok());
  auto back = ClipImageProcessor::Load(dir + "/image_processor");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  const ClipImageProcessorConfig& b = back->config();
  EXPECT_EQ(b.shortest_edge, 0);
  EXPECT_EQ(b.resize_height, 40);
  EXPECT_EQ(b.resize_width, 60);
  EXPECT_EQ(b.crop_height, 32);
  EXPECT_EQ(b.crop_width, 48);
  EXPECT_EQ(b.resample, ResampleFilter::kLanczos);
  EXPECT_EQ(b.image_mean, c.image_mean);
  EXPECT_EQ(b.image_std, c.image_std);
  EXPECT_FALSE(b.do_rescale);
  EXPECT_TRUE(b.do_normalize);
  EXPECT_EQ(b.rescale_factor, c.rescale_factor);
}

InputImage Solid(int64_t width, int64_t height, std::array<uint8_t, 3> rgb) {
  InputImage image;
  image.width = width;
  image.height = height;
  for (int64_t i = 0; i < width * height; ++i) image.rgb.insert(image.rgb.end(), rgb.begin(), rgb.end());
  return image;
}

ClipImageProcessorConfig PilConfig() {
  ClipImageProcessorConfig c;
  c.backend = ClipImageBackend::kPil;
  return c;
}

// What each backend computes for one byte of channel `ch` with both rescale
// and normalise on. torchvision: mean and std as float32 tensors times the
// float32 of 1 / rescale_factor, then (x - mean) / std in float32. PIL:
// float32(v * rescale_factor in float64), then (x - float32(mean)) /
// float32(std) in float32.
float TorchvisionValue(const ClipImageProcessorConfig& c, uint8_t v, int ch) {
  const float inv = static_cast<float>(1.0 / c.rescale_factor);
  const float mean = static_cast<float>(c.image_mean[ch]) * inv;
  const float std_dev = static_cast<float>(c.image_std[ch]) * inv;
  return (static_cast<float>(v) - mean) / std_dev;
}

float PilValue(const ClipImageProcessorConfig& c, uint8_t v, int ch) {
  const float x = static_cast<float>(v * c.rescale_factor);
  return (x - static_cast<float>(c.image_mean[ch])) / static_cast<float>(c.image_std[ch]);
}

TEST(ClipImageProcessorTest, ConstantImageGivesItsNormalisedValueEverywhere) {
  const std::array<uint8_t, 3> rgb = {200, 17, 96};
  for (const ClipImageProcessorConfig& c : {ClipImageProcessorConfig{}, PilConfig()}) {
    const bool tv = c.backend == ClipImageBackend::kTorchvision;
    auto out = ClipImageProcessor(c).Preprocess(Solid(50, 30, rgb));
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    EXPECT_EQ(out->sizes().vec(), (std::vector<int64_t>{1, 3, 224, 224}));
    EXPECT_EQ(out->scalar_type(), at::kFloat);
    for (int ch = 0; ch < 3; ++ch) {
      const float want = tv ? TorchvisionValue(c, rgb[ch], ch) : PilValue(c, rgb[ch], ch);
      const at::Tensor plane = (*out)[0][ch];
      EXPECT_EQ(plane.min().item<float>(), want) << ch << " torchvision " << tv;
      EXPECT_EQ(plane.max().item<float>(), want) << ch << " torchvision " << tv;
      EXPECT_NEAR(want, (rgb[ch] / 255.0 - c.image_mean[ch]) / c.image_std[ch], 1e-5);
    }
  }
}

// Every byte value through both backends' arithmetic (no resize, no crop):
// each matches its own formula, and the two differ in the last bit for some
// values, so the backend choice is visible in pixel_values.
TEST(ClipImageProcessorTest, BackendsRescaleAndNormaliseInTheirOwnOrder) {
  InputImage ramp;
  ramp.width = 256;
  ramp.height = 1;
  for (int v = 0; v < 256; ++v) ramp.rgb.insert(ramp.rgb.end(), {uint8_t(v), uint8_t(255 - v), uint8_t(v * 7)});
  ClipImageProcessorConfig tv_config;
  tv_config.do_resize = tv_config.do_center_crop = false;
  ClipImageProcessorConfig pil_config = tv_config;
  pil_config.backend = ClipImageBackend::kPil;
  auto tv = ClipImageProcessor(tv_config).Preprocess(ramp);
  auto pil = ClipImageProcessor(pil_config).Preprocess(ramp);
  ASSERT_TRUE(tv.ok() && pil.ok());
  int differ = 0;
  for (int ch = 0; ch < 3; ++ch) {
    for (int64_t x = 0; x < 256; ++x) {
      const uint8_t v = ramp.rgb[x * 3 + ch];
      const float got_tv = (*tv)[0][ch][0][x].item<float>(), got_pil = (*pil)[0][ch][0][x].item<float>();
      ASSERT_EQ(got_tv, TorchvisionValue(tv_config, v, ch)) << ch << " " << int(v);
      ASSERT_EQ(got_pil, PilValue(pil_config, v, ch)) << ch << " " << int(v);
      differ += got_tv != got_pil;
    }
  }
  EXPECT_GT(differ, 0);
  // One step alone: rescale is x * float32(rescale_factor) (torchvision) or
  // float32(x * rescale_factor) (PIL); normalise alone uses float32 mean / std.
  for (ClipImageProcessorConfig c : {tv_config, pil_config}) {
    c.do_normalize = false;
    auto rescaled = ClipImageProcessor(c).Preprocess(ramp);
    c.do_normalize = true;
    c.do_rescale = false;
    auto normalised = ClipImageProcessor(c).Preprocess(ramp);
    ASSERT_TRUE(rescaled.ok() && normalised.ok());
    const bool is_tv = c.backend == ClipImageBackend::kTorchvision;
    for (int64_t x = 0; x < 256; ++x) {
      const float want = is_tv ? static_cast<float>(x) * static_cast<float>(c.rescale_factor)
                               : static_cast<float>(x * c.rescale_factor);
      ASSERT_EQ((*rescaled)[0][0][0][x].item<float>(), want) << x;
      const float norm = (static_cast<float>(x) - static_cast<float>(c.image_mean[0])) /
                         static_cast<float>(c.image_std[0]);
      ASSERT_EQ((*normalised)[0][0][0][x].item<float>(), norm) << x;
    }
  }
}

// transformers' get_resize_output_image_size: int(224 * long / short).
TEST(ClipImageProcessorTest, ShortestEdgeResizeTruncatesTheLongSide) {
  EXPECT_EQ(ShortestEdgeSize(320, 240, 224).width, 298);  // 298.67
  EXPECT_EQ(ShortestEdgeSize(320, 240, 224).height, 224);
  EXPECT_EQ(ShortestEdgeSize(181, 403, 224).width, 224);
  EXPECT_EQ(ShortestEdgeSize(181, 403, 224).height, 498);  // 498.74
  EXPECT_EQ(ShortestEdgeSize(100, 100, 224).width, 224);
  EXPECT_EQ(ShortestEdgeSize(100, 100, 224).height, 224);
  EXPECT_EQ(ShortestEdgeSize(3, 7, 3).height, 7);  // exact: unchanged
}

TEST(ClipImageProcessorTest, NonSquareImagesComeOutAtTheCropSize) {
  InputImage image;  // the crop is the centre of the resized image
  image.width = 90;
  image.height = 40;
  for (int64_t i = 0; i < 90 * 40 * 3; ++i) image.rgb.push_back(static_cast<uint8_t>(i * 37 % 251));
  for (ClipImageProcessorConfig c : {ClipImageProcessorConfig{}, PilConfig()}) {
    c.crop_height = 224;
    c.crop_width = 200;
    const ClipImageProcessor processor(c);
    for (const auto& [w, h] : std::vector<std::pair<int64_t, int64_t>>{{320, 240}, {181, 403}, {64, 64}, {1000, 90}}) {
      auto img = processor.ResizeAndCrop(Solid(w, h, {1, 2, 3}));
      ASSERT_TRUE(img.ok()) << img.status().ToString();
      EXPECT_EQ(img->width, 200);
      EXPECT_EQ(img->height, 224);
      auto out = processor.Preprocess(Solid(w, h, {1, 2, 3}));
      ASSERT_TRUE(out.ok());
      EXPECT_EQ(out->sizes().vec(), (std::vector<int64_t>{1, 3, 224, 200}));
    }
    // Resize and crop by hand: int(224 * 90 / 40) = 504.
    const bool tv = c.backend == ClipImageBackend::kTorchvision;
    auto got = processor.ResizeAndCrop(image);
    auto resized = tv ? ResizeImageAten(image, 504, 224, AtenInterpolation::kBicubic)
                      : ResizeImage(image, 504, 224, ResampleFilter::kBicubic);
    ASSERT_TRUE(got.ok() && resized.ok());
    auto want = CenterCrop(*resized, 200, 224);
    ASSERT_TRUE(want.ok());
    EXPECT_EQ(got->rgb, want->rgb) << "torchvision " << tv;
  }
}

// transformers' torchvision processors pad a small image at floor((crop -
// size) / 2), the PIL ones at the ceil: 5 x 3 into 8 x 6 starts at (1, 1)
// and (2, 2).
TEST(ClipImageProcessorTest, TorchvisionCropPadsAtTheFloorOffset) {
  for (ClipImageProcessorConfig c : {ClipImageProcessorConfig{}, PilConfig()}) {
    c.do_resize = false;
    c.crop_width = 8;
    c.crop_height = 6;
    auto out = ClipImageProcessor(c).ResizeAndCrop(Solid(5, 3, {9, 8, 7}));
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    const int64_t at = c.backend == ClipImageBackend::kTorchvision ? 1 : 2;
    auto pixel = [&](int64_t x, int64_t y) { return out->rgb[(y * 8 + x) * 3]; };
    EXPECT_EQ(pixel(at, at), 9);
    EXPECT_EQ(pixel(at + 4, at + 2), 9);
    EXPECT_EQ(pixel(at - 1, at), 0);
    EXPECT_EQ(pixel(at + 5, at + 2), 0);
    EXPECT_EQ(pixel(at, at + 3), 0);
  }
}

// The torchvision backend resizes LANCZOS with bicubic (as transformers
// does) and has no kernel for BOX or HAMMING: UNIMPLEMENTED naming
// `resample`, at Load (with the file) and at Preprocess; the PIL backend runs all.
TEST(ClipImageProcessorTest, TorchvisionResampleModesFollowTransformers) {
  InputImage image;
  image.width = 37;
  image.height = 29;
  for (int64_t i = 0; i < 37 * 29 * 3; ++i) image.rgb.push_back(static_cast<uint8_t>(i * 53 % 256));
  ClipImageProcessorConfig c;
  c.shortest_edge = 20;
  c.crop_width = c.crop_height = 16;
  auto bicubic = ClipImageProcessor(c).Preprocess(image);
  c.resample = ResampleFilter::kLanczos;
  auto lanczos = ClipImageProcessor(c).Preprocess(image);
  ASSERT_TRUE(bicubic.ok() && lanczos.ok());
  EXPECT_TRUE(at::equal(*bicubic, *lanczos));
  c.resample = ResampleFilter::kBilinear;
  auto bilinear = ClipImageProcessor(c).Preprocess(image);
  ASSERT_TRUE(bilinear.ok());
  EXPECT_FALSE(at::equal(*bicubic, *bilinear));
  const std::string dir = testing::MakeTempDir("clip-processor-box");
  for (ResampleFilter f : {ResampleFilter::kBox, ResampleFilter::kHamming}) {
    c.resample = f;
    auto out = ClipImageProcessor(c).Preprocess(image);
    ASSERT_FALSE(out.ok()) << ResampleFilterName(f);
    EXPECT_EQ(out.status().code(), StatusCode::kUnimplemented);
    EXPECT_NE(out.status().message().find("resample"), std::string::npos) << out.status().ToString();
    ASSERT_TRUE(ClipImageProcessor(c).SavePreprocessorConfig(dir).ok());
    auto loaded = ClipImageProcessor::Load(dir);
    ASSERT_FALSE(loaded.ok());
    EXPECT_EQ(loaded.status().code(), StatusCode::kUnimplemented);
    EXPECT_NE(loaded.status().message().find("preprocessor_config.json: resample"), std::string::npos)
        << loaded.status().ToString();
    auto pil = ClipImageProcessor::Load(dir, ClipImageBackend::kPil);
    ASSERT_TRUE(pil.ok()) << pil.status().ToString();
    EXPECT_EQ(pil->config().backend, ClipImageBackend::kPil);
    EXPECT_TRUE(pil->Preprocess(image).ok());
  }
}

TEST(ClipImageProcessorTest, DisabledStepsAreSkipped) {
  for (ClipImageProcessorConfig c : {ClipImageProcessorConfig{}, PilConfig()}) {
    c.do_resize = false;
    c.do_center_crop = false;
    c.do_normalize = false;
    c.do_rescale = false;
    auto out = ClipImageProcessor(c).Preprocess(Solid(5, 3, {9, 8, 7}));
    ASSERT_TRUE(out.ok());
    EXPECT_EQ(out->sizes().vec(), (std::vector<int64_t>{1, 3, 3, 5}));
    EXPECT_EQ(out->scalar_type(), at::kFloat);
    EXPECT_EQ((*out)[0][0][2][4].item<float>(), 9.0f);
    EXPECT_EQ((*out)[0][2][0][0].item<float>(), 7.0f);
  }
}

TEST(ClipImageProcessorTest, ExtremeAspectRatioIsRefusedNamingTheImage) {
  const ClipImageProcessor processor{ClipImageProcessorConfig{}};
  auto out = processor.Preprocess(Solid(4000, 10, {0, 0, 0}));  // long side 89600
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(out.status().message().find("image"), std::string::npos) << out.status().ToString();
  EXPECT_FALSE(processor.Preprocess(InputImage{}).ok());
}

// ---------------------------------------------------------------------------
// ResizeImageAten against ATen's own kernels.

// An image of gradients, noise-like values and hard 0 / 255 edges.
InputImage Busy(int64_t width, int64_t height, int64_t seed) {
  InputImage image;
  image.width = width;
  image.height = height;
  for (int64_t y = 0; y < height; ++y) {
    for (int64_t x = 0; x < width; ++x) {
      for (int64_t c = 0; c < 3; ++c) {
        int64_t v = (x * 255 / width + ((x * 31 + y * 17 + c * 7 + seed) * 2654435761u >> 13) % 61) % 256;
        if (c == 2 && x > 2 * width / 3) v = (x / 3 + y / 2) % 2 ? 255 : 0;
        image.rgb.push_back(static_cast<uint8_t>(v));
      }
    }
  }
  return image;
}

// [1, 3, H, W] tensor of the image's bytes, and back.
at::Tensor ToTensor(const InputImage& image) {
  return at::from_blob(const_cast<uint8_t*>(image.rgb.data()), {1, image.height, image.width, 3}, at::kByte)
      .permute({0, 3, 1, 2})
      .contiguous();
}

at::Tensor AtenResize(const at::Tensor& x, int64_t width, int64_t height, AtenInterpolation mode) {
  const std::vector<int64_t> size = {height, width};
  return mode == AtenInterpolation::kBicubic ? at::_upsample_bicubic2d_aa(x, size, false)
                                             : at::_upsample_bilinear2d_aa(x, size, false);
}

const std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>> kResizeCases = {
    {90, 61, 94, 64}, {17, 23, 64, 86}, {300, 170, 112, 64}, {90, 61, 71, 45}, {40, 40, 7, 93}};

// ATen's float kernel with the same filters, run one axis at a time with
// the uint8 kernel's rounding and clipping between the passes (the negative
// bicubic lobes overshoot at hard edges, and the uint8 kernel clips that
// before the vertical pass). What remains is the int16 weights' quantisation
// (up to ksize / 2 * 255 / 2^P, a few hundredths of a step at P = 14): it
// moves values that lie near halfway by one step in either pass, so about 1%
// of the outputs move by one and a handful by two (measured: at most 1.5%
// and 0.03%). A wrong support, centre or filter moves most values by many steps.
TEST(AtenResizeTest, WithinOneStepOfAtensFloatKernelPassByPass) {
  auto to_bytes = [](const at::Tensor& t) { return t.clamp(0, 255).round(); };
  for (AtenInterpolation mode : {AtenInterpolation::kBilinear, AtenInterpolation::kBicubic}) {
    for (const auto& [w, h, ow, oh] : kResizeCases) {
      const InputImage image = Busy(w, h, ow);
      auto ours = ResizeImageAten(image, ow, oh, mode);
      ASSERT_TRUE(ours.ok()) << ours.status().ToString();
      const at::Tensor rows = to_bytes(AtenResize(ToTensor(image).to(at::kFloat), ow, h, mode));
      const at::Tensor want = to_bytes(AtenResize(rows, ow, oh, mode));
      const at::Tensor diff = (ToTensor(*ours).to(at::kFloat) - want).abs();
      const std::string what = std::to_string(w) + "x" + std::to_string(h) + " -> " + std::to_string(ow) +
                               "x" + std::to_string(oh) + (mode == AtenInterpolation::kBicubic ? " bicubic" : " bilinear");
      EXPECT_LE(diff.max().item<float>(), 2.0f) << what;
      EXPECT_LT(diff.gt(0).to(at::kFloat).mean().item<float>(), 0.03f) << what;
      EXPECT_LT(diff.gt(1).to(at::kFloat).mean().item<float>(), 0.001f) << what;
    }
  }
}

// The uint8 kernel itself, where this LibTorch has it (2.1 and later; 1.13
// computes antialiased resizes in floating point only): byte for byte.
TEST(AtenResizeTest, MatchesAtensUint8KernelByteForByte) {
  try {
    AtenResize(ToTensor(Busy(4, 4, 0)), 2, 2, AtenInterpolation::kBicubic);
  } catch (const c10::Error&) {
    GTEST_SKIP() << "LibTorch " << TORCH_VERSION << " has no uint8 antialiased resize";
  }
  for (AtenInterpolation mode : {AtenInterpolation::kBilinear, AtenInterpolation::kBicubic}) {
    for (const auto& [w, h, ow, oh] : kResizeCases) {
      const InputImage image = Busy(w, h, oh);
      auto ours = ResizeImageAten(image, ow, oh, mode);
      ASSERT_TRUE(ours.ok()) << ours.status().ToString();
      EXPECT_TRUE(at::equal(ToTensor(*ours), AtenResize(ToTensor(image), ow, oh, mode)))
          << w << "x" << h << " -> " << ow << "x" << oh;
    }
  }
}

// ---------------------------------------------------------------------------
// Parity with transformers: tests/pipelines/data/clip_parity, written by
// tools/reference/clip_tiny_reference.py with transformers 5.17.0, PyTorch
// 2.11 and Pillow 12.3 (the versions are in the reference's metadata): a
// random CLIPVisionModel transformers saved itself, the image processor's
// settings, a 90x61 image, and transformers' outputs for it: pixel_values
// from the PIL processor, pixel_values_pipeline from CLIPImageProcessor (the
// torchvision one in transformers 5).

InputImage ImageFromRgb(const at::Tensor& rgb) {  // [H, W, 3], any dtype holding bytes
  InputImage image;
  image.height = rgb.size(0);
  image.width = rgb.size(1);
  const at::Tensor bytes = rgb.to(at::kByte).contiguous();
  image.rgb.assign(bytes.data_ptr<uint8_t>(), bytes.data_ptr<uint8_t>() + bytes.numel());
  return image;
}

std::string DiffText(const at::Tensor& got, const at::Tensor& want) {
  if (got.sizes() != want.sizes()) return "shapes differ";
  return std::to_string(got.ne(want).sum().item<int64_t>()) + " of " + std::to_string(want.numel()) +
         " values differ, max |diff| " + std::to_string((got - want).abs().max().item<double>());
}

TEST(ClipParityTest, PreprocessingAndEncoderMatchTransformers) {
  const std::string dir = testing::SourceDir() + "/tests/pipelines/data/clip_parity";
  auto ref = SafetensorsFile::Open(dir + "/reference.safetensors");
  ASSERT_TRUE(ref.ok()) << ref.status().ToString();
  auto get = [&](const std::string& name) {
    auto t = (*ref)->Get(name);
    EXPECT_TRUE(t.ok()) << name;
    return t.ok() ? t->clone() : at::Tensor();
  };
  const InputImage image = ImageFromRgb(get("image_rgb"));  // stored as floats of its bytes

  // Bit-identical, each backend with its transformers class.
  auto pil = ClipImageProcessor::Load(dir + "/image_processor", ClipImageBackend::kPil);
  ASSERT_TRUE(pil.ok()) << pil.status().ToString();
  auto pil_pixels = pil->Preprocess(image);
  ASSERT_TRUE(pil_pixels.ok()) << pil_pixels.status().ToString();
  const at::Tensor want_pixels = get("pixel_values");
  EXPECT_TRUE(pil_pixels->sizes() == want_pixels.sizes() && at::equal(*pil_pixels, want_pixels))
      << DiffText(*pil_pixels, want_pixels);
  auto processor = ClipImageProcessor::Load(dir + "/image_processor");
  ASSERT_TRUE(processor.ok()) << processor.status().ToString();
  auto pixels = processor->Preprocess(image);
  ASSERT_TRUE(pixels.ok()) << pixels.status().ToString();
  const at::Tensor pipeline_pixels = get("pixel_values_pipeline");
  // The two classes' outputs differ, so these comparisons tell them apart.
  EXPECT_FALSE(at::equal(want_pixels, pipeline_pixels));
  EXPECT_TRUE(pixels->sizes() == pipeline_pixels.sizes() && at::equal(*pixels, pipeline_pixels))
      << DiffText(*pixels, pipeline_pixels);

  auto model = ClipVisionEncoder::Load(dir + "/image_encoder", at::kFloat, at::kCPU);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  const int64_t layers = (*model)->config().num_hidden_layers;
  const std::vector<std::tuple<std::string, at::Tensor, int64_t>> states = {
      {"hidden_states_0", want_pixels, 0},
      {"hidden_states_penultimate", want_pixels, layers - 1},
      {"last_hidden_state", want_pixels, layers},
      {"hidden_states_penultimate_pipeline", pipeline_pixels, layers - 1}};
  for (const auto& [name, input, index] : states) {
    const at::Tensor want = get(name);
    auto got = (*model)->HiddenState(input, index);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    ASSERT_EQ(got->sizes(), want.sizes()) << name;
    const double scale = want.abs().max().item<double>();
    // fp32 against fp32: round-off only (attention and GEMM order differ).
    EXPECT_LT((*got - want).abs().max().item<double>(), 1e-5 * std::max(scale, 1.0)) << name;
  }
  EXPECT_TRUE(at::equal(*(*model)->Forward(*pixels), *(*model)->HiddenState(pipeline_pixels, layers - 1)));
}

// tests/pipelines/data/clip_fast_parity, written by
// tools/reference/clip_fast_reference.py on the GPU machine: for each
// processor variant under processors/ and each image, the pixel values of
// the CLIPImageProcessor class transformers.from_pretrained returns there
// (recorded in the metadata). ClipImageProcessor's default backend must
// reproduce every one bit for bit.
TEST(ClipFastParityTest, DefaultBackendMatchesTransformersCLIPImageProcessor) {
  const std::string dir = testing::SourceDir() + "/tests/pipelines/data/clip_fast_parity";
  struct stat st;
  if (::stat((dir + "/reference.safetensors").c_str(), &st) != 0) {
    GTEST_SKIP() << dir << "/reference.safetensors is absent: write it with "
                 << "tools/reference/clip_fast_reference.py (see its header)";
  }
  auto ref = SafetensorsFile::Open(dir + "/reference.safetensors");
  ASSERT_TRUE(ref.ok()) << ref.status().ToString();
  const auto& meta = (*ref)->metadata();
  const std::string versions = (meta.count("processor_class") ? meta.at("processor_class") : "?") +
                               ", transformers " + (meta.count("transformers") ? meta.at("transformers") : "?");
  int cases = 0;
  const std::string suffix = "/pixel_values";
  for (const auto& [name, entry] : (*ref)->entries()) {
    if (name.size() <= suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;
    }
    // name: <variant>/<image>/pixel_values
    const std::string variant = name.substr(0, name.find('/'));
    const std::string image_name = name.substr(variant.size() + 1, name.size() - suffix.size() - variant.size() - 1);
    auto rgb = (*ref)->Get(image_name + "/image_rgb");
    ASSERT_TRUE(rgb.ok()) << image_name;
    auto processor = ClipImageProcessor::Load(dir + "/processors/" + variant);
    ASSERT_TRUE(processor.ok()) << processor.status().ToString();
    auto got = processor->Preprocess(ImageFromRgb(*rgb));
    ASSERT_TRUE(got.ok()) << name << ": " << got.status().ToString();
    const at::Tensor want = (*ref)->Get(name)->clone();
    EXPECT_TRUE(got->sizes() == want.sizes() && at::equal(*got, want))
        << name << " (" << versions << "): " << DiffText(*got, want);
    ++cases;
  }
  EXPECT_GT(cases, 0);
}

}  // namespace
}  // namespace rainserve
