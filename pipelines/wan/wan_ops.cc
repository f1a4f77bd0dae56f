// Validation and dispatch of the Wan block's element-wise ops (wan_ops.h):
// ATen fp32 ops (the reference; the CPU path) or the fused CUDA kernels of
// pipelines/wan/cuda/fused_ops.h, which need LibTorch's CUDA build.
#include "pipelines/wan/wan_ops.h"

#include <sstream>
#include <string>
#include <utility>

#include "attention/torch_adapter.h"

#if RAINSERVE_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "pipelines/wan/cuda/fp8_linear.h"
#include "pipelines/wan/cuda/fused_ops.h"
#endif

namespace rainserve::wan_ops {
namespace {

using attention::ShapeOf;

Status Invalid(const char* op, const char* name, const std::string& what) {
  return InvalidArgumentError(std::string(op) + ": " + name + " " + what);
}

bool IsFloating16Or32(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

// x: [B, N, C] activations, contiguous, fp32/bf16/fp16.
Status CheckActivations(const char* op, const char* name, const at::Tensor& x) {
  if (!x.defined()) return Invalid(op, name, "is undefined");
  if (x.dim() != 3) return Invalid(op, name, "must be [B, N, C], got " + ShapeOf(x));
  if (!IsFloating16Or32(x.scalar_type())) {
    return Invalid(op, name, "must be float32, bfloat16 or float16, got " +
                                 std::string(c10::toString(x.scalar_type())));
  }
  if (!x.is_contiguous()) return Invalid(op, name, "must be contiguous");
  return OkStatus();
}

Status CheckDevice(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  if (t.device() != x.device()) {
    return Invalid(op, name, "must be on x's device " + x.device().str() + ", got " +
                                 t.device().str());
  }
  return OkStatus();
}

// v: an fp32 vector per batch element of x ([B, 1, C], [B, C]), one for
// all ([1, 1, C], [1, C], [C]), or one per token ([B, N, C], [1, N, C]).
Status CheckBatchVector(const char* op, const char* name, const at::Tensor& v,
                        const at::Tensor& x) {
  if (!v.defined()) return Invalid(op, name, "is undefined");
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  const bool shape_ok = v.dim() >= 1 && v.dim() <= 3 && v.size(-1) == C &&
                        (v.dim() == 1 || v.size(0) == 1 || v.size(0) == B) &&
                        (v.dim() < 3 || v.size(1) == 1 || v.size(1) == N);
  if (!shape_ok) {
    return Invalid(op, name,
                   "must be [B, 1, C], [B, N, C], [B, C] or [C] with B = " + std::to_string(B) +
                       ", N = " + std::to_string(N) + ", C = " + std::to_string(C) + ", got " +
                       ShapeOf(v));
  }
  if (v.scalar_type() != at::kFloat) {
    return Invalid(op, name, "must be float32, got " + std::string(c10::toString(v.scalar_type())));
  }
  return CheckDevice(op, name, v, x);
}

// A per-batch vector as [B or 1, 1, C] (or [C]; per-token vectors as they
// are), broadcastable against x.
at::Tensor Broadcastable(const at::Tensor& v) {
  return v.dim() != 2 ? v : v.reshape({v.size(0), 1, v.size(-1)});
}

// ATen reference path: the original WanTransformer code, unchanged.

// LayerNorm over the last dim in fp32, optional affine (fp32 weights).
at::Tensor Fp32LayerNorm(const at::Tensor& x, double eps, const at::Tensor& w = {},
                         const at::Tensor& b = {}) {
  const at::Tensor xf = x.to(at::kFloat);
  return at::layer_norm(xf, {xf.size(-1)}, w.defined() ? w.to(at::kFloat) : at::Tensor(),
                        b.defined() ? b.to(at::kFloat) : at::Tensor(), eps);
}

// RMSNorm over the last dim (all heads together), computed in fp32.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  const at::Tensor xf = x.to(at::kFloat);
  return (xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps) * w.to(at::kFloat))
      .to(x.scalar_type());
}

// Rotates interleaved pairs (x[2i], x[2i+1]) by the per-token angle tables.
// x: [B, N, H, D]; cos, sin: [N, D/2] fp32.
at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const auto sizes = x.sizes().vec();
  const at::Tensor pairs =
      x.to(at::kFloat).reshape({sizes[0], sizes[1], sizes[2], sizes[3] / 2, 2});
  const at::Tensor x1 = pairs.select(-1, 0), x2 = pairs.select(-1, 1);
  const at::Tensor c = cos.unsqueeze(0).unsqueeze(2), s = sin.unsqueeze(0).unsqueeze(2);
  return at::stack({x1 * c - x2 * s, x1 * s + x2 * c}, -1).reshape(sizes).to(x.scalar_type());
}

#if RAINSERVE_WITH_CUDA
// Fused path: x passed FusedKernelsApply; every other tensor was checked.
namespace kernels = ::rainserve::pipelines::cuda;

kernels::DType KernelDType(const at::Tensor& x) {
  return x.scalar_type() == at::kBFloat16 ? kernels::DType::kBFloat16 : kernels::DType::kFloat16;
}

void* StreamOf(const at::Tensor& x) {
  return c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
}

// The [B, N, C] row fields of a kernel's params, from the activations x.
template <typename Params>
void SetRows(Params& p, const at::Tensor& x) {
  p.batch = x.size(0);
  p.tokens = x.size(1);
  p.channels = x.size(2);
  p.dtype = KernelDType(x);
}

// v: a per-batch fp32 vector the kernels can read 16 bytes at a time (see
// KernelReady; the caller keeps it alive).
kernels::BatchVector KernelVector(const at::Tensor& v) {
  kernels::BatchVector k;
  k.data = v.data_ptr<float>();
  k.batch_stride = v.dim() >= 2 && v.size(0) > 1 ? v.stride(0) : 0;
  return k;
}

// v itself when its channels are contiguous, 16-byte aligned, with a batch
// stride of whole 16-byte steps; otherwise a fresh contiguous copy.
at::Tensor KernelReady(const at::Tensor& v) {
  const bool batch_ok = v.dim() < 2 || v.size(0) == 1 || v.stride(0) % 4 == 0;
  const bool ok = v.stride(-1) == 1 && batch_ok &&
                  reinterpret_cast<uintptr_t>(v.data_ptr()) % 16 == 0;
  return ok ? v : v.clone(at::MemoryFormat::Contiguous);
}

// LayerNorm of x, or of x + branch * gate when branch is defined (gate may
// be undefined: x + branch); returns {sum, norm} (sum undefined without a
// branch).
// Empty e4m3 rows for x [..., K]: [M, K] bytes and [M] fp32 scales.
Fp8Rows EmptyFp8Rows(const at::Tensor& x) {
  const int64_t K = x.size(-1), M = K == 0 ? 0 : x.numel() / K;
  Fp8Rows r;
  r.data = at::empty({M, K}, x.options().dtype(at::kByte));
  r.scale = at::empty({M}, x.options().dtype(at::kFloat));
  return r;
}

// With quantize, r.norm_fp8 is filled by the same kernel.
StatusOr<ResidualNorm> FusedLayerNorm(const at::Tensor& x, const at::Tensor& branch,
                                      const at::Tensor& gate, const at::Tensor& scale,
                                      const at::Tensor& shift, float scale_offset, double eps,
                                      bool quantize = false) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor a = KernelReady(scale), b = KernelReady(shift);
  const at::Tensor g = gate.defined() ? KernelReady(gate) : at::Tensor();
  ResidualNorm r;
  r.norm = at::empty(x.sizes(), x.options());
  kernels::LayerNormParams p;
  p.x = x.data_ptr();
  p.y = r.norm.data_ptr();
  p.scale = KernelVector(a);
  p.shift = KernelVector(b);
  if (branch.defined()) {
    r.sum = at::empty(x.sizes(), x.options());
    p.branch = branch.data_ptr();
    p.sum = r.sum.data_ptr();
    if (g.defined()) p.gate = KernelVector(g);
  }
  if (quantize) {
    r.norm_fp8 = EmptyFp8Rows(x);
    p.q = r.norm_fp8.data.data_ptr();
    p.q_scale = r.norm_fp8.scale.data_ptr<float>();
  }
  p.scale_offset = scale_offset;
  p.eps = static_cast<float>(eps);
  SetRows(p, x);
  RAINSERVE_RETURN_IF_ERROR(kernels::LaunchLayerNorm(p, StreamOf(x)));
  return r;
}

StatusOr<at::Tensor> FusedRmsNormRope(const at::Tensor& x, const at::Tensor& weight, double eps,
                                      int64_t heads, const at::Tensor& cos,
                                      const at::Tensor& sin) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), N = x.size(1), D = x.size(2) / heads;
  const at::Tensor w = KernelReady(weight.to(at::kFloat));
  at::Tensor y = at::empty({B, N, heads, D}, x.options());
  kernels::RmsNormRopeParams p;
  p.x = x.data_ptr();
  p.y = y.data_ptr();
  p.weight = w.data_ptr<float>();
  p.cos = cos.defined() ? cos.data_ptr<float>() : nullptr;
  p.sin = sin.defined() ? sin.data_ptr<float>() : nullptr;
  p.eps = static_cast<float>(eps);
  p.batch = B;
  p.tokens = N;
  p.heads = heads;
  p.head_dim = D;
  p.dtype = KernelDType(x);
  RAINSERVE_RETURN_IF_ERROR(kernels::LaunchRmsNormRope(p, StreamOf(x)));
  return y;
}

StatusOr<at::Tensor> FusedGatedResidual(const at::Tensor& x, const at::Tensor& y,
                                        const at::Tensor& gate) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor g = KernelReady(gate);
  at::Tensor out = at::empty(x.sizes(), x.options());
  kernels::GatedResidualParams p;
  p.x = x.data_ptr();
  p.y = y.data_ptr();
  p.out = out.data_ptr();
  p.gate = KernelVector(g);
  SetRows(p, x);
  RAINSERVE_RETURN_IF_ERROR(kernels::LaunchGatedResidual(p, StreamOf(x)));
  return out;
}
#endif  // RAINSERVE_WITH_CUDA

}  // namespace

bool FusedKernelsApply(const at::Tensor& x) {
#if RAINSERVE_WITH_CUDA
  return x.defined() && x.is_cuda() && x.dim() == 3 && x.is_contiguous() &&
         (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf) &&
         x.size(0) <= 65535 && kernels::SupportsRows(x.size(2), {x.data_ptr()});
#else
  (void)x;
  return false;
#endif
}

namespace {

// The block's two LayerNorm flavours: DiT modulation LN(x) * (1 + scale) +
// shift with [B, 1, C]-like vectors, and the affine LN(x) * weight + bias.
enum class NormKind { kModulated, kAffine };

Status CheckNormVectors(const char* op, NormKind kind, const at::Tensor& a, const at::Tensor& b,
                        const at::Tensor& x) {
  const bool affine = kind == NormKind::kAffine;
  for (const auto& [name, v] :
       {std::pair<const char*, const at::Tensor&>{affine ? "weight" : "scale", a},
        {affine ? "bias" : "shift", b}}) {
    RAINSERVE_RETURN_IF_ERROR(CheckBatchVector(op, name, v, x));
    if (affine && v.dim() != 1) return Invalid(op, name, "must be [C], got " + ShapeOf(v));
  }
  return OkStatus();
}

// y, a residual branch: [B, N, C] like x, same dtype and device.
Status CheckBranch(const char* op, const at::Tensor& x, const at::Tensor& y) {
  RAINSERVE_RETURN_IF_ERROR(CheckActivations(op, "x", x));
  RAINSERVE_RETURN_IF_ERROR(CheckActivations(op, "y", y));
  if (y.sizes() != x.sizes()) {
    return Invalid(op, "y", "must have x's shape " + ShapeOf(x) + ", got " + ShapeOf(y));
  }
  if (y.scalar_type() != x.scalar_type()) {
    return Invalid(op, "y", "must have x's dtype " + std::string(c10::toString(x.scalar_type())) +
                                ", got " + std::string(c10::toString(y.scalar_type())));
  }
  return CheckDevice(op, "y", y, x);
}

at::Tensor AtenLayerNorm(NormKind kind, const at::Tensor& x, const at::Tensor& a,
                         const at::Tensor& b, double eps) {
  if (kind == NormKind::kAffine) return Fp32LayerNorm(x, eps, a, b).to(x.scalar_type());
  return (Fp32LayerNorm(x, eps) * (1 + Broadcastable(a)) + Broadcastable(b)).to(x.scalar_type());
}

// x + y * gate in fp32 stored in x's dtype; x + y (in x's dtype) without a gate.
at::Tensor AtenResidual(const at::Tensor& x, const at::Tensor& y, const at::Tensor& gate) {
  if (!gate.defined()) return x + y;
  return (x.to(at::kFloat) + y.to(at::kFloat) * Broadcastable(gate)).to(x.scalar_type());
}

#if RAINSERVE_WITH_CUDA
// The fused kernels scale the normalised row by (scale_offset + a).
float ScaleOffset(NormKind kind) { return kind == NormKind::kModulated ? 1.0f : 0.0f; }

// True for a vector with one row per token ([B, N, C], N > 1): the fused
// kernels read per-batch vectors only, so such ops run the ATen path.
bool PerToken(const at::Tensor& v) { return v.defined() && v.dim() == 3 && v.size(1) > 1; }
#endif

StatusOr<at::Tensor> PlainLayerNorm(const char* op, NormKind kind, const at::Tensor& x,
                                    const at::Tensor& a, const at::Tensor& b, double eps,
                                    ElementwiseImpl impl) {
  RAINSERVE_RETURN_IF_ERROR(CheckActivations(op, "x", x));
  RAINSERVE_RETURN_IF_ERROR(CheckNormVectors(op, kind, a, b, x));
#if RAINSERVE_WITH_CUDA
  if (impl == ElementwiseImpl::kFused && FusedKernelsApply(x) && !PerToken(a) && !PerToken(b)) {
    RAINSERVE_ASSIGN_OR_RETURN(ResidualNorm r, FusedLayerNorm(x, {}, {}, a, b, ScaleOffset(kind), eps));
    return r.norm;
  }
#endif
  return AtenLayerNorm(kind, x, a, b, eps);
}

StatusOr<ResidualNorm> ResidualLayerNorm(const char* op, NormKind kind, const at::Tensor& x,
                                         const at::Tensor& y, const at::Tensor& gate,
                                         const at::Tensor& a, const at::Tensor& b, double eps,
                                         ElementwiseImpl impl, bool quantize) {
  RAINSERVE_RETURN_IF_ERROR(CheckBranch(op, x, y));
  if (gate.defined()) RAINSERVE_RETURN_IF_ERROR(CheckBatchVector(op, "gate", gate, x));
  RAINSERVE_RETURN_IF_ERROR(CheckNormVectors(op, kind, a, b, x));
#if RAINSERVE_WITH_CUDA
  if (impl == ElementwiseImpl::kFused && FusedKernelsApply(x) &&
      kernels::SupportsRows(x.size(2), {y.data_ptr()}) && !PerToken(gate) && !PerToken(a) &&
      !PerToken(b)) {
    return FusedLayerNorm(x, y, gate, a, b, ScaleOffset(kind), eps, quantize);
  }
#endif
  ResidualNorm r;
  r.sum = AtenResidual(x, y, gate);
  r.norm = AtenLayerNorm(kind, r.sum, a, b, eps);
  if (quantize) {
    RAINSERVE_ASSIGN_OR_RETURN(r.norm_fp8, QuantizeRows(r.norm));
  }
  return r;
}

}  // namespace

StatusOr<at::Tensor> ModulatedLayerNorm(const at::Tensor& x, const at::Tensor& scale,
                                        const at::Tensor& shift, double eps,
                                        ElementwiseImpl impl) {
  return PlainLayerNorm("ModulatedLayerNorm", NormKind::kModulated, x, scale, shift, eps, impl);
}

StatusOr<at::Tensor> AffineLayerNorm(const at::Tensor& x, const at::Tensor& weight,
                                     const at::Tensor& bias, double eps, ElementwiseImpl impl) {
  return PlainLayerNorm("AffineLayerNorm", NormKind::kAffine, x, weight, bias, eps, impl);
}

StatusOr<ResidualNorm> GatedResidualModulatedLayerNorm(const at::Tensor& x, const at::Tensor& y,
                                                       const at::Tensor& gate,
                                                       const at::Tensor& scale,
                                                       const at::Tensor& shift, double eps,
                                                       ElementwiseImpl impl, bool quantize) {
  return ResidualLayerNorm("GatedResidualModulatedLayerNorm", NormKind::kModulated, x, y, gate,
                           scale, shift, eps, impl, quantize);
}

StatusOr<ResidualNorm> GatedResidualAffineLayerNorm(const at::Tensor& x, const at::Tensor& y,
                                                    const at::Tensor& gate,
                                                    const at::Tensor& weight,
                                                    const at::Tensor& bias, double eps,
                                                    ElementwiseImpl impl, bool quantize) {
  return ResidualLayerNorm("GatedResidualAffineLayerNorm", NormKind::kAffine, x, y, gate, weight,
                           bias, eps, impl, quantize);
}

StatusOr<Fp8Rows> QuantizeRows(const at::Tensor& x, bool gelu_tanh) {
  constexpr const char* kOp = "QuantizeRows";
  if (!x.defined() || x.dim() < 1 || x.size(-1) == 0) {
    return Invalid(kOp, "x", "must be [..., K], K > 0");
  }
  if (!x.is_cuda() || !x.is_contiguous() ||
      (x.scalar_type() != at::kBFloat16 && x.scalar_type() != at::kHalf)) {
    return Invalid(kOp, "x",
                   "must be a contiguous CUDA bfloat16/float16 tensor (FP8 runs on CUDA), got " +
                       std::string(c10::toString(x.scalar_type())) + " on " + x.device().str());
  }
#if RAINSERVE_WITH_CUDA
  const c10::cuda::CUDAGuard guard(x.device());
  Fp8Rows r = EmptyFp8Rows(x);
  kernels::QuantizeRowsParams p;
  p.x = x.data_ptr();
  p.q = r.data.data_ptr();
  p.scale = r.scale.data_ptr<float>();
  p.rows = r.data.size(0);
  p.cols = r.data.size(1);
  p.gelu_tanh = gelu_tanh;
  p.dtype = KernelDType(x);
  RAINSERVE_RETURN_IF_ERROR(kernels::LaunchQuantizeRows(p, StreamOf(x)));
  return r;
#else
  (void)gelu_tanh;
  return FailedPreconditionError("QuantizeRows: FP8 needs a build with CUDA LibTorch");
#endif
}

StatusOr<at::Tensor> RmsNormRope(const at::Tensor& x, const at::Tensor& weight, double eps,
                                 int64_t heads, const at::Tensor& cos, const at::Tensor& sin,
                                 ElementwiseImpl impl) {
  constexpr const char* kOp = "RmsNormRope";
  RAINSERVE_RETURN_IF_ERROR(CheckActivations(kOp, "x", x));
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  if (heads <= 0 || C % heads != 0 || (C / heads) % 2 != 0) {
    return Invalid(kOp, "x", "must split into " + std::to_string(heads) +
                                 " heads of an even size, got " + ShapeOf(x));
  }
  const int64_t D = C / heads;
  if (!weight.defined() || weight.dim() != 1 || weight.size(0) != C) {
    return Invalid(kOp, "weight", "must be [" + std::to_string(C) + "], got " +
                                      (weight.defined() ? ShapeOf(weight) : "undefined"));
  }
  if (!IsFloating16Or32(weight.scalar_type())) {
    return Invalid(kOp, "weight", "must be float32, bfloat16 or float16");
  }
  RAINSERVE_RETURN_IF_ERROR(CheckDevice(kOp, "weight", weight, x));
  if (cos.defined() != sin.defined()) {
    return Invalid(kOp, "cos", "and sin must both be defined (RoPE) or both undefined");
  }
  const bool rope = cos.defined();
  if (rope) {
    for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"cos", cos},
                                  {"sin", sin}}) {
      if (t.dim() != 2 || t.size(0) != N || t.size(1) != D / 2) {
        return Invalid(kOp, name, "must be [" + std::to_string(N) + ", " + std::to_string(D / 2) +
                                      "] (tokens, head_dim / 2), got " + ShapeOf(t));
      }
      if (t.scalar_type() != at::kFloat || !t.is_contiguous()) {
        return Invalid(kOp, name, "must be contiguous float32");
      }
      RAINSERVE_RETURN_IF_ERROR(CheckDevice(kOp, name, t, x));
    }
  }
#if RAINSERVE_WITH_CUDA
  // The kernel rotates the fp32 normalised values: no bf16/fp16 rounding
  // between the norm and RoPE, unlike the ATen path below.
  if (impl == ElementwiseImpl::kFused && FusedKernelsApply(x)) {
    return FusedRmsNormRope(x, weight, eps, heads, cos, sin);
  }
#endif
  const at::Tensor normed = RmsNorm(x, weight, eps).view({B, N, heads, D});
  return rope ? ApplyRope(normed, cos, sin) : normed;
}

StatusOr<at::Tensor> GatedResidual(const at::Tensor& x, const at::Tensor& y,
                                   const at::Tensor& gate, ElementwiseImpl impl) {
  constexpr const char* kOp = "GatedResidual";
  RAINSERVE_RETURN_IF_ERROR(CheckBranch(kOp, x, y));
  RAINSERVE_RETURN_IF_ERROR(CheckBatchVector(kOp, "gate", gate, x));
#if RAINSERVE_WITH_CUDA
  if (impl == ElementwiseImpl::kFused && FusedKernelsApply(x) &&
      kernels::SupportsRows(x.size(2), {y.data_ptr()}) && !PerToken(gate)) {
    return FusedGatedResidual(x, y, gate);
  }
#endif
  return AtenResidual(x, y, gate);
}

}  // namespace rainserve::wan_ops
