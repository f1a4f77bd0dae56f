// FP8 (e4m3) linear layers on Hopper: per-row quantization of 16-bit rows
// (activations per token, weights per output channel) and the cuBLASLt FP8
// GEMM with per-row x per-column fp32 scales, bf16 output and bias
// (pipelines/wan/wan_fp8.h is the ATen adapter and the only caller;
// docs/wan.md, "FP8 linear layers").
//
// Torch-free: raw device pointers, sizes in elements, a cudaStream_t passed as
// void*. FP8 data is stored as bytes (the e4m3 bit pattern). A row's scale is
// amax / 448 (e4m3's largest finite value), 1 for an all-zero row, so that
// row * (1 / scale) rounded to e4m3 (nearest even, saturating) is the
// quantized row and q * scale its dequantized value.
#pragma once

#include <cstdint>

#include "attention/types.h"
#include "common/status.h"

namespace rainserve::pipelines::cuda {

using attention::DType;

constexpr float kFp8E4m3Max = 448.0f;

// q = e4m3(f(x) / scale) per row, scale = amax(f(x)) / 448 over the row
// (1 when the row is all zero), f = GELU(tanh) when gelu_tanh is set, else
// the identity. Rows of any length; 16-byte aligned rows whose length is a
// multiple of 8 take a vectorised path.
struct QuantizeRowsParams {
  const void* x = nullptr;  // x: [rows, cols] bf16/fp16, contiguous
  void* q = nullptr;        // q: [rows, cols] e4m3 bytes
  float* scale = nullptr;   // scale: [rows] fp32
  int64_t rows = 0, cols = 0;
  bool gelu_tanh = false;
  DType dtype = DType::kBFloat16;
};
Status LaunchQuantizeRows(const QuantizeRowsParams& p, void* stream);

// How Fp8Gemm applied the scales.
enum class Fp8GemmPath {
  // cuBLASLt applies both scale vectors (CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F)
  // and the bias in its epilogue: one kernel.
  kOuterVectorScales,
  // cuBLASLt refused outer-vector scales for this shape: an unscaled FP8
  // GEMM writing bf16, then one kernel applying row x column scales + bias.
  kScaleKernel,
};
const char* Fp8GemmPathName(Fp8GemmPath path);

// y = (xq * x_scale[row]) (wq * w_scale[col])^T + bias, fp32 accumulation,
// y rounded to bf16. Hopper's FP8 GEMM needs both operands K-major (the
// "TN" layout, which row-major [M, K] x [N, K] is) and K, N multiples of 16;
// tokens (M) are free. INVALID_ARGUMENT for other sizes; INTERNAL with
// cuBLASLt's status name and the shape when a call fails.
struct Fp8GemmParams {
  const void* x = nullptr;         // x: [m, k] e4m3 bytes, row-major (tokens)
  const float* x_scale = nullptr;  // x_scale: [m] fp32
  const void* w = nullptr;         // w: [n, k] e4m3 bytes, row-major (out features)
  const float* w_scale = nullptr;  // w_scale: [n] fp32
  const void* bias = nullptr;      // bias: [n] bf16, or null
  void* y = nullptr;               // y: [m, n] bf16, row-major
  int64_t m = 0, n = 0, k = 0;
  bool scale_kernel = false;  // run the kScaleKernel path without trying the other (tests)
  // cuBLASLt's FP8 fast accumulation (CUBLASLT_MATMUL_DESC_FAST_ACCUM): no
  // periodic promotion of the partial sums to fp32; faster, less accurate.
  // Off in the model; the benchmark measures it.
  bool fast_accum = false;
};
// `path`, when set, receives the path that ran.
Status Fp8Gemm(const Fp8GemmParams& p, void* stream, Fp8GemmPath* path = nullptr);

}  // namespace rainserve::pipelines::cuda
