// UMT5 text encoder: config parsing, published parameter names, checkpoint
// round trips, relative-position buckets, a float64 loop reference of one
// block, masking, and the Wan prompt-embedding helper.
#include "pipelines/text/umt5.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "pipelines/core/safetensors.h"
#include "pipelines/text/tokenizer.h"
#include "tests/test_files.h"

namespace rainserve {
namespace {

UMT5Config TinyConfig() {
  UMT5Config c;
  c.vocab_size = 64;
  c.d_model = 16;
  c.d_kv = 4;
  c.num_heads = 2;
  c.d_ff = 24;
  c.num_layers = 2;
  // 4 buckets per direction: distances 0, 1 exact, 2..15 logarithmic, 16+ saturated.
  c.relative_attention_num_buckets = 8;
  c.relative_attention_max_distance = 16;
  return c;
}

// Norm weights away from 1 so that a norm applied wrongly shows.
void PerturbNorms(UMT5Encoder& model, uint64_t seed) {
  at::manual_seed(seed);
  for (auto& [name, t] : model.NamedParameters()) {
    if (name.find("layer_norm") != std::string::npos) t.copy_(1.0 + 0.3 * at::randn(t.sizes()));
  }
}

// ids [2, 20] with the second row padded after 11 tokens.
std::pair<at::Tensor, at::Tensor> Inputs(int64_t vocab, uint64_t seed) {
  at::manual_seed(seed);
  at::Tensor ids = at::randint(vocab, {2, 20}, at::kLong);
  at::Tensor mask = at::ones({2, 20}, at::kLong);
  mask[1].slice(0, 11).fill_(0);
  ids[1].slice(0, 11).fill_(0);
  return {ids, mask};
}

double MaxAbs(const at::Tensor& t) { return t.abs().max().item<double>(); }

TEST(UMT5ConfigTest, ParsesThePublishedWanTextEncoderConfig) {
  // The key set of Wan2.1-T2V-*-Diffusers text_encoder/config.json (umT5-XXL).
  const std::string text = R"({
    "architectures": ["UMT5EncoderModel"], "classifier_dropout": 0.0, "d_ff": 10240,
    "d_kv": 64, "d_model": 4096, "decoder_start_token_id": 0, "dense_act_fn": "gelu_new",
    "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0, "is_encoder_decoder": true, "is_gated_act": true,
    "layer_norm_epsilon": 1e-06, "model_type": "umt5", "num_decoder_layers": 24,
    "num_heads": 64, "num_layers": 24, "output_past": true, "pad_token_id": 0,
    "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32,
    "scalable_attention": true, "tie_word_embeddings": false, "tokenizer_class": "T5Tokenizer",
    "torch_dtype": "float32", "transformers_version": "4.49.0", "use_cache": true,
    "vocab_size": 256384})";
  auto c = ParseUMT5Config(text, "config.json");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->vocab_size, 256384);
  EXPECT_EQ(c->d_model, 4096);
  EXPECT_EQ(c->d_kv, 64);
  EXPECT_EQ(c->d_ff, 10240);
  EXPECT_EQ(c->num_layers, 24);
  EXPECT_EQ(c->num_heads, 64);
  EXPECT_EQ(c->relative_attention_num_buckets, 32);
  EXPECT_EQ(c->relative_attention_max_distance, 128);
  EXPECT_DOUBLE_EQ(c->layer_norm_epsilon, 1e-6);
  EXPECT_EQ(c->dense_act_fn, "gelu_new");
  EXPECT_TRUE(c->is_gated_act);
}

TEST(UMT5ConfigTest, ErrorsNameTheKeyAndTheFile) {
  struct Case {
    std::string json, key;
    StatusCode code;
  };
  const std::vector<Case> cases = {
      {R"({"d_model": "big"})", "d_model", StatusCode::kInvalidArgument},
      {R"({"num_heads": 0})", "num_heads", StatusCode::kInvalidArgument},
      {R"({"vocab_size": -3})", "vocab_size", StatusCode::kInvalidArgument},
      {R"({"layer_norm_epsilon": 0})", "layer_norm_epsilon", StatusCode::kInvalidArgument},
      {R"({"relative_attention_num_buckets": 32, "relative_attention_max_distance": 8})",
       "relative_attention_max_distance", StatusCode::kInvalidArgument},
      {R"({"feed_forward_proj": "gated-gelu-x"})", "feed_forward_proj", StatusCode::kInvalidArgument},
      {R"({"is_gated_act": "yes"})", "is_gated_act", StatusCode::kInvalidArgument},
      {R"({"feed_forward_proj": "relu"})", "is_gated_act", StatusCode::kUnimplemented},
      {R"({"dense_act_fn": "gelu"})", "dense_act_fn", StatusCode::kUnimplemented},
      {R"({"feed_forward_proj": "gated-silu"})", "dense_act_fn", StatusCode::kUnimplemented},
      {R"({"model_type": "t5"})", "model_type", StatusCode::kUnimplemented},
  };
  for (const Case& c : cases) {
    auto r = ParseUMT5Config(c.json, "te/config.json");
    ASSERT_FALSE(r.ok()) << c.json;
    EXPECT_EQ(r.status().code(), c.code) << c.json << ": " << r.status().ToString();
    EXPECT_NE(r.status().message().find(c.key), std::string::npos) << r.status().ToString();
    EXPECT_NE(r.status().message().find("te/config.json"), std::string::npos) << r.status().ToString();
  }
  EXPECT_FALSE(ParseUMT5Config("{", "x").ok());
  EXPECT_FALSE(ParseUMT5Config("[1]", "x").ok());
  // The ComfyUI spelling of the same activation is accepted.
  EXPECT_TRUE(ParseUMT5Config(R"({"dense_act_fn": "gelu_pytorch_tanh"})", "x").ok());
}

TEST(UMT5ConfigTest, WrittenConfigParsesBackUnchanged) {
  const UMT5Config c = TinyConfig();
  const std::string text = UMT5ConfigJson(c);
  EXPECT_NE(text.find("\"UMT5EncoderModel\""), std::string::npos);
  EXPECT_NE(text.find("\"umt5\""), std::string::npos);
  auto back = ParseUMT5Config(text, "x");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->vocab_size, c.vocab_size);
  EXPECT_EQ(back->d_model, c.d_model);
  EXPECT_EQ(back->d_kv, c.d_kv);
  EXPECT_EQ(back->d_ff, c.d_ff);
  EXPECT_EQ(back->num_layers, c.num_layers);
  EXPECT_EQ(back->num_heads, c.num_heads);
  EXPECT_EQ(back->relative_attention_num_buckets, c.relative_attention_num_buckets);
  EXPECT_EQ(back->relative_attention_max_distance, c.relative_attention_max_distance);
  EXPECT_EQ(back->layer_norm_epsilon, c.layer_norm_epsilon);
}

TEST(UMT5ParametersTest, PublishedNamesAndShapesForUmt5Xxl) {
  const auto params = UMT5Encoder::ExpectedParameters(UMT5Config{});
  // The published text_encoder index lists 242 tensors: the embedding, 10 per
  // block (24 blocks) and the final norm.
  EXPECT_EQ(params.size(), 242u);
  std::map<std::string, std::vector<int64_t>> by_name(params.begin(), params.end());
  EXPECT_EQ(by_name.size(), params.size());
  const std::vector<std::pair<std::string, std::vector<int64_t>>> want = {
      {"shared.weight", {256384, 4096}},
      {"encoder.block.0.layer.0.SelfAttention.q.weight", {4096, 4096}},
      {"encoder.block.0.layer.0.SelfAttention.o.weight", {4096, 4096}},
      {"encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", {32, 64}},
      {"encoder.block.23.layer.0.SelfAttention.relative_attention_bias.weight", {32, 64}},
      {"encoder.block.7.layer.0.layer_norm.weight", {4096}},
      {"encoder.block.7.layer.1.DenseReluDense.wi_0.weight", {10240, 4096}},
      {"encoder.block.7.layer.1.DenseReluDense.wi_1.weight", {10240, 4096}},
      {"encoder.block.7.layer.1.DenseReluDense.wo.weight", {4096, 10240}},
      {"encoder.block.23.layer.1.layer_norm.weight", {4096}},
      {"encoder.final_layer_norm.weight", {4096}},
  };
  for (const auto& [name, shape] : want) {
    ASSERT_TRUE(by_name.count(name)) << name;
    EXPECT_EQ(by_name[name], shape) << name;
  }
}

TEST(UMT5BucketTest, BidirectionalBucketsMatchHandComputedValues) {
  // 32 buckets, max distance 128: 16 per direction, 0..7 exact, then
  // 8 + floor(ln(n / 8) / ln(16) * 8) capped at 15; keys after the query +16.
  const std::vector<std::pair<int64_t, int64_t>> cases = {
      {0, 0},     {-1, 1},    {-3, 3},    {-7, 7},    {-8, 8},    {-12, 9},  {-20, 10},
      {-40, 12},  {-100, 15}, {-127, 15}, {-200, 15}, {1, 17},    {3, 19},   {7, 23},
      {8, 24},    {20, 26},   {40, 28},   {1000, 31}, {-100000, 15}};
  std::vector<int64_t> distances;
  for (const auto& c : cases) distances.push_back(c.first);
  const at::Tensor got = RelativePositionBucket(at::tensor(distances, at::kLong), 32, 128);
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(got[static_cast<int64_t>(i)].item<int64_t>(), cases[i].second)
        << "distance " << cases[i].first;
  }
  // Every bucket index stays inside the table.
  const at::Tensor all = RelativePositionBucket(at::arange(-600, 600, at::kLong), 32, 128);
  EXPECT_GE(all.min().item<int64_t>(), 0);
  EXPECT_LE(all.max().item<int64_t>(), 31);
}

// ---- float64 loop reference of UMT5EncoderModel ----------------------------

using Vec = std::vector<double>;

Vec ToVec(const at::Tensor& t) {
  const at::Tensor d = t.to(at::kDouble).contiguous();
  return Vec(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

// y[o] = sum_i w[o][i] x[i]; w row-major [out, in].
Vec MatVec(const Vec& w, const Vec& x, size_t out) {
  const size_t in = x.size();
  Vec y(out, 0.0);
  for (size_t o = 0; o < out; ++o) {
    for (size_t i = 0; i < in; ++i) y[o] += w[o * in + i] * x[i];
  }
  return y;
}

Vec RmsNorm(const Vec& x, const Vec& w, double eps) {
  double ms = 0.0;
  for (double v : x) ms += v * v;
  ms /= static_cast<double>(x.size());
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = w[i] * x[i] / std::sqrt(ms + eps);
  return y;
}

// The bucket formula written out in double precision.
int64_t Bucket(int64_t rel, int64_t num_buckets, int64_t max_distance) {
  const int64_t half = num_buckets / 2, exact = half / 2;
  const int64_t offset = rel > 0 ? half : 0;
  const int64_t n = rel < 0 ? -rel : rel;
  if (n < exact) return offset + n;
  const double scaled = std::log(static_cast<double>(n) / static_cast<double>(exact)) /
                        std::log(static_cast<double>(max_distance) / static_cast<double>(exact)) *
                        static_cast<double>(half - exact);
  return offset + std::min<int64_t>(exact + static_cast<int64_t>(scaled), half - 1);
}

double GeluTanh(double x) {
  const double k = std::sqrt(2.0 / M_PI);
  return 0.5 * x * (1.0 + std::tanh(k * (x + 0.044715 * x * x * x)));
}

// Runs the encoder in float64 with plain loops: returns [B][L][D].
std::vector<std::vector<Vec>> Reference(const UMT5Encoder& model, const at::Tensor& ids,
                                        const at::Tensor& mask) {
  const UMT5Config& c = model.config();
  const auto D = static_cast<size_t>(c.d_model), H = static_cast<size_t>(c.num_heads),
             K = static_cast<size_t>(c.d_kv), F = static_cast<size_t>(c.d_ff);
  std::map<std::string, Vec> p;
  for (const auto& [name, t] : model.NamedParameters()) p[name] = ToVec(t);
  const auto B = static_cast<size_t>(ids.size(0)), L = static_cast<size_t>(ids.size(1));
  std::vector<std::vector<Vec>> out(B);
  for (size_t b = 0; b < B; ++b) {
    std::vector<Vec> x(L);
    for (size_t t = 0; t < L; ++t) {
      const auto id = static_cast<size_t>(ids[static_cast<int64_t>(b)][static_cast<int64_t>(t)].item<int64_t>());
      x[t] = Vec(p["shared.weight"].begin() + static_cast<ptrdiff_t>(id * D),
                 p["shared.weight"].begin() + static_cast<ptrdiff_t>((id + 1) * D));
    }
    for (int64_t layer = 0; layer < c.num_layers; ++layer) {
      const std::string pre = "encoder.block." + std::to_string(layer) + ".layer.";
      const Vec& bias_table = p[pre + "0.SelfAttention.relative_attention_bias.weight"];  // [buckets, H]
      std::vector<Vec> q(L), k(L), v(L);
      for (size_t t = 0; t < L; ++t) {
        const Vec h = RmsNorm(x[t], p[pre + "0.layer_norm.weight"], c.layer_norm_epsilon);
        q[t] = MatVec(p[pre + "0.SelfAttention.q.weight"], h, H * K);
        k[t] = MatVec(p[pre + "0.SelfAttention.k.weight"], h, H * K);
        v[t] = MatVec(p[pre + "0.SelfAttention.v.weight"], h, H * K);
      }
      std::vector<Vec> attn(L, Vec(H * K, 0.0));
      for (size_t i = 0; i < L; ++i) {
        for (size_t hd = 0; hd < H; ++hd) {
          Vec s(L);
          double mx = -1e300;
          for (size_t j = 0; j < L; ++j) {
            if (mask[static_cast<int64_t>(b)][static_cast<int64_t>(j)].item<int64_t>() == 0) {
              s[j] = -1e300;
              continue;
            }
            double dot = 0.0;
            for (size_t e = 0; e < K; ++e) dot += q[i][hd * K + e] * k[j][hd * K + e];
            const int64_t bucket = Bucket(static_cast<int64_t>(j) - static_cast<int64_t>(i),
                                          c.relative_attention_num_buckets,
                                          c.relative_attention_max_distance);
            s[j] = dot + bias_table[static_cast<size_t>(bucket) * H + hd];
            mx = std::max(mx, s[j]);
          }
          double sum = 0.0;
          for (size_t j = 0; j < L; ++j) sum += s[j] == -1e300 ? 0.0 : std::exp(s[j] - mx);
          for (size_t j = 0; j < L; ++j) {
            if (s[j] == -1e300) continue;
            const double pr = std::exp(s[j] - mx) / sum;
            for (size_t e = 0; e < K; ++e) attn[i][hd * K + e] += pr * v[j][hd * K + e];
          }
        }
      }
      for (size_t t = 0; t < L; ++t) {
        const Vec o = MatVec(p[pre + "0.SelfAttention.o.weight"], attn[t], D);
        for (size_t d = 0; d < D; ++d) x[t][d] += o[d];
        const Vec h = RmsNorm(x[t], p[pre + "1.layer_norm.weight"], c.layer_norm_epsilon);
        const Vec g0 = MatVec(p[pre + "1.DenseReluDense.wi_0.weight"], h, F);
        const Vec g1 = MatVec(p[pre + "1.DenseReluDense.wi_1.weight"], h, F);
        Vec g(F);
        for (size_t f = 0; f < F; ++f) g[f] = GeluTanh(g0[f]) * g1[f];
        const Vec ff = MatVec(p[pre + "1.DenseReluDense.wo.weight"], g, D);
        for (size_t d = 0; d < D; ++d) x[t][d] += ff[d];
      }
    }
    for (size_t t = 0; t < L; ++t) {
      out[b].push_back(RmsNorm(x[t], p["encoder.final_layer_norm.weight"], c.layer_norm_epsilon));
    }
  }
  return out;
}

void ExpectMatchesReference(const UMT5Encoder& model, const at::Tensor& ids, const at::Tensor& mask,
                            double rel_tol) {
  auto got = model.Forward(ids, mask);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  const auto want = Reference(model, ids, mask);
  const at::Tensor g = got->to(at::kDouble);
  double max_err = 0.0, scale = 0.0;
  for (size_t b = 0; b < want.size(); ++b) {
    for (size_t t = 0; t < want[b].size(); ++t) {
      for (size_t d = 0; d < want[b][t].size(); ++d) {
        const double w = want[b][t][d];
        const double v = g[static_cast<int64_t>(b)][static_cast<int64_t>(t)][static_cast<int64_t>(d)].item<double>();
        max_err = std::max(max_err, std::abs(v - w));
        scale = std::max(scale, std::abs(w));
      }
    }
  }
  EXPECT_GT(scale, 0.1);
  EXPECT_LE(max_err, rel_tol * scale) << "max error " << max_err << ", scale " << scale;
}

TEST(UMT5ForwardTest, OneBlockMatchesFloat64LoopReference) {
  UMT5Config c = TinyConfig();
  c.num_layers = 1;
  auto model = UMT5Encoder::Random(c, at::kFloat, at::kCPU, 11);
  PerturbNorms(*model, 12);
  const auto [ids, mask] = Inputs(c.vocab_size, 13);
  // fp32 against float64: a few ulps of fp32 accumulated over a block.
  ExpectMatchesReference(*model, ids, mask, 2e-5);
}

TEST(UMT5ForwardTest, TwoBlocksMatchFloat64LoopReference) {
  auto model = UMT5Encoder::Random(TinyConfig(), at::kFloat, at::kCPU, 21);
  PerturbNorms(*model, 22);
  const auto [ids, mask] = Inputs(64, 23);
  ExpectMatchesReference(*model, ids, mask, 2e-5);
}

TEST(UMT5ForwardTest, ShapeDeterminismAndSeeds) {
  auto a = UMT5Encoder::Random(TinyConfig(), at::kFloat, at::kCPU, 1);
  auto b = UMT5Encoder::Random(TinyConfig(), at::kFloat, at::kCPU, 1);
  auto other = UMT5Encoder::Random(TinyConfig(), at::kFloat, at::kCPU, 2);
  const auto [ids, mask] = Inputs(64, 3);
  auto ya = a->Forward(ids, mask);
  auto ya2 = a->Forward(ids, mask);
  auto yb = b->Forward(ids, mask);
  auto yo = other->Forward(ids, mask);
  ASSERT_TRUE(ya.ok() && ya2.ok() && yb.ok() && yo.ok());
  EXPECT_EQ(ya->sizes(), (std::vector<int64_t>{2, 20, 16}));
  EXPECT_EQ(ya->scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(*ya, *ya2));
  EXPECT_TRUE(at::equal(*ya, *yb));
  EXPECT_FALSE(at::allclose(*ya, *yo));
  EXPECT_TRUE(ya->isfinite().all().item<bool>());
}

TEST(UMT5ForwardTest, MaskedPositionsDoNotInfluenceUnmaskedOutputs) {
  auto model = UMT5Encoder::Random(TinyConfig(), at::kFloat, at::kCPU, 5);
  auto [ids, mask] = Inputs(64, 6);
  at::Tensor ids2 = ids.clone();
  ids2[1].slice(0, 11).fill_(37);  // different tokens under the mask
  auto y1 = model->Forward(ids, mask);
  auto y2 = model->Forward(ids2, mask);
  // Boolean and floating masks mean the same.
  auto y3 = model->Forward(ids, mask.to(at::kBool));
  auto y4 = model->Forward(ids, mask.to(at::kFloat));
  ASSERT_TRUE(y1.ok() && y2.ok() && y3.ok() && y4.ok());
  EXPECT_TRUE(at::allclose((*y1)[1].slice(0, 0, 11), (*y2)[1].slice(0, 0, 11), 0, 1e-6));
  EXPECT_TRUE(at::equal((*y1)[0], (*y2)[0]));
  EXPECT_TRUE(at::equal(*y1, *y3));
  EXPECT_TRUE(at::equal(*y1, *y4));
  // Without the mask the padding would matter: the test can fail.
  auto y5 = model->Forward(ids2, at::ones_like(mask));
  auto y6 = model->Forward(ids, at::ones_like(mask));
  ASSERT_TRUE(y5.ok() && y6.ok());
  EXPECT_FALSE(at::allclose((*y5)[1].slice(0, 0, 11), (*y6)[1].slice(0, 0, 11), 0, 1e-6));
}

TEST(UMT5ForwardTest, BadInputsAreInvalidArgument) {
  auto model = UMT5Encoder::Random(TinyConfig(), at::kFloat, at::kCPU, 5);
  const at::Tensor mask = at::ones({1, 4}, at::kLong);
  auto out_of_range = model->Forward(at::tensor({1, 2, 64, 3}, at::kLong).view({1, 4}), mask);
  ASSERT_FALSE(out_of_range.ok());
  EXPECT_EQ(out_of_range.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(out_of_range.status().message().find("64"), std::string::npos);
  EXPECT_FALSE(model->Forward(at::tensor({-1, 2, 3, 3}, at::kLong).view({1, 4}), mask).ok());
  EXPECT_FALSE(model->Forward(at::zeros({1, 4}, at::kFloat), mask).ok());
  EXPECT_FALSE(model->Forward(at::zeros({4}, at::kLong), mask).ok());
  EXPECT_FALSE(model->Forward(at::zeros({1, 5}, at::kLong), mask).ok());
  EXPECT_FALSE(model->Forward(at::Tensor(), mask).ok());
  // int32 ids are fine.
  EXPECT_TRUE(model->Forward(at::zeros({1, 4}, at::kInt), mask).ok());
}

TEST(UMT5ForwardTest, Bfloat16StaysCloseToFloat32) {
  auto f32 = UMT5Encoder::Random(TinyConfig(), at::kFloat, at::kCPU, 8);
  auto bf16 = UMT5Encoder::Random(TinyConfig(), at::kBFloat16, at::kCPU, 8);
  const auto [ids, mask] = Inputs(64, 9);
  auto a = f32->Forward(ids, mask);
  auto b = bf16->Forward(ids, mask);
  ASSERT_TRUE(a.ok() && b.ok()) << b.status().ToString();
  EXPECT_EQ(b->scalar_type(), at::kBFloat16);
  const double err = MaxAbs(b->to(at::kFloat) - *a), scale = MaxAbs(*a);
  EXPECT_LT(err, 0.05 * scale) << err << " vs scale " << scale;
}

TEST(UMT5ForwardTest, HalfModelKeepsWoInFloat32) {
  auto model = UMT5Encoder::Random(TinyConfig(), at::kHalf, at::kCPU, 8);
  for (const auto& [name, t] : model->NamedParameters()) {
    const bool wo = name.find(".wo.weight") != std::string::npos;
    EXPECT_EQ(t.scalar_type(), wo ? at::kFloat : at::kHalf) << name;
  }
}

// ---- checkpoints -------------------------------------------------------------

std::vector<std::pair<std::string, at::Tensor>> Renamed(
    std::vector<std::pair<std::string, at::Tensor>> params, const std::string& from,
    const std::string& to) {
  for (auto& kv : params) {
    if (kv.first == from) kv.first = to;
  }
  return params;
}

Status WriteFolder(const std::string& dir, const UMT5Config& c,
                   const std::vector<std::pair<std::string, at::Tensor>>& params) {
  std::ofstream(dir + "/config.json") << UMT5ConfigJson(c);
  return WriteCheckpoint(dir, "model", params, int64_t{1} << 40);
}

TEST(UMT5CheckpointTest, SaveLoadRoundTripGivesIdenticalOutputs) {
  auto model = UMT5Encoder::Random(TinyConfig(), at::kFloat, at::kCPU, 31);
  PerturbNorms(*model, 32);
  const auto [ids, mask] = Inputs(64, 33);
  auto want = model->Forward(ids, mask);
  ASSERT_TRUE(want.ok());
  for (const int64_t shard : {int64_t{1} << 30, int64_t{4096}}) {
    const std::string dir = testing::MakeTempDir("rainserve-umt5");
    ASSERT_TRUE(model->Save(dir, shard).ok());
    const bool sharded = shard < (int64_t{1} << 30);
    EXPECT_TRUE(std::ifstream(dir + (sharded ? "/model.safetensors.index.json" : "/model.safetensors")).good());
    auto ckpt = SafetensorsCheckpoint::Open(dir, "model");
    ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
    EXPECT_TRUE(ckpt->Has("shared.weight"));
    EXPECT_FALSE(ckpt->Has("encoder.embed_tokens.weight"));
    auto loaded = UMT5Encoder::Load(dir, at::kFloat, at::kCPU);
    ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
    auto got = (*loaded)->Forward(ids, mask);
    ASSERT_TRUE(got.ok());
    EXPECT_TRUE(at::equal(*got, *want)) << "max shard bytes " << shard;
  }
}

TEST(UMT5CheckpointTest, EmbeddingMayBeStoredUnderItsTiedAlias) {
  const UMT5Config c = TinyConfig();
  auto model = UMT5Encoder::Random(c, at::kFloat, at::kCPU, 41);
  const auto [ids, mask] = Inputs(64, 42);
  auto want = model->Forward(ids, mask);
  ASSERT_TRUE(want.ok());

  const std::string alias_only = testing::MakeTempDir("rainserve-umt5");
  ASSERT_TRUE(WriteFolder(alias_only, c,
                          Renamed(model->NamedParameters(), "shared.weight", "encoder.embed_tokens.weight"))
                  .ok());
  auto a = UMT5Encoder::Load(alias_only, at::kFloat, at::kCPU);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_TRUE(at::equal(*(*a)->Forward(ids, mask), *want));

  auto both_params = model->NamedParameters();
  both_params.push_back({"encoder.embed_tokens.weight", both_params[0].second});
  const std::string both = testing::MakeTempDir("rainserve-umt5");
  ASSERT_TRUE(WriteFolder(both, c, both_params).ok());
  auto b = UMT5Encoder::Load(both, at::kFloat, at::kCPU);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_TRUE(at::equal(*(*b)->Forward(ids, mask), *want));
}

TEST(UMT5CheckpointTest, MissingMisShapedAndUnexpectedParametersAreListed) {
  const UMT5Config c = TinyConfig();
  auto model = UMT5Encoder::Random(c, at::kFloat, at::kCPU, 51);
  const std::string victim = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight";

  auto params = model->NamedParameters();
  std::vector<std::pair<std::string, at::Tensor>> without;
  for (const auto& kv : params) {
    if (kv.first != victim) without.push_back(kv);
  }
  const std::string missing = testing::MakeTempDir("rainserve-umt5");
  ASSERT_TRUE(WriteFolder(missing, c, without).ok());
  auto r1 = UMT5Encoder::Load(missing, at::kFloat, at::kCPU);
  ASSERT_FALSE(r1.ok());
  EXPECT_EQ(r1.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r1.status().message().find("1 missing"), std::string::npos) << r1.status().ToString();
  EXPECT_NE(r1.status().message().find(victim), std::string::npos);

  std::vector<std::pair<std::string, at::Tensor>> reshaped;
  for (const auto& kv : params) {
    reshaped.push_back({kv.first, kv.first == victim ? at::zeros({4, 2}) : kv.second});
  }
  reshaped.push_back({"encoder.block.9.layer.0.SelfAttention.q.weight", at::zeros({2, 2})});
  const std::string bad = testing::MakeTempDir("rainserve-umt5");
  ASSERT_TRUE(WriteFolder(bad, c, reshaped).ok());
  auto r2 = UMT5Encoder::Load(bad, at::kFloat, at::kCPU);
  ASSERT_FALSE(r2.ok());
  EXPECT_NE(r2.status().message().find("shape mismatch (" + victim + " [4, 2]"), std::string::npos)
      << r2.status().ToString();
  EXPECT_NE(r2.status().message().find("1 unexpected (encoder.block.9"), std::string::npos)
      << r2.status().ToString();

  // No embedding under either name.
  std::vector<std::pair<std::string, at::Tensor>> no_embedding(params.begin() + 1, params.end());
  const std::string none = testing::MakeTempDir("rainserve-umt5");
  ASSERT_TRUE(WriteFolder(none, c, no_embedding).ok());
  auto r3 = UMT5Encoder::Load(none, at::kFloat, at::kCPU);
  ASSERT_FALSE(r3.ok());
  EXPECT_NE(r3.status().message().find("shared.weight (or encoder.embed_tokens.weight)"),
            std::string::npos)
      << r3.status().ToString();

  // A config problem names config.json.
  const std::string no_config = testing::MakeTempDir("rainserve-umt5");
  auto r4 = UMT5Encoder::Load(no_config, at::kFloat, at::kCPU);
  ASSERT_FALSE(r4.ok());
  EXPECT_NE(r4.status().message().find("config.json"), std::string::npos);
}

TEST(UMT5CheckpointTest, LoadsIntoAnotherDtype) {
  auto model = UMT5Encoder::Random(TinyConfig(), at::kFloat, at::kCPU, 61);
  const std::string dir = testing::MakeTempDir("rainserve-umt5");
  ASSERT_TRUE(model->Save(dir, int64_t{1} << 30).ok());
  auto bf16 = UMT5Encoder::Load(dir, at::kBFloat16, at::kCPU);
  ASSERT_TRUE(bf16.ok()) << bf16.status().ToString();
  EXPECT_EQ((*bf16)->dtype(), at::kBFloat16);
  for (const auto& [name, t] : (*bf16)->NamedParameters()) EXPECT_EQ(t.scalar_type(), at::kBFloat16) << name;
}

// ---- Wan prompt embeddings ----------------------------------------------------

TEST(UMT5PromptTest, EncodePromptsZeroesEveryPositionPastThePrompt) {
  auto tok = UMT5Tokenizer::Load(testing::SourceDir() + "/models/wan-tiny/tokenizer");
  ASSERT_TRUE(tok.ok()) << tok.status().ToString();
  UMT5Config c = TinyConfig();
  c.vocab_size = (*tok)->vocab_size();
  auto model = UMT5Encoder::Random(c, at::kFloat, at::kCPU, 71);
  const std::vector<std::string> prompts = {"a cat on a roof", "", "storm clouds over the sea at dusk"};
  auto emb = EncodePrompts(**tok, *model, prompts, 24);
  ASSERT_TRUE(emb.ok()) << emb.status().ToString();
  ASSERT_EQ(emb->sizes(), (std::vector<int64_t>{3, 24, 16}));
  const TokenizedBatch batch = (*tok)->EncodeBatch(prompts, 24);
  auto hidden = model->Forward(batch.ids, batch.mask);
  ASSERT_TRUE(hidden.ok());
  for (int64_t b = 0; b < 3; ++b) {
    const int64_t n = batch.lengths[static_cast<size_t>(b)];
    ASSERT_GE(n, 1);
    EXPECT_TRUE(at::equal((*emb)[b].slice(0, 0, n), (*hidden)[b].slice(0, 0, n))) << b;
    EXPECT_EQ(MaxAbs((*emb)[b].slice(0, n)), 0.0) << b;
    EXPECT_GT(MaxAbs((*emb)[b][n - 1]), 0.0) << b;  // the EOS row is kept
  }
  EXPECT_EQ(batch.lengths[1], 1);
  EXPECT_FALSE(EncodePrompts(**tok, *model, {}, 24).ok());
  EXPECT_FALSE(EncodePrompts(**tok, *model, prompts, 0).ok());
}

}  // namespace
}  // namespace rainserve
