// UMT5 text encoder (transformers' UMT5EncoderModel, the Wan text encoder)
// in LibTorch, with the published parameter names.
//
// Forward (batch B, tokens L, d_model D, heads H, d_kv K, inner = H * K):
//   x = shared[ids]                                             [B, L, D]
//   per block i:
//     h = RMSNorm(x) -> q, k, v [B, H, L, K]
//     scores = q k^T (no 1/sqrt(K): T5 folds it into the weights)
//              + rel_bias_i[bucket(j - i)] (every block owns its bias table:
//                the UMT5 difference from T5) + mask bias (fp32 lowest on
//                padded keys)                                   [B, H, L, L]
//     x += o(softmax(scores) v)
//     x += wo(gelu_tanh(wi_0(RMSNorm(x))) * wi_1(RMSNorm(x)))
//   last_hidden_state = RMSNorm_final(x)                        [B, L, D]
// RMSNorm as T5: no mean, no bias, variance in fp32, the weight applied in
// the weight's dtype. Matmuls run in the model dtype; softmax and the
// residual stream stay in fp32. In fp16 the `wo` weights are kept in fp32,
// as transformers does (T5 feed-forward outputs overflow fp16); the fp32
// residual stream makes transformers' fp16 clamping unnecessary.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace rainserve {

class UMT5Tokenizer;

struct UMT5Config {
  int64_t vocab_size = 256384;
  int64_t d_model = 4096;
  int64_t d_kv = 64;
  int64_t d_ff = 10240;
  int64_t num_layers = 24;
  int64_t num_heads = 64;
  int64_t relative_attention_num_buckets = 32;
  int64_t relative_attention_max_distance = 128;
  double layer_norm_epsilon = 1e-6;
  std::string feed_forward_proj = "gated-gelu";
  std::string dense_act_fn = "gelu_new";  // tanh-approximated GELU
  bool is_gated_act = true;

  int64_t inner_dim() const { return num_heads * d_kv; }
};

// Parses text_encoder/config.json (transformers' UMT5Config keys). Model
// keys are typed and range checked; dense_act_fn and is_gated_act follow
// feed_forward_proj unless given; anything but a gated tanh-GELU feed-forward
// and model_type other than "umt5" are UNIMPLEMENTED; transformers'
// bookkeeping keys (architectures, dropout_rate, torch_dtype, ...) are
// accepted. Errors name the key and `source`.
StatusOr<UMT5Config> ParseUMT5Config(const std::string& json_text, const std::string& source);

// The config written back as transformers config.json text (model_type
// "umt5", architectures ["UMT5EncoderModel"]).
std::string UMT5ConfigJson(const UMT5Config& config);

// T5's bidirectional relative-position bucket of `relative_position`
// (key position - query position), computed as transformers does (fp32 log,
// truncation toward zero). Elementwise over an int64 tensor.
at::Tensor RelativePositionBucket(const at::Tensor& relative_position, int64_t num_buckets,
                                  int64_t max_distance);

class UMT5Encoder {
 public:
  // Reads <dir>/config.json and <dir>/model.safetensors (or the shards named
  // by model.safetensors.index.json), as published. The token embedding may
  // be stored as shared.weight (the published layout) or
  // encoder.embed_tokens.weight (transformers' tied alias), or both.
  // Missing, unexpected and mis-shaped parameters are INVALID_ARGUMENT
  // listing them. Called once at model load, from the loading thread.
  static StatusOr<std::unique_ptr<UMT5Encoder>> Load(const std::string& dir, at::ScalarType dtype,
                                                     at::Device device);
  // Random weights initialised as transformers does (for tests and the
  // tiny-checkpoint generator).
  static std::unique_ptr<UMT5Encoder> Random(const UMT5Config& config, at::ScalarType dtype,
                                             at::Device device, uint64_t seed);

  // Every parameter with its published name and shape, in a stable order.
  static std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedParameters(
      const UMT5Config& config);
  std::vector<std::pair<std::string, at::Tensor>> NamedParameters() const { return params_; }

  // ids: [B, L] integer token ids in [0, vocab_size); mask: [B, L] (nonzero =
  // attend; bool, integer or floating). Returns last_hidden_state
  // [B, L, d_model] in the model dtype on the model device. Bad inputs are
  // INVALID_ARGUMENT; a LibTorch failure is INTERNAL, running out of memory
  // RESOURCE_EXHAUSTED (pipelines/core/torch_status.h). Const and stateless: any
  // thread may call it.
  StatusOr<at::Tensor> Forward(const at::Tensor& ids, const at::Tensor& mask) const;

  const UMT5Config& config() const { return config_; }
  at::ScalarType dtype() const { return dtype_; }
  at::Device device() const { return device_; }

  // Writes config.json + model.safetensors (sharded above max_shard_bytes,
  // with model.safetensors.index.json) to `dir`, in the published layout
  // (the embedding as shared.weight only).
  Status Save(const std::string& dir, int64_t max_shard_bytes) const;

 private:
  UMT5Encoder(UMT5Config config, at::ScalarType dtype, at::Device device);
  // The dtype a parameter is stored in for a model of `dtype`.
  static at::ScalarType ParamDType(const std::string& name, at::ScalarType dtype);
  at::Tensor ForwardImpl(const at::Tensor& ids, const at::Tensor& mask) const;

  UMT5Config config_;
  at::ScalarType dtype_;
  at::Device device_;
  std::vector<std::pair<std::string, at::Tensor>> params_;  // ExpectedParameters order
};

// Wan prompt embeddings, as diffusers' WanPipeline._get_t5_prompt_embeds:
// tokenize to max_length, encode, zero every position past each prompt's
// length (EOS included in the length). Returns [B, max_length, d_model] in
// the encoder's dtype on its device.
StatusOr<at::Tensor> EncodePrompts(const UMT5Tokenizer& tokenizer, const UMT5Encoder& encoder,
                                   const std::vector<std::string>& prompts, int64_t max_length);

}  // namespace rainserve
