// Building blocks of the Wan2.1 and Wan2.2 VAEs (diffusers AutoencoderKLWan),
// exposed for WanVAE and its tests only: not a public API.
//
// All activations are channels-first video tensors x: [B, C, T, H, W].
// Causal 3D convolutions see the past only: a kernel of temporal size 3 is
// padded with 2 zero frames in front (none behind). Decoding runs chunk by
// chunk (one latent frame at a time); each such convolution then keeps a
// CausalCache with the last 2 input frames of the previous chunks, so that
// the chunked result equals one convolution over the whole sequence.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace rainserve {
namespace wan_vae {

// Frames of temporal context a causal convolution carries between chunks
// (diffusers' CACHE_T): the kernel's temporal size minus one.
constexpr int64_t kCacheFrames = 2;

// Weight and bias of one convolution (2D or 3D).
struct Conv {
  at::Tensor weight, bias;
};

// What a causal convolution has seen of its input sequence so far.
struct CausalCache {
  at::Tensor tail;       // [B, C, <= kCacheFrames, H, W] last input frames; undefined before any
  bool started = false;  // first chunk seen (upsample3d skips its time_conv on it)
};

// One cache per causal convolution, handed out in call order: the same
// order every chunk, as diffusers' feat_cache / feat_idx.
class CacheCursor {
 public:
  explicit CacheCursor(std::vector<CausalCache>* slots) : slots_(slots) {}
  CausalCache* Next() {
    if (next_ == slots_->size()) slots_->emplace_back();
    return &(*slots_)[next_++];
  }

 private:
  std::vector<CausalCache>* slots_;
  size_t next_ = 0;
};

// Causal 3D convolution, stride 1, spatial "same" padding (k/2).
// x: [B, Cin, T, H, W]; weight: [Cout, Cin, kt, kh, kw] -> [B, Cout, T, H, W].
// cache == nullptr: the whole sequence, with kt - 1 zero frames in front.
// Otherwise x is the next chunk: the cached tail stands in for as many of
// the zero frames as it has, and the tail is updated to the last kt - 1
// frames of the input so far.
at::Tensor CausalConv3d(const at::Tensor& x, const Conv& conv, CausalCache* cache);

// WanRMS_norm over the channel dim 1: F.normalize(x, dim=1) * sqrt(C) * gamma
// (+ bias). gamma: [C, 1, 1, 1] for video, [C, 1, 1] for images.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& bias = {});

// WanResidualBlock: shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x)))))).
// shortcut is a 1x1x1 convolution when Cin != Cout (undefined weight: identity).
struct ResidualBlock {
  at::Tensor norm1_gamma, norm2_gamma;
  Conv conv1, conv2, shortcut;
};
// caches: nullptr for the whole sequence, else two slots (conv1, conv2) are
// taken from the cursor.
at::Tensor ApplyResidualBlock(const at::Tensor& x, const ResidualBlock& block, CacheCursor* caches);

// WanAttentionBlock: single-head self-attention over the H*W positions of
// each frame, x + proj(attn(qkv(norm(x)))).
struct AttentionBlock {
  at::Tensor norm_gamma;  // [C, 1, 1]
  Conv to_qkv, proj;      // 1x1 Conv2d: [3C, C, 1, 1], [C, C, 1, 1]
};
at::Tensor ApplyAttentionBlock(const at::Tensor& x, const AttentionBlock& block);

// WanResample. upsample2d: nearest 2x in H, W then a 3x3 Conv2d (C -> C/2).
// upsample3d: first doubles the frames with a causal (3, 1, 1) time_conv to
// 2C channels whose halves become frames 2t and 2t + 1 — except on the first
// chunk, which keeps its one frame — then the same as upsample2d.
// downsample2d / downsample3d (encoder): zero pad right and bottom by one,
// 3x3 Conv2d stride 2; downsample3d then halves the frames with a
// (3, 1, 1) stride-2 time_conv over [last frame of the previous chunk, chunk]
// (the first chunk passes through).
enum class ResampleMode { kUpsample2d, kUpsample3d, kDownsample2d, kDownsample3d };
struct Resample {
  ResampleMode mode;
  Conv resample;   // resample.1: Conv2d
  Conv time_conv;  // 3d modes only
};
// caches: must be set for the 3d modes (they exist only chunked in diffusers).
at::Tensor ApplyResample(const at::Tensor& x, const Resample& block, CacheCursor* caches);

// Wan2.2 pixel patchify (diffusers' patchify): x: [B, C, T, H, W] ->
// [B, C * p * p, T, H / p, W / p]; channel c * p * p + j * p + i holds the
// pixel at row offset i, column offset j of each p x p patch (column offset
// major). H and W are multiples of p; p == 1 returns x.
at::Tensor Patchify(const at::Tensor& x, int64_t p);
// The inverse: [B, C * p * p, T, h, w] -> [B, C, T, h * p, w * p].
at::Tensor Unpatchify(const at::Tensor& x, int64_t p);

// The parameter-free shortcuts of the Wan2.2 residual blocks; `factor` is
// factor_t * factor_s * factor_s and the space-time offsets (it, ih, iw) of a
// factor_t x factor_s x factor_s cell are numbered r = (it * fs + ih) * fs + iw.
//
// AvgDown3D: x: [B, C, T, H, W] -> [B, out_channels, ceil(T / ft), H / fs, W / fs].
// T is first padded with zero frames in front to a multiple of ft; stacking
// channel c's cell values gives C * factor channels k = c * factor + r, and
// output channel o is the mean of channels [o * g, (o + 1) * g) with
// g = C * factor / out_channels (a whole number).
at::Tensor AvgDown3D(const at::Tensor& x, int64_t out_channels, int64_t factor_t, int64_t factor_s);
// DupUp3D: x: [B, C, T, H, W] -> [B, out_channels, T * ft, H * fs, W * fs]:
// output channel o, cell offset r takes input channel (o * factor + r) / n
// with n = out_channels * factor / C (each input channel repeated n times).
// first_chunk drops the first ft - 1 frames (the decoder's first latent
// frame gives one video frame).
at::Tensor DupUp3D(const at::Tensor& x, int64_t out_channels, int64_t factor_t, int64_t factor_s,
                   bool first_chunk);

}  // namespace wan_vae
}  // namespace rainserve
