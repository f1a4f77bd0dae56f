// WanTransformer3DModel (Wan2.1 / Wan2.2 text-to-video DiT) in LibTorch, with
// the published diffusers parameter names, and RainFusion2.0 sparse
// self-attention inside.
//
// Forward (shapes for batch B, latent [C, F, H, W], patch (pt, ph, pw),
// N = F/pt * H/ph * W/pw tokens, inner = heads * head_dim):
//   x = Conv3d patch embedding                         [B, N, inner]
//   t -> sinusoid(freq_dim) -> MLP -> temb [B, inner] -> 6 modulations per block
//   text [B, L, text_dim] -> Linear, tanh-GELU, Linear  [B, L, inner]
//   per block: LN(x)*(1+scale)+shift -> self-attn (RMSNorm q, k across heads,
//              3D RoPE) -> x += gate * out;  LN(x) -> cross-attn to text -> x +=;
//              LN(x)*(1+c_scale)+c_shift -> FFN(tanh-GELU) -> x += c_gate * out
//   LN(x)*(1+scale)+shift with the output table -> Linear -> unpatchify
// Norms and modulation run in fp32, as in diffusers; the time embedder, the
// modulation tables and the block norms are kept in fp32 whatever the dtype.
// Norms, modulation, RoPE and gated residuals go through pipelines/wan_ops.h:
// fused CUDA kernels for bf16/fp16 on the GPU, ATen fp32 ops otherwise.
//
// With SelfAttentionImpl::kRainFusion the token permutation is applied once
// after the patch embedding (and to the RoPE tables) and undone once before
// the output projection; every other op is token-wise, so this is exact.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "attention/config.h"
#include "attention/engine.h"
#include "common/status.h"
#include "pipelines/pipeline.h"
#include "pipelines/wan_config.h"
#include "pipelines/wan_ops.h"

namespace rainserve {

enum class SelfAttentionImpl {
  kRainFusion,  // our kernels: block-sparse, or dense when sparsity is 0
  kTorch,       // plain LibTorch attention in the original token order
};

struct WanForwardOptions {
  attention::AttentionEngine* engine = nullptr;  // required for kRainFusion
  SelfAttentionImpl impl = SelfAttentionImpl::kRainFusion;
  double sparsity = 0.0;
  int64_t sink_frames = 1;           // clamped to the latent frame count
  attention::WindowShape window{0, 0, 0};  // 0s: the default for the layout
  MaskRefresh mask_refresh = MaskRefresh::kEveryLayer;
  int64_t min_sparse_blocks = 4;
  // kAten runs the norms, modulation, RoPE and gated residuals as separate
  // ATen ops on every device (the pre-fusion baseline for benchmarks/tests).
  ElementwiseImpl elementwise = ElementwiseImpl::kFused;
  // Benchmarks set this to a device synchronisation so that the stats'
  // attention/mask/permute times are device times (at some cost in speed).
  std::function<void()> synchronize;
};

struct WanForwardStats {
  bool sparse = false;             // some layer ran block-sparse
  double realized_sparsity = 0.0;  // mean over self-attention layers
  double mask_seconds = 0.0;
  double attention_seconds = 0.0;
  double permute_seconds = 0.0;
  int64_t tokens = 0;
};

class WanTransformer {
 public:
  // Reads <dir>/config.json and the safetensors weights (sharded or not).
  // Missing, unexpected and mis-shaped parameters are INVALID_ARGUMENT listing
  // them; file problems are the loader's errors, naming file and tensor.
  static StatusOr<std::unique_ptr<WanTransformer>> Load(const std::string& dir,
                                                        at::ScalarType dtype, at::Device device);
  // Random weights initialised as diffusers does (for tests and benchmarks).
  static std::unique_ptr<WanTransformer> Random(const WanTransformerConfig& config,
                                                at::ScalarType dtype, at::Device device,
                                                uint64_t seed);

  // Every parameter with its diffusers name and shape, in a stable order.
  static std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedParameters(
      const WanTransformerConfig& config);
  std::vector<std::pair<std::string, at::Tensor>> NamedParameters() const;

  // latents: [B, in_channels, F, H, W] (dims divisible by the patch size)
  // timestep: [B] (0..1000 scale), text: [B, L, text_dim]
  // returns the flow prediction [B, out_channels, F, H, W] in the model dtype.
  StatusOr<at::Tensor> Forward(const at::Tensor& latents, const at::Tensor& timestep,
                               const at::Tensor& text, const WanForwardOptions& options,
                               WanForwardStats* stats = nullptr) const;

  const WanTransformerConfig& config() const { return config_; }
  at::ScalarType dtype() const { return dtype_; }
  at::Device device() const { return device_; }

  // Writes config.json + safetensors (sharded above max_shard_bytes) to `dir`.
  Status Save(const std::string& dir, int64_t max_shard_bytes) const;

 private:
  struct Params;
  WanTransformer(WanTransformerConfig config, at::ScalarType dtype, at::Device device);
  // True for the parameters diffusers keeps in fp32.
  static bool KeptInFp32(const std::string& name);

  WanTransformerConfig config_;
  at::ScalarType dtype_;
  at::Device device_;
  std::vector<std::pair<std::string, at::Tensor>> params_;  // ExpectedParameters order
};

}  // namespace rainserve
