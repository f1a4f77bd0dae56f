// WanTransformer3DModel configuration, read from a diffusers component's
// config.json (transformer/config.json) and validated.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "common/status.h"

namespace rainserve {

struct WanTransformerConfig {
  std::array<int64_t, 3> patch_size = {1, 2, 2};  // (t, h, w)
  int64_t num_attention_heads = 12;
  int64_t attention_head_dim = 128;
  int64_t in_channels = 16;
  int64_t out_channels = 16;
  int64_t text_dim = 4096;
  int64_t freq_dim = 256;
  int64_t ffn_dim = 8960;
  int64_t num_layers = 30;
  bool cross_attn_norm = true;
  std::string qk_norm = "rms_norm_across_heads";
  double eps = 1e-6;
  int64_t rope_max_seq_len = 1024;
  // Image cross-attention (Wan2.1 I2V, FLF2V); 0 stands for JSON null (none).
  int64_t image_dim = 0;          // CLIP hidden size of the image tokens (1280)
  int64_t added_kv_proj_dim = 0;  // set with image_dim, equal to inner_dim()
  int64_t pos_embed_seq_len = 0;  // image tokens with a learned position (FLF2V: 514)

  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
  bool has_image_attention() const { return image_dim > 0; }
};

// Parses config.json text. Every key is typed and range checked; diffusers
// bookkeeping keys (_class_name, _diffusers_version, ...) are accepted.
// image_dim and added_kv_proj_dim are both null or both set, with
// added_kv_proj_dim equal to the inner dim (the image embedder's output);
// pos_embed_seq_len needs image_dim. Any in_channels / out_channels pair
// loads (a transformer checkpoint of any size runs); which pairs a pipeline
// can drive is WanLatentInputOf's answer. Errors name the key and `source`.
StatusOr<WanTransformerConfig> ParseWanTransformerConfig(const std::string& json_text,
                                                         const std::string& source);

// What the transformer's input channels hold, as the pipelines build them.
enum class WanLatentInput {
  kLatents,           // in == out: the noisy latents (T2V, TI2V-5B)
  kMaskAndCondition,  // in == 2 * out + 4: latents, the 4-channel frame mask and
                      // the encoded conditioning video (Wan2.1/2.2 I2V: 36 = 16 + 4 + 16)
};

// The layout of `config`'s input channels; INVALID_ARGUMENT naming
// in_channels and `source` for any other in_channels / out_channels pair.
StatusOr<WanLatentInput> WanLatentInputOf(const WanTransformerConfig& config,
                                          const std::string& source);

// The same config written back as diffusers config.json text.
std::string WanTransformerConfigJson(const WanTransformerConfig& config);

}  // namespace rainserve
