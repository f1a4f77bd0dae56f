#include "pipelines/wan_transformer.h"

#include <chrono>
#include <cmath>
#include <map>
#include <set>
#include <sstream>
#include <utility>
#include <vector>

#include <torch/version.h>

#include "attention/torch_adapter.h"
#include "common/config.h"
#include "pipelines/safetensors.h"
#include "pipelines/wan_ops.h"

namespace rainserve {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Dense attention with LibTorch. q: [B, Nq, H, D], k, v: [B, Nk, H, D].
at::Tensor TorchAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const at::Tensor qt = q.transpose(1, 2), kt = k.transpose(1, 2), vt = v.transpose(1, 2);
#if TORCH_VERSION_MAJOR >= 2
  return at::scaled_dot_product_attention(qt, kt, vt).transpose(1, 2);
#else
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  const at::Tensor scores = at::matmul(qt.to(at::kFloat), kt.to(at::kFloat).transpose(-1, -2)) * scale;
  return at::matmul(at::softmax(scores, -1), vt.to(at::kFloat)).to(q.scalar_type()).transpose(1, 2);
#endif
}

at::Tensor GeluTanh(const at::Tensor& x) { return at::gelu(x, "tanh"); }

// Sinusoidal timestep embedding as diffusers' Timesteps(flip_sin_to_cos=True,
// downscale_freq_shift=0): [cos(t w_i), sin(t w_i)], w_i = 10000^(-i/half).
at::Tensor TimestepEmbedding(const at::Tensor& t, int64_t dim) {
  const int64_t half = dim / 2;
  const auto opts = at::TensorOptions().dtype(at::kFloat).device(t.device());
  const at::Tensor exponent = at::arange(half, opts) * (-std::log(10000.0) / static_cast<double>(half));
  const at::Tensor args = t.to(at::kFloat).unsqueeze(1) * at::exp(exponent).unsqueeze(0);
  return at::cat({at::cos(args), at::sin(args)}, 1);
}

// Per-token rotary angle tables [N, D/2] (cos, sin) for a F x H x W grid, in
// raster order: pairs [t | h | w] with t getting D/2 - 2 (D/6) pairs.
// Computed in fp64 on the model's device: built on the host they would hold
// the GPU up at the start of every forward (2 x 2M cos/sin at W1).
std::pair<at::Tensor, at::Tensor> RopeTables(int64_t head_dim, int64_t f, int64_t h, int64_t w,
                                             const at::Device& device) {
  const int64_t dh = 2 * (head_dim / 6), dt = head_dim - 2 * dh;
  const auto f64 = at::TensorOptions().dtype(at::kDouble).device(device);
  auto axis = [&](int64_t dim, int64_t len) {
    const at::Tensor inv = 1.0 / at::pow(10000.0, at::arange(0, dim, 2, f64) / static_cast<double>(dim));
    return at::outer(at::arange(len, f64), inv);  // [len, dim/2]
  };
  const at::Tensor at_ = axis(dt, f).view({f, 1, 1, -1}).expand({f, h, w, dt / 2});
  const at::Tensor ah = axis(dh, h).view({1, h, 1, -1}).expand({f, h, w, dh / 2});
  const at::Tensor aw = axis(dh, w).view({1, 1, w, -1}).expand({f, h, w, dh / 2});
  const at::Tensor angles = at::cat({at_, ah, aw}, -1).reshape({f * h * w, head_dim / 2});
  return {at::cos(angles).to(at::kFloat), at::sin(angles).to(at::kFloat)};
}

}  // namespace

WanTransformer::WanTransformer(WanTransformerConfig config, at::ScalarType dtype, at::Device device)
    : config_(std::move(config)), dtype_(dtype), device_(device) {}

bool WanTransformer::KeptInFp32(const std::string& name) {
  return name.find("time_embedder") != std::string::npos ||
         name.find("scale_shift_table") != std::string::npos ||
         name.find(".norm1.") != std::string::npos || name.find(".norm2.") != std::string::npos ||
         name.find(".norm3.") != std::string::npos;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> WanTransformer::ExpectedParameters(
    const WanTransformerConfig& c) {
  const int64_t inner = c.inner_dim();
  std::vector<std::pair<std::string, std::vector<int64_t>>> p;
  auto linear = [&](const std::string& name, int64_t out, int64_t in) {
    p.push_back({name + ".weight", {out, in}});
    p.push_back({name + ".bias", {out}});
  };
  p.push_back({"patch_embedding.weight",
               {inner, c.in_channels, c.patch_size[0], c.patch_size[1], c.patch_size[2]}});
  p.push_back({"patch_embedding.bias", {inner}});
  linear("condition_embedder.time_embedder.linear_1", inner, c.freq_dim);
  linear("condition_embedder.time_embedder.linear_2", inner, inner);
  linear("condition_embedder.time_proj", 6 * inner, inner);
  linear("condition_embedder.text_embedder.linear_1", inner, c.text_dim);
  linear("condition_embedder.text_embedder.linear_2", inner, inner);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    p.push_back({b + "scale_shift_table", {1, 6, inner}});
    for (const char* attn : {"attn1", "attn2"}) {
      for (const char* proj : {"to_q", "to_k", "to_v", "to_out.0"}) {
        linear(b + attn + "." + proj, inner, inner);
      }
      p.push_back({b + attn + ".norm_q.weight", {inner}});
      p.push_back({b + attn + ".norm_k.weight", {inner}});
    }
    if (c.cross_attn_norm) {
      p.push_back({b + "norm2.weight", {inner}});
      p.push_back({b + "norm2.bias", {inner}});
    }
    linear(b + "ffn.net.0.proj", c.ffn_dim, inner);
    linear(b + "ffn.net.2", inner, c.ffn_dim);
  }
  p.push_back({"scale_shift_table", {1, 2, inner}});
  const int64_t patch = c.patch_size[0] * c.patch_size[1] * c.patch_size[2];
  linear("proj_out", c.out_channels * patch, inner);
  return p;
}

std::vector<std::pair<std::string, at::Tensor>> WanTransformer::NamedParameters() const {
  return params_;
}

std::unique_ptr<WanTransformer> WanTransformer::Random(const WanTransformerConfig& config,
                                                       at::ScalarType dtype, at::Device device,
                                                       uint64_t seed) {
  std::unique_ptr<WanTransformer> model(new WanTransformer(config, dtype, device));
  at::manual_seed(seed);
  const int64_t inner = config.inner_dim();
  const auto expected = ExpectedParameters(config);
  std::map<std::string, int64_t> fan_in;  // of each layer, from its weight
  for (const auto& [name, shape] : expected) {
    if (shape.size() >= 2 && name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0) {
      int64_t fan = 1;
      for (size_t i = 1; i < shape.size(); ++i) fan *= shape[i];
      fan_in[name.substr(0, name.size() - 7)] = fan;
    }
  }
  for (const auto& [name, shape] : expected) {
    at::Tensor t;
    const std::string layer = name.substr(0, name.rfind('.'));
    const auto opts = at::TensorOptions().dtype(at::kFloat).device(device);
    if (name.find("scale_shift_table") != std::string::npos) {
      t = at::randn(shape, opts) / std::sqrt(static_cast<double>(inner));
    } else if (name.find("norm_q") != std::string::npos || name.find("norm_k") != std::string::npos ||
               name.find("norm2.weight") != std::string::npos) {
      t = at::ones(shape, opts);
    } else if (name.find("norm2.bias") != std::string::npos) {
      t = at::zeros(shape, opts);
    } else {
      // nn.Linear / nn.Conv3d default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
      const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in[layer]));
      t = at::rand(shape, opts) * (2 * bound) - bound;
    }
    model->params_.push_back({name, t.to(KeptInFp32(name) ? at::kFloat : dtype)});
  }
  return model;
}

StatusOr<std::unique_ptr<WanTransformer>> WanTransformer::Load(const std::string& dir,
                                                               at::ScalarType dtype,
                                                               at::Device device) {
  std::string text;
  RAINSERVE_RETURN_IF_ERROR(ReadFile(dir + "/config.json", &text));
  RAINSERVE_ASSIGN_OR_RETURN(WanTransformerConfig config,
                             ParseWanTransformerConfig(text, dir + "/config.json"));
  RAINSERVE_ASSIGN_OR_RETURN(SafetensorsCheckpoint ckpt, SafetensorsCheckpoint::Open(dir));
  const auto expected = ExpectedParameters(config);

  // diffusers drops the norm_added_q key of some exports on load too.
  RAINSERVE_RETURN_IF_ERROR(
      MatchCheckpoint(ckpt, dir, expected, {}, [](const std::string& name) {
        return name.find("norm_added_q") != std::string::npos;
      }).status());
  std::unique_ptr<WanTransformer> model(new WanTransformer(config, dtype, device));
  for (const auto& [name, shape] : expected) {
    RAINSERVE_ASSIGN_OR_RETURN(at::Tensor t,
                               ckpt.Get(name, KeptInFp32(name) ? at::kFloat : dtype, device));
    model->params_.push_back({name, t});
  }
  return model;
}

Status WanTransformer::Save(const std::string& dir, int64_t max_shard_bytes) const {
  return WriteModelFolder(dir, WanTransformerConfigJson(config_), "diffusion_pytorch_model", params_, max_shard_bytes);
}

StatusOr<at::Tensor> WanTransformer::Forward(const at::Tensor& latents, const at::Tensor& timestep,
                                             const at::Tensor& text,
                                             const WanForwardOptions& options,
                                             WanForwardStats* stats) const {
  const WanTransformerConfig& c = config_;
  const auto& ps = c.patch_size;
  if (!latents.defined() || latents.dim() != 5 || latents.size(1) != c.in_channels) {
    return InvalidArgumentError("latents must be [B, " + std::to_string(c.in_channels) +
                                ", F, H, W]");
  }
  const int64_t B = latents.size(0);
  if (latents.size(2) % ps[0] || latents.size(3) % ps[1] || latents.size(4) % ps[2]) {
    return InvalidArgumentError("latent F, H, W must be multiples of the patch size");
  }
  if (!timestep.defined() || timestep.dim() != 1 || timestep.size(0) != B) {
    return InvalidArgumentError("timestep must be [B]");
  }
  if (!text.defined() || text.dim() != 3 || text.size(0) != B || text.size(2) != c.text_dim) {
    return InvalidArgumentError("text must be [B, L, " + std::to_string(c.text_dim) + "]");
  }
  const int64_t F = latents.size(2) / ps[0], H = latents.size(3) / ps[1], W = latents.size(4) / ps[2];
  if (F > c.rope_max_seq_len || H > c.rope_max_seq_len || W > c.rope_max_seq_len) {
    return InvalidArgumentError("latent grid exceeds rope_max_seq_len " +
                                std::to_string(c.rope_max_seq_len));
  }
  const bool rainfusion = options.impl == SelfAttentionImpl::kRainFusion;
  if (rainfusion && options.engine == nullptr) {
    return InvalidArgumentError("kRainFusion needs an attention engine");
  }
  const int64_t heads = c.num_attention_heads, hd = c.attention_head_dim, inner = c.inner_dim();
  const int64_t N = F * H * W;
  std::map<std::string, const at::Tensor*> p;
  for (const auto& kv : params_) p[kv.first] = &kv.second;
  auto P = [&](const std::string& name) -> const at::Tensor& { return *p.at(name); };
  auto Linear = [&](const at::Tensor& x, const std::string& name) {
    return at::linear(x, P(name + ".weight"), P(name + ".bias"));
  };
  // GELU(tanh)(x W^T + b). On CUDA one cuBLASLt GEMM with the bias and GELU
  // in its epilogue (no separate pass over the [B, N, ffn] activations); the
  // CPU keeps the two ops. x: [B, N, in] contiguous -> [B, N, out].
  auto LinearGeluTanh = [&](const at::Tensor& x, const std::string& name) {
    if (!x.is_cuda()) return GeluTanh(Linear(x, name));
    const at::Tensor& w = P(name + ".weight");  // [out, in]
    const at::Tensor y = at::_addmm_activation(P(name + ".bias"), x.reshape({-1, x.size(-1)}),
                                               w.t(), 1, 1, /*use_gelu=*/true);
    return y.view({x.size(0), x.size(1), w.size(0)});
  };
  // Norms, modulation, RoPE and gated residuals (pipelines/wan_ops.h).
  const ElementwiseImpl ew = options.elementwise;
  WanForwardStats st;
  st.tokens = N;
  auto sync = [&] {
    if (options.synchronize) options.synchronize();
  };

  // Patch embedding: [B, C, F, H, W] -> [B, N, inner] in raster order.
  at::Tensor x = at::conv3d(latents.to(dtype_), P("patch_embedding.weight"),
                            P("patch_embedding.bias"), {ps[0], ps[1], ps[2]});
  x = x.flatten(2).transpose(1, 2).contiguous();
  auto [rope_cos, rope_sin] = RopeTables(hd, F, H, W, device_);

  // Conditioning: temb [B, inner] (fp32 MLP), modulation [B, 6, inner], text [B, L, inner].
  const at::Tensor ts = TimestepEmbedding(timestep.to(device_), c.freq_dim);
  at::Tensor temb = Linear(at::silu(Linear(ts, "condition_embedder.time_embedder.linear_1")),
                           "condition_embedder.time_embedder.linear_2")
                        .to(dtype_);
  const at::Tensor tproj =
      Linear(at::silu(temb), "condition_embedder.time_proj").view({B, 6, inner});
  const at::Tensor ctx = Linear(GeluTanh(Linear(text.to(device_, dtype_),
                                                "condition_embedder.text_embedder.linear_1")),
                                "condition_embedder.text_embedder.linear_2");

  // RainFusion: plan and permutation once for the whole forward.
  attention::AttentionPlan plan;
  attention::AttentionConfig attn_cfg;
  if (rainfusion) {
    attention::TokenLayout layout;
    layout.frames = F;
    layout.height = H;
    layout.width = W;
    layout.sink_frames = std::min<int64_t>(std::max<int64_t>(options.sink_frames, 0), F == 1 ? 0 : F);
    attention::WindowShape window = options.window;
    if (window.t <= 0 || window.h <= 0 || window.w <= 0) window = attention::DefaultWindow(layout);
    RAINSERVE_ASSIGN_OR_RETURN(plan, attention::AttentionPlan::Build(layout, window));
    attn_cfg.sparsity = options.sparsity;
    attn_cfg.min_sparse_blocks = options.min_sparse_blocks;
    RAINSERVE_RETURN_IF_ERROR(attention::ValidateConfig(attn_cfg));
    sync();
    const auto start = Clock::now();
    RAINSERVE_ASSIGN_OR_RETURN(x, attention::PermuteTokens(*options.engine, x, plan, 1));
    RAINSERVE_ASSIGN_OR_RETURN(rope_cos, attention::PermuteTokens(*options.engine, rope_cos, plan, 0));
    RAINSERVE_ASSIGN_OR_RETURN(rope_sin, attention::PermuteTokens(*options.engine, rope_sin, plan, 0));
    sync();
    st.permute_seconds += Since(start);
  }

  attention::TorchBlockMask shared_mask;
  bool have_shared_mask = false;
  // Kept block pairs summed on the mask's device and read once at the end,
  // so a GPU forward does not wait on the host in every layer.
  at::Tensor kept_sum;
  int64_t pairs_total = 0;
  // Block i's modulation: shift, scale, gate, c_shift, c_scale, c_gate, each
  // [B, 1, inner] fp32.
  const at::Tensor tproj_f32 = tproj.to(at::kFloat);
  auto block_mod = [&](int64_t i) {
    return (P("blocks." + std::to_string(i) + ".scale_shift_table") + tproj_f32).chunk(6, 1);
  };
  std::vector<at::Tensor> mod = block_mod(0);
  // Output modulation (norm_out): shift, scale from the table and temb; [B, 1, inner].
  const auto out_mod = (P("scale_shift_table") + temb.to(at::kFloat).unsqueeze(1)).chunk(2, 1);
  // h: the normed input of the next sublayer, [B, N, inner]. Each residual
  // update is fused with the LayerNorm that follows it: across blocks, and
  // the last block's with norm_out (token-wise, so before the unpermute).
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor h,
                             wan_ops::ModulatedLayerNorm(x, mod[1], mod[0], c.eps, ew));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";

    // 1. Self-attention on h = norm1(x); q, k, v: [B, N, heads, hd].
    RAINSERVE_ASSIGN_OR_RETURN(
        at::Tensor q, wan_ops::RmsNormRope(Linear(h, b + "attn1.to_q"), P(b + "attn1.norm_q.weight"),
                                           c.eps, heads, rope_cos, rope_sin, ew));
    RAINSERVE_ASSIGN_OR_RETURN(
        at::Tensor k, wan_ops::RmsNormRope(Linear(h, b + "attn1.to_k"), P(b + "attn1.norm_k.weight"),
                                           c.eps, heads, rope_cos, rope_sin, ew));
    at::Tensor v = Linear(h, b + "attn1.to_v").view({B, N, heads, hd});
    at::Tensor attn;
    sync();
    const auto attn_start = Clock::now();
    double mask_seconds = 0;  // this layer's mask prediction (GPU time when synchronised)
    // The block mask of this layer (or the step's shared one), timed apart.
    auto predict = [&]() -> StatusOr<attention::TorchBlockMask> {
      const auto start = Clock::now();
      auto mask = attention::PredictBlockMask(*options.engine, q, k, plan, attn_cfg);
      sync();
      mask_seconds = Since(start);
      return mask;
    };
    if (rainfusion) {
      attention::AttentionResult r;
      if (options.mask_refresh == MaskRefresh::kPerStep) {
        if (!have_shared_mask) {
          RAINSERVE_ASSIGN_OR_RETURN(shared_mask, predict());
          have_shared_mask = true;
        }
        RAINSERVE_ASSIGN_OR_RETURN(
            r, attention::BlockSparseAttention(*options.engine, q, k, v, plan, shared_mask, false));
        kept_sum = kept_sum.defined() ? kept_sum + shared_mask.kept_tensor : shared_mask.kept_tensor;
      } else {
        RAINSERVE_ASSIGN_OR_RETURN(attention::TorchBlockMask mask, predict());
        RAINSERVE_ASSIGN_OR_RETURN(
            r, attention::BlockSparseAttention(*options.engine, q, k, v, plan, mask, false));
        kept_sum = kept_sum.defined() ? kept_sum + mask.kept_tensor : mask.kept_tensor;
      }
      st.sparse = st.sparse || r.stats.sparse;
      pairs_total += r.stats.total_blocks;
      attn = r.out;
    } else {
      attn = TorchAttention(q, k, v);
    }
    sync();
    // Attention time includes the mask prediction of this layer; keep them apart.
    st.mask_seconds += mask_seconds;
    st.attention_seconds += Since(attn_start) - mask_seconds;
    attn = Linear(attn.reshape({B, N, inner}), b + "attn1.to_out.0");

    // 2. Cross-attention to the text (always dense), no RoPE, on norm2(x).
    if (c.cross_attn_norm) {
      RAINSERVE_ASSIGN_OR_RETURN(
          wan_ops::ResidualNorm r,
          wan_ops::GatedResidualAffineLayerNorm(x, attn, mod[2], P(b + "norm2.weight"),
                                                P(b + "norm2.bias"), c.eps, ew));
      x = r.sum;
      h = r.norm;
    } else {
      RAINSERVE_ASSIGN_OR_RETURN(x, wan_ops::GatedResidual(x, attn, mod[2], ew));
      h = x;
    }
    const int64_t L = ctx.size(1);
    RAINSERVE_ASSIGN_OR_RETURN(q, wan_ops::RmsNormRope(Linear(h, b + "attn2.to_q"),
                                                       P(b + "attn2.norm_q.weight"), c.eps, heads,
                                                       {}, {}, ew));
    RAINSERVE_ASSIGN_OR_RETURN(k, wan_ops::RmsNormRope(Linear(ctx, b + "attn2.to_k"),
                                                       P(b + "attn2.norm_k.weight"), c.eps, heads,
                                                       {}, {}, ew));
    v = Linear(ctx, b + "attn2.to_v").view({B, L, heads, hd});
    attn = Linear(TorchAttention(q, k, v).reshape({B, N, inner}), b + "attn2.to_out.0");

    // 3. Feed-forward on norm3(x + attn) (a plain residual).
    {
      RAINSERVE_ASSIGN_OR_RETURN(
          wan_ops::ResidualNorm r,
          wan_ops::GatedResidualModulatedLayerNorm(x, attn, {}, mod[4], mod[3], c.eps, ew));
      x = r.sum;
      h = r.norm;
    }
    const at::Tensor ff = Linear(LinearGeluTanh(h, b + "ffn.net.0.proj"), b + "ffn.net.2");
    // The next block's norm1 reads this residual; after the last block, norm_out.
    const bool last = i + 1 == c.num_layers;
    std::vector<at::Tensor> next = last ? out_mod : block_mod(i + 1);
    RAINSERVE_ASSIGN_OR_RETURN(
        wan_ops::ResidualNorm r,
        wan_ops::GatedResidualModulatedLayerNorm(x, ff, mod[5], next[1], next[0], c.eps, ew));
    x = r.sum;
    h = r.norm;
    mod = std::move(next);
  }
  if (kept_sum.defined() && pairs_total > 0) {
    st.realized_sparsity = 1.0 - double(kept_sum.item<int64_t>()) / double(pairs_total);
  }

  if (rainfusion) {
    sync();
    const auto start = Clock::now();
    RAINSERVE_ASSIGN_OR_RETURN(h, attention::UnpermuteTokens(*options.engine, h, plan, 1));
    sync();
    st.permute_seconds += Since(start);
  }
  x = Linear(h, "proj_out");  // [B, N, out * pt * ph * pw]
  // Unpatchify: [B, F, H, W, pt, ph, pw, C] -> [B, C, F*pt, H*ph, W*pw].
  x = x.reshape({B, F, H, W, ps[0], ps[1], ps[2], c.out_channels})
          .permute({0, 7, 1, 4, 2, 5, 3, 6})
          .reshape({B, c.out_channels, F * ps[0], H * ps[1], W * ps[2]});
  if (stats) *stats = st;
  return x;
}

}  // namespace rainserve
