// Wan2.1 and Wan2.2 VAEs (AutoencoderKLWan): config, parameters, chunked
// causal decoder and encoder. See wan_vae.h for the data flow,
// wan_vae_layers.h for the building blocks.
#include "pipelines/wan/wan_vae.h"

#include <cmath>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include <torch/version.h>

#include "common/files.h"
#include "pipelines/core/json_config.h"
#include "pipelines/core/safetensors.h"
#include "pipelines/wan/wan_vae_layers.h"

namespace rainserve {

// ---------------------------------------------------------------------------
// Building blocks.
namespace wan_vae {
namespace {

// The one convolution entry point (2D or 3D, dilation 1, one group).
// fp32 on the CPU goes straight to oneDNN: LibTorch 1.13's at::convolution
// heuristic sends inputs with few channels to its slow unfolding kernel,
// measured (2 threads, [1, C, 4, 256, 256] by a 3x3x3 kernel) at 1.8 vs 30
// GFLOP/s for C = 8, 3.7 vs 200 for C = 16, and equal at C = 32. Elsewhere
// (CUDA, bf16) LibTorch's own choice stands.
at::Tensor Convolution(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                       at::IntArrayRef stride, at::IntArrayRef padding) {
  const std::vector<int64_t> ones(static_cast<size_t>(weight.dim() - 2), 1);
  if (x.device().is_cpu() && x.scalar_type() == at::kFloat && at::hasMKLDNN()) {
    return at::mkldnn_convolution(x.contiguous(), weight, bias, padding, stride, ones, 1);
  }
  const std::vector<int64_t> zeros(ones.size(), 0);
  return at::convolution(x, weight, bias, stride, padding, ones, /*transposed=*/false, zeros, 1);
}

// A 1x1 (x1) convolution: weight [Cout, Cin, 1, ...].
at::Tensor Pointwise(const at::Tensor& x, const Conv& conv) {
  const std::vector<int64_t> ones(static_cast<size_t>(conv.weight.dim() - 2), 1);
  const std::vector<int64_t> zeros(ones.size(), 0);
  return Convolution(x, conv.weight, conv.bias, ones, zeros);
}

}  // namespace

at::Tensor CausalConv3d(const at::Tensor& x, const Conv& conv, CausalCache* cache) {
  // x: [B, Cin, T, H, W]; weight: [Cout, Cin, kt, kh, kw]
  const int64_t kt = conv.weight.size(2), kh = conv.weight.size(3), kw = conv.weight.size(4);
  const int64_t context = kt - 1;
  at::Tensor input = x;
  if (context > 0) {
    const int64_t have =
        cache != nullptr && cache->tail.defined() ? std::min(cache->tail.size(2), context) : 0;
    std::vector<at::Tensor> parts;
    if (have < context) {
      auto sizes = x.sizes().vec();
      sizes[2] = context - have;
      parts.push_back(at::zeros(sizes, x.options()));
    }
    if (have > 0) parts.push_back(cache->tail.narrow(2, cache->tail.size(2) - have, have));
    parts.push_back(x);
    input = at::cat(parts, 2);  // [B, Cin, kt - 1 + T, H, W]
    if (cache != nullptr) {
      // The last kt - 1 real (not zero) frames seen so far, copied so the
      // chunk's activations can be freed.
      const int64_t keep = std::min(context, have + x.size(2));
      cache->tail = input.narrow(2, input.size(2) - keep, keep).clone();
    }
  }
  if (cache != nullptr) cache->started = true;
  return Convolution(input, conv.weight, conv.bias, /*stride=*/{1, 1, 1},
                     /*padding=*/{0, kh / 2, kw / 2});
}

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& bias) {
  // F.normalize: x / max(||x||_2, 1e-12) over channels, then * sqrt(C) * gamma.
  const double scale = std::sqrt(static_cast<double>(x.size(1)));
  // A plain sum of squares: at::linalg_vector_norm over dim 1 measured 2x
  // slower on the CPU ([1, 16, 2, 256, 256], 2 threads: 55 vs 28 ms).
  at::Tensor inv = (x * x).sum(1, /*keepdim=*/true);
  inv.sqrt_().clamp_min_(1e-12).reciprocal_().mul_(scale);
  at::Tensor y = x * inv;
  y.mul_(gamma);
  if (bias.defined()) y.add_(bias);
  return y;
}

at::Tensor ApplyResidualBlock(const at::Tensor& x, const ResidualBlock& block, CacheCursor* caches) {
  const at::Tensor shortcut = block.shortcut.weight.defined() ? Pointwise(x, block.shortcut) : x;
  at::Tensor h = RmsNorm(x, block.norm1_gamma);
  at::silu_(h);
  h = CausalConv3d(h, block.conv1, caches ? caches->Next() : nullptr);
  h = RmsNorm(h, block.norm2_gamma);
  at::silu_(h);
  h = CausalConv3d(h, block.conv2, caches ? caches->Next() : nullptr);
  return h.add_(shortcut);
}

namespace {

// Single-head attention. q, k, v: [N, L, D] -> [N, L, D].
at::Tensor SingleHeadAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
#if TORCH_VERSION_MAJOR >= 2
  return at::scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1);
#else
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  at::Tensor scores = at::bmm(q, k.transpose(1, 2)).mul_(scale);  // [N, L, L]
  return at::bmm(at::softmax(scores, -1), v);
#endif
}

}  // namespace

at::Tensor ApplyAttentionBlock(const at::Tensor& x, const AttentionBlock& block) {
  const int64_t B = x.size(0), C = x.size(1), T = x.size(2), H = x.size(3), W = x.size(4);
  // Frames as images: [B*T, C, H, W].
  at::Tensor f = x.permute({0, 2, 1, 3, 4}).reshape({B * T, C, H, W});
  f = RmsNorm(f, block.norm_gamma);
  // qkv: [B*T, 3C, H*W] -> [B*T, H*W, 3C]; q, k, v: [B*T, H*W, C]
  const at::Tensor qkv =
      Pointwise(f, block.to_qkv).view({B * T, 3 * C, H * W}).transpose(1, 2);
  const at::Tensor q = qkv.narrow(2, 0, C).contiguous();
  const at::Tensor k = qkv.narrow(2, C, C).contiguous();
  const at::Tensor v = qkv.narrow(2, 2 * C, C).contiguous();
  const at::Tensor attn = SingleHeadAttention(q, k, v).transpose(1, 2).reshape({B * T, C, H, W});
  const at::Tensor out = Pointwise(attn, block.proj);
  // Back to [B, C, T, H, W] channels-first contiguous, plus the identity.
  return (out.view({B, T, C, H, W}).permute({0, 2, 1, 3, 4}) + x).contiguous();
}

at::Tensor ApplyResample(const at::Tensor& x, const Resample& block, CacheCursor* caches) {
  at::Tensor y = x;  // [B, C, T, H, W]
  if (block.mode == ResampleMode::kUpsample3d) {
    CausalCache* cache = caches->Next();
    if (!cache->started) {
      cache->started = true;  // first chunk: one frame stays one frame
    } else {
      const int64_t B = x.size(0), C = x.size(1), T = x.size(2), H = x.size(3), W = x.size(4);
      // [B, 2C, T, H, W]: channel halves are frames 2t and 2t + 1.
      y = CausalConv3d(x, block.time_conv, cache)
              .view({B, 2, C, T, H, W})
              .permute({0, 2, 3, 1, 4, 5})
              .reshape({B, C, 2 * T, H, W});
    }
  }
  // The per-frame Conv2d runs as a Conv3d with a temporal kernel of 1, so
  // frames never leave the channels-first video layout.
  const at::Tensor w2d = block.resample.weight.unsqueeze(2);  // [Cout, Cin, 1, 3, 3]
  if (block.mode == ResampleMode::kUpsample2d || block.mode == ResampleMode::kUpsample3d) {
    // nearest-exact and nearest agree for an integer factor of 2.
    y = at::upsample_nearest3d(y, {y.size(2), 2 * y.size(3), 2 * y.size(4)});
    return Convolution(y, w2d, block.resample.bias, {1, 1, 1}, {0, 1, 1});
  }
  y = Convolution(at::constant_pad_nd(y, {0, 1, 0, 1}), w2d, block.resample.bias, {1, 2, 2}, {0, 0, 0});
  if (block.mode == ResampleMode::kDownsample3d) {
    CausalCache* cache = caches->Next();
    const int64_t T = y.size(2);
    if (!cache->started) {
      cache->started = true;  // first chunk passes through; its last frame is kept
    } else {
      const at::Tensor input = at::cat({cache->tail, y}, 2);
      cache->tail = y.narrow(2, T - 1, 1).clone();
      return Convolution(input, block.time_conv.weight, block.time_conv.bias, {2, 1, 1}, {0, 0, 0});
    }
    cache->tail = y.narrow(2, T - 1, 1).clone();
  }
  return y;
}

at::Tensor Patchify(const at::Tensor& x, int64_t p) {
  if (p == 1) return x;
  const int64_t B = x.size(0), C = x.size(1), T = x.size(2), H = x.size(3), W = x.size(4);
  // [B, C, T, H/p, i, W/p, j] -> [B, C, j, i, T, H/p, W/p]
  return x.reshape({B, C, T, H / p, p, W / p, p})
      .permute({0, 1, 6, 4, 2, 3, 5})
      .reshape({B, C * p * p, T, H / p, W / p});
}

at::Tensor Unpatchify(const at::Tensor& x, int64_t p) {
  if (p == 1) return x;
  const int64_t B = x.size(0), C = x.size(1) / (p * p), T = x.size(2), h = x.size(3), w = x.size(4);
  // [B, C, j, i, T, h, w] -> [B, C, T, h, i, w, j]
  return x.reshape({B, C, p, p, T, h, w})
      .permute({0, 1, 4, 5, 3, 6, 2})
      .reshape({B, C, T, h * p, w * p});
}

at::Tensor AvgDown3D(const at::Tensor& x, int64_t out_channels, int64_t factor_t, int64_t factor_s) {
  const int64_t pad_t = (factor_t - x.size(2) % factor_t) % factor_t;
  const at::Tensor padded = pad_t > 0 ? at::constant_pad_nd(x, {0, 0, 0, 0, pad_t, 0}) : x;
  const int64_t B = x.size(0), C = x.size(1), T = padded.size(2) / factor_t;
  const int64_t H = x.size(3) / factor_s, W = x.size(4) / factor_s;
  const int64_t group = C * factor_t * factor_s * factor_s / out_channels;
  // [B, C, T, ft, H, fs, W, fs] -> [B, C, ft, fs, fs, T, H, W] = [B, out, group, T, H, W]
  return padded.reshape({B, C, T, factor_t, H, factor_s, W, factor_s})
      .permute({0, 1, 3, 5, 7, 2, 4, 6})
      .reshape({B, out_channels, group, T, H, W})
      .mean(2);
}

at::Tensor DupUp3D(const at::Tensor& x, int64_t out_channels, int64_t factor_t, int64_t factor_s,
                   bool first_chunk) {
  const int64_t B = x.size(0), C = x.size(1), T = x.size(2), H = x.size(3), W = x.size(4);
  const int64_t repeats = out_channels * factor_t * factor_s * factor_s / C;
  // [B, C, repeats, T, H, W] = [B, out, ft, fs, fs, T, H, W] -> [B, out, T, ft, H, fs, W, fs]
  at::Tensor y = x.unsqueeze(2)
                     .expand({B, C, repeats, T, H, W})
                     .reshape({B, out_channels, factor_t, factor_s, factor_s, T, H, W})
                     .permute({0, 1, 5, 2, 6, 3, 7, 4})
                     .reshape({B, out_channels, T * factor_t, H * factor_s, W * factor_s});
  return first_chunk ? y.narrow(2, factor_t - 1, y.size(2) - (factor_t - 1)) : y;
}

struct MidBlock {
  ResidualBlock res0, res1;
  AttentionBlock attn;
};

// The parameter-free shortcut of a Wan2.2 residual block (AvgDown3D in the
// encoder, DupUp3D in the decoder); none where out_channels is 0.
struct Shortcut {
  int64_t out_channels = 0;
  int64_t factor_t = 1, factor_s = 1;
};

// One level of the encoder: residual blocks, then a downsampler (all levels
// but the last).
struct DownBlock {
  std::vector<ResidualBlock> resnets;
  bool has_downsampler = false;
  Resample downsampler;
  Shortcut shortcut;  // Wan2.2: + AvgDown3D(block input)
};

// One level of the decoder: num_res_blocks + 1 residual blocks, then an
// upsampler (all levels but the last).
struct UpBlock {
  std::vector<ResidualBlock> resnets;
  bool has_upsampler = false;
  Resample upsampler;
  Shortcut shortcut;  // Wan2.2: + DupUp3D(block input)
};

struct Model {
  // Encoder.
  Conv enc_conv_in;
  std::vector<DownBlock> down_blocks;
  MidBlock enc_mid;
  at::Tensor enc_norm_out;
  Conv enc_conv_out, quant_conv;
  // Decoder.
  Conv post_quant_conv, dec_conv_in;
  MidBlock dec_mid;
  std::vector<UpBlock> up_blocks;
  at::Tensor dec_norm_out;
  Conv dec_conv_out;
};

namespace {

using ParamFn = std::function<at::Tensor(const std::string& name, std::vector<int64_t> shape)>;

// Asks `param` for the tensors of one layer, in state-dict order.
struct ParamWalker {
  const ParamFn& param;

  Conv ConvLayer(const std::string& name, int64_t out, int64_t in,
                 std::vector<int64_t> kernel) const {
    std::vector<int64_t> shape = {out, in};
    shape.insert(shape.end(), kernel.begin(), kernel.end());
    Conv cv;
    cv.weight = param(name + ".weight", shape);
    cv.bias = param(name + ".bias", {out});
    return cv;
  }
  ResidualBlock Residual(const std::string& name, int64_t in, int64_t out) const {
    ResidualBlock r;
    r.norm1_gamma = param(name + ".norm1.gamma", {in, 1, 1, 1});
    r.conv1 = ConvLayer(name + ".conv1", out, in, {3, 3, 3});
    r.norm2_gamma = param(name + ".norm2.gamma", {out, 1, 1, 1});
    r.conv2 = ConvLayer(name + ".conv2", out, out, {3, 3, 3});
    if (in != out) r.shortcut = ConvLayer(name + ".conv_shortcut", out, in, {1, 1, 1});
    return r;
  }
  MidBlock Mid(const std::string& name, int64_t dim) const {
    MidBlock m;
    m.attn.norm_gamma = param(name + ".attentions.0.norm.gamma", {dim, 1, 1});
    m.attn.to_qkv = ConvLayer(name + ".attentions.0.to_qkv", 3 * dim, dim, {1, 1});
    m.attn.proj = ConvLayer(name + ".attentions.0.proj", dim, dim, {1, 1});
    m.res0 = Residual(name + ".resnets.0", dim, dim);
    m.res1 = Residual(name + ".resnets.1", dim, dim);
    return m;
  }
};

// Encoder: dims = base * [1, dim_mult...]; outputs mean and log-variance.
// Wan2.1 names its layers in one flat list (encoder.down_blocks.<n>), Wan2.2
// per level (encoder.down_blocks.<level>.resnets.<r>, .downsampler).
void BuildEncoder(const WanVAEConfig& c, const ParamWalker& p, Model* m) {
  const size_t levels = c.dim_mult.size();
  std::vector<int64_t> dims = {c.base_dim};
  for (int64_t u : c.dim_mult) dims.push_back(c.base_dim * u);
  m->enc_conv_in = p.ConvLayer("encoder.conv_in", dims[0], c.pixel_channels(), {3, 3, 3});
  int64_t index = 0;
  for (size_t i = 0; i < levels; ++i) {
    const std::string level = "encoder.down_blocks." + std::to_string(i);
    auto layer = [&](const std::string& nested) {
      return c.is_residual ? level + nested : "encoder.down_blocks." + std::to_string(index++);
    };
    const bool down = i + 1 != levels;
    const bool temporal = down && c.temperal_downsample[i];
    const int64_t out = dims[i + 1];
    DownBlock block;
    for (int64_t r = 0; r < c.num_res_blocks; ++r) {
      const int64_t in = r == 0 ? dims[i] : out;
      block.resnets.push_back(p.Residual(layer(".resnets." + std::to_string(r)), in, out));
    }
    if (down) {
      const std::string name = layer(".downsampler");
      block.has_downsampler = true;
      block.downsampler.mode = temporal ? ResampleMode::kDownsample3d : ResampleMode::kDownsample2d;
      block.downsampler.resample = p.ConvLayer(name + ".resample.1", out, out, {3, 3});
      if (temporal) block.downsampler.time_conv = p.ConvLayer(name + ".time_conv", out, out, {3, 1, 1});
    }
    if (c.is_residual) block.shortcut = {out, temporal ? 2 : 1, down ? 2 : 1};
    m->down_blocks.push_back(std::move(block));
  }
  m->enc_mid = p.Mid("encoder.mid_block", dims.back());
  m->enc_norm_out = p.param("encoder.norm_out.gamma", {dims.back(), 1, 1, 1});
  m->enc_conv_out = p.ConvLayer("encoder.conv_out", 2 * c.z_dim, dims.back(), {3, 3, 3});
}

// Decoder: dims = dec_base * [dim_mult[-1], reversed(dim_mult)...]. Wan2.1
// upsamplers (upsamplers.0) halve the channels, so its blocks after the first
// start at half; Wan2.2 ones (upsampler) keep them.
void BuildDecoder(const WanVAEConfig& c, const ParamWalker& p, Model* m) {
  const size_t levels = c.dim_mult.size();
  const int64_t d = c.decoder_dim();
  std::vector<int64_t> dims = {d * c.dim_mult.back()};
  for (size_t i = levels; i-- > 0;) dims.push_back(d * c.dim_mult[i]);
  m->dec_conv_in = p.ConvLayer("decoder.conv_in", dims[0], c.z_dim, {3, 3, 3});
  m->dec_mid = p.Mid("decoder.mid_block", dims[0]);
  for (size_t i = 0; i < levels; ++i) {
    const std::string name = "decoder.up_blocks." + std::to_string(i);
    int64_t in = i > 0 && !c.is_residual ? dims[i] / 2 : dims[i];
    const int64_t out = dims[i + 1];
    UpBlock block;
    for (int64_t r = 0; r <= c.num_res_blocks; ++r) {
      block.resnets.push_back(p.Residual(name + ".resnets." + std::to_string(r), in, out));
      in = out;
    }
    if (i + 1 != levels) {
      // temperal_upsample = reversed(temperal_downsample)
      const bool temporal = c.temperal_downsample[levels - 2 - i];
      block.has_upsampler = true;
      block.upsampler.mode = temporal ? ResampleMode::kUpsample3d : ResampleMode::kUpsample2d;
      const std::string up = name + (c.is_residual ? ".upsampler" : ".upsamplers.0");
      block.upsampler.resample = p.ConvLayer(up + ".resample.1", c.is_residual ? out : out / 2, out, {3, 3});
      if (temporal) block.upsampler.time_conv = p.ConvLayer(up + ".time_conv", 2 * out, out, {3, 1, 1});
      if (c.is_residual) block.shortcut = {out, temporal ? 2 : 1, 2};
    }
    m->up_blocks.push_back(std::move(block));
  }
  m->dec_norm_out = p.param("decoder.norm_out.gamma", {dims.back(), 1, 1, 1});
  m->dec_conv_out = p.ConvLayer("decoder.conv_out", c.pixel_channels(), dims.back(), {3, 3, 3});
}

// The architecture, once: walks every parameter in state-dict order, asking
// `param` for each tensor. ExpectedParameters records names and shapes;
// binding looks the tensors up.
Model BuildModel(const WanVAEConfig& c, const ParamFn& param) {
  const ParamWalker p{param};
  Model m;
  BuildEncoder(c, p, &m);
  m.quant_conv = p.ConvLayer("quant_conv", 2 * c.z_dim, 2 * c.z_dim, {1, 1, 1});
  m.post_quant_conv = p.ConvLayer("post_quant_conv", c.z_dim, c.z_dim, {1, 1, 1});
  BuildDecoder(c, p, &m);
  return m;
}

at::Tensor ApplyMidBlock(const at::Tensor& x, const MidBlock& mid, CacheCursor* caches) {
  at::Tensor h = ApplyResidualBlock(x, mid.res0, caches);
  h = ApplyAttentionBlock(h, mid.attn);
  return ApplyResidualBlock(h, mid.res1, caches);
}

// Residual blocks, then the downsampler; Wan2.2 adds AvgDown3D of the input.
at::Tensor ApplyDownBlock(const at::Tensor& x, const DownBlock& block, CacheCursor* caches) {
  at::Tensor h = x;
  for (const ResidualBlock& r : block.resnets) h = ApplyResidualBlock(h, r, caches);
  if (block.has_downsampler) h = ApplyResample(h, block.downsampler, caches);
  const Shortcut& s = block.shortcut;
  if (s.out_channels == 0) return h;
  const at::Tensor shortcut = AvgDown3D(x, s.out_channels, s.factor_t, s.factor_s);
  return h.is_same(x) ? h + shortcut : h.add_(shortcut);
}

// Residual blocks, then the upsampler; Wan2.2 adds DupUp3D of the input.
at::Tensor ApplyUpBlock(const at::Tensor& x, const UpBlock& block, CacheCursor* caches, bool first_chunk) {
  at::Tensor h = x;
  for (const ResidualBlock& r : block.resnets) h = ApplyResidualBlock(h, r, caches);
  if (block.has_upsampler) h = ApplyResample(h, block.upsampler, caches);
  const Shortcut& s = block.shortcut;
  if (s.out_channels == 0) return h;
  return h.add_(DupUp3D(x, s.out_channels, s.factor_t, s.factor_s, first_chunk));
}

// RMS norm, SiLU, causal conv: the head of encoder and decoder.
at::Tensor ApplyHead(const at::Tensor& x, const at::Tensor& gamma, const Conv& conv, CacheCursor* caches) {
  at::Tensor h = RmsNorm(x, gamma);
  at::silu_(h);
  return CausalConv3d(h, conv, caches->Next());
}

}  // namespace
}  // namespace wan_vae

// ---------------------------------------------------------------------------
// Config.
namespace {

using nlohmann::json;

using config_json::KeyError;
using config_json::ReadInt;

Status ReadNumbers(const json& j, const std::string& source, const char* key, std::vector<double>* out) {
  if (!j.contains(key)) return OkStatus();
  const json& v = j[key];
  if (!v.is_array()) return KeyError(source, key, "expected a list of numbers, got " + v.dump());
  out->clear();
  for (const json& e : v) {
    if (!e.is_number() || !std::isfinite(e.get<double>())) {
      return KeyError(source, key, "expected finite numbers, got " + e.dump());
    }
    out->push_back(e.get<double>());
  }
  return OkStatus();
}

// _class_name, is_residual, patch_size, in_channels and out_channels. The
// Wan2.2 VAE is residual with 2 x 2 patches of RGB pixels (12 channels); every
// Wan VAE here takes and gives RGB video, so both channel counts must be
// 3 * patch_size^2.
Status ReadVariant(const json& j, const std::string& source, WanVAEConfig* c) {
  if (j.contains("_class_name") && j["_class_name"] != "AutoencoderKLWan") {
    return KeyError(source, "_class_name", "expected AutoencoderKLWan, got " + j["_class_name"].dump());
  }
  if (j.contains("is_residual")) {
    if (!j["is_residual"].is_boolean()) {
      return KeyError(source, "is_residual", "expected true or false, got " + j["is_residual"].dump());
    }
    c->is_residual = j["is_residual"].get<bool>();
  }
  if (j.contains("patch_size") && !j["patch_size"].is_null()) {
    RAINSERVE_RETURN_IF_ERROR(ReadInt(j, source, "patch_size", 1, 8, &c->patch_size));
  }
  for (const char* key : {"in_channels", "out_channels"}) {
    int64_t channels = 3;  // diffusers' default
    RAINSERVE_RETURN_IF_ERROR(ReadInt(j, source, key, 1, 4096, &channels));
    if (channels != c->pixel_channels()) {
      return KeyError(source, key,
                      "expected 3 * patch_size^2 = " + std::to_string(c->pixel_channels()) +
                          " (RGB pixels in patch_size x patch_size patches), got " +
                          std::to_string(channels));
    }
  }
  return OkStatus();
}

// dim_mult and temperal_downsample: the channel multiplier of each level and
// whether each down level halves time.
Status ReadLevels(const json& j, const std::string& source, WanVAEConfig* c) {
  if (j.contains("dim_mult")) {
    const json& v = j["dim_mult"];
    if (!v.is_array() || v.empty() || v.size() > 8) {
      return KeyError(source, "dim_mult", "expected a list of 1 to 8 integers, got " + v.dump());
    }
    c->dim_mult.clear();
    for (const json& e : v) {
      if (!e.is_number_integer() || e.get<int64_t>() < 1 || e.get<int64_t>() > 64) {
        return KeyError(source, "dim_mult", "entries must be integers in [1, 64], got " + e.dump());
      }
      c->dim_mult.push_back(e.get<int64_t>());
    }
  }
  if (j.contains("temperal_downsample")) {
    const json& v = j["temperal_downsample"];
    if (!v.is_array()) return KeyError(source, "temperal_downsample", "expected a list of booleans");
    c->temperal_downsample.clear();
    for (const json& e : v) {
      if (!e.is_boolean()) return KeyError(source, "temperal_downsample", "expected booleans, got " + e.dump());
      c->temperal_downsample.push_back(e.get<bool>());
    }
  }
  if (c->temperal_downsample.size() + 1 != c->dim_mult.size()) {
    return KeyError(source, "temperal_downsample",
                    "needs one entry per down level: " + std::to_string(c->dim_mult.size() - 1) +
                        " for dim_mult of " + std::to_string(c->dim_mult.size()));
  }
  return OkStatus();
}

// The channel counts the blocks need. Wan2.1: every decoder upsampler halves
// its channels (decoder dim * dim_mult[i >= 1] even). Wan2.2: the shortcuts
// regroup channels, so AvgDown3D needs in * factor to be a multiple of out
// and DupUp3D out * factor a multiple of in (diffusers asserts both).
Status CheckBlockChannels(const WanVAEConfig& c, const std::string& source) {
  const std::string dec_key = c.decoder_base_dim > 0 ? "decoder_base_dim" : "base_dim";
  const size_t levels = c.dim_mult.size();
  if (!c.is_residual) {
    for (size_t i = 1; i < levels; ++i) {
      if ((c.decoder_dim() * c.dim_mult[i]) % 2 != 0) {
        return KeyError(source, dec_key,
                        "times dim_mult[" + std::to_string(i) +
                            "] must be even (upsamplers halve the channels)");
      }
    }
    return OkStatus();
  }
  for (size_t i = 0; i < levels; ++i) {
    const bool down = i + 1 != levels;
    const int64_t factor = (down ? 4 : 1) * (down && c.temperal_downsample[i] ? 2 : 1);
    const int64_t in = c.base_dim * (i == 0 ? 1 : c.dim_mult[i - 1]), out = c.base_dim * c.dim_mult[i];
    if (in * factor % out != 0) {
      return KeyError(source, "dim_mult",
                      "encoder level " + std::to_string(i) + ": the residual shortcut averages " +
                          std::to_string(in) + " x " + std::to_string(factor) + " values into " +
                          std::to_string(out) + " channels, which does not divide evenly");
    }
  }
  for (size_t i = 0; i + 1 < levels; ++i) {
    const int64_t factor = 4 * (c.temperal_downsample[levels - 2 - i] ? 2 : 1);
    const int64_t in = c.decoder_dim() * (i == 0 ? c.dim_mult.back() : c.dim_mult[levels - i]);
    const int64_t out = c.decoder_dim() * c.dim_mult[levels - 1 - i];
    if (out * factor % in != 0) {
      return KeyError(source, "dim_mult",
                      "decoder block " + std::to_string(i) + ": the residual shortcut spreads " +
                          std::to_string(in) + " channels over " + std::to_string(out) + " x " +
                          std::to_string(factor) + " values, which does not divide evenly");
    }
  }
  return OkStatus();
}

// latents_mean and latents_std: z_dim values each, every std positive.
// Omitted, they are the published ones of that latent size (z_dim 16:
// Wan2.1, 48: Wan2.2); other sizes must give them.
Status ReadLatentStats(const json& j, const std::string& source, WanVAEConfig* c) {
  const bool published = c->z_dim == 16 || c->z_dim == 48;
  for (const char* key : {"latents_mean", "latents_std"}) {
    const bool mean = std::string(key) == "latents_mean";
    std::vector<double>* v = mean ? &c->latents_mean : &c->latents_std;
    if (!j.contains(key)) {
      if (!published) {
        return KeyError(source, key,
                        "required when z_dim is not 16 or 48 (the published Wan2.1 and Wan2.2 sizes)");
      }
      const bool wan22 = c->z_dim == 48;
      *v = mean ? (wan22 ? WanVAE22LatentsMean() : WanVAEDefaultLatentsMean())
                : (wan22 ? WanVAE22LatentsStd() : WanVAEDefaultLatentsStd());
    }
    RAINSERVE_RETURN_IF_ERROR(ReadNumbers(j, source, key, v));
    if (static_cast<int64_t>(v->size()) != c->z_dim) {
      return KeyError(source, key, "expected z_dim = " + std::to_string(c->z_dim) +
                                       " values, got " + std::to_string(v->size()));
    }
  }
  for (double s : c->latents_std) {
    if (!(s > 0)) return KeyError(source, "latents_std", "values must be positive");
  }
  return OkStatus();
}

}  // namespace

int64_t WanVAEConfig::temporal_scale() const {
  int64_t scale = 1;
  for (bool t : temperal_downsample) scale *= t ? 2 : 1;
  return scale;
}

const std::vector<double>& WanVAEDefaultLatentsMean() {
  static const std::vector<double> kMean = {-0.7571, -0.7089, -0.9113, 0.1075,  -0.1745, 0.9653,
                                            -0.1517, 1.5508,  0.4134,  -0.0715, 0.5517,  -0.3632,
                                            -0.1922, -0.9497, 0.2503,  -0.2921};
  return kMean;
}

const std::vector<double>& WanVAEDefaultLatentsStd() {
  static const std::vector<double> kStd = {2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708,
                                           2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
                                           1.6382, 1.1253, 2.8251, 1.9160};
  return kStd;
}

const std::vector<double>& WanVAE22LatentsMean() {
  static const std::vector<double> kMean = {
      -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174,  0.1838,  0.1557,  -0.1382, 0.0542,
      0.2813,  0.0891,  0.1570,  -0.0098, 0.0375,  -0.1825, -0.2246, -0.1207, -0.0698, 0.5109,
      0.2665,  -0.2108, -0.2158, 0.2502,  -0.2055, -0.0322, 0.1109,  0.1567,  -0.0729, 0.0899,
      -0.2799, -0.1230, -0.0313, -0.1649, 0.0117,  0.0723,  -0.2839, -0.2083, -0.0520, 0.3748,
      0.0152,  0.1957,  0.1433,  -0.2944, 0.3573,  -0.0548, -0.1681, -0.0667};
  return kMean;
}

const std::vector<double>& WanVAE22LatentsStd() {
  static const std::vector<double> kStd = {
      0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344,
      0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804,
      0.5833, 1.4146, 0.8986, 0.5659, 0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999,
      0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
      0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744};
  return kStd;
}

WanVAEConfig WanVAE22Config() {
  WanVAEConfig c;
  c.base_dim = 160;
  c.decoder_base_dim = 256;
  c.z_dim = 48;
  c.is_residual = true;
  c.patch_size = 2;
  c.latents_mean = WanVAE22LatentsMean();
  c.latents_std = WanVAE22LatentsStd();
  return c;
}

StatusOr<WanVAEConfig> ParseWanVAEConfig(const std::string& json_text, const std::string& source) {
  RAINSERVE_ASSIGN_OR_RETURN(json j, config_json::ParseObject(json_text, source));
  WanVAEConfig c;
  RAINSERVE_RETURN_IF_ERROR(ReadVariant(j, source, &c));
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, source, "base_dim", 1, 4096, &c.base_dim));
  if (j.contains("decoder_base_dim") && !j["decoder_base_dim"].is_null()) {
    RAINSERVE_RETURN_IF_ERROR(ReadInt(j, source, "decoder_base_dim", 1, 4096, &c.decoder_base_dim));
  }
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, source, "z_dim", 1, 1024, &c.z_dim));
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, source, "num_res_blocks", 1, 16, &c.num_res_blocks));
  RAINSERVE_RETURN_IF_ERROR(ReadLevels(j, source, &c));
  RAINSERVE_RETURN_IF_ERROR(ReadNumbers(j, source, "attn_scales", &c.attn_scales));
  if (!c.attn_scales.empty()) {
    return UnimplementedError(source + ": attn_scales: attention inside up/down blocks is not supported "
                                       "(the published Wan VAEs have none)");
  }
  if (j.contains("dropout")) {
    const json& v = j["dropout"];
    if (!v.is_number() || v.get<double>() < 0 || v.get<double>() >= 1) {
      return KeyError(source, "dropout", "expected a number in [0, 1), got " + v.dump());
    }
    c.dropout = v.get<double>();
  }
  RAINSERVE_RETURN_IF_ERROR(CheckBlockChannels(c, source));
  RAINSERVE_RETURN_IF_ERROR(ReadLatentStats(j, source, &c));
  return c;
}

std::string WanVAEConfigJson(const WanVAEConfig& c) {
  json j = {{"_class_name", "AutoencoderKLWan"},
            {"base_dim", c.base_dim},
            {"decoder_base_dim", c.decoder_base_dim > 0 ? json(c.decoder_base_dim) : json(nullptr)},
            {"z_dim", c.z_dim},
            {"dim_mult", c.dim_mult},
            {"num_res_blocks", c.num_res_blocks},
            {"attn_scales", c.attn_scales},
            {"temperal_downsample", c.temperal_downsample},
            {"dropout", c.dropout},
            {"latents_mean", c.latents_mean},
            {"latents_std", c.latents_std},
            {"is_residual", c.is_residual},
            {"in_channels", c.pixel_channels()},
            {"out_channels", c.pixel_channels()},
            {"patch_size", c.patch_size > 1 ? json(c.patch_size) : json(nullptr)},
            {"scale_factor_temporal", c.temporal_scale()},
            {"scale_factor_spatial", c.spatial_scale()}};
  return j.dump(2);
}

// ---------------------------------------------------------------------------
// Model.

WanVAE::WanVAE(WanVAEConfig config, at::ScalarType dtype, at::Device device)
    : config_(std::move(config)), dtype_(dtype), device_(device) {}

WanVAE::~WanVAE() = default;

std::vector<std::pair<std::string, std::vector<int64_t>>> WanVAE::ExpectedParameters(
    const WanVAEConfig& config) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> p;
  wan_vae::BuildModel(config, [&](const std::string& name, std::vector<int64_t> shape) {
    p.emplace_back(name, std::move(shape));
    return at::Tensor();
  });
  return p;
}

void WanVAE::Bind() {
  std::map<std::string, at::Tensor> by_name(params_.begin(), params_.end());
  model_ = std::make_unique<wan_vae::Model>(wan_vae::BuildModel(
      config_, [&](const std::string& name, const std::vector<int64_t>&) { return by_name.at(name); }));
  auto stats = [&](const std::vector<double>& v) {  // [1, z_dim, 1, 1, 1] fp32
    return at::tensor(v, at::kDouble).to(device_, at::kFloat).view({1, -1, 1, 1, 1});
  };
  mean_ = stats(config_.latents_mean);
  std_ = stats(config_.latents_std);
}

std::unique_ptr<WanVAE> WanVAE::Random(const WanVAEConfig& config, at::ScalarType dtype,
                                       at::Device device, uint64_t seed) {
  const auto z_dim = static_cast<size_t>(config.z_dim);
  TORCH_CHECK(config.latents_mean.size() == z_dim && config.latents_std.size() == z_dim,
              "WanVAE::Random: latents_mean and latents_std need z_dim = ", z_dim, " values each, got ",
              config.latents_mean.size(), " and ", config.latents_std.size());
  std::unique_ptr<WanVAE> model(new WanVAE(config, dtype, device));
  at::manual_seed(seed);
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  std::map<std::string, int64_t> fan_in;  // of each layer, from its weight
  const auto expected = ExpectedParameters(config);
  for (const auto& [name, shape] : expected) {
    if (name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0) {
      int64_t fan = 1;
      for (size_t i = 1; i < shape.size(); ++i) fan *= shape[i];
      fan_in[name.substr(0, name.size() - 7)] = fan;
    }
  }
  for (const auto& [name, shape] : expected) {
    at::Tensor t;
    if (name.size() > 6 && name.compare(name.size() - 6, 6, ".gamma") == 0) {
      t = at::ones(shape, opts);
    } else {
      // nn.Conv default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
      const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in.at(name.substr(0, name.rfind('.')))));
      t = at::rand(shape, opts) * (2 * bound) - bound;
    }
    model->params_.push_back({name, t.to(device, dtype)});
  }
  model->Bind();
  return model;
}

StatusOr<std::unique_ptr<WanVAE>> WanVAE::Load(const std::string& dir, at::ScalarType dtype,
                                               at::Device device) {
  std::string text;
  RAINSERVE_RETURN_IF_ERROR(ReadFile(dir + "/config.json", &text));
  RAINSERVE_ASSIGN_OR_RETURN(WanVAEConfig config, ParseWanVAEConfig(text, dir + "/config.json"));
  RAINSERVE_ASSIGN_OR_RETURN(SafetensorsCheckpoint ckpt, SafetensorsCheckpoint::Open(dir));
  const auto expected = ExpectedParameters(config);

  RAINSERVE_RETURN_IF_ERROR(MatchCheckpoint(ckpt, dir, expected).status());
  std::unique_ptr<WanVAE> model(new WanVAE(config, dtype, device));
  for (const auto& [name, shape] : expected) {
    RAINSERVE_ASSIGN_OR_RETURN(at::Tensor t, ckpt.Get(name, dtype, device));
    model->params_.push_back({name, t});
  }
  model->Bind();
  return model;
}

Status WanVAE::Save(const std::string& dir, int64_t max_shard_bytes) const {
  return WriteModelFolder(dir, WanVAEConfigJson(config_), "diffusion_pytorch_model", params_, max_shard_bytes);
}

int64_t WanVAE::FramesFor(int64_t latent_frames) const {
  return latent_frames <= 0 ? 0 : 1 + (latent_frames - 1) * temporal_scale();
}

StatusOr<at::Tensor> WanVAE::Decode(const at::Tensor& latents, const Progress& progress) const {
  const WanVAEConfig& c = config_;
  if (!latents.defined() || latents.dim() != 5 || latents.size(1) != c.z_dim || latents.size(2) < 1 ||
      latents.size(3) < 1 || latents.size(4) < 1) {
    return InvalidArgumentError("latents must be [B, " + std::to_string(c.z_dim) +
                                ", F, h, w] with F, h, w >= 1");
  }
  if (!at::isFloatingType(latents.scalar_type())) {
    return InvalidArgumentError("latents must be a floating-point tensor");
  }
  return DecodeImpl(latents, progress);
}

at::Tensor WanVAE::DecodeImpl(const at::Tensor& latents, const Progress& progress) const {
  using namespace wan_vae;
  const Model& m = *model_;
  const int64_t B = latents.size(0), F = latents.size(2);
  const int64_t s = spatial_scale();
  // De-normalise in fp32, then the model dtype. z: [B, z_dim, F, h, w]
  const at::Tensor z = (latents.to(device_, at::kFloat) * std_ + mean_).to(dtype_);
  const at::Tensor x = Pointwise(z, m.post_quant_conv);
  // video: [B, 3, T, H, W] fp32, filled chunk by chunk.
  at::Tensor video = at::empty({B, 3, FramesFor(F), latents.size(3) * s, latents.size(4) * s},
                               at::TensorOptions().dtype(at::kFloat).device(device_));
  std::vector<CausalCache> caches;
  int64_t frame = 0;
  for (int64_t f = 0; f < F; ++f) {
    CacheCursor cursor(&caches);
    at::Tensor h = CausalConv3d(x.narrow(2, f, 1), m.dec_conv_in, cursor.Next());
    h = ApplyMidBlock(h, m.dec_mid, &cursor);
    for (const UpBlock& block : m.up_blocks) h = ApplyUpBlock(h, block, &cursor, /*first_chunk=*/f == 0);
    // [B, 3 p^2, 1 or temporal_scale, H / p, W / p] -> [B, 3, ..., H, W]
    h = Unpatchify(ApplyHead(h, m.dec_norm_out, m.dec_conv_out, &cursor), config_.patch_size);
    video.narrow(2, frame, h.size(2)).copy_(h.clamp_(-1.0, 1.0));
    frame += h.size(2);
    if (progress) progress(f + 1, F);
  }
  return video;
}

StatusOr<at::Tensor> WanVAE::DecodeToFrames(const at::Tensor& latents, const Progress& progress) const {
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor video, Decode(latents, progress));
  // [B, 3, T, H, W] in [-1, 1] -> [B, T, H, W, 3] uint8
  at::Tensor pixels = video.add_(1.0).mul_(127.5).round_().clamp_(0.0, 255.0).to(at::kByte);
  return pixels.permute({0, 2, 3, 4, 1}).to(at::kCPU).contiguous();
}

StatusOr<at::Tensor> WanVAE::Encode(const at::Tensor& video, const Progress& progress) const {
  const int64_t s = spatial_scale(), ts = temporal_scale();
  if (!video.defined() || video.dim() != 5 || video.size(1) != 3 || video.size(2) < 1 ||
      (video.size(2) - 1) % ts != 0 || video.size(3) < s || video.size(3) % s != 0 ||
      video.size(4) < s || video.size(4) % s != 0) {
    return InvalidArgumentError("video must be [B, 3, 1 + " + std::to_string(ts) + "k, H, W] with H and W multiples of " +
                                std::to_string(s));
  }
  if (!at::isFloatingType(video.scalar_type())) {
    return InvalidArgumentError("video must be a floating-point tensor");
  }
  return EncodeImpl(video, progress);
}

at::Tensor WanVAE::EncodeImpl(const at::Tensor& video, const Progress& progress) const {
  using namespace wan_vae;
  const Model& m = *model_;
  const int64_t ts = temporal_scale();
  const at::Tensor x = video.to(device_, dtype_);  // [B, 3, 1 + ts * k, H, W]
  const int64_t chunks = 1 + (x.size(2) - 1) / ts;
  std::vector<CausalCache> caches;
  std::vector<at::Tensor> outs;
  for (int64_t i = 0; i < chunks; ++i) {
    CacheCursor cursor(&caches);
    // Frame 0 alone, then ts frames at a time: one latent frame each.
    const at::Tensor chunk = i == 0 ? x.narrow(2, 0, 1) : x.narrow(2, 1 + ts * (i - 1), ts);
    // [B, 3 p^2, frames, H / p, W / p]
    at::Tensor h = CausalConv3d(Patchify(chunk, config_.patch_size), m.enc_conv_in, cursor.Next());
    for (const DownBlock& block : m.down_blocks) h = ApplyDownBlock(h, block, &cursor);
    h = ApplyMidBlock(h, m.enc_mid, &cursor);
    outs.push_back(ApplyHead(h, m.enc_norm_out, m.enc_conv_out, &cursor));  // [B, 2 z_dim, 1, h, w]
    if (progress) progress(i + 1, chunks);
  }
  const at::Tensor enc = Pointwise(at::cat(outs, 2), m.quant_conv);
  const at::Tensor mu = enc.narrow(1, 0, config_.z_dim).to(at::kFloat);  // [B, z_dim, 1 + k, h, w]
  return (mu - mean_) / std_;
}

}  // namespace rainserve
