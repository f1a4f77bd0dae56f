// The ATen side of the FP8 linear layers (wan_fp8.h): weight quantization at
// load and the GEMM call, over the torch-free CUDA code of
// pipelines/wan/cuda/fp8_linear.h (which needs LibTorch's CUDA build).
#include "pipelines/wan/wan_fp8.h"

#include <atomic>
#include <utility>

#include "attention/torch_adapter.h"
#include "common/logging.h"

#if RAINSERVE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "pipelines/wan/cuda/fp8_linear.h"
#endif

namespace rainserve {
namespace {

using attention::ShapeOf;

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

#if RAINSERVE_WITH_CUDA
// The path of the latest FP8 GEMM: -1 none yet, else an Fp8GemmPath.
std::atomic<int> g_path{-1};
#endif

// A weight linear_precision fp8 can quantize: bf16 [out, in], both multiples of 16.
Status CheckQuantizable(const std::string& name, const at::Tensor& t) {
  if (t.scalar_type() != at::kBFloat16) {
    return InvalidArgumentError("linear_precision: fp8 needs the model in bf16 (dtype: bf16); " +
                                name + " is " + std::string(c10::toString(t.scalar_type())));
  }
  if (t.dim() != 2 || t.size(0) % 16 != 0 || t.size(1) % 16 != 0) {
    return InvalidArgumentError(
        "linear_precision: fp8 needs linear weights whose sizes are multiples of 16; " + name +
        " is " + ShapeOf(t));
  }
  return OkStatus();
}

}  // namespace

bool WanFp8Linear(const std::string& name) {
  if (name.rfind("blocks.", 0) != 0) return false;
  static const char* const kSuffixes[] = {
      ".attn1.to_q.weight",       ".attn1.to_k.weight",     ".attn1.to_v.weight",
      ".attn1.to_out.0.weight",   ".attn2.to_q.weight",     ".attn2.to_k.weight",
      ".attn2.to_v.weight",       ".attn2.to_out.0.weight", ".attn2.add_k_proj.weight",
      ".attn2.add_v_proj.weight", ".ffn.net.0.proj.weight", ".ffn.net.2.weight",
  };
  for (const char* suffix : kSuffixes) {
    if (EndsWith(name, suffix)) return true;
  }
  return false;
}

Status QuantizeWanLinears(at::Device compute, NamedTensors* params) {
  if (!compute.is_cuda()) {
    return InvalidArgumentError("linear_precision: fp8 runs on CUDA devices only, got " +
                                compute.str());
  }
  for (const auto& [name, t] : *params) {
    if (WanFp8Linear(name)) RAINSERVE_RETURN_IF_ERROR(CheckQuantizable(name, t));
  }
  NamedTensors out;
  out.reserve(params->size() * 2);
  for (auto& [name, t] : *params) {
    if (!WanFp8Linear(name)) {
      out.push_back({name, t});
      continue;
    }
    RAINSERVE_ASSIGN_OR_RETURN(wan_ops::Fp8Rows q,
                               wan_ops::QuantizeRows(t.to(compute).contiguous()));
    const at::Device home = t.device();
    t = at::Tensor();  // the bf16 weight goes as its FP8 copy arrives
    out.push_back({name, q.data.to(home)});
    out.push_back({name.substr(0, name.size() - 7) + ".weight_scale", q.scale.to(home)});
  }
  *params = std::move(out);
#if RAINSERVE_WITH_CUDA
  // Hand the bf16 weights' cached blocks back to the device.
  c10::cuda::CUDACachingAllocator::emptyCache();
#endif
  return OkStatus();
}

StatusOr<at::Tensor> Fp8Linear(const wan_ops::Fp8Rows& x, const WanLinear& l,
                               const Fp8LinearOptions& options, at::Tensor out) {
  if (!l.fp8() || l.weight.scalar_type() != at::kByte || l.weight.dim() != 2) {
    return InternalError("Fp8Linear: the layer is not an FP8 layer");
  }
  const int64_t K = l.weight.size(1);
  if (!x.data.defined() || x.data.dim() != 2 || x.data.size(1) != K ||
      x.data.scalar_type() != at::kByte || !x.scale.defined() ||
      x.scale.numel() != x.data.size(0)) {
    return InvalidArgumentError("Fp8Linear: x must be [M, " + std::to_string(K) +
                                "] e4m3 rows with [M] scales");
  }
  if (l.bias.defined() && l.bias.scalar_type() != at::kBFloat16) {
    return InvalidArgumentError("Fp8Linear: the bias must be bf16");
  }
#if RAINSERVE_WITH_CUDA
  const c10::cuda::CUDAGuard guard(x.data.device());
  const int64_t M = x.data.size(0), N = l.weight.size(0);
  if (out.defined() && (out.dim() != 2 || out.size(0) != M || out.size(1) != N ||
                        out.scalar_type() != at::kBFloat16 || !out.is_contiguous() ||
                        out.device() != x.data.device())) {
    return InvalidArgumentError("Fp8Linear: out must be [" + std::to_string(M) + ", " +
                                std::to_string(N) + "] contiguous bf16 on x's device, got " +
                                ShapeOf(out));
  }
  at::Tensor y = out.defined() ? out : at::empty({M, N}, x.data.options().dtype(at::kBFloat16));
  pipelines::cuda::Fp8GemmParams p;
  p.x = x.data.data_ptr();
  p.x_scale = x.scale.data_ptr<float>();
  p.w = l.weight.data_ptr();
  p.w_scale = l.weight_scale.data_ptr<float>();
  p.bias = l.bias.defined() ? l.bias.data_ptr() : nullptr;
  p.y = y.data_ptr();
  p.m = M;
  p.n = N;
  p.k = K;
  p.scale_kernel = options.scale_kernel;
  p.fast_accum = options.fast_accum;
  pipelines::cuda::Fp8GemmPath path{};
  RAINSERVE_RETURN_IF_ERROR(pipelines::cuda::Fp8Gemm(
      p, c10::cuda::getCurrentCUDAStream(x.data.device().index()).stream(), &path));
  if (g_path.exchange(static_cast<int>(path)) != static_cast<int>(path)) {
    RAINSERVE_LOG(INFO) << "fp8 linear layers: cuBLASLt FP8 GEMM, "
                        << pipelines::cuda::Fp8GemmPathName(path) << " path";
  }
  return y;
#else
  (void)options;
  (void)out;
  return FailedPreconditionError("Fp8Linear: FP8 needs a build with CUDA LibTorch");
#endif
}

std::string Fp8GemmPathUsed() {
#if RAINSERVE_WITH_CUDA
  const int path = g_path.load();
  if (path >= 0)
    return pipelines::cuda::Fp8GemmPathName(static_cast<pipelines::cuda::Fp8GemmPath>(path));
#endif
  return "none";
}

}  // namespace rainserve
