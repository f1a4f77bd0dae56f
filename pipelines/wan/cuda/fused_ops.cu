// Fused element-wise kernels of a DiT block (declared in fused_ops.h):
// LayerNorm + modulation/affine (optionally after a gated residual, and
// optionally also writing its output rows in e4m3 for an FP8 linear layer),
// RMSNorm (+ RoPE), gated residual.
//
// The norms: a warp owns a whole row. A CTA of `warps` warps serves one batch
// element (blockIdx.y); warp w walks the rows blockIdx.x * warps + w,
// stepping by gridDim.x * warps. Lane l owns the 16-byte vectors (8
// channels) l + 32 j of its row: it copies them into the warp's slot of
// shared memory with cp.async (all of a row's loads in flight at once, no
// registers held), then makes its passes (sum, variance, output) over its own
// vectors there, so every reduction is a warp shuffle and nothing needs a
// CTA barrier. (Block reductions over a CTA's one or two rows need two
// barriers per LayerNorm row, which hold them to about half of what a copy
// reaches; a row kept in registers makes ptxas hoist every load of a wide row
// and spill.) The fp32 per-channel
// vectors (modulation, weights, gate) are re-read per row with 16-byte loads
// that hit L1. The gated residual has no reduction: a flat loop over the
// vectors of a batch element. Grids are one wave (occupancy x SMs), split
// over the batch.
#include "pipelines/wan/cuda/fused_ops.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>

#include "pipelines/wan/cuda/element_io.cuh"
#include "pipelines/wan/cuda/fp8_quant.cuh"

namespace rainserve::pipelines::cuda {
namespace {

constexpr int kMaxWarps = 8;   // rows in flight per CTA, one per warp
// Shared memory a CTA of a norm kernel may stage rows in: 8 warps of 1536-
// channel rows (Wan 1.3B) need 24 KB (48 KB with a residual); wider rows get
// fewer warps per CTA.
constexpr int kStageBytes = 64 * 1024;
// Four CTAs per SM (64 registers a thread): without a bound ptxas picked 48
// registers and spilt for one variant.
constexpr int kMinNormCtas = 4;
constexpr int kFlatThreads = 256;  // gated residual

// 8 fp32 values from 16-byte aligned memory that stays in cache.
__device__ __forceinline__ void LoadFloats(const float* src, float (&v)[kVec]) {
  const float4 a = __ldg(reinterpret_cast<const float4*>(src));
  const float4 b = __ldg(reinterpret_cast<const float4*>(src) + 1);
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
  v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Batch b's row of a per-channel vector, or null for an absent one.
__device__ __forceinline__ const float* BatchRow(const BatchVector& v, int64_t b) {
  return v.data == nullptr ? nullptr : v.data + b * v.batch_stride;
}

// x + y * gate for one vector in fp32 (gate null: x + y), rounded to T.
template <typename T>
__device__ __forceinline__ uint4 AddGated(const uint4& x, const uint4& y, const float* gate) {
  float a[kVec], b[kVec];
  Widen<T>(x, a);
  Widen<T>(y, b);
  if (gate != nullptr) {
    float g[kVec];
    LoadFloats(gate, g);
#pragma unroll
    for (int i = 0; i < kVec; ++i) a[i] += b[i] * g[i];
  } else {
#pragma unroll
    for (int i = 0; i < kVec; ++i) a[i] += b[i];
  }
  return Narrow<T>(a);
}

// The rows of one batch element this warp owns, and the row vectors of this
// lane: v = lane, lane + 32, ... < vecs.
struct RowWalk {
  int64_t tokens, channels;
  int vecs, warp, lane, warps;

  __device__ RowWalk(int64_t tokens_, int64_t channels_)
      : tokens(tokens_),
        channels(channels_),
        vecs(static_cast<int>(channels_ / kVec)),
        warp(static_cast<int>(threadIdx.x / 32)),
        lane(static_cast<int>(threadIdx.x % 32)),
        warps(static_cast<int>(blockDim.x / 32)) {}
  __device__ int64_t First() const { return int64_t{blockIdx.x} * warps + warp; }
  __device__ int64_t Step() const { return int64_t{gridDim.x} * warps; }
  // This warp's slot for `rows` staged rows in the CTA's shared memory.
  __device__ uint4* Slot(uint4* stage, int rows) const { return stage + warp * rows * vecs; }
};

// Starts copying this lane's vectors of `row` into `slot` (cp.async, 16 bytes
// each); WaitStaged() waits for all of them. A lane only ever reads back the
// vectors it copied itself, so no warp barrier is needed either way.
template <typename T>
__device__ __forceinline__ void StageRow(const RowWalk& w, uint4* slot, const T* row) {
  const auto* src = reinterpret_cast<const uint4*>(row);
  for (int v = w.lane; v < w.vecs; v += 32) {
    const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(slot + v));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src + v));
  }
}
__device__ __forceinline__ void WaitStaged() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// Writes the row staged in `ys` (this lane's vectors, already in T) as e4m3
// with its scale (fp8_quant.cuh's rule); `amax` is this lane's part.
template <typename T>
__device__ __forceinline__ void QuantizeStagedRow(const RowWalk& w, const uint4* ys, float amax,
                                                  uint8_t* q, float* q_scale) {
  const float scale = Fp8RowScale(WarpMax(amax));
  const float inv = 1.0f / scale;
  auto* out = reinterpret_cast<uint2*>(q);
  for (int v = w.lane; v < w.vecs; v += 32) {
    float a[kVec];
    Widen<T>(ys[v], a);
    out[v] = ToFp8x8(a, inv);
  }
  if (w.lane == 0) *q_scale = scale;
}

template <typename T, bool kResidual, bool kQuantize>
__global__ void __launch_bounds__(kMaxWarps * 32, kMinNormCtas) LayerNormKernel(const LayerNormParams p) {
  extern __shared__ uint4 stage[];
  const RowWalk w(p.tokens, p.channels);
  const int64_t b = blockIdx.y, C = p.channels, batch_offset = b * p.tokens * C;
  const T* x = static_cast<const T*>(p.x) + batch_offset;
  T* y = static_cast<T*>(p.y) + batch_offset;
  const float* scale = BatchRow(p.scale, b);
  const float* shift = BatchRow(p.shift, b);
  const float* gate = BatchRow(p.gate, b);
  uint4* xs = w.Slot(stage, kResidual ? 2 : 1);  // the row (the residual sum)
  uint4* bs = xs + w.vecs;                        // the branch row
  const float inv_c = 1.0f / static_cast<float>(C);
  for (int64_t n = w.First(); n < p.tokens; n += w.Step()) {
    StageRow(w, xs, x + n * C);
    if constexpr (kResidual) StageRow(w, bs, static_cast<const T*>(p.branch) + batch_offset + n * C);
    WaitStaged();
    if constexpr (kResidual) {
      // s = x + branch * gate, rounded as the stream is stored, written out.
      auto* sum = reinterpret_cast<uint4*>(static_cast<T*>(p.sum) + batch_offset + n * C);
      for (int v = w.lane; v < w.vecs; v += 32) {
        xs[v] = AddGated<T>(xs[v], bs[v], gate == nullptr ? nullptr : gate + v * kVec);
        sum[v] = xs[v];
      }
    }
    float total = 0.0f;
    for (int v = w.lane; v < w.vecs; v += 32) {
      float a[kVec];
      Widen<T>(xs[v], a);
#pragma unroll
      for (int i = 0; i < kVec; ++i) total += a[i];
    }
    const float mean = WarpSum(total) * inv_c;
    // Two-pass variance: no E[x^2] - mean^2 cancellation.
    float m2 = 0.0f;
    for (int v = w.lane; v < w.vecs; v += 32) {
      float a[kVec];
      Widen<T>(xs[v], a);
#pragma unroll
      for (int i = 0; i < kVec; ++i) m2 += (a[i] - mean) * (a[i] - mean);
    }
    const float rstd = rsqrtf(WarpSum(m2) * inv_c + p.eps);
    auto* out = reinterpret_cast<uint4*>(y + n * C);
    float amax = 0.0f;  // of the rounded output, for kQuantize
    for (int v = w.lane; v < w.vecs; v += 32) {
      float a[kVec], s[kVec], t[kVec];
      Widen<T>(xs[v], a);
      LoadFloats(scale + v * kVec, s);
      LoadFloats(shift + v * kVec, t);
#pragma unroll
      for (int i = 0; i < kVec; ++i) a[i] = (a[i] - mean) * rstd * (s[i] + p.scale_offset) + t[i];
      const uint4 rounded = Narrow<T>(a);
      out[v] = rounded;
      if constexpr (kQuantize) {
        // The lane's own slot vector: nothing else reads it after this.
        xs[v] = rounded;
        Widen<T>(rounded, a);
#pragma unroll
        for (int i = 0; i < kVec; ++i) amax = fmaxf(amax, fabsf(a[i]));
      }
    }
    if constexpr (kQuantize) {
      const int64_t row = b * p.tokens + n;
      QuantizeStagedRow<T>(w, xs, amax, static_cast<uint8_t*>(p.q) + row * C, p.q_scale + row);
    }
  }
}

template <typename T, bool kRope>
__global__ void __launch_bounds__(kMaxWarps * 32, kMinNormCtas) RmsNormRopeKernel(const RmsNormRopeParams p) {
  extern __shared__ uint4 stage[];
  const int64_t D = p.head_dim, half = D / 2, C = p.heads * D;
  const RowWalk w(p.tokens, C);
  const int64_t batch_offset = int64_t{blockIdx.y} * p.tokens * C;
  const T* x = static_cast<const T*>(p.x) + batch_offset;
  T* y = static_cast<T*>(p.y) + batch_offset;
  uint4* xs = w.Slot(stage, 1);
  const float inv_c = 1.0f / static_cast<float>(C);
  // With head_dim % 8 == 0 a vector's 4 pairs are consecutive angles of one
  // head (16-byte loads of cos/sin); otherwise a vector may span two heads.
  const bool vector_angles = kRope && D % kVec == 0 &&
                             (reinterpret_cast<uintptr_t>(p.cos) |
                              reinterpret_cast<uintptr_t>(p.sin)) % 16 == 0;
  for (int64_t n = w.First(); n < p.tokens; n += w.Step()) {
    StageRow(w, xs, x + n * C);
    WaitStaged();
    float ss = 0.0f;
    for (int v = w.lane; v < w.vecs; v += 32) {
      float a[kVec];
      Widen<T>(xs[v], a);
#pragma unroll
      for (int i = 0; i < kVec; ++i) ss += a[i] * a[i];
    }
    const float rms = rsqrtf(WarpSum(ss) * inv_c + p.eps);
    auto* out = reinterpret_cast<uint4*>(y + n * C);
    for (int v = w.lane; v < w.vecs; v += 32) {
      float a[kVec], wt[kVec];
      Widen<T>(xs[v], a);
      LoadFloats(p.weight + v * kVec, wt);
#pragma unroll
      for (int i = 0; i < kVec; ++i) a[i] = a[i] * rms * wt[i];
      if constexpr (kRope) {
        // c, s: the angles of this vector's 4 pairs for token n.
        float c[kVec / 2], s[kVec / 2];
        const float* cos = p.cos + n * half;
        const float* sin = p.sin + n * half;
        if (vector_angles) {
          const int64_t first = (int64_t{v} * kVec % D) / 2;
          const float4 c4 = __ldg(reinterpret_cast<const float4*>(cos + first));
          const float4 s4 = __ldg(reinterpret_cast<const float4*>(sin + first));
          c[0] = c4.x, c[1] = c4.y, c[2] = c4.z, c[3] = c4.w;
          s[0] = s4.x, s[1] = s4.y, s[2] = s4.z, s[3] = s4.w;
        } else {
#pragma unroll
          for (int k = 0; k < kVec / 2; ++k) {
            const int64_t pair = ((int64_t{v} * kVec + 2 * k) % D) / 2;
            c[k] = __ldg(cos + pair);
            s[k] = __ldg(sin + pair);
          }
        }
#pragma unroll
        for (int k = 0; k < kVec / 2; ++k) {
          const float x1 = a[2 * k], x2 = a[2 * k + 1];
          a[2 * k] = x1 * c[k] - x2 * s[k];
          a[2 * k + 1] = x1 * s[k] + x2 * c[k];
        }
      }
      out[v] = Narrow<T>(a);
    }
  }
}

// Flat over the vectors of batch element blockIdx.y; two per thread per
// step so that four loads are in flight.
template <typename T>
__global__ void __launch_bounds__(kFlatThreads) GatedResidualKernel(const GatedResidualParams p) {
  const int64_t b = blockIdx.y, vecs = p.channels / kVec, total = p.tokens * vecs;
  const auto* x = reinterpret_cast<const uint4*>(static_cast<const T*>(p.x)) + b * total;
  const auto* y = reinterpret_cast<const uint4*>(static_cast<const T*>(p.y)) + b * total;
  auto* out = reinterpret_cast<uint4*>(static_cast<T*>(p.out)) + b * total;
  const float* gate = BatchRow(p.gate, b);
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total; i += 2 * stride) {
    const int64_t j = i + stride;
    const uint4 x0 = x[i], y0 = y[i];
    uint4 x1{}, y1{};
    if (j < total) x1 = x[j], y1 = y[j];
    out[i] = AddGated<T>(x0, y0, gate + (i % vecs) * kVec);
    if (j < total) out[j] = AddGated<T>(x1, y1, gate + (j % vecs) * kVec);
  }
}

Status FromCuda(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return OkStatus();
  return InternalError(std::string(what) + ": " + cudaGetErrorString(err));
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

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

// A per-channel fp32 vector: present (unless optional), 16-byte loads.
Status CheckVector(const char* op, const char* name, const BatchVector& v, bool optional) {
  if (v.data == nullptr) {
    return optional ? OkStatus()
                    : InvalidArgumentError(std::string(op) + ": " + name + " is required");
  }
  if (!Aligned16(v.data) || v.batch_stride % 4 != 0) {
    return InvalidArgumentError(std::string(op) + ": " + name +
                                " must be 16-byte aligned with a batch stride that is a "
                                "multiple of 4");
  }
  return OkStatus();
}

template <typename T>
struct TypeTag {
  using Type = T;
};

// The one place where the runtime dtype becomes a template argument: calls
// launch(TypeTag<element>{}).
template <typename Launch>
Status Dispatch(DType dtype, Launch&& launch) {
  switch (dtype) {
    case DType::kBFloat16: return launch(TypeTag<__nv_bfloat16>{});
    case DType::kFloat16: return launch(TypeTag<__half>{});
    default:
      return InvalidArgumentError(
          std::string("fused ops: dtype must be bfloat16 or float16, got ") +
          attention::DTypeName(dtype));
  }
}

// How many CTAs of `kernel` with `threads` and `smem` bytes one wave holds on
// the current device (occupancy x SMs). The launchers run several times in
// every block of every forward, so the runtime is asked once per (kernel,
// device, threads, smem) and the answer kept; the kernel's dynamic shared
// memory limit is raised to kStageBytes (every launch's most) at that time.
template <typename Params>
StatusOr<int64_t> WaveSize(void (*kernel)(Params), int threads, size_t smem, const char* what) {
  int device = 0;
  RAINSERVE_RETURN_IF_ERROR(FromCuda(cudaGetDevice(&device), what));
  using Key = std::tuple<uintptr_t, int, int, size_t>;
  static std::mutex mutex;
  static std::map<Key, int64_t> waves;
  const Key key{reinterpret_cast<uintptr_t>(kernel), device, threads, smem};
  {
    const std::lock_guard<std::mutex> lock(mutex);
    const auto it = waves.find(key);
    if (it != waves.end()) return it->second;
  }
  int sms = 0, per_sm = 0;
  RAINSERVE_RETURN_IF_ERROR(
      FromCuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), what));
  if (smem > 48 * 1024) {
    RAINSERVE_RETURN_IF_ERROR(FromCuda(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kStageBytes),
        what));
  }
  RAINSERVE_RETURN_IF_ERROR(FromCuda(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem), what));
  const int64_t wave = int64_t{sms} * std::max(per_sm, 1);
  const std::lock_guard<std::mutex> lock(mutex);
  waves.emplace(key, wave);
  return wave;
}

// One wave of CTAs of `threads` using `smem` bytes (at most kStageBytes),
// split over the batch, at most `max_x` CTAs per batch element.
template <typename Params>
Status LaunchWave(void (*kernel)(Params), const Params& p, int threads, size_t smem,
                  int64_t batch, int64_t max_x, void* stream, const char* what) {
  RAINSERVE_ASSIGN_OR_RETURN(const int64_t wave, WaveSize(kernel, threads, smem, what));
  const int64_t per_batch = std::max<int64_t>(1, (wave + batch - 1) / batch);
  const dim3 grid(static_cast<unsigned>(std::max<int64_t>(1, std::min(per_batch, max_x))),
                  static_cast<unsigned>(batch));
  kernel<<<grid, threads, smem, static_cast<cudaStream_t>(stream)>>>(p);
  return FromCuda(cudaGetLastError(), what);
}

// A norm kernel over [batch, tokens] rows of `channels`, `rows` of them
// staged per warp: as many warps per CTA (up to kMaxWarps) as kStageBytes
// holds, one CTA per that many tokens at most.
template <typename Params>
Status LaunchRows(void (*kernel)(Params), const Params& p, int64_t batch, int64_t tokens,
                  int64_t channels, int rows, void* stream, const char* what) {
  const size_t per_warp = static_cast<size_t>(rows * channels) * 2;
  const int warps = static_cast<int>(
      std::clamp<size_t>(kStageBytes / per_warp, 1, static_cast<size_t>(kMaxWarps)));
  return LaunchWave(kernel, p, warps * 32, warps * per_warp, batch, (tokens + warps - 1) / warps,
                    stream, what);
}

}  // namespace

Status LaunchLayerNorm(const LayerNormParams& p, void* stream) {
  const bool residual = p.branch != nullptr;
  RAINSERVE_RETURN_IF_ERROR(
      residual ? CheckRows("layer norm", p.batch, p.tokens, p.channels, {p.x, p.y, p.branch, p.sum})
               : CheckRows("layer norm", p.batch, p.tokens, p.channels, {p.x, p.y}));
  RAINSERVE_RETURN_IF_ERROR(CheckVector("layer norm", "scale", p.scale, false));
  RAINSERVE_RETURN_IF_ERROR(CheckVector("layer norm", "shift", p.shift, false));
  RAINSERVE_RETURN_IF_ERROR(CheckVector("layer norm", "gate", p.gate, true));
  if (residual && p.sum == nullptr) return InvalidArgumentError("layer norm: a branch needs a sum");
  if ((p.q == nullptr) != (p.q_scale == nullptr) ||
      reinterpret_cast<uintptr_t>(p.q) % 8 != 0) {
    return InvalidArgumentError("layer norm: q and q_scale are set together, q 8-byte aligned");
  }
  if (p.batch == 0 || p.tokens == 0) return OkStatus();
  return Dispatch(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::Type;
    const int rows = residual ? 2 : 1;
    const char* what = residual ? "residual + layer norm launch" : "layer norm launch";
    auto launch = [&](auto kernel) {
      return LaunchRows(kernel, p, p.batch, p.tokens, p.channels, rows, stream, what);
    };
    if (p.q != nullptr) {
      return residual ? launch(&LayerNormKernel<T, true, true>)
                      : launch(&LayerNormKernel<T, false, true>);
    }
    return residual ? launch(&LayerNormKernel<T, true, false>)
                    : launch(&LayerNormKernel<T, false, false>);
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
  RAINSERVE_RETURN_IF_ERROR(CheckVector("rms norm", "weight", BatchVector{p.weight, 0}, false));
  if (p.batch == 0 || p.tokens == 0) return OkStatus();
  return Dispatch(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::Type;
    return p.cos != nullptr ? LaunchRows(&RmsNormRopeKernel<T, true>, p, p.batch, p.tokens, C, 1,
                                         stream, "rms norm + rope launch")
                            : LaunchRows(&RmsNormRopeKernel<T, false>, p, p.batch, p.tokens, C,
                                         1, stream, "rms norm launch");
  });
}

Status LaunchGatedResidual(const GatedResidualParams& p, void* stream) {
  RAINSERVE_RETURN_IF_ERROR(
      CheckRows("gated residual", p.batch, p.tokens, p.channels, {p.x, p.y, p.out}));
  RAINSERVE_RETURN_IF_ERROR(CheckVector("gated residual", "gate", p.gate, false));
  if (p.batch == 0 || p.tokens == 0) return OkStatus();
  const int64_t vecs = p.tokens * (p.channels / kVec);
  return Dispatch(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::Type;
    return LaunchWave(&GatedResidualKernel<T>, p, kFlatThreads, 0, p.batch,
                      (vecs + 2 * kFlatThreads - 1) / (2 * kFlatThreads), stream,
                      "gated residual launch");
  });
}

}  // namespace rainserve::pipelines::cuda
