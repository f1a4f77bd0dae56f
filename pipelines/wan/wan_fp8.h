// FP8 (e4m3) linear layers of the Wan transformer on Hopper
// (models[].linear_precision: fp8): the block linears' weights quantized once
// at load with one fp32 scale per output channel, activations quantized per
// token (wan_ops::QuantizeRows, or inside the fused norms that produce them),
// and the GEMM through cuBLASLt's FP8 path with both scale vectors and the
// bias applied in one call (pipelines/wan/cuda/fp8_linear.h; docs/wan.md,
// "FP8 linear layers").
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "common/status.h"
#include "pipelines/wan/wan_ops.h"
#include "pipelines/wan/wan_weights.h"

namespace rainserve {

// True for the parameters that linear_precision fp8 quantizes: the weights
// of every block's self- and cross-attention projections (q, k, v, out, and
// the image key/value projections) and of its feed-forward layers.
bool WanFp8Linear(const std::string& name);

// Quantizes the WanFp8Linear weights of `params` in place: "<layer>.weight"
// becomes the [out, in] uint8 e4m3 tensor and "<layer>.weight_scale" [out]
// fp32 is added after it; everything else is unchanged. Each weight is
// quantized on `compute` (a CUDA device) and stored back on its own device,
// one layer at a time, so the bf16 weights are released as they go.
// INVALID_ARGUMENT naming linear_precision when a weight is not bf16 or its
// sizes are not multiples of 16.
Status QuantizeWanLinears(at::Device compute, NamedTensors* params);

// How Fp8Linear runs its GEMM; the defaults are the model's.
struct Fp8LinearOptions {
  bool scale_kernel = false;  // force the fallback path (unscaled GEMM + scale kernel): tests
  bool fast_accum = false;    // cuBLASLt's FP8 fast accumulation: benchmarks
};

// y = x W^T + b for an FP8 layer (l.fp8()) and x's quantized rows
// [M, in]: [M, out] bf16, on x's device; written into `out` when it is
// defined ([M, out] bf16 contiguous, e.g. a row range of a larger output).
StatusOr<at::Tensor> Fp8Linear(const wan_ops::Fp8Rows& x, const WanLinear& l,
                               const Fp8LinearOptions& options = {}, at::Tensor out = {});

// Which way the FP8 GEMMs of this process apply their scales
// ("outer-vector-scales", "scale-kernel"), or "none" before the first one.
std::string Fp8GemmPathUsed();

}  // namespace rainserve
