// Device helpers shared by the kernels that write e4m3 rows (fp8_linear.cu,
// fused_ops.cu): the row scale rule and the conversion, in one place so that
// every writer quantizes a row to the same bytes.
#pragma once

#include <cuda_fp8.h>

#include <cstdint>

#include "pipelines/wan/cuda/fp8_linear.h"

namespace rainserve::pipelines::cuda {

// A row's scale: amax / 448, or 1 for an all-zero row.
__device__ __forceinline__ float Fp8RowScale(float amax) {
  return amax > 0.0f ? amax / kFp8E4m3Max : 1.0f;
}

// x * inv_scale rounded to e4m3 (nearest even, saturating at +-448).
__device__ __forceinline__ uint8_t ToFp8(float x, float inv_scale) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(x * inv_scale, __NV_SATFINITE, __NV_E4M3));
}

// 8 values -> 8 e4m3 bytes in one 8-byte word.
__device__ __forceinline__ uint2 ToFp8x8(const float (&v)[8], float inv_scale) {
  uint32_t w[2] = {0u, 0u};
#pragma unroll
  for (int i = 0; i < 8; ++i) w[i / 4] |= uint32_t{ToFp8(v[i], inv_scale)} << (8 * (i % 4));
  return make_uint2(w[0], w[1]);
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

}  // namespace rainserve::pipelines::cuda
