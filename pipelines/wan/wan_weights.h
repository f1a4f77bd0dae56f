// Typed weights of WanTransformer3DModel, resolved once at load from the
// published diffusers parameter names (one struct per block, no name lookups
// during a forward).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "pipelines/wan/wan_config.h"

namespace rainserve {

struct WanLinear {
  at::Tensor weight;  // [out, in] (Conv3d: [out, in, kt, kh, kw]); uint8 e4m3 when fp8()
  at::Tensor bias;    // [out]
  at::Tensor weight_scale;  // [out] fp32 per-output-channel scales of an FP8 layer, else undefined
  bool fp8() const { return weight_scale.defined(); }
};

// attn1 (self-attention) or attn2 (cross-attention to the text, and to the
// image tokens when the model has image cross-attention).
struct WanAttentionWeights {
  WanLinear to_q, to_k, to_v, to_out;
  at::Tensor norm_q, norm_k;  // RMSNorm across all heads: [inner]
  // attn2 with image cross-attention only (else undefined): the image
  // tokens' key and value projections [inner, inner] and key RMSNorm [inner].
  WanLinear add_k_proj, add_v_proj;
  at::Tensor norm_added_k;
};

// condition_embedder.image_embedder: CLIP hidden states [B, S, image_dim]
// (+ pos_embed) -> LayerNorm -> Linear, GELU (erf), Linear -> LayerNorm
// [B, S, inner]. The LayerNorms (eps 1e-5, affine) run in fp32.
struct WanImageEmbedderWeights {
  at::Tensor norm1_weight, norm1_bias;  // [image_dim] fp32
  WanLinear ff_in, ff_out;  // ff.net.0.proj [image_dim, image_dim], ff.net.2 [inner, image_dim]
  at::Tensor norm2_weight, norm2_bias;  // [inner] fp32
  at::Tensor pos_embed;                 // [1, pos_embed_seq_len, image_dim]; undefined when unset
};

struct WanBlockWeights {
  at::Tensor scale_shift_table;  // [1, 6, inner] fp32: shift, scale, gate, c_shift, c_scale, c_gate
  WanAttentionWeights attn1, attn2;
  at::Tensor norm2_weight, norm2_bias;  // [inner] fp32; undefined without cross_attn_norm
  WanLinear ffn_in, ffn_out;            // ffn.net.0.proj (tanh-GELU), ffn.net.2
};

struct WanWeights {
  WanLinear patch_embedding;
  WanLinear time_linear_1, time_linear_2, time_proj;  // fp32 time embedder, then time_proj
  WanLinear text_linear_1, text_linear_2;
  WanImageEmbedderWeights image_embedder;  // undefined tensors without image cross-attention
  std::vector<WanBlockWeights> blocks;
  at::Tensor scale_shift_table;  // [1, 2, inner] fp32: norm_out's shift, scale
  WanLinear proj_out;
};

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;
using ParameterShapes = std::vector<std::pair<std::string, std::vector<int64_t>>>;

// The bytes `params` hold (the memory models' weights term).
uint64_t ParameterBytes(const NamedTensors& params);

// Every parameter with its diffusers name and shape, in a stable order.
ParameterShapes WanExpectedParameters(const WanTransformerConfig& config);

// True for the parameters diffusers keeps in fp32 whatever the model dtype.
bool WanKeptInFp32(const std::string& name);

// The name the original Wan code (and the LoRAs trained on it) gives a
// module of diffusers name `module`, e.g. "blocks.0.self_attn.q" for
// "blocks.0.attn1.to_q", "head.head" for "proj_out"; "" when it is the same.
std::string WanOriginalModuleName(const std::string& module);

// Typed views of `params` (named as WanExpectedParameters). INTERNAL naming
// the parameter when one is missing.
StatusOr<WanWeights> ResolveWanWeights(const WanTransformerConfig& config,
                                       const NamedTensors& params);

}  // namespace rainserve
