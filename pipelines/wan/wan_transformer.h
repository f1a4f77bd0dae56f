// WanTransformer3DModel (Wan2.1 / Wan2.2 DiT: text-to-video, image-to-video,
// TI2V-5B) in LibTorch, with the published diffusers parameter names, and
// RainFusion2.0 sparse self-attention inside.
//
// Forward (shapes for batch B, latent [C, F, H, W], patch (pt, ph, pw),
// N = F/pt * H/ph * W/pw tokens, inner = heads * head_dim):
//   x = Conv3d patch embedding                         [B, N, inner]
//   t -> sinusoid(freq_dim) -> MLP -> temb -> 6 modulations per block; t is
//        one per batch element [B], or one per latent frame [B, F/pt]
//        (Wan2.2 TI2V): each token then takes its frame's modulation
//   text [B, L, text_dim] -> Linear, tanh-GELU, Linear  [B, L, inner]
//   image (I2V) [B, S, image_dim] (+ pos_embed) -> LN, Linear, GELU, Linear,
//        LN                                            [B, S, inner]
//   per block: LN(x)*(1+scale)+shift -> self-attn (RMSNorm q, k across heads,
//              3D RoPE) -> x += gate * out;  LN(x) -> cross-attn to text (+
//              a separate attention to the image tokens through add_k_proj /
//              add_v_proj, summed before to_out) -> x +=;
//              LN(x)*(1+c_scale)+c_shift -> FFN(tanh-GELU) -> x += c_gate * out
//   LN(x)*(1+scale)+shift with the output table -> Linear -> unpatchify
// Norms and modulation run in fp32, as in diffusers; the time embedder, the
// modulation tables and the block norms are kept in fp32 whatever the dtype.
// Norms, modulation, RoPE and gated residuals go through pipelines/wan/wan_ops.h:
// fused CUDA kernels for bf16/fp16 on the GPU, ATen fp32 ops otherwise (and
// for the modulated ops of a forward with per-frame timesteps, whose
// modulation differs per token).
//
// Self-attention goes through one attention::ForwardAttention per forward
// (attention/forward.h): it permutes the tokens once after the patch embedding
// (and the RoPE tables, and the token -> frame index of per-frame timesteps),
// runs every self-attention layer dense or block-sparse as the request's
// settings and step say, and undoes the permutation once before the output
// projection; every other op is token-wise, so this is exact.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "attention/engine.h"
#include "attention/forward.h"
#include "attention/settings.h"
#include "common/status.h"
#include "pipelines/core/collective.h"
#include "pipelines/core/model_options.h"
#include "pipelines/core/pipeline.h"
#include "pipelines/core/step_cache.h"
#include "pipelines/wan/wan_config.h"
#include "pipelines/wan/wan_ops.h"
#include "pipelines/wan/wan_weights.h"

namespace rainserve {

// The step cache's seam in Forward (the policy is the caller's,
// pipelines/core/step_cache.h). With first_block, `skip` sees block 0's
// residual (its output minus its input) and, when it returns true, the other
// blocks are replaced by adding `residual`; otherwise they run and `residual`
// becomes their output minus block 0's output. With teacache, `skip` sees
// block 0's modulated norm1 input and the residual spans every block. Token
// order is the forward's own (consistent across the steps of one request).
struct WanStepCacheHook {
  StepCacheMode mode = StepCacheMode::kOff;
  std::function<bool(const at::Tensor& probe)> skip;
  at::Tensor residual;  // [B, N, inner], refreshed by every computing forward
  bool skipped = false;  // out: this forward reused `residual`
};

struct WanForwardOptions {
  attention::AttentionEngine* engine = nullptr;  // required
  // The request's settings, validated; dense unless a caller says otherwise.
  attention::SparseSettings sparse{attention::AttentionMode::kDense};
  int64_t step = 0;                              // 0-based denoising step
  // min_sparse_blocks, the dense kernel (kAuto: the device's fastest) and the
  // benchmarks' device synchronisation.
  attention::ForwardOptions attention;
  // kAten runs the norms, modulation, RoPE and gated residuals as separate
  // ATen ops on every device (the pre-fusion baseline for benchmarks/tests).
  ElementwiseImpl elementwise = ElementwiseImpl::kFused;
  // Step caching; null runs every block.
  WanStepCacheHook* step_cache = nullptr;
  // Image cross-attention input (Wan2.1 I2V): the CLIP vision encoder's
  // penultimate hidden states [B, S, image_dim], any float dtype. Required
  // when the config sets image_dim, refused otherwise; S is 1..4096 (257 for
  // one image), or pos_embed_seq_len when that is set (FLF2V: the first and
  // the last frame's 257 tokens, one after the other).
  at::Tensor image_embeds;
  // Ulysses sequence parallel (models with several devices,
  // pipelines/core/parallel_plan.h): this rank's handle on its group. The
  // forward permutes the full sequence, keeps this rank's token shard
  // (TokenShards), turns token shards into head slices around each
  // self-attention (TokensToHeads / HeadsToTokens) and gathers the shards
  // before the output projection; every rank returns the full output. The
  // weights, inputs and settings must be the same on every rank of the group.
  // Null runs the whole sequence here. Refused with a step cache.
  Communicator* sequence_parallel = nullptr;
};

using WanForwardStats = attention::ForwardStats;

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

  // Merges LoRA files into the weights (pipelines/core/lora.h; original Wan
  // names through WanOriginalModuleName). Called once at load, before the
  // model serves, by WanPipeline::Load and tests. On error the weights are
  // unchanged: INVALID_ARGUMENT naming the file and key, or the file reader's.
  Status MergeLoras(const std::vector<LoraFile>& loras);

  // linear_precision fp8 (pipelines/wan/wan_fp8.h): quantizes the blocks'
  // linear weights to e4m3 with per-output-channel scales on `compute` (a
  // CUDA device; the weights stay where they are) and releases the bf16
  // copies; their forwards then run FP8 GEMMs. Called once at load after
  // MergeLoras, before the first MoveTo. INVALID_ARGUMENT naming
  // linear_precision when the model cannot take it (dtype not bf16, sizes
  // not multiples of 16, no CUDA).
  Status QuantizeLinearsToFp8(at::Device compute);
  bool fp8() const { return fp8_; }

  // Every parameter with its diffusers name and shape, in a stable order.
  static ParameterShapes ExpectedParameters(const WanTransformerConfig& config) {
    return WanExpectedParameters(config);
  }
  const NamedTensors& NamedParameters() const { return params_; }

  // latents: [B, in_channels, F, H, W] (dims divisible by the patch size)
  // timestep (0..1000 scale): [B], or [B, F / pt] with one time per latent
  //   frame after temporal patching (diffusers' per-token timesteps of
  //   Wan2.2 TI2V, which are constant over each frame)
  // text: [B, L, text_dim]; options.image_embeds as documented there.
  // Returns the flow prediction [B, out_channels, F, H, W] in the model
  // dtype. Bad shapes are INVALID_ARGUMENT naming the input.
  StatusOr<at::Tensor> Forward(const at::Tensor& latents, const at::Tensor& timestep,
                               const at::Tensor& text, const WanForwardOptions& options,
                               WanForwardStats* stats = nullptr) const;

  const WanTransformerConfig& config() const { return config_; }
  at::ScalarType dtype() const { return dtype_; }
  at::Device device() const { return device_; }

  // Writes config.json + safetensors (sharded above max_shard_bytes) to `dir`.
  Status Save(const std::string& dir, int64_t max_shard_bytes) const;

  // Moves the weights to `device` (an idle expert of a two-expert model goes
  // to host memory and back). The first move keeps a host copy, pinned where
  // CUDA is available, so later moves to the host free the device copy
  // without copying and moves to the device are one host-to-device copy.
  // Not thread-safe: the model's worker calls it between forwards.
  Status MoveTo(at::Device device);

  // A replica with a copy of every parameter on `device` (a rank of a model
  // with several devices; the weights are read from disk once). Called at
  // load, before the model serves.
  StatusOr<std::unique_ptr<WanTransformer>> CopyTo(at::Device device) const;

 private:
  // The conditioning of one forward (fp32 modulation inputs, contexts).
  struct Conditioning {
    at::Tensor temb;           // [B, inner] or per frame [B, F, inner] fp32
    at::Tensor tproj;          // [B, 6, inner] or per frame [B, F, 6, inner] fp32
    at::Tensor context;        // [B, L, inner] model dtype
    at::Tensor image_context;  // [B, S, inner] model dtype; undefined without images
    // FP8 models: the contexts' rows in e4m3, quantized once per forward.
    wan_ops::Fp8Rows context_fp8, image_context_fp8;
    at::Tensor token_frame;    // [N] int64, each token's frame in the forward's
                               // token order; undefined for [B] timesteps
    // Sequence parallel: this rank's group and the token shards of the
    // permuted sequence (N above is then the rank's shard); null comm: none.
    Communicator* sp = nullptr;
    std::vector<IndexRange> shards;
  };
  // Modulation vectors (shift, scale, ...) of a block or norm_out: fp32
  // [B, 1, inner] per batch element, or [B, F, inner] per frame. operator[]
  // gives the vector a token-wise op takes: per batch as is, per frame
  // gathered to the tokens [B, N, inner] (one vector at a time, so a block
  // never holds [B, N, 6, inner]).
  struct Modulation {
    std::vector<at::Tensor> v;
    at::Tensor token_frame;  // Conditioning::token_frame
    at::Tensor operator[](size_t i) const {
      return token_frame.defined() ? v[i].index_select(1, token_frame) : v[i];
    }
  };
  // The residual stream between blocks: x, and h = the normed, modulated x
  // that the next sublayer reads (residual + next norm are fused).
  struct Stream {
    at::Tensor x, h;     // [B, N, inner]
    wan_ops::Fp8Rows hq;  // FP8 models: h's rows in e4m3 when the norm wrote them
  };

  WanTransformer(WanTransformerConfig config, at::ScalarType dtype, at::Device device);
  Status Resolve();  // weights_ from params_
  // Time embedding (once per timestep entry, not per token), text and image
  // contexts; token_frame is set by Forward.
  StatusOr<Conditioning> Condition(const at::Tensor& timestep, const at::Tensor& text,
                                   const at::Tensor& image_embeds, ElementwiseImpl ew) const;
  // condition_embedder.image_embedder: [B, S, image_dim] -> [B, S, inner].
  StatusOr<at::Tensor> ImageEmbedding(const at::Tensor& image_embeds, ElementwiseImpl ew) const;
  // Block w's six modulation vectors (shift, scale, gate, c_shift, c_scale,
  // c_gate).
  Modulation BlockModulation(const WanBlockWeights& w, const Conditioning& cond) const;
  // norm_out's shift and scale.
  Modulation OutputModulation(const Conditioning& cond) const;
  // Blocks [first, end) over *s (the stream after block first - 1).
  Status Blocks(size_t first, size_t end, const Conditioning& cond, const Modulation& out_mod,
                const at::Tensor& rope_cos, const at::Tensor& rope_sin,
                attention::ForwardAttention& attn, ElementwiseImpl ew, Stream* s) const;
  // Every block, through options.step_cache when set.
  Status CachedBlocks(const Conditioning& cond, const Modulation& out_mod,
                      const at::Tensor& rope_cos, const at::Tensor& rope_sin,
                      attention::ForwardAttention& attn, const WanForwardOptions& options,
                      Stream* s) const;
  // One WanTransformerBlock; `next_mod` is the modulation of the norm that
  // reads its output (the next block's norm1, or norm_out after the last).
  Status Block(const WanBlockWeights& w, const Modulation& mod, const Modulation& next_mod,
               const Conditioning& cond, const at::Tensor& rope_cos, const at::Tensor& rope_sin,
               attention::ForwardAttention& attn, ElementwiseImpl ew, Stream* s) const;
  // Self-attention of q, k, v [B, N, heads, hd] through `attn`, around the
  // Ulysses all-to-alls when cond.sp is set.
  StatusOr<at::Tensor> SelfAttention(attention::ForwardAttention& attn, const Conditioning& cond,
                                     const at::Tensor& q, const at::Tensor& k,
                                     const at::Tensor& v) const;
  // attn2 of a block on h [B, N, inner] (hq: its e4m3 rows for FP8 layers,
  // or undefined): text attention plus, with images,
  // the image attention (WanAttnProcessor's order), then to_out.
  StatusOr<at::Tensor> CrossAttention(const WanAttentionWeights& w, const at::Tensor& h,
                                      const wan_ops::Fp8Rows& hq, const Conditioning& cond,
                                      ElementwiseImpl ew) const;

  WanTransformerConfig config_;
  at::ScalarType dtype_;
  at::Device device_;
  NamedTensors params_;  // ExpectedParameters order (Save, NamedParameters)
  NamedTensors host_params_;  // MoveTo's host copy (empty until the first move)
  WanWeights weights_;   // typed views of params_
  bool fp8_ = false;     // QuantizeLinearsToFp8 ran
};

}  // namespace rainserve
