// FP8 linear layers (declared in fp8_linear.h): the per-row quantize kernel
// (optionally GELU(tanh) first), the cuBLASLt FP8 GEMM with outer-vector
// scales, and the scale + bias kernel of the fallback path.
//
// Quantize: a warp owns a row (rows in a grid-stride loop): pass 1 takes the
// row's amax, pass 2 converts; the row's second read mostly hits L2.
//
// GEMM: cuBLASLt is column-major, so the row-major product y[m, n] = x[m, k]
// w[n, k]^T is computed as y^T (n x m, column-major = y row-major) =
// op(A) op(B) with A = w (k x n column-major, transposed: "T") and B = x
// (k x m column-major, "N"): both operands K-major, as Hopper's FP8 kernels
// need. The A scale vector then has n (out-feature) entries and the B scale
// vector m (token) entries; the bias runs along D's rows (out features).
// One cuBLASLt handle per device, one workspace per (device, stream), and the
// heuristic's algorithm per (device, m, n, k, path) are created on first use
// and kept for the life of the process.
#include "pipelines/wan/cuda/fp8_linear.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "common/logging.h"
#include "pipelines/wan/cuda/element_io.cuh"
#include "pipelines/wan/cuda/fp8_quant.cuh"

namespace rainserve::pipelines::cuda {
namespace {

constexpr int kQuantizeThreads = 256;  // 8 rows per CTA
constexpr int kScaleThreads = 256;
constexpr size_t kWorkspaceBytes = size_t{32} << 20;

template <bool kGelu>
__device__ __forceinline__ float Activation(float x) {
  if constexpr (kGelu) {
    // GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))).
    constexpr float kAlpha = 0.7978845608028654f;
    return 0.5f * x * (1.0f + tanhf(kAlpha * (x + 0.044715f * x * x * x)));
  } else {
    return x;
  }
}

// kVector: cols % 8 == 0 and x, q 16-byte aligned (16-byte loads of 8
// elements, 8-byte stores); otherwise element by element.
template <typename T, bool kGelu, bool kVector>
__global__ void __launch_bounds__(kQuantizeThreads) QuantizeRowsKernel(const QuantizeRowsParams p) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / 32);
  const int64_t cols = p.cols;
  for (int64_t r = int64_t{blockIdx.x} * (blockDim.x / 32) + threadIdx.x / 32; r < p.rows;
       r += warps) {
    const T* x = static_cast<const T*>(p.x) + r * cols;
    uint8_t* q = static_cast<uint8_t*>(p.q) + r * cols;
    float amax = 0.0f;
    if constexpr (kVector) {
      const auto* xv = reinterpret_cast<const uint4*>(x);
      const int64_t vecs = cols / kVec;
      for (int64_t v = lane; v < vecs; v += 32) {
        float a[kVec];
        Widen<T>(xv[v], a);
#pragma unroll
        for (int i = 0; i < kVec; ++i) amax = fmaxf(amax, fabsf(Activation<kGelu>(a[i])));
      }
      const float scale = Fp8RowScale(WarpMax(amax));
      const float inv = 1.0f / scale;
      auto* qv = reinterpret_cast<uint2*>(q);
      for (int64_t v = lane; v < vecs; v += 32) {
        float a[kVec];
        Widen<T>(xv[v], a);
#pragma unroll
        for (int i = 0; i < kVec; ++i) a[i] = Activation<kGelu>(a[i]);
        qv[v] = ToFp8x8(a, inv);
      }
      if (lane == 0) p.scale[r] = scale;
    } else {
      for (int64_t c = lane; c < cols; c += 32) {
        amax = fmaxf(amax, fabsf(Activation<kGelu>(ToFloat(x[c]))));
      }
      const float scale = Fp8RowScale(WarpMax(amax));
      const float inv = 1.0f / scale;
      for (int64_t c = lane; c < cols; c += 32) q[c] = ToFp8(Activation<kGelu>(ToFloat(x[c])), inv);
      if (lane == 0) p.scale[r] = scale;
    }
  }
}

// The fallback's epilogue: y[r, c] = y[r, c] * x_scale[r] * w_scale[c] + bias[c].
__global__ void __launch_bounds__(kScaleThreads)
    ScaleRowsColsKernel(__nv_bfloat16* y, const float* x_scale, const float* w_scale,
                        const __nv_bfloat16* bias, int64_t m, int64_t n) {
  const int64_t total = m * n, stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t r = i / n, c = i % n;
    float v = __bfloat162float(y[i]) * x_scale[r] * w_scale[c];
    if (bias != nullptr) v += __bfloat162float(bias[c]);
    y[i] = __float2bfloat16_rn(v);
  }
}

Status FromCuda(cudaError_t err, const std::string& what) {
  if (err == cudaSuccess) return OkStatus();
  return InternalError(what + ": " + cudaGetErrorString(err));
}

int64_t SmCount() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    return 132;
  }
  return sms;
}

template <typename T>
Status LaunchQuantizeTyped(const QuantizeRowsParams& p, cudaStream_t stream) {
  const bool vector = p.cols % kVec == 0 && reinterpret_cast<uintptr_t>(p.x) % 16 == 0 &&
                      reinterpret_cast<uintptr_t>(p.q) % 8 == 0;
  const int64_t rows_per_cta = kQuantizeThreads / 32;
  const int64_t ctas = std::min<int64_t>((p.rows + rows_per_cta - 1) / rows_per_cta, SmCount() * 8);
  const dim3 grid(static_cast<unsigned>(std::max<int64_t>(ctas, 1)));
  if (p.gelu_tanh) {
    if (vector) {
      QuantizeRowsKernel<T, true, true><<<grid, kQuantizeThreads, 0, stream>>>(p);
    } else {
      QuantizeRowsKernel<T, true, false><<<grid, kQuantizeThreads, 0, stream>>>(p);
    }
  } else if (vector) {
    QuantizeRowsKernel<T, false, true><<<grid, kQuantizeThreads, 0, stream>>>(p);
  } else {
    QuantizeRowsKernel<T, false, false><<<grid, kQuantizeThreads, 0, stream>>>(p);
  }
  return FromCuda(cudaGetLastError(), "fp8 quantize launch");
}

// ---- cuBLASLt ----

std::string LtError(cublasStatus_t status, const char* call, const Fp8GemmParams& p,
                    Fp8GemmPath path) {
  return std::string("fp8 linear: ") + call + " failed with " + cublasLtGetStatusName(status) +
         " (" + cublasLtGetStatusString(status) + ") for m=" + std::to_string(p.m) +
         " n=" + std::to_string(p.n) + " k=" + std::to_string(p.k) + ", " + Fp8GemmPathName(path) +
         " path";
}

#define RAINSERVE_LT(call, what)                                \
  do {                                                          \
    const cublasStatus_t lt_status_ = (call);                   \
    if (lt_status_ != CUBLAS_STATUS_SUCCESS) {                  \
      return InternalError(LtError(lt_status_, what, p, path)); \
    }                                                           \
  } while (0)

// The descriptors of one GEMM, destroyed with it.
struct LtPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtPlan() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

// Per-process cuBLASLt state: handles per device, workspaces per (device,
// stream), and the heuristic's choice per shape and path (found = false: no
// algorithm for it).
struct Choice {
  bool found = false;
  cublasLtMatmulAlgo_t algo{};
};
struct LtState {
  std::mutex mutex;
  std::map<int, cublasLtHandle_t> handles;
  std::map<std::pair<int, cudaStream_t>, void*> workspaces;
  std::map<std::tuple<int, int64_t, int64_t, int64_t, bool, bool, bool, uint32_t>, Choice> choices;
};
LtState& State() {
  static LtState* state = new LtState();  // never destroyed: used until exit
  return *state;
}

// The largest power of two up to 256 that divides the x, w and y pointers
// (Fp8Gemm checked 16).
uint32_t Alignment(const Fp8GemmParams& p) {
  const uintptr_t bits = reinterpret_cast<uintptr_t>(p.x) | reinterpret_cast<uintptr_t>(p.w) |
                         reinterpret_cast<uintptr_t>(p.y) | uintptr_t{256};
  return static_cast<uint32_t>(bits & (~bits + 1));
}

// Fills plan for path: FP8 e4m3 A, B; bf16 D (and C); fp32 compute. With
// outer-vector scales the scale vectors and the bias are set as well.
Status BuildPlan(const Fp8GemmParams& p, Fp8GemmPath path, LtPlan* plan) {
  const bool outer = path == Fp8GemmPath::kOuterVectorScales;
  RAINSERVE_LT(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
               "cublasLtMatmulDescCreate");
  const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
  auto set = [&](cublasLtMatmulDescAttributes_t attr, const void* value, size_t size) {
    return cublasLtMatmulDescSetAttribute(plan->desc, attr, value, size);
  };
  RAINSERVE_LT(set(CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a)), "set TRANSA");
  RAINSERVE_LT(set(CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b)), "set TRANSB");
  const int8_t fast_accum = p.fast_accum ? 1 : 0;
  RAINSERVE_LT(set(CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast_accum, sizeof(fast_accum)),
               "set FAST_ACCUM");
  if (outer) {
    const int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    RAINSERVE_LT(set(CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof(mode)), "set A_SCALE_MODE");
    RAINSERVE_LT(set(CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof(mode)), "set B_SCALE_MODE");
    RAINSERVE_LT(set(CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &p.w_scale, sizeof(p.w_scale)),
                 "set A_SCALE_POINTER");
    RAINSERVE_LT(set(CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &p.x_scale, sizeof(p.x_scale)),
                 "set B_SCALE_POINTER");
    if (p.bias != nullptr) {
      const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
      const int32_t bias_type = CUDA_R_16BF;
      RAINSERVE_LT(set(CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)), "set EPILOGUE");
      RAINSERVE_LT(set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias, sizeof(p.bias)),
                   "set BIAS_POINTER");
      RAINSERVE_LT(set(CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)),
                   "set BIAS_DATA_TYPE");
    }
  }
  // A = w: k x n column-major (ld k); B = x: k x m (ld k); D = y: n x m (ld n).
  RAINSERVE_LT(cublasLtMatrixLayoutCreate(&plan->a, CUDA_R_8F_E4M3, p.k, p.n, p.k),
               "cublasLtMatrixLayoutCreate(A)");
  RAINSERVE_LT(cublasLtMatrixLayoutCreate(&plan->b, CUDA_R_8F_E4M3, p.k, p.m, p.k),
               "cublasLtMatrixLayoutCreate(B)");
  RAINSERVE_LT(cublasLtMatrixLayoutCreate(&plan->d, CUDA_R_16BF, p.n, p.m, p.n),
               "cublasLtMatrixLayoutCreate(D)");
  RAINSERVE_LT(cublasLtMatmulPreferenceCreate(&plan->pref), "cublasLtMatmulPreferenceCreate");
  const uint64_t workspace = kWorkspaceBytes;
  RAINSERVE_LT(
      cublasLtMatmulPreferenceSetAttribute(plan->pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                           &workspace, sizeof(workspace)),
      "set MAX_WORKSPACE_BYTES");
  // The operands' actual alignment (16 to 256 bytes): by default the
  // heuristic assumes 256 and may pick a kernel that fails on less.
  const uint32_t align = Alignment(p);
  for (const auto attr :
       {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
    RAINSERVE_LT(cublasLtMatmulPreferenceSetAttribute(plan->pref, attr, &align, sizeof(align)),
                 "set MIN_ALIGNMENT");
  }
  return OkStatus();
}

// The device's handle and this stream's workspace, created on first use.
Status HandleAndWorkspace(int device, cudaStream_t stream, cublasLtHandle_t* handle,
                          void** workspace) {
  LtState& st = State();
  const std::lock_guard<std::mutex> lock(st.mutex);
  auto h = st.handles.find(device);
  if (h == st.handles.end()) {
    cublasLtHandle_t created = nullptr;
    const cublasStatus_t s = cublasLtCreate(&created);
    if (s != CUBLAS_STATUS_SUCCESS) {
      return InternalError(std::string("fp8 linear: cublasLtCreate failed with ") +
                           cublasLtGetStatusName(s));
    }
    h = st.handles.emplace(device, created).first;
  }
  auto w = st.workspaces.find({device, stream});
  if (w == st.workspaces.end()) {
    void* buffer = nullptr;
    RAINSERVE_RETURN_IF_ERROR(
        FromCuda(cudaMalloc(&buffer, kWorkspaceBytes), "fp8 linear: cuBLASLt workspace"));
    w = st.workspaces.emplace(std::make_pair(device, stream), buffer).first;
  }
  *handle = h->second;
  *workspace = w->second;
  return OkStatus();
}

// The cache key of a shape on a path.
using ChoiceKeyType = std::tuple<int, int64_t, int64_t, int64_t, bool, bool, bool, uint32_t>;
ChoiceKeyType ChoiceKey(int device, const Fp8GemmParams& p, Fp8GemmPath path) {
  return std::make_tuple(device, p.m, p.n, p.k, path == Fp8GemmPath::kOuterVectorScales,
                         p.bias != nullptr, p.fast_accum, Alignment(p));
}

// Marks (device, shape, path) as having no working algorithm.
void RefuseAlgo(int device, const Fp8GemmParams& p, Fp8GemmPath path) {
  LtState& st = State();
  const std::lock_guard<std::mutex> lock(st.mutex);
  st.choices[ChoiceKey(device, p, path)] = Choice{};
}

// The heuristic's algorithm for (device, shape, path), asked once. A refusal
// (an error status or no result) is remembered as found = false.
Choice FindAlgo(cublasLtHandle_t handle, int device, const Fp8GemmParams& p, Fp8GemmPath path,
                const LtPlan& plan) {
  LtState& st = State();
  const auto key = ChoiceKey(device, p, path);
  {
    const std::lock_guard<std::mutex> lock(st.mutex);
    const auto it = st.choices.find(key);
    if (it != st.choices.end()) return it->second;
  }
  cublasLtMatmulHeuristicResult_t result{};
  int returned = 0;
  const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(handle, plan.desc, plan.a, plan.b, plan.d,
                                                          plan.d, plan.pref, 1, &result, &returned);
  Choice choice;
  choice.found = s == CUBLAS_STATUS_SUCCESS && returned > 0;
  if (choice.found) choice.algo = result.algo;
  if (!choice.found) {
    RAINSERVE_LOG(WARNING) << "fp8 linear: cuBLASLt has no algorithm for m=" << p.m << " n=" << p.n
                           << " k=" << p.k << " on the " << Fp8GemmPathName(path) << " path ("
                           << cublasLtGetStatusName(s) << ", " << returned << " results)";
  }
  const std::lock_guard<std::mutex> lock(st.mutex);
  st.choices.emplace(key, choice);
  return choice;
}

// One GEMM on `path`; *refused when the heuristic has no algorithm for it
// (nothing ran then).
Status RunPath(const Fp8GemmParams& p, Fp8GemmPath path, cudaStream_t stream, bool* refused) {
  *refused = false;
  int device = 0;
  RAINSERVE_RETURN_IF_ERROR(FromCuda(cudaGetDevice(&device), "fp8 linear: cudaGetDevice"));
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  RAINSERVE_RETURN_IF_ERROR(HandleAndWorkspace(device, stream, &handle, &workspace));
  LtPlan plan;
  const Status built = BuildPlan(p, path, &plan);
  if (!built.ok()) {
    // An attribute this cuBLAS does not know (outer-vector scales before
    // 12.9) is a refusal of the path, not a failure.
    if (path == Fp8GemmPath::kOuterVectorScales) {
      RAINSERVE_LOG(WARNING) << built.message();
      *refused = true;
      return OkStatus();
    }
    return built;
  }
  const Choice choice = FindAlgo(handle, device, p, path, plan);
  if (!choice.found) {
    *refused = true;
    return OkStatus();
  }
  const float alpha = 1.0f, beta = 0.0f;
  const cublasStatus_t status =
      cublasLtMatmul(handle, plan.desc, &alpha, p.w, plan.a, p.x, plan.b, &beta, p.y, plan.d, p.y,
                     plan.d, &choice.algo, workspace, kWorkspaceBytes, stream);
  if (status != CUBLAS_STATUS_SUCCESS && path == Fp8GemmPath::kOuterVectorScales) {
    // Refused at run time rather than by the heuristic (cuBLASLt checks before
    // it launches anything): remembered the same way, and the other path runs.
    RAINSERVE_LOG(WARNING) << LtError(status, "cublasLtMatmul", p, path);
    RefuseAlgo(device, p, path);
    *refused = true;
    return OkStatus();
  }
  RAINSERVE_LT(status, "cublasLtMatmul");
  return OkStatus();
}

#undef RAINSERVE_LT

}  // namespace

const char* Fp8GemmPathName(Fp8GemmPath path) {
  return path == Fp8GemmPath::kOuterVectorScales ? "outer-vector-scales" : "scale-kernel";
}

Status LaunchQuantizeRows(const QuantizeRowsParams& p, void* stream) {
  if (p.rows < 0 || p.cols <= 0 || p.x == nullptr || p.q == nullptr || p.scale == nullptr) {
    return InvalidArgumentError("fp8 quantize: rows >= 0, cols > 0 and x, q, scale set");
  }
  if (p.rows == 0) return OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case DType::kBFloat16:
      return LaunchQuantizeTyped<__nv_bfloat16>(p, s);
    case DType::kFloat16:
      return LaunchQuantizeTyped<__half>(p, s);
    default:
      return InvalidArgumentError(
          std::string("fp8 quantize: dtype must be bfloat16 or float16, got ") +
          attention::DTypeName(p.dtype));
  }
}

Status Fp8Gemm(const Fp8GemmParams& p, void* stream, Fp8GemmPath* path) {
  if (p.m < 0 || p.n <= 0 || p.k <= 0 || p.n % 16 != 0 || p.k % 16 != 0) {
    return InvalidArgumentError(
        "fp8 linear: needs m >= 0 and n, k positive multiples of 16, got m=" + std::to_string(p.m) +
        " n=" + std::to_string(p.n) + " k=" + std::to_string(p.k));
  }
  if (Alignment(p) < 16) {
    return InvalidArgumentError("fp8 linear: x, w and y must be 16-byte aligned");
  }
  if (p.x_scale == nullptr || p.w_scale == nullptr) {
    return InvalidArgumentError("fp8 linear: x_scale and w_scale are required");
  }
  if (p.m == 0) return OkStatus();
  const auto s = static_cast<cudaStream_t>(stream);
  bool refused = true;
  if (!p.scale_kernel) {
    RAINSERVE_RETURN_IF_ERROR(RunPath(p, Fp8GemmPath::kOuterVectorScales, s, &refused));
  }
  if (!refused) {
    if (path != nullptr) *path = Fp8GemmPath::kOuterVectorScales;
    return OkStatus();
  }
  RAINSERVE_RETURN_IF_ERROR(RunPath(p, Fp8GemmPath::kScaleKernel, s, &refused));
  if (refused) {
    return InternalError("fp8 linear: cuBLASLt has no FP8 algorithm for m=" + std::to_string(p.m) +
                         " n=" + std::to_string(p.n) + " k=" + std::to_string(p.k) +
                         " on either path (outer-vector scales, unscaled + scale kernel)");
  }
  const int64_t total = p.m * p.n;
  const int64_t ctas =
      std::min<int64_t>((total + kScaleThreads - 1) / kScaleThreads, SmCount() * 16);
  ScaleRowsColsKernel<<<static_cast<unsigned>(ctas), kScaleThreads, 0, s>>>(
      static_cast<__nv_bfloat16*>(p.y), p.x_scale, p.w_scale,
      static_cast<const __nv_bfloat16*>(p.bias), p.m, p.n);
  RAINSERVE_RETURN_IF_ERROR(FromCuda(cudaGetLastError(), "fp8 linear: scale kernel launch"));
  if (path != nullptr) *path = Fp8GemmPath::kScaleKernel;
  return OkStatus();
}

}  // namespace rainserve::pipelines::cuda
