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

  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
};

// Parses config.json text. Keys Wan text-to-video uses are typed and range
// checked; image conditioning (image_dim, added_kv_proj_dim,
// pos_embed_seq_len set) is UNIMPLEMENTED; diffusers bookkeeping keys
// (_class_name, _diffusers_version, ...) are accepted. Errors name the key
// and `source`.
StatusOr<WanTransformerConfig> ParseWanTransformerConfig(const std::string& json_text,
                                                         const std::string& source);

// The same config written back as diffusers config.json text.
std::string WanTransformerConfigJson(const WanTransformerConfig& config);

}  // namespace rainserve
