// Fused element-wise kernels of a DiT block (declared in fused_ops.h):
// LayerNorm + modulation/affine, RMSNorm (+ RoPE), gated residual.
//
// One layout serves all three. A CTA owns whole rows of one batch element
// and walks them (grid-stride over tokens, kRowsPerStep rows per step, so
// that two rows' loads are in flight together and share one block
// reduction). Each thread owns kSlots 16-byte vectors (8 channels) of a row,
// at vector indices threadIdx.x + k * blockDim.x, so consecutive threads read
// consecutive 16 bytes. The fp32 per-batch vectors of a thread's channels
// (modulation, weight, gate) are read once per CTA into registers. The grid
// is one wave (occupancy x SMs), split over the batch.
#include "pipelines/cuda/fused_ops.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <type_traits>

namespace rainserve::pipelines::cuda {
namespace {

constexpr int kVec = 8;           // 16-bit elements per 16-byte vector
constexpr int kMaxThreads = 512;  // per CTA; up to 2 vectors per thread
// Two rows per step: 4 rows per step with one barrier per reduction was
// slower on an H200 (LayerNorm at W1: 235 vs 182 us; fewer resident CTAs).
constexpr int kRowsPerStep = 2;
static_assert(kMaxChannels == 2 * kMaxThreads * kVec, "kMaxChannels is 2 vectors per thread");

// bf16 / fp16 pairs <-> float2, one conversion instruction each way.
template <typename T>
struct Packed;
template <>
struct Packed<__nv_bfloat16> {
  using Pair = __nv_bfloat162;
  static __device__ __forceinline__ float2 ToFloat2(Pair v) { return __bfloat1622float2(v); }
  static __device__ __forceinline__ Pair FromFloats(float a, float b) {
    return __floats2bfloat162_rn(a, b);
  }
};
template <>
struct Packed<__half> {
  using Pair = __half2;
  static __device__ __forceinline__ float2 ToFloat2(Pair v) { return __half22float2(v); }
  static __device__ __forceinline__ Pair FromFloats(float a, float b) {
    return __floats2half2_rn(a, b);
  }
};

// 8 consecutive elements (16 bytes, aligned) widened to fp32.
template <typename T>
__device__ __forceinline__ void LoadVec(const T* src, float (&v)[kVec]) {
  using P = Packed<T>;
  const uint4 raw = *reinterpret_cast<const uint4*>(src);
  const auto* pairs = reinterpret_cast<const typename P::Pair*>(&raw);
#pragma unroll
  for (int i = 0; i < kVec / 2; ++i) {
    const float2 f = P::ToFloat2(pairs[i]);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}

// 8 fp32 values rounded to nearest even and stored as one 16-byte vector.
template <typename T>
__device__ __forceinline__ void StoreVec(T* dst, const float (&v)[kVec]) {
  using P = Packed<T>;
  uint4 raw;
  auto* pairs = reinterpret_cast<typename P::Pair*>(&raw);
#pragma unroll
  for (int i = 0; i < kVec / 2; ++i) pairs[i] = P::FromFloats(v[2 * i], v[2 * i + 1]);
  *reinterpret_cast<uint4*>(dst) = raw;
}

// 8 fp32 values of a per-batch vector (no alignment needed: read once per CTA).
__device__ __forceinline__ void LoadFloats(const float* src, float (&v)[kVec]) {
#pragma unroll
  for (int i = 0; i < kVec; ++i) v[i] = src[i];
}

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sums each of the kRowsPerStep values over the CTA; every thread gets the
// totals, added in the same order. red: shared [kRowsPerStep][32].
__device__ __forceinline__ void BlockSum(float (&v)[kRowsPerStep], float (*red)[32]) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
#pragma unroll
  for (int r = 0; r < kRowsPerStep; ++r) v[r] = WarpSum(v[r]);
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < kRowsPerStep; ++r) red[r][warp] = v[r];
  }
  __syncthreads();
#pragma unroll
  for (int r = 0; r < kRowsPerStep; ++r) {
    float total = 0.0f;
    for (int w = 0; w < warps; ++w) total += red[r][w];
    v[r] = total;
  }
  __syncthreads();  // red is free for the next call
}

// The vector index of slot k of this thread.
__device__ __forceinline__ int SlotVec(int k) { return threadIdx.x + k * blockDim.x; }

template <typename T, int kSlots>
__global__ void __launch_bounds__(kMaxThreads) LayerNormKernel(const LayerNormParams p) {
  __shared__ float red[kRowsPerStep][32];
  const int64_t C = p.channels, b = blockIdx.y;
  const int vecs = static_cast<int>(C / kVec);
  // scale, shift: this thread's channels of batch b, fp32.
  float scale[kSlots][kVec], shift[kSlots][kVec];
#pragma unroll
  for (int k = 0; k < kSlots; ++k) {
    const int v = SlotVec(k);
    if (v >= vecs) continue;
    LoadFloats(p.scale.data + b * p.scale.batch_stride + v * kVec, scale[k]);
    LoadFloats(p.shift.data + b * p.shift.batch_stride + v * kVec, shift[k]);
#pragma unroll
    for (int i = 0; i < kVec; ++i) scale[k][i] += p.scale_offset;
  }
  // x, y: [N, C] rows of batch b.
  const T* x = static_cast<const T*>(p.x) + b * p.tokens * C;
  T* y = static_cast<T*>(p.y) + b * p.tokens * C;
  const float inv_c = 1.0f / static_cast<float>(C);
  for (int64_t n0 = int64_t{blockIdx.x} * kRowsPerStep; n0 < p.tokens;
       n0 += int64_t{gridDim.x} * kRowsPerStep) {
    float val[kRowsPerStep][kSlots][kVec];
    float sum[kRowsPerStep], m2[kRowsPerStep], mean[kRowsPerStep];
#pragma unroll
    for (int r = 0; r < kRowsPerStep; ++r) {
      sum[r] = 0.0f;
#pragma unroll
      for (int k = 0; k < kSlots; ++k) {
        const int v = SlotVec(k);
        if (v >= vecs || n0 + r >= p.tokens) continue;
        LoadVec(x + (n0 + r) * C + v * kVec, val[r][k]);
#pragma unroll
        for (int i = 0; i < kVec; ++i) sum[r] += val[r][k][i];
      }
    }
    BlockSum(sum, red);
    // Two-pass variance from the registers: no E[x^2] - mean^2 cancellation.
#pragma unroll
    for (int r = 0; r < kRowsPerStep; ++r) {
      mean[r] = sum[r] * inv_c;
      m2[r] = 0.0f;
#pragma unroll
      for (int k = 0; k < kSlots; ++k) {
        if (SlotVec(k) >= vecs || n0 + r >= p.tokens) continue;
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          const float d = val[r][k][i] - mean[r];
          m2[r] += d * d;
        }
      }
    }
    BlockSum(m2, red);
#pragma unroll
    for (int r = 0; r < kRowsPerStep; ++r) {
      const float rstd = rsqrtf(m2[r] * inv_c + p.eps);
#pragma unroll
      for (int k = 0; k < kSlots; ++k) {
        const int v = SlotVec(k);
        if (v >= vecs || n0 + r >= p.tokens) continue;
        float out[kVec];
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
          out[i] = (val[r][k][i] - mean[r]) * rstd * scale[k][i] + shift[k][i];
        }
        StoreVec(y + (n0 + r) * C + v * kVec, out);
      }
    }
  }
}

template <typename T, int kSlots, bool kRope>
__global__ void __launch_bounds__(kMaxThreads) RmsNormRopeKernel(const RmsNormRopeParams p) {
  __shared__ float red[kRowsPerStep][32];
  const int64_t D = p.head_dim, C = p.heads * D, half = D / 2, b = blockIdx.y;
  const int vecs = static_cast<int>(C / kVec);
  // weight: this thread's channels, fp32; pair: the RoPE pair index (< D/2)
  // of each of its 4 interleaved pairs per vector (a vector may span heads).
  float weight[kSlots][kVec];
  int pair[kSlots][kVec / 2];
#pragma unroll
  for (int k = 0; k < kSlots; ++k) {
    const int v = SlotVec(k);
    if (v >= vecs) continue;
    LoadFloats(p.weight + v * kVec, weight[k]);
#pragma unroll
    for (int j = 0; j < kVec / 2; ++j) pair[k][j] = static_cast<int>(((v * kVec + 2 * j) % D) / 2);
  }
  // x, y: [N, C] rows of batch b.
  const T* x = static_cast<const T*>(p.x) + b * p.tokens * C;
  T* y = static_cast<T*>(p.y) + b * p.tokens * C;
  const float inv_c = 1.0f / static_cast<float>(C);
  for (int64_t n0 = int64_t{blockIdx.x} * kRowsPerStep; n0 < p.tokens;
       n0 += int64_t{gridDim.x} * kRowsPerStep) {
    float val[kRowsPerStep][kSlots][kVec];
    float ss[kRowsPerStep];
#pragma unroll
    for (int r = 0; r < kRowsPerStep; ++r) {
      ss[r] = 0.0f;
#pragma unroll
      for (int k = 0; k < kSlots; ++k) {
        const int v = SlotVec(k);
        if (v >= vecs || n0 + r >= p.tokens) continue;
        LoadVec(x + (n0 + r) * C + v * kVec, val[r][k]);
#pragma unroll
        for (int i = 0; i < kVec; ++i) ss[r] += val[r][k][i] * val[r][k][i];
      }
    }
    BlockSum(ss, red);
#pragma unroll
    for (int r = 0; r < kRowsPerStep; ++r) {
      const int64_t n = n0 + r;
      const float rms = rsqrtf(ss[r] * inv_c + p.eps);
      // cos, sin: [D/2] fp32 of token n.
      const float* cos = kRope ? p.cos + n * half : nullptr;
      const float* sin = kRope ? p.sin + n * half : nullptr;
#pragma unroll
      for (int k = 0; k < kSlots; ++k) {
        const int v = SlotVec(k);
        if (v >= vecs || n >= p.tokens) continue;
        float out[kVec];
#pragma unroll
        for (int i = 0; i < kVec; ++i) out[i] = val[r][k][i] * rms * weight[k][i];
        if (kRope) {
#pragma unroll
          for (int j = 0; j < kVec / 2; ++j) {
            const float c = __ldg(cos + pair[k][j]), s = __ldg(sin + pair[k][j]);
            const float x1 = out[2 * j], x2 = out[2 * j + 1];
            out[2 * j] = x1 * c - x2 * s;
            out[2 * j + 1] = x1 * s + x2 * c;
          }
        }
        StoreVec(y + n * C + v * kVec, out);
      }
    }
  }
}

template <typename T, int kSlots>
__global__ void __launch_bounds__(kMaxThreads) GatedResidualKernel(const GatedResidualParams p) {
  const int64_t C = p.channels, b = blockIdx.y;
  const int vecs = static_cast<int>(C / kVec);
  // gate: this thread's channels of batch b, fp32.
  float gate[kSlots][kVec];
#pragma unroll
  for (int k = 0; k < kSlots; ++k) {
    const int v = SlotVec(k);
    if (v < vecs) LoadFloats(p.gate.data + b * p.gate.batch_stride + v * kVec, gate[k]);
  }
  // x, y, out: [N, C] rows of batch b.
  const T* x = static_cast<const T*>(p.x) + b * p.tokens * C;
  const T* y = static_cast<const T*>(p.y) + b * p.tokens * C;
  T* out = static_cast<T*>(p.out) + b * p.tokens * C;
  for (int64_t n0 = int64_t{blockIdx.x} * kRowsPerStep; n0 < p.tokens;
       n0 += int64_t{gridDim.x} * kRowsPerStep) {
    float xv[kRowsPerStep][kSlots][kVec], yv[kRowsPerStep][kSlots][kVec];
#pragma unroll
    for (int r = 0; r < kRowsPerStep; ++r) {
#pragma unroll
      for (int k = 0; k < kSlots; ++k) {
        const int v = SlotVec(k);
        if (v >= vecs || n0 + r >= p.tokens) continue;
        LoadVec(x + (n0 + r) * C + v * kVec, xv[r][k]);
        LoadVec(y + (n0 + r) * C + v * kVec, yv[r][k]);
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsPerStep; ++r) {
#pragma unroll
      for (int k = 0; k < kSlots; ++k) {
        const int v = SlotVec(k);
        if (v >= vecs || n0 + r >= p.tokens) continue;
        float o[kVec];
#pragma unroll
        for (int i = 0; i < kVec; ++i) o[i] = xv[r][k][i] + yv[r][k][i] * gate[k][i];
        StoreVec(out + (n0 + r) * C + v * kVec, o);
      }
    }
  }
}

Status FromCuda(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return OkStatus();
  return InternalError(std::string(what) + ": " + cudaGetErrorString(err));
}

// Threads per CTA and vectors per thread for rows of `channels`.
struct RowShape {
  int slots = 1;
  int threads = 32;
};

RowShape ShapeFor(int64_t channels) {
  const int vecs = static_cast<int>(channels / kVec);
  RowShape s;
  s.slots = vecs > kMaxThreads ? 2 : 1;
  const int per_slot = (vecs + s.slots - 1) / s.slots;
  s.threads = (per_slot + 31) / 32 * 32;
  return s;
}

// What every launcher checks before its dispatch.
Status CheckRows(const char* op, int64_t batch, int64_t tokens, int64_t channels,
                 std::initializer_list<const void*> rows) {
  if (batch < 0 || batch > 65535 || tokens < 0) {
    return InvalidArgumentError(std::string(op) + ": batch must be in [0, 65535] and tokens >= 0");
  }
  if (!SupportsRows(channels, rows)) {
    return InvalidArgumentError(std::string(op) + ": rows of " + std::to_string(channels) +
                                " channels must be a multiple of 8 up to " +
                                std::to_string(kMaxChannels) + ", 16-byte aligned");
  }
  return OkStatus();
}

template <typename T>
struct TypeTag {
  using Type = T;
};

// The one place where the runtime dtype and row width become template
// arguments: calls launch(TypeTag<element>{}, integral_constant<slots>{}).
template <typename Launch>
Status Dispatch(DType dtype, int slots, Launch&& launch) {
  auto with_slots = [&](auto tag) -> Status {
    if (slots == 1) return launch(tag, std::integral_constant<int, 1>{});
    return launch(tag, std::integral_constant<int, 2>{});
  };
  switch (dtype) {
    case DType::kBFloat16: return with_slots(TypeTag<__nv_bfloat16>{});
    case DType::kFloat16: return with_slots(TypeTag<__half>{});
    default:
      return InvalidArgumentError(
          std::string("fused ops: dtype must be bfloat16 or float16, got ") +
          attention::DTypeName(dtype));
  }
}

// Launches `kernel` over [batch, tokens] rows with one wave of CTAs: the
// kernel's occupancy times the SM count, split over the batch, at most one
// CTA per kRowsPerStep tokens.
template <typename Params>
Status LaunchRows(void (*kernel)(Params), const Params& p, int threads, int64_t batch,
                  int64_t tokens, void* stream, const char* what) {
  int device = 0, sms = 0, per_sm = 0;
  RAINSERVE_RETURN_IF_ERROR(FromCuda(cudaGetDevice(&device), what));
  RAINSERVE_RETURN_IF_ERROR(
      FromCuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), what));
  RAINSERVE_RETURN_IF_ERROR(
      FromCuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0), what));
  const int64_t wave = int64_t{sms} * std::max(per_sm, 1);
  const int64_t per_batch = std::max<int64_t>(1, (wave + batch - 1) / batch);
  const int64_t row_steps = (tokens + kRowsPerStep - 1) / kRowsPerStep;
  const dim3 grid(static_cast<unsigned>(std::min(per_batch, row_steps)),
                  static_cast<unsigned>(batch));
  kernel<<<grid, threads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return FromCuda(cudaGetLastError(), what);
}

}  // namespace

Status LaunchLayerNorm(const LayerNormParams& p, void* stream) {
  RAINSERVE_RETURN_IF_ERROR(CheckRows("layer norm", p.batch, p.tokens, p.channels, {p.x, p.y}));
  if (p.scale.data == nullptr || p.shift.data == nullptr) {
    return InvalidArgumentError("layer norm: scale and shift are required");
  }
  if (p.batch == 0 || p.tokens == 0) return OkStatus();
  const RowShape shape = ShapeFor(p.channels);
  return Dispatch(p.dtype, shape.slots, [&](auto tag, auto slots) {
    using T = typename decltype(tag)::Type;
    return LaunchRows(&LayerNormKernel<T, decltype(slots)::value>, p, shape.threads, p.batch,
                      p.tokens, stream, "layer norm launch");
  });
}

Status LaunchRmsNormRope(const RmsNormRopeParams& p, void* stream) {
  const int64_t C = p.heads * p.head_dim;
  RAINSERVE_RETURN_IF_ERROR(CheckRows("rms norm", p.batch, p.tokens, C, {p.x, p.y}));
  if (p.heads <= 0 || p.head_dim <= 0 || p.head_dim % 2 != 0 || p.weight == nullptr ||
      (p.cos == nullptr) != (p.sin == nullptr)) {
    return InvalidArgumentError(
        "rms norm: heads > 0, an even head_dim, a weight, and both or neither of cos and sin");
  }
  if (p.batch == 0 || p.tokens == 0) return OkStatus();
  const RowShape shape = ShapeFor(C);
  return Dispatch(p.dtype, shape.slots, [&](auto tag, auto slots) {
    using T = typename decltype(tag)::Type;
    constexpr int kSlots = decltype(slots)::value;
    return p.cos != nullptr
               ? LaunchRows(&RmsNormRopeKernel<T, kSlots, true>, p, shape.threads, p.batch,
                            p.tokens, stream, "rms norm + rope launch")
               : LaunchRows(&RmsNormRopeKernel<T, kSlots, false>, p, shape.threads, p.batch,
                            p.tokens, stream, "rms norm launch");
  });
}

Status LaunchGatedResidual(const GatedResidualParams& p, void* stream) {
  RAINSERVE_RETURN_IF_ERROR(
      CheckRows("gated residual", p.batch, p.tokens, p.channels, {p.x, p.y, p.out}));
  if (p.gate.data == nullptr) return InvalidArgumentError("gated residual: gate is required");
  if (p.batch == 0 || p.tokens == 0) return OkStatus();
  const RowShape shape = ShapeFor(p.channels);
  return Dispatch(p.dtype, shape.slots, [&](auto tag, auto slots) {
    using T = typename decltype(tag)::Type;
    return LaunchRows(&GatedResidualKernel<T, decltype(slots)::value>, p, shape.threads, p.batch,
                      p.tokens, stream, "gated residual launch");
  });
}

}  // namespace rainserve::pipelines::cuda
