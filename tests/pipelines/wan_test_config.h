// The tiny Wan transformer config the CPU tests build random models with:
// 2 heads x 16 (inner 32), 2 layers, 4 latent channels, text_dim 8, ffn 32.
#pragma once

#include "pipelines/wan/wan_config.h"

namespace rainserve::testing {

inline WanTransformerConfig TinyWanTransformerConfig() {
  WanTransformerConfig c;
  c.num_attention_heads = 2;
  c.attention_head_dim = 16;
  c.in_channels = 4;
  c.out_channels = 4;
  c.text_dim = 8;
  c.freq_dim = 16;
  c.ffn_dim = 32;
  c.num_layers = 2;
  return c;
}

}  // namespace rainserve::testing
