// 16-bit element <-> fp32 conversions of the CUDA kernels here (fused_ops.cu,
// fp8_linear.cu): 16-byte vectors of 8 bf16/fp16 elements widened to fp32 and
// narrowed back with round-to-nearest-even.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace rainserve::pipelines::cuda {

constexpr int kVec = 8;  // 16-bit elements per 16-byte vector

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

// One 16-byte vector of 8 16-bit elements, widened to fp32.
template <typename T>
__device__ __forceinline__ void Widen(const uint4& raw, float (&v)[kVec]) {
  using P = Packed<T>;
  const auto* pairs = reinterpret_cast<const typename P::Pair*>(&raw);
#pragma unroll
  for (int i = 0; i < kVec / 2; ++i) {
    const float2 f = P::ToFloat2(pairs[i]);
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}

// 8 fp32 values rounded to nearest even into one 16-byte vector.
template <typename T>
__device__ __forceinline__ uint4 Narrow(const float (&v)[kVec]) {
  using P = Packed<T>;
  uint4 raw;
  auto* pairs = reinterpret_cast<typename P::Pair*>(&raw);
#pragma unroll
  for (int i = 0; i < kVec / 2; ++i) pairs[i] = P::FromFloats(v[2 * i], v[2 * i + 1]);
  return raw;
}

// One 16-bit element widened to fp32.
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }

}  // namespace rainserve::pipelines::cuda
