#include "pipelines/text/umt5.h"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include <ATen/CPUGeneratorImpl.h>

#include "common/files.h"
#include "pipelines/core/json_config.h"
#include "pipelines/core/safetensors.h"
#include "pipelines/text/tokenizer.h"

namespace rainserve {
namespace {

using nlohmann::json;

constexpr char kEmbedding[] = "shared.weight";
// transformers' UMT5EncoderModel state_dict also lists the embedding under
// this name (the same tensor, tied); published checkpoints store only
// shared.weight.
constexpr char kEmbeddingAlias[] = "encoder.embed_tokens.weight";

using config_json::KeyError;
using config_json::ReadInt;

Status ReadString(const json& j, const std::string& source, const char* key, std::string* out) {
  if (!j.contains(key)) return OkStatus();
  if (!j[key].is_string()) return KeyError(source, key, "expected a string, got " + j[key].dump());
  *out = j[key].get<std::string>();
  return OkStatus();
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// T5 RMS LayerNorm: x / sqrt(mean(x^2) + eps), the variance in fp32, then
// the weight applied in the weight's dtype when that is half precision.
// x: [..., D] fp32 (the residual stream); returns the weight's dtype.
at::Tensor T5LayerNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const at::Tensor variance = x.pow(2).mean(-1, /*keepdim=*/true);
  at::Tensor y = x * at::rsqrt(variance + eps);
  if (weight.scalar_type() == at::kHalf || weight.scalar_type() == at::kBFloat16) {
    y = y.to(weight.scalar_type());
  }
  return weight * y;
}

}  // namespace

StatusOr<UMT5Config> ParseUMT5Config(const std::string& json_text, const std::string& source) {
  RAINSERVE_ASSIGN_OR_RETURN(json j, config_json::ParseObject(json_text, source));
  UMT5Config c;
  if (j.contains("model_type") && j["model_type"] != "umt5") {
    return UnimplementedError(source + ": model_type: only \"umt5\" is supported (T5 and mT5 share "
                              "one position bias across layers), got " + j["model_type"].dump());
  }
  const int64_t kBig = int64_t{1} << 24;
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, source, "vocab_size", 1, kBig, &c.vocab_size));
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, source, "d_model", 1, 65536, &c.d_model));
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, source, "d_kv", 1, 4096, &c.d_kv));
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, source, "d_ff", 1, kBig, &c.d_ff));
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, source, "num_layers", 1, 1024, &c.num_layers));
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, source, "num_heads", 1, 1024, &c.num_heads));
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, source, "relative_attention_num_buckets", 4, 65536,
                                    &c.relative_attention_num_buckets));
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, source, "relative_attention_max_distance", 1, kBig,
                                    &c.relative_attention_max_distance));
  // Bidirectional buckets: half per direction, half of those exact; the log
  // buckets need max_distance beyond the exact range.
  const int64_t max_exact = c.relative_attention_num_buckets / 2 / 2;
  if (c.relative_attention_max_distance <= max_exact) {
    return KeyError(source, "relative_attention_max_distance",
                    "must exceed relative_attention_num_buckets / 4 = " + std::to_string(max_exact));
  }
  if (j.contains("layer_norm_epsilon")) {
    const json& v = j["layer_norm_epsilon"];
    if (!v.is_number() || !(v.get<double>() > 0) || !std::isfinite(v.get<double>())) {
      return KeyError(source, "layer_norm_epsilon", "expected a positive number, got " + v.dump());
    }
    c.layer_norm_epsilon = v.get<double>();
  }
  // transformers: "gated-<act>" or "<act>"; gated-gelu means gelu_new. The
  // explicit dense_act_fn / is_gated_act keys, when present, win.
  RAINSERVE_RETURN_IF_ERROR(ReadString(j, source, "feed_forward_proj", &c.feed_forward_proj));
  {
    const std::string& p = c.feed_forward_proj;
    const size_t dash = p.find('-');
    if (p.empty() || (dash != std::string::npos &&
                      (p.substr(0, dash) != "gated" || p.find('-', dash + 1) != std::string::npos))) {
      return KeyError(source, "feed_forward_proj",
                      "expected \"gated-<act>\" or \"<act>\", got \"" + p + "\"");
    }
    c.is_gated_act = dash != std::string::npos;
    c.dense_act_fn = p == "gated-gelu" ? "gelu_new" : p.substr(dash == std::string::npos ? 0 : dash + 1);
  }
  RAINSERVE_RETURN_IF_ERROR(ReadString(j, source, "dense_act_fn", &c.dense_act_fn));
  if (j.contains("is_gated_act")) {
    if (!j["is_gated_act"].is_boolean()) {
      return KeyError(source, "is_gated_act", "expected true or false, got " + j["is_gated_act"].dump());
    }
    c.is_gated_act = j["is_gated_act"].get<bool>();
  }
  if (!c.is_gated_act) {
    return UnimplementedError(source + ": is_gated_act: only the gated feed-forward (wi_0, wi_1, wo) "
                              "is supported (feed_forward_proj \"" + c.feed_forward_proj + "\")");
  }
  if (c.dense_act_fn != "gelu_new" && c.dense_act_fn != "gelu_pytorch_tanh") {
    return UnimplementedError(source + ": dense_act_fn: only the tanh-approximated GELU "
                              "(\"gelu_new\", \"gelu_pytorch_tanh\") is supported, got \"" +
                              c.dense_act_fn + "\"");
  }
  return c;
}

std::string UMT5ConfigJson(const UMT5Config& c) {
  json j = {{"architectures", {"UMT5EncoderModel"}},
            {"model_type", "umt5"},
            {"vocab_size", c.vocab_size},
            {"d_model", c.d_model},
            {"d_kv", c.d_kv},
            {"d_ff", c.d_ff},
            {"num_layers", c.num_layers},
            {"num_decoder_layers", c.num_layers},
            {"num_heads", c.num_heads},
            {"relative_attention_num_buckets", c.relative_attention_num_buckets},
            {"relative_attention_max_distance", c.relative_attention_max_distance},
            {"layer_norm_epsilon", c.layer_norm_epsilon},
            {"feed_forward_proj", c.feed_forward_proj},
            {"dense_act_fn", c.dense_act_fn},
            {"is_gated_act", c.is_gated_act},
            {"dropout_rate", 0.0},
            {"classifier_dropout", 0.0},
            {"initializer_factor", 1.0},
            {"is_encoder_decoder", true},
            {"use_cache", true},
            {"pad_token_id", 0},
            {"eos_token_id", 1},
            {"decoder_start_token_id", 0},
            {"tie_word_embeddings", false},
            {"tokenizer_class", "T5Tokenizer"}};
  return j.dump(2);
}

at::Tensor RelativePositionBucket(const at::Tensor& relative_position, int64_t num_buckets,
                                  int64_t max_distance) {
  // Half of the buckets for keys after the query (relative_position > 0).
  const int64_t half = num_buckets / 2;
  const at::Tensor after = (relative_position > 0).to(at::kLong) * half;
  const at::Tensor n = relative_position.abs();
  // Half of each direction's buckets are exact distances 0..max_exact-1; the
  // rest grow logarithmically up to max_distance, then saturate. The same
  // fp32 ops as transformers, so that truncation agrees at the boundaries.
  const int64_t max_exact = half / 2;
  const at::Tensor log_ratio = at::log(n.to(at::kFloat) / static_cast<double>(max_exact)) /
                               std::log(static_cast<double>(max_distance) / static_cast<double>(max_exact)) *
                               static_cast<double>(half - max_exact);
  const at::Tensor large = at::clamp_max(log_ratio.to(at::kLong) + max_exact, half - 1);
  return after + at::where(n < max_exact, n, large);
}

UMT5Encoder::UMT5Encoder(UMT5Config config, at::ScalarType dtype, at::Device device)
    : config_(std::move(config)), dtype_(dtype), device_(device) {}

at::ScalarType UMT5Encoder::ParamDType(const std::string& name, at::ScalarType dtype) {
  // transformers keeps `wo` in fp32 for fp16 models (_keep_in_fp32_modules).
  return dtype == at::kHalf && EndsWith(name, ".wo.weight") ? at::kFloat : dtype;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> UMT5Encoder::ExpectedParameters(
    const UMT5Config& c) {
  const int64_t d = c.d_model, inner = c.inner_dim();
  std::vector<std::pair<std::string, std::vector<int64_t>>> p;
  p.push_back({kEmbedding, {c.vocab_size, d}});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string b = "encoder.block." + std::to_string(i) + ".layer.";
    for (const char* proj : {"q", "k", "v"}) {
      p.push_back({b + "0.SelfAttention." + proj + ".weight", {inner, d}});
    }
    p.push_back({b + "0.SelfAttention.o.weight", {d, inner}});
    p.push_back({b + "0.SelfAttention.relative_attention_bias.weight",
                 {c.relative_attention_num_buckets, c.num_heads}});
    p.push_back({b + "0.layer_norm.weight", {d}});
    p.push_back({b + "1.DenseReluDense.wi_0.weight", {c.d_ff, d}});
    p.push_back({b + "1.DenseReluDense.wi_1.weight", {c.d_ff, d}});
    p.push_back({b + "1.DenseReluDense.wo.weight", {d, c.d_ff}});
    p.push_back({b + "1.layer_norm.weight", {d}});
  }
  p.push_back({"encoder.final_layer_norm.weight", {d}});
  return p;
}

std::unique_ptr<UMT5Encoder> UMT5Encoder::Random(const UMT5Config& config, at::ScalarType dtype,
                                                 at::Device device, uint64_t seed) {
  std::unique_ptr<UMT5Encoder> model(new UMT5Encoder(config, dtype, device));
  // A private generator: no global state touched, and the same weights on
  // every device.
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const double d = static_cast<double>(config.d_model);
  const double kv = static_cast<double>(config.d_kv);
  const double inner = static_cast<double>(config.inner_dim());
  const double ff = static_cast<double>(config.d_ff);
  for (const auto& [name, shape] : ExpectedParameters(config)) {
    // transformers' _init_weights (initializer_factor 1): std per tensor.
    double std_dev = 1.0;  // the embedding
    if (EndsWith(name, "layer_norm.weight")) {
      std_dev = 0.0;
    } else if (EndsWith(name, ".q.weight")) {
      std_dev = 1.0 / std::sqrt(d * kv);
    } else if (EndsWith(name, ".o.weight")) {
      std_dev = 1.0 / std::sqrt(inner);
    } else if (EndsWith(name, ".wo.weight")) {
      std_dev = 1.0 / std::sqrt(ff);
    } else if (name != kEmbedding) {  // k, v, wi_0, wi_1, relative_attention_bias
      std_dev = 1.0 / std::sqrt(d);
    }
    at::Tensor t = std_dev == 0.0 ? at::ones(shape, at::kFloat)
                                  : at::empty(shape, at::kFloat).normal_(0.0, std_dev, gen);
    model->params_.push_back({name, t.to(device, ParamDType(name, dtype))});
  }
  return model;
}

StatusOr<std::unique_ptr<UMT5Encoder>> UMT5Encoder::Load(const std::string& dir,
                                                         at::ScalarType dtype, at::Device device) {
  std::string text;
  RAINSERVE_RETURN_IF_ERROR(ReadFile(dir + "/config.json", &text));
  RAINSERVE_ASSIGN_OR_RETURN(UMT5Config config, ParseUMT5Config(text, dir + "/config.json"));
  RAINSERVE_ASSIGN_OR_RETURN(SafetensorsCheckpoint ckpt, SafetensorsCheckpoint::Open(dir, "model"));
  const auto expected = ExpectedParameters(config);

  // The embedding may be stored under its tied alias only.
  RAINSERVE_ASSIGN_OR_RETURN(
      const std::vector<std::string> source_names,
      MatchCheckpoint(ckpt, dir, expected, {{kEmbedding, kEmbeddingAlias}}));
  std::unique_ptr<UMT5Encoder> model(new UMT5Encoder(config, dtype, device));
  for (size_t i = 0; i < expected.size(); ++i) {
    const std::string& name = expected[i].first;
    RAINSERVE_ASSIGN_OR_RETURN(at::Tensor t,
                               ckpt.Get(source_names[i], ParamDType(name, dtype), device));
    model->params_.push_back({name, t});
  }
  return model;
}

Status UMT5Encoder::Save(const std::string& dir, int64_t max_shard_bytes) const {
  return WriteModelFolder(dir, UMT5ConfigJson(config_), "model", params_, max_shard_bytes);
}

StatusOr<at::Tensor> UMT5Encoder::Forward(const at::Tensor& ids, const at::Tensor& mask) const {
  if (!ids.defined() || ids.dim() != 2 || ids.size(0) < 1 || ids.size(1) < 1 ||
      !at::isIntegralType(ids.scalar_type(), /*includeBool=*/false)) {
    return InvalidArgumentError("ids must be a non-empty [B, L] integer tensor");
  }
  if (!mask.defined() || mask.sizes() != ids.sizes()) {
    return InvalidArgumentError("mask must be [B, L] like ids " + ShapeText(ids.sizes().vec()));
  }
  const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
  if (lo < 0 || hi >= config_.vocab_size) {
    return InvalidArgumentError("ids must be in [0, " + std::to_string(config_.vocab_size) +
                                "), got values in [" + std::to_string(lo) + ", " +
                                std::to_string(hi) + "]");
  }
  return ForwardImpl(ids, mask);
}

at::Tensor UMT5Encoder::ForwardImpl(const at::Tensor& ids_in, const at::Tensor& mask_in) const {
  const UMT5Config& c = config_;
  const int64_t B = ids_in.size(0), L = ids_in.size(1), H = c.num_heads, K = c.d_kv;
  const double eps = c.layer_norm_epsilon;
  const at::Tensor ids = ids_in.to(device_, at::kLong);
  // Parameters in ExpectedParameters order: the embedding, 10 per block, the final norm.
  auto P = [&](size_t index) -> const at::Tensor& { return params_[index].second; };
  constexpr size_t kPerBlock = 10;

  // Residual stream x: [B, L, D] fp32.
  at::Tensor x = at::embedding(P(0), ids).to(at::kFloat);
  // Padded keys get the lowest fp32 value (transformers: finfo(dtype).min):
  // exp() of it is exactly 0, and a row of all-padded keys stays finite.
  // mask_bias: [B, 1, 1, L] fp32.
  const at::Tensor keep = (mask_in.to(device_) != 0).to(at::kFloat);
  const at::Tensor mask_bias =
      ((1.0 - keep) * static_cast<double>(std::numeric_limits<float>::lowest())).view({B, 1, 1, L});
  // Buckets of key - query: [L, L], shared by every block (each has its own table).
  const auto long_opts = at::TensorOptions().dtype(at::kLong).device(device_);
  const at::Tensor positions = at::arange(L, long_opts);
  const at::Tensor buckets =
      RelativePositionBucket(positions.unsqueeze(0) - positions.unsqueeze(1),
                             c.relative_attention_num_buckets, c.relative_attention_max_distance);

  auto heads = [&](const at::Tensor& t) { return t.view({B, L, H, K}).transpose(1, 2); };
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const size_t base = 1 + static_cast<size_t>(i) * kPerBlock;
    // 1. Self-attention. q, k, v: [B, H, L, K] in the model dtype.
    at::Tensor h = T5LayerNorm(x, P(base + 5), eps).to(dtype_);
    const at::Tensor q = heads(at::linear(h, P(base + 0)));
    const at::Tensor k = heads(at::linear(h, P(base + 1)));
    const at::Tensor v = heads(at::linear(h, P(base + 2)));
    // bias: [1, H, L, L] from the block's [buckets, H] table.
    const at::Tensor bias = at::embedding(P(base + 4), buckets).permute({2, 0, 1}).unsqueeze(0);
    // scores: [B, H, L, L] fp32, no 1/sqrt(K) scaling (T5).
    const at::Tensor scores = at::matmul(q, k.transpose(-1, -2)).to(at::kFloat) +
                              (bias.to(at::kFloat) + mask_bias);
    const at::Tensor probs = at::softmax(scores, -1).to(dtype_);
    const at::Tensor context = at::matmul(probs, v).transpose(1, 2).reshape({B, L, H * K});
    x = x + at::linear(context, P(base + 3)).to(at::kFloat);

    // 2. Gated feed-forward: wo(gelu_tanh(wi_0 h) * wi_1 h).
    h = T5LayerNorm(x, P(base + 9), eps).to(dtype_);
    const at::Tensor gated = at::gelu(at::linear(h, P(base + 6)), "tanh") * at::linear(h, P(base + 7));
    const at::Tensor& wo = P(base + 8);
    x = x + at::linear(gated.to(wo.scalar_type()), wo).to(at::kFloat);
  }
  return T5LayerNorm(x, P(params_.size() - 1), eps).to(dtype_);
}

StatusOr<at::Tensor> EncodePrompts(const UMT5Tokenizer& tokenizer, const UMT5Encoder& encoder,
                                   const std::vector<std::string>& prompts, int64_t max_length) {
  if (prompts.empty()) return InvalidArgumentError("no prompts to encode");
  if (max_length < 1) return InvalidArgumentError("max_length must be at least 1");
  const TokenizedBatch batch = tokenizer.EncodeBatch(prompts, max_length);
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor hidden, encoder.Forward(batch.ids, batch.mask));
  // Positions past each prompt's length become exact zeros. hidden: [B, L, D].
  const at::Tensor lengths =
      at::tensor(batch.lengths, at::TensorOptions().dtype(at::kLong)).to(encoder.device());
  const at::Tensor positions =
      at::arange(max_length, at::TensorOptions().dtype(at::kLong).device(encoder.device()));
  const at::Tensor padded = (positions.unsqueeze(0) >= lengths.unsqueeze(1)).unsqueeze(-1);
  return hidden.masked_fill(padded, 0);
}

}  // namespace rainserve
