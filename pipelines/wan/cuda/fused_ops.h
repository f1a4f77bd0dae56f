// Fused element-wise kernels of a DiT block on the GPU: LayerNorm with
// modulation or affine, RMSNorm across heads with optional RoPE, and the
// gated residual. Each reads its 16-bit activations once and writes them once,
// with fp32 math in between (pipelines/wan/wan_ops.h is the ATen reference and
// the only caller; docs/wan.md, "Fused element-wise ops").
//
// Torch-free: raw device pointers, sizes in elements, a cudaStream_t passed as
// void*. Activations are contiguous rows of `channels` 16-bit elements
// (bf16/fp16), 16-byte aligned; per-batch vectors are fp32. Launchers return
// INVALID_ARGUMENT for inputs SupportsRows() refuses and INTERNAL with CUDA's
// message when a launch fails; the adapter validated everything else.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "attention/types.h"
#include "common/status.h"

namespace rainserve::pipelines::cuda {

using attention::DType;

// Widest row the kernels take (16 KB of 16-bit elements).
constexpr int64_t kMaxChannels = 8192;

// True when rows of `channels` 16-bit elements at `pointers` fit the kernels:
// channels a multiple of 8 up to kMaxChannels, every pointer 16-byte aligned.
inline bool SupportsRows(int64_t channels, std::initializer_list<const void*> pointers) {
  if (channels <= 0 || channels % 8 != 0 || channels > kMaxChannels) return false;
  for (const void* p : pointers) {
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  }
  return true;
}

// An fp32 vector per batch element: element c of batch b is
// data[b * batch_stride + c]; batch_stride 0 broadcasts one [C] vector. The
// kernels read it 16 bytes at a time: data 16-byte aligned, batch_stride a
// multiple of 4 (launchers refuse anything else).
struct BatchVector {
  const float* data = nullptr;
  int64_t batch_stride = 0;
};

// y = LayerNorm(s) * (scale_offset + scale) + shift over the channels, with
// the biased variance and fp32 statistics. scale_offset is 1 for DiT
// modulation (LN(s) * (1 + scale) + shift) and 0 for an affine LayerNorm.
// s is x, or, when `branch` is set, the residual sum x + branch * gate
// (x + branch without a gate) rounded to x's dtype and also written to `sum`,
// so a residual and the norm after it read the stream once. When `q` is set,
// y's rows (as rounded to x's dtype) are also written quantized to e4m3 with
// a per-row scale (fp8_linear.h's rule): the input of an FP8 linear layer.
struct LayerNormParams {
  const void* x = nullptr;  // x: [B, N, C] bf16/fp16
  void* y = nullptr;        // y: [B, N, C], dtype of x (may alias x)
  BatchVector scale;        // scale: [B, C] or [C] fp32, required
  BatchVector shift;        // shift: [B, C] or [C] fp32, required
  const void* branch = nullptr;  // branch: [B, N, C], dtype of x, or null
  BatchVector gate;              // gate: [B, C] or [C] fp32, or null (1)
  void* sum = nullptr;           // sum: [B, N, C], dtype of x; set with branch
  void* q = nullptr;             // q: [B * N, C] e4m3 bytes, or null
  float* q_scale = nullptr;      // q_scale: [B * N] fp32; set with q
  float scale_offset = 0.0f;
  float eps = 1e-6f;
  int64_t batch = 0, tokens = 0, channels = 0;
  DType dtype = DType::kBFloat16;
};
Status LaunchLayerNorm(const LayerNormParams& p, void* stream);

// y = RMSNorm(x) * weight over all heads together (C = heads * head_dim),
// then, when cos and sin are set, RoPE on interleaved pairs of each head:
//   (y[2i], y[2i+1]) -> (y[2i] c - y[2i+1] s, y[2i] s + y[2i+1] c),
//   c = cos[n, i], s = sin[n, i] for token n and pair i < head_dim / 2.
struct RmsNormRopeParams {
  const void* x = nullptr;      // x: [B, N, C] bf16/fp16
  void* y = nullptr;            // y: [B, N, H, D] = [B, N, C], dtype of x (may alias x)
  const float* weight = nullptr;  // weight: [C] fp32
  const float* cos = nullptr;   // cos: [N, D/2] fp32, or null for no RoPE
  const float* sin = nullptr;   // sin: [N, D/2] fp32, null exactly when cos is
  float eps = 1e-6f;
  int64_t batch = 0, tokens = 0, heads = 0, head_dim = 0;  // head_dim even
  DType dtype = DType::kBFloat16;
};
Status LaunchRmsNormRope(const RmsNormRopeParams& p, void* stream);

// out = x + y * gate in fp32, stored in the dtype of x.
struct GatedResidualParams {
  const void* x = nullptr;  // x: [B, N, C] bf16/fp16
  const void* y = nullptr;  // y: [B, N, C], dtype of x
  void* out = nullptr;      // out: [B, N, C], dtype of x (may alias x)
  BatchVector gate;         // gate: [B, C] or [C] fp32
  int64_t batch = 0, tokens = 0, channels = 0;
  DType dtype = DType::kBFloat16;
};
Status LaunchGatedResidual(const GatedResidualParams& p, void* stream);

}  // namespace rainserve::pipelines::cuda
