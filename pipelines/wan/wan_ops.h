// The element-wise ops of a Wan DiT block with their two implementations:
// fused CUDA kernels (pipelines/wan/cuda/fused_ops.h: 16-bit activations read
// once and written once, fp32 math in registers) and the ATen fp32 ops that
// are the reference and the CPU path (numerics unchanged from the original
// WanTransformer code). WanTransformer::Forward calls these for every
// LayerNorm (with modulation or affine), every q/k RMSNorm (+ RoPE) and every
// gated residual (the residuals that a LayerNorm reads next are fused with
// it); docs/wan.md, "Fused element-wise ops", has the numbers.
//
// Dispatch: CUDA bf16/fp16 activations whose rows the kernels take
// (FusedKernelsApply) run fused unless ElementwiseImpl::kAten is asked for;
// everything else (CPU, fp32, odd widths, per-token modulation vectors) runs
// the ATen ops. Inputs are
// checked here on every path; errors are INVALID_ARGUMENT naming the op and
// the tensor; a failed kernel launch is INTERNAL.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "common/status.h"

namespace rainserve {

enum class ElementwiseImpl {
  kFused,  // fused CUDA kernels where they apply, ATen elsewhere
  kAten,   // always the ATen ops (the reference; benchmarks' baseline)
};

namespace wan_ops {

// True when ops on activations `x` ([B, N, C], contiguous) run as fused CUDA
// kernels under ElementwiseImpl::kFused: a build with CUDA LibTorch, a CUDA
// bf16/fp16 tensor, C a multiple of 8 up to 8192, 16-byte aligned data.
bool FusedKernelsApply(const at::Tensor& x);

// LayerNorm(x) * (1 + scale) + shift, the DiT modulation (norm1, norm3,
// norm_out), LayerNorm without affine and eps, in fp32; returns x's dtype.
// x: [B, N, C] contiguous; scale, shift: fp32 [B, 1, C], [B, C], [1, C] or [C]
// (views with a unit channel stride, e.g. chunks of the modulation table),
// or per token [B, N, C] (per-frame timesteps; always the ATen path).
StatusOr<at::Tensor> ModulatedLayerNorm(const at::Tensor& x, const at::Tensor& scale,
                                        const at::Tensor& shift, double eps,
                                        ElementwiseImpl impl = ElementwiseImpl::kFused);

// LayerNorm(x) * weight + bias in fp32 (norm2); returns x's dtype.
// x: [B, N, C] contiguous; weight, bias: fp32 [C].
StatusOr<at::Tensor> AffineLayerNorm(const at::Tensor& x, const at::Tensor& weight,
                                     const at::Tensor& bias, double eps,
                                     ElementwiseImpl impl = ElementwiseImpl::kFused);

// RMSNorm over the whole last dim (all heads together) times weight, in fp32,
// then, when cos and sin are defined, RoPE on the interleaved pairs
// (x[2i], x[2i+1]) of each head with the per-token angle tables.
// x: [B, N, C] contiguous, C = heads * D; weight: [C] (any float dtype);
// cos, sin: [N, D/2] fp32 contiguous, or both undefined.
// Returns [B, N, heads, D] in x's dtype. The ATen path rounds to x's dtype
// between the norm and the rotation (as the original code did); the fused
// kernel does not, so it is slightly closer to the fp32 result.
StatusOr<at::Tensor> RmsNormRope(const at::Tensor& x, const at::Tensor& weight, double eps,
                                 int64_t heads, const at::Tensor& cos, const at::Tensor& sin,
                                 ElementwiseImpl impl = ElementwiseImpl::kFused);

// x + y * gate in fp32, stored in x's dtype (the gated residuals).
// x, y: [B, N, C] contiguous, same dtype; gate: fp32 like scale above.
StatusOr<at::Tensor> GatedResidual(const at::Tensor& x, const at::Tensor& y,
                                   const at::Tensor& gate,
                                   ElementwiseImpl impl = ElementwiseImpl::kFused);

// Rows of activations quantized to FP8 e4m3 for an FP8 linear layer
// (pipelines/wan/wan_fp8.h): row r is data[r] * scale[r], scale = the row's
// amax / 448 (1 for an all-zero row).
struct Fp8Rows {
  at::Tensor data;   // [M, K] uint8 (the e4m3 bit patterns)
  at::Tensor scale;  // [M] fp32
  bool defined() const { return data.defined(); }
};

// x's rows quantized (x: [..., K] contiguous CUDA bf16/fp16, any K; M =
// x.numel() / K), after GELU(tanh) in fp32 when gelu_tanh is set (the FFN's
// hidden activations). FAILED_PRECONDITION without CUDA.
StatusOr<Fp8Rows> QuantizeRows(const at::Tensor& x, bool gelu_tanh = false);

// A residual update and the LayerNorm that reads it next, as one op: the
// fused kernel reads x and y once instead of writing the sum and reading it
// back. Results equal GatedResidual(x, y, gate) followed by the LayerNorm of
// that (rounded) sum; an undefined gate means the plain residual x + y.
// With quantize, norm_fp8 is QuantizeRows(norm), written by the fused
// kernel from the row it has in hand (the ATen path quantizes separately).
struct ResidualNorm {
  at::Tensor sum;    // x + y * gate, x's dtype: the updated residual stream
  at::Tensor norm;   // the LayerNorm of sum, x's dtype
  Fp8Rows norm_fp8;  // norm's rows in e4m3 (only with quantize)
};
StatusOr<ResidualNorm> GatedResidualModulatedLayerNorm(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate, const at::Tensor& scale,
    const at::Tensor& shift, double eps, ElementwiseImpl impl = ElementwiseImpl::kFused,
    bool quantize = false);
StatusOr<ResidualNorm> GatedResidualAffineLayerNorm(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate, const at::Tensor& weight,
    const at::Tensor& bias, double eps, ElementwiseImpl impl = ElementwiseImpl::kFused,
    bool quantize = false);

}  // namespace wan_ops
}  // namespace rainserve
