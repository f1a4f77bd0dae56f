#include "pipelines/wan/wan_transformer.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>
#include <vector>

#include "attention/torch_adapter.h"
#include "common/files.h"
#include "pipelines/core/lora.h"
#include "pipelines/core/safetensors.h"
#include "pipelines/wan/wan_fp8.h"
#include "pipelines/wan/wan_ops.h"

namespace rainserve {
namespace {

at::Tensor GeluTanh(const at::Tensor& x) { return at::gelu(x, "tanh"); }

at::Tensor Linear(const at::Tensor& x, const WanLinear& l) { return at::linear(x, l.weight, l.bias); }

// GELU(tanh)(x W^T + b). On CUDA one cuBLASLt GEMM with the bias and GELU in
// its epilogue (no separate pass over the [B, N, ffn] activations); the CPU
// keeps the two ops. x: [B, N, in] contiguous -> [B, N, out].
at::Tensor LinearGeluTanh(const at::Tensor& x, const WanLinear& l) {
  if (!x.is_cuda()) return GeluTanh(Linear(x, l));
  const at::Tensor y = at::_addmm_activation(l.bias, x.reshape({-1, x.size(-1)}), l.weight.t(), 1,
                                             1, /*use_gelu=*/true);
  return y.view({x.size(0), x.size(1), l.weight.size(0)});
}

// y = x W^T + b over the last dim: [..., in] -> [..., out]. An FP8 layer
// takes x's rows in e4m3: `xq` when the caller has them (written by the norm
// that produced x), else quantized here.
StatusOr<at::Tensor> Project(const at::Tensor& x, const WanLinear& l,
                             const wan_ops::Fp8Rows& xq = {}) {
  if (!l.fp8()) return Linear(x, l);
  wan_ops::Fp8Rows rows = xq;
  if (!rows.defined()) {
    RAINSERVE_ASSIGN_OR_RETURN(rows, wan_ops::QuantizeRows(x.contiguous()));
  }
  RAINSERVE_ASSIGN_OR_RETURN(const at::Tensor y, Fp8Linear(rows, l));  // [M, out]
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = l.weight.size(0);
  return y.view(shape);
}

// RmsNormRope(Project(x, l, xq)): the projection lives only until normed.
StatusOr<at::Tensor> ProjectNorm(const at::Tensor& x, const WanLinear& l,
                                 const wan_ops::Fp8Rows& xq, const at::Tensor& norm, double eps,
                                 int64_t heads, const at::Tensor& cos, const at::Tensor& sin,
                                 ElementwiseImpl ew) {
  RAINSERVE_ASSIGN_OR_RETURN(const at::Tensor y, Project(x, l, xq));
  return wan_ops::RmsNormRope(y, norm, eps, heads, cos, sin, ew);
}

// Token rows per chunk of the FP8 feed-forward: its bf16 and e4m3 hidden
// activations ([chunk, ffn], 3 bytes an element) stay well below the bf16
// path's [B * N, ffn] GELU output (1.2 GB at W1, 4.2 GB at W2), and the GEMMs
// stay large (32768 x 8960 x 1536 at W1). A multiple of 4: the chunks'
// scale vectors stay 16-byte aligned.
constexpr int64_t kFfnChunkRows = 32768;

// The feed-forward Linear, GELU(tanh), Linear on h [B, N, inner] (hq: its
// e4m3 rows, FP8 layers). FP8, per chunk of token rows: the first GEMM
// writes bf16 with its bias, one kernel applies GELU and quantizes per
// token, the second GEMM writes the chunk's rows of the output.
StatusOr<at::Tensor> FeedForward(const WanBlockWeights& w, const at::Tensor& h,
                                 const wan_ops::Fp8Rows& hq) {
  if (!w.ffn_in.fp8()) return Linear(LinearGeluTanh(h, w.ffn_in), w.ffn_out);
  wan_ops::Fp8Rows rows = hq;
  if (!rows.defined()) {
    RAINSERVE_ASSIGN_OR_RETURN(rows, wan_ops::QuantizeRows(h.contiguous()));
  }
  const int64_t M = rows.data.size(0);
  at::Tensor out = at::empty({M, w.ffn_out.weight.size(0)}, h.options());  // [B * N, inner]
  for (int64_t start = 0; start < M; start += kFfnChunkRows) {
    const int64_t n = std::min(kFfnChunkRows, M - start);
    const wan_ops::Fp8Rows chunk{rows.data.narrow(0, start, n), rows.scale.narrow(0, start, n)};
    RAINSERVE_ASSIGN_OR_RETURN(const at::Tensor up, Fp8Linear(chunk, w.ffn_in));  // [n, ffn]
    RAINSERVE_ASSIGN_OR_RETURN(const wan_ops::Fp8Rows act,
                               wan_ops::QuantizeRows(up, /*gelu_tanh=*/true));
    RAINSERVE_RETURN_IF_ERROR(Fp8Linear(act, w.ffn_out, {}, out.narrow(0, start, n)).status());
  }
  return out.view({h.size(0), h.size(1), -1});
}

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
    const std::string module = layer.substr(layer.rfind('.') + 1);
    const bool is_norm = module.rfind("norm", 0) == 0;  // norm1, norm2, norm_q, norm_added_k, ...
    if (name.find("scale_shift_table") != std::string::npos) {
      t = at::randn(shape, opts) / std::sqrt(static_cast<double>(inner));
    } else if (is_norm && name.compare(name.size() - 7, 7, ".weight") == 0) {
      t = at::ones(shape, opts);
    } else if (is_norm || name.find("pos_embed") != std::string::npos) {
      t = at::zeros(shape, opts);  // norm biases; pos_embed starts at zero as in diffusers
    } else {
      // nn.Linear / nn.Conv3d default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
      const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in[layer]));
      t = at::rand(shape, opts) * (2 * bound) - bound;
    }
    model->params_.push_back({name, t.to(WanKeptInFp32(name) ? at::kFloat : dtype)});
  }
  // Every expected name was just created, so resolving cannot fail.
  if (!model->Resolve().ok()) return nullptr;
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
                               ckpt.Get(name, WanKeptInFp32(name) ? at::kFloat : dtype, device));
    model->params_.push_back({name, t});
  }
  RAINSERVE_RETURN_IF_ERROR(model->Resolve());
  return model;
}

Status WanTransformer::Save(const std::string& dir, int64_t max_shard_bytes) const {
  if (fp8_) {
    return FailedPreconditionError(
        "an FP8 model (linear_precision: fp8) cannot be saved: its checkpoint is the bf16 one");
  }
  return WriteModelFolder(dir, WanTransformerConfigJson(config_), "diffusion_pytorch_model",
                          params_, max_shard_bytes);
}


Status WanTransformer::MergeLoras(const std::vector<LoraFile>& loras) {
  if (loras.empty()) return OkStatus();
  if (fp8_) return FailedPreconditionError("LoRAs merge before linear_precision fp8 quantizes");
  RAINSERVE_RETURN_IF_ERROR(rainserve::MergeLoras(loras, WanOriginalModuleName, &params_));
  return Resolve();
}

Status WanTransformer::MoveTo(at::Device device) {
  if (device == device_) return OkStatus();
  if (host_params_.empty()) {
    // One host buffer for every parameter (pinned where CUDA is: per-tensor
    // pinned blocks would each round up to a power of two).
    constexpr int64_t kAlign = 256;
    int64_t total = 0;
    for (const auto& p : params_) total += (p.second.nbytes() + kAlign - 1) / kAlign * kAlign;
    const at::Tensor buffer =
        at::empty({total}, at::TensorOptions().dtype(at::kByte).pinned_memory(at::hasCUDA()));
    int64_t offset = 0;
    for (const auto& [name, t] : params_) {
      const int64_t bytes = static_cast<int64_t>(t.nbytes());
      at::Tensor host = buffer.narrow(0, offset, bytes).view(t.scalar_type()).view(t.sizes());
      host.copy_(t);
      host_params_.push_back({name, host});
      offset += (bytes + kAlign - 1) / kAlign * kAlign;
    }
  }
  if (device.is_cpu()) {
    params_ = host_params_;
  } else {
    NamedTensors moved;
    for (const auto& [name, t] : host_params_) {
      moved.push_back({name, t.to(at::TensorOptions().device(device), /*non_blocking=*/true)});
    }
    params_ = std::move(moved);
  }
  device_ = device;
  return Resolve();
}

StatusOr<std::unique_ptr<WanTransformer>> WanTransformer::CopyTo(at::Device device) const {
  std::unique_ptr<WanTransformer> copy(new WanTransformer(config_, dtype_, device));
  for (const auto& [name, t] : params_) {
    copy->params_.push_back({name, t.to(t.options().device(device), /*non_blocking=*/false,
                                        /*copy=*/true)});
  }
  copy->fp8_ = fp8_;
  RAINSERVE_RETURN_IF_ERROR(copy->Resolve());
  return copy;
}

Status WanTransformer::QuantizeLinearsToFp8(at::Device compute) {
  if (fp8_) return OkStatus();
  if (dtype_ != at::kBFloat16) {
    return InvalidArgumentError("linear_precision: fp8 needs dtype bf16, got " +
                                std::string(c10::toString(dtype_)));
  }
  if (!host_params_.empty()) {
    return FailedPreconditionError("linear_precision: fp8 quantizes before the first MoveTo");
  }
  weights_ = WanWeights();  // drop the views so each bf16 weight is freed as it is quantized
  const Status quantized = QuantizeWanLinears(compute, &params_);
  RAINSERVE_RETURN_IF_ERROR(Resolve());
  RAINSERVE_RETURN_IF_ERROR(quantized);
  fp8_ = true;
  return OkStatus();
}

Status WanTransformer::Resolve() {
  RAINSERVE_ASSIGN_OR_RETURN(weights_, ResolveWanWeights(config_, params_));
  return OkStatus();
}

StatusOr<at::Tensor> WanTransformer::ImageEmbedding(const at::Tensor& image_embeds,
                                                    ElementwiseImpl ew) const {
  const WanImageEmbedderWeights& w = weights_.image_embedder;
  constexpr double kEps = 1e-5;  // nn.LayerNorm's default, as the reference's FP32LayerNorm
  at::Tensor x = image_embeds.to(device_, dtype_);  // [B, S, image_dim]
  if (w.pos_embed.defined()) x = x + w.pos_embed;
  RAINSERVE_ASSIGN_OR_RETURN(
      x, wan_ops::AffineLayerNorm(x.contiguous(), w.norm1_weight, w.norm1_bias, kEps, ew));
  x = Linear(at::gelu(Linear(x, w.ff_in)), w.ff_out);  // [B, S, inner]
  return wan_ops::AffineLayerNorm(x, w.norm2_weight, w.norm2_bias, kEps, ew);
}

StatusOr<WanTransformer::Conditioning> WanTransformer::Condition(const at::Tensor& timestep,
                                                                 const at::Tensor& text,
                                                                 const at::Tensor& image_embeds,
                                                                 ElementwiseImpl ew) const {
  const WanWeights& w = weights_;
  const int64_t inner = config_.inner_dim();
  // t [B] or [B, F] -> sinusoid -> fp32 MLP -> temb (rounded to the model
  // dtype, as diffusers), one row per entry.
  const at::Tensor ts = TimestepEmbedding(timestep.to(device_).flatten(), config_.freq_dim);
  const at::Tensor temb =
      Linear(at::silu(Linear(ts, w.time_linear_1)), w.time_linear_2).to(dtype_);
  const at::Tensor tproj = Linear(at::silu(temb), w.time_proj);
  std::vector<int64_t> shape = timestep.sizes().vec();  // [B] or [B, F]
  shape.push_back(inner);
  Conditioning cond;
  cond.temb = temb.view(shape).to(at::kFloat);
  shape.insert(shape.end() - 1, 6);
  cond.tproj = tproj.view(shape).to(at::kFloat);
  cond.context =
      Linear(GeluTanh(Linear(text.to(device_, dtype_), w.text_linear_1)), w.text_linear_2);
  if (image_embeds.defined()) {
    RAINSERVE_ASSIGN_OR_RETURN(cond.image_context, ImageEmbedding(image_embeds, ew));
  }
  if (fp8_) {
    // Every block's cross-attention reads the same contexts.
    RAINSERVE_ASSIGN_OR_RETURN(cond.context_fp8, wan_ops::QuantizeRows(cond.context.contiguous()));
    if (cond.image_context.defined()) {
      RAINSERVE_ASSIGN_OR_RETURN(cond.image_context_fp8,
                                 wan_ops::QuantizeRows(cond.image_context.contiguous()));
    }
  }
  return cond;
}

// mod: this block's shift, scale, gate, c_shift, c_scale, c_gate.
// Entry: s->h = norm1(x) * (1 + scale) + shift.
Status WanTransformer::Block(const WanBlockWeights& w, const Modulation& mod,
                             const Modulation& next_mod, const Conditioning& cond,
                             const at::Tensor& rope_cos, const at::Tensor& rope_sin,
                             attention::ForwardAttention& attn, ElementwiseImpl ew,
                             Stream* s) const {
  const WanTransformerConfig& c = config_;
  const int64_t B = s->x.size(0), N = s->x.size(1);
  const int64_t heads = c.num_attention_heads, hd = c.attention_head_dim, inner = c.inner_dim();

  // FP8 layers read h's e4m3 rows: the norms that write h quantize it too
  // (q8), and an h from elsewhere is quantized once here.
  const bool q8 = fp8_;
  if (q8 && !s->hq.defined()) {
    RAINSERVE_ASSIGN_OR_RETURN(s->hq, wan_ops::QuantizeRows(s->h));
  }

  // 1. Self-attention: q, k, v [B, N, heads, hd]; q and k RMS-normed with RoPE.
  // h (and q, k, v after the attention) are released as soon as they are read.
  at::Tensor o;
  {
    RAINSERVE_ASSIGN_OR_RETURN(at::Tensor q, ProjectNorm(s->h, w.attn1.to_q, s->hq,
                                                         w.attn1.norm_q, c.eps, heads, rope_cos,
                                                         rope_sin, ew));
    RAINSERVE_ASSIGN_OR_RETURN(at::Tensor k, ProjectNorm(s->h, w.attn1.to_k, s->hq,
                                                         w.attn1.norm_k, c.eps, heads, rope_cos,
                                                         rope_sin, ew));
    RAINSERVE_ASSIGN_OR_RETURN(at::Tensor v, Project(s->h, w.attn1.to_v, s->hq));
    *s = {s->x, {}, {}};
    RAINSERVE_ASSIGN_OR_RETURN(o, SelfAttention(attn, cond, q, k, v.view({B, N, heads, hd})));
  }
  RAINSERVE_ASSIGN_OR_RETURN(o, Project(o.reshape({B, N, inner}), w.attn1.to_out));
  // x += gate * o, fused with norm2 (affine LayerNorm, or none).
  if (c.cross_attn_norm) {
    RAINSERVE_ASSIGN_OR_RETURN(wan_ops::ResidualNorm r,
                               wan_ops::GatedResidualAffineLayerNorm(
                                   s->x, o, mod[2], w.norm2_weight, w.norm2_bias, c.eps, ew, q8));
    *s = {r.sum, r.norm, r.norm_fp8};
  } else {
    RAINSERVE_ASSIGN_OR_RETURN(s->x, wan_ops::GatedResidual(s->x, o, mod[2], ew));
    *s = {s->x, s->x, {}};
  }

  // 2. Cross-attention to the text (and image): dense, no RoPE.
  RAINSERVE_ASSIGN_OR_RETURN(o, CrossAttention(w.attn2, s->h, s->hq, cond, ew));
  // x += o (plain residual), fused with norm3 * (1 + c_scale) + c_shift.
  RAINSERVE_ASSIGN_OR_RETURN(
      wan_ops::ResidualNorm r3,
      wan_ops::GatedResidualModulatedLayerNorm(s->x, o, {}, mod[4], mod[3], c.eps, ew, q8));
  *s = {r3.sum, r3.norm, r3.norm_fp8};

  // 3. Feed-forward; x += c_gate * ffn, fused with the norm that reads x next.
  RAINSERVE_ASSIGN_OR_RETURN(const at::Tensor ff, FeedForward(w, s->h, s->hq));
  RAINSERVE_ASSIGN_OR_RETURN(wan_ops::ResidualNorm r,
                             wan_ops::GatedResidualModulatedLayerNorm(
                                 s->x, ff, mod[5], next_mod[1], next_mod[0], c.eps, ew, q8));
  *s = {r.sum, r.norm, r.norm_fp8};
  return OkStatus();
}

StatusOr<at::Tensor> WanTransformer::SelfAttention(attention::ForwardAttention& attn,
                                                   const Conditioning& cond, const at::Tensor& q,
                                                   const at::Tensor& k,
                                                   const at::Tensor& v) const {
  if (cond.sp == nullptr) return attn.SelfAttention(q, k, v);
  // [B, n_r, heads, hd] -> [B, N, heads / P, hd]: RainFusion over the whole
  // sequence for this rank's heads (its mask is per head), then back.
  RAINSERVE_ASSIGN_OR_RETURN(const at::Tensor qh, TokensToHeads(*cond.sp, q, cond.shards));
  RAINSERVE_ASSIGN_OR_RETURN(const at::Tensor kh, TokensToHeads(*cond.sp, k, cond.shards));
  RAINSERVE_ASSIGN_OR_RETURN(const at::Tensor vh, TokensToHeads(*cond.sp, v, cond.shards));
  RAINSERVE_ASSIGN_OR_RETURN(const at::Tensor o, attn.SelfAttention(qh, kh, vh));
  return HeadsToTokens(*cond.sp, o, cond.shards);
}

StatusOr<at::Tensor> WanTransformer::CrossAttention(const WanAttentionWeights& w,
                                                    const at::Tensor& h,
                                                    const wan_ops::Fp8Rows& hq,
                                                    const Conditioning& cond,
                                                    ElementwiseImpl ew) const {
  const WanTransformerConfig& c = config_;
  const int64_t B = h.size(0), N = h.size(1), heads = c.num_attention_heads;
  const int64_t hd = c.attention_head_dim;
  // q: [B, N, heads, hd]; text k, v: [B, L, heads, hd].
  RAINSERVE_ASSIGN_OR_RETURN(
      const at::Tensor q, ProjectNorm(h, w.to_q, hq, w.norm_q, c.eps, heads, {}, {}, ew));
  RAINSERVE_ASSIGN_OR_RETURN(const at::Tensor k, ProjectNorm(cond.context, w.to_k, cond.context_fp8,
                                                             w.norm_k, c.eps, heads, {}, {}, ew));
  RAINSERVE_ASSIGN_OR_RETURN(const at::Tensor v, Project(cond.context, w.to_v, cond.context_fp8));
  at::Tensor o = attention::DenseTorchAttention(q, k, v.view({B, -1, heads, hd}));
  if (cond.image_context.defined()) {
    // The image tokens [B, S, inner] through their own projections; the two
    // attention outputs are summed before to_out.
    const at::Tensor& img = cond.image_context;
    const wan_ops::Fp8Rows& img_q = cond.image_context_fp8;
    RAINSERVE_ASSIGN_OR_RETURN(const at::Tensor k_img, ProjectNorm(img, w.add_k_proj, img_q,
                                                                   w.norm_added_k, c.eps, heads,
                                                                   {}, {}, ew));
    RAINSERVE_ASSIGN_OR_RETURN(const at::Tensor v_img, Project(img, w.add_v_proj, img_q));
    o = o + attention::DenseTorchAttention(q, k_img, v_img.view({B, -1, heads, hd}));
  }
  return Project(o.reshape({B, N, c.inner_dim()}), w.to_out);
}

namespace {

// table [1, k, inner] fp32 plus the conditioning e: [B, k, inner] (per batch
// element) or [B, F, k, inner] (per frame) -> k vectors [B, 1, inner] or
// [B, F, inner].
std::vector<at::Tensor> SplitModulation(const at::Tensor& table, const at::Tensor& e, int64_t k) {
  if (e.dim() == 3) return (table + e).chunk(k, 1);
  std::vector<at::Tensor> parts = (table.unsqueeze(1) + e).chunk(k, 2);
  for (at::Tensor& p : parts) p = p.squeeze(2);
  return parts;
}

}  // namespace

WanTransformer::Modulation WanTransformer::BlockModulation(const WanBlockWeights& w,
                                                           const Conditioning& cond) const {
  return {SplitModulation(w.scale_shift_table, cond.tproj, 6), cond.token_frame};
}

WanTransformer::Modulation WanTransformer::OutputModulation(const Conditioning& cond) const {
  return {SplitModulation(weights_.scale_shift_table, cond.temb.unsqueeze(-2), 2),
          cond.token_frame};
}

Status WanTransformer::Blocks(size_t first, size_t end, const Conditioning& cond,
                              const Modulation& out_mod, const at::Tensor& rope_cos,
                              const at::Tensor& rope_sin, attention::ForwardAttention& attn,
                              ElementwiseImpl ew, Stream* s) const {
  const size_t n = weights_.blocks.size();
  for (size_t i = first; i < end; ++i) {
    const Modulation mod = BlockModulation(weights_.blocks[i], cond);
    const Modulation next = i + 1 < n ? BlockModulation(weights_.blocks[i + 1], cond) : out_mod;
    RAINSERVE_RETURN_IF_ERROR(
        Block(weights_.blocks[i], mod, next, cond, rope_cos, rope_sin, attn, ew, s));
  }
  return OkStatus();
}

Status WanTransformer::CachedBlocks(const Conditioning& cond, const Modulation& out_mod,
                                    const at::Tensor& rope_cos, const at::Tensor& rope_sin,
                                    attention::ForwardAttention& attn,
                                    const WanForwardOptions& options, Stream* s) const {
  const size_t n = weights_.blocks.size();
  const ElementwiseImpl ew = options.elementwise;
  WanStepCacheHook* hook = options.step_cache;
  if (hook == nullptr || hook->mode == StepCacheMode::kOff || n == 0) {
    return Blocks(0, n, cond, out_mod, rope_cos, rope_sin, attn, ew, s);
  }
  hook->skipped = false;
  // The stream the cached part starts from, and the probe the policy reads.
  at::Tensor base = s->x.clone();
  at::Tensor probe = s->h;
  size_t first = 0;
  if (hook->mode == StepCacheMode::kFirstBlock) {
    RAINSERVE_RETURN_IF_ERROR(Blocks(0, 1, cond, out_mod, rope_cos, rope_sin, attn, ew, s));
    probe = s->x - base;
    base = s->x.clone();
    first = 1;
  }
  if (hook->skip && hook->skip(probe)) {
    if (!hook->residual.defined()) return InternalError("step cache: no cached residual to reuse");
    s->x = base + hook->residual;
    RAINSERVE_ASSIGN_OR_RETURN(
        s->h, wan_ops::ModulatedLayerNorm(s->x, out_mod[1], out_mod[0], config_.eps, ew));
    s->hq = {};
    hook->skipped = true;
    return OkStatus();
  }
  RAINSERVE_RETURN_IF_ERROR(Blocks(first, n, cond, out_mod, rope_cos, rope_sin, attn, ew, s));
  hook->residual = s->x - base;
  return OkStatus();
}

namespace {

// timestep: [B], or [B, frames] with frames = latent frames after patching.
Status CheckTimestep(const at::Tensor& timestep, int64_t batch, int64_t frames) {
  if (timestep.defined() && timestep.dim() == 1 && timestep.size(0) == batch) return OkStatus();
  if (timestep.defined() && timestep.dim() == 2 && timestep.size(0) == batch &&
      timestep.size(1) == frames) {
    return OkStatus();
  }
  const std::string got = timestep.defined() ? attention::ShapeOf(timestep) : "undefined";
  return InvalidArgumentError(
      "timestep must be [B] or [B, F] (one per latent frame after patching) with B = " +
      std::to_string(batch) + ", F = " + std::to_string(frames) + ", got " + got);
}

// image_embeds: [B, S, image_dim] when the model has image cross-attention
// (S = pos_embed_seq_len when that is set), undefined otherwise.
Status CheckImageEmbeds(const WanTransformerConfig& c, const at::Tensor& image, int64_t batch) {
  if (!c.has_image_attention()) {
    if (!image.defined()) return OkStatus();
    return InvalidArgumentError(
        "image_embeds given, but this model has no image cross-attention (image_dim is null)");
  }
  if (!image.defined()) {
    return InvalidArgumentError(
        "image_embeds is required: this model has image cross-attention (image_dim " +
        std::to_string(c.image_dim) + ")");
  }
  constexpr int64_t kMaxImageTokens = 4096;
  const int64_t S = image.dim() == 3 ? image.size(1) : 0;
  if (image.dim() != 3 || image.size(0) != batch || image.size(2) != c.image_dim || S < 1 ||
      S > kMaxImageTokens || (c.pos_embed_seq_len > 0 && S != c.pos_embed_seq_len)) {
    const std::string tokens =
        c.pos_embed_seq_len > 0 ? std::to_string(c.pos_embed_seq_len) : "S <= 4096";
    return InvalidArgumentError("image_embeds must be [" + std::to_string(batch) + ", " + tokens +
                                ", " + std::to_string(c.image_dim) + "], got " +
                                attention::ShapeOf(image));
  }
  if (!image.is_floating_point()) {
    return InvalidArgumentError("image_embeds must be floating point");
  }
  return OkStatus();
}

Status CheckInputs(const WanTransformerConfig& c, const at::Tensor& latents,
                   const at::Tensor& timestep, const at::Tensor& text, const at::Tensor& image) {
  const auto& ps = c.patch_size;
  if (!latents.defined() || latents.dim() != 5 || latents.size(1) != c.in_channels) {
    return InvalidArgumentError("latents must be [B, " + std::to_string(c.in_channels) +
                                ", F, H, W]");
  }
  const int64_t B = latents.size(0);
  if (latents.size(2) % ps[0] || latents.size(3) % ps[1] || latents.size(4) % ps[2]) {
    return InvalidArgumentError("latent F, H, W must be multiples of the patch size");
  }
  RAINSERVE_RETURN_IF_ERROR(CheckTimestep(timestep, B, latents.size(2) / ps[0]));
  if (!text.defined() || text.dim() != 3 || text.size(0) != B || text.size(2) != c.text_dim) {
    return InvalidArgumentError("text must be [B, L, " + std::to_string(c.text_dim) + "]");
  }
  RAINSERVE_RETURN_IF_ERROR(CheckImageEmbeds(c, image, B));
  for (int i = 0; i < 3; ++i) {
    if (latents.size(2 + i) / ps[i] > c.rope_max_seq_len) {
      return InvalidArgumentError("latent grid exceeds rope_max_seq_len " +
                                  std::to_string(c.rope_max_seq_len));
    }
  }
  return OkStatus();
}

}  // namespace

StatusOr<at::Tensor> WanTransformer::Forward(const at::Tensor& latents, const at::Tensor& timestep,
                                             const at::Tensor& text,
                                             const WanForwardOptions& options,
                                             WanForwardStats* stats) const {
  const WanTransformerConfig& c = config_;
  RAINSERVE_RETURN_IF_ERROR(CheckInputs(c, latents, timestep, text, options.image_embeds));
  if (options.engine == nullptr) return InvalidArgumentError("WanForwardOptions.engine is null");
  const auto& ps = c.patch_size;
  const int64_t B = latents.size(0);
  const int64_t F = latents.size(2) / ps[0], H = latents.size(3) / ps[1], W = latents.size(4) / ps[2];
  const ElementwiseImpl ew = options.elementwise;
  attention::ForwardOptions attention_options = options.attention;
  attention_options.layers = static_cast<int64_t>(weights_.blocks.size());
  RAINSERVE_ASSIGN_OR_RETURN(std::unique_ptr<attention::ForwardAttention> attn,
                             attention::ForwardAttention::Create(
                                 *options.engine, options.sparse, {F, H, W}, options.step,
                                 device_, attention_options));

  // Patch embedding [B, C, F, H, W] -> [B, N, inner], then the forward's token
  // order (the RoPE tables [N, hd/2] follow it).
  at::Tensor x = at::conv3d(latents.to(dtype_), weights_.patch_embedding.weight,
                            weights_.patch_embedding.bias, {ps[0], ps[1], ps[2]});
  RAINSERVE_ASSIGN_OR_RETURN(x, attn->Permute(x.flatten(2).transpose(1, 2).contiguous()));
  auto [cos_raster, sin_raster] = RopeTables(c.attention_head_dim, F, H, W, device_);
  RAINSERVE_ASSIGN_OR_RETURN(const at::Tensor rope_cos, attn->Permute(cos_raster, 0));
  RAINSERVE_ASSIGN_OR_RETURN(const at::Tensor rope_sin, attn->Permute(sin_raster, 0));

  // One frame: a per-frame timestep is the per-batch one (the fused path).
  const at::Tensor t = timestep.dim() == 2 && F == 1 ? timestep.reshape({B}) : timestep;
  RAINSERVE_ASSIGN_OR_RETURN(Conditioning cond, Condition(t, text, options.image_embeds, ew));
  if (t.dim() == 2) {
    // Each token's latent frame, in the forward's token order: [N] int64.
    const at::Tensor raster =
        at::arange(F * H * W, at::TensorOptions().dtype(at::kLong).device(device_));
    RAINSERVE_ASSIGN_OR_RETURN(cond.token_frame, attn->Permute(at::floor_divide(raster, H * W), 0));
  }
  at::Tensor rope_cos_local = rope_cos, rope_sin_local = rope_sin;
  if (options.sequence_parallel != nullptr) {
    if (options.step_cache != nullptr && options.step_cache->mode != StepCacheMode::kOff) {
      return InvalidArgumentError("step_cache: not available with sequence parallel");
    }
    // This rank's shard of the permuted sequence (x, RoPE tables, frames).
    cond.sp = options.sequence_parallel;
    cond.shards = TokenShards(x.size(1), cond.sp->size());
    const IndexRange mine = cond.shards[cond.sp->rank()];
    x = x.narrow(1, mine.begin, mine.size).contiguous();
    rope_cos_local = rope_cos.narrow(0, mine.begin, mine.size).contiguous();
    rope_sin_local = rope_sin.narrow(0, mine.begin, mine.size).contiguous();
    if (cond.token_frame.defined()) {
      cond.token_frame = cond.token_frame.narrow(0, mine.begin, mine.size).contiguous();
    }
  }
  const Modulation out_mod = OutputModulation(cond);
  Stream s{x, {}, {}};
  const Modulation first_mod =
      weights_.blocks.empty() ? out_mod : BlockModulation(weights_.blocks[0], cond);
  RAINSERVE_ASSIGN_OR_RETURN(s.h,
                             wan_ops::ModulatedLayerNorm(x, first_mod[1], first_mod[0], c.eps, ew));
  RAINSERVE_RETURN_IF_ERROR(
      CachedBlocks(cond, out_mod, rope_cos_local, rope_sin_local, *attn, options, &s));
  if (cond.sp != nullptr) {
    std::vector<int64_t> sizes;  // every rank's shard, gathered in token order
    for (const IndexRange& shard : cond.shards) sizes.push_back(shard.size);
    RAINSERVE_ASSIGN_OR_RETURN(s.h, AllGather(*cond.sp, s.h, 1, sizes));
  }

  // s.h = norm_out(x) (token-wise, so before the unpermute) -> proj_out.
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor h, attn->Unpermute(s.h));
  x = Linear(h, weights_.proj_out);  // [B, N, out * pt * ph * pw]
  // Unpatchify: [B, F, H, W, pt, ph, pw, C] -> [B, C, F*pt, H*ph, W*pw].
  x = x.reshape({B, F, H, W, ps[0], ps[1], ps[2], c.out_channels})
          .permute({0, 7, 1, 4, 2, 5, 3, 6})
          .reshape({B, c.out_channels, F * ps[0], H * ps[1], W * ps[2]});
  if (stats) *stats = attn->Stats();
  return x;
}

}  // namespace rainserve
