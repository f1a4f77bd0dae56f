#include "attention/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <string>

#include "attention/config.h"
#include "attention/cuda/kernels.h"

namespace rainserve::attention {
namespace {

Status CheckView(const TensorView& t, const char* name) {
  auto misaligned = [](int64_t x) { return x % 8 != 0; };
  if (misaligned(t.stride_batch) || misaligned(t.stride_token) || misaligned(t.stride_head) ||
      reinterpret_cast<uintptr_t>(t.data) % 16 != 0) {
    return InvalidArgumentError(std::string("cuda backend: ") + name +
                                " must be 16-byte aligned with strides that are multiples of 8 "
                                "elements");
  }
  return OkStatus();
}

// The current device's compute capability major, or the reason there is none.
StatusOr<int> DeviceMajor() {
  int device = 0;
  cudaDeviceProp prop{};
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaGetDeviceProperties(&prop, device);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the error so later calls do not see it
    return FailedPreconditionError(std::string("no CUDA device: ") + cudaGetErrorString(err));
  }
  return prop.major;
}

FlashKernel DefaultKernel() {
  const StatusOr<int> major = DeviceMajor();
  const char* forced = std::getenv("RAINSERVE_FLASH_KERNEL");
  const bool hopper = major.ok() && *major == 9;
  return hopper && !(forced != nullptr && std::string(forced) == "mma") ? FlashKernel::kSm90
                                                                        : FlashKernel::kMma;
}

}  // namespace

std::vector<FlashKernel> CudaBackend::Kernels() { return {FlashKernel::kSm90, FlashKernel::kMma}; }

Status CudaBackend::CanRun(FlashKernel kernel) {
  RAINSERVE_ASSIGN_OR_RETURN(const int major, DeviceMajor());
  if (kernel == FlashKernel::kSm90 && major != 9) {
    return FailedPreconditionError("cuda-sm90 kernel needs a Hopper device (compute capability "
                                   "9.x), this one is " + std::to_string(major) + ".x");
  }
  return OkStatus();
}

CudaBackend::CudaBackend() : CudaBackend(DefaultKernel()) {}

CudaBackend::CudaBackend(FlashKernel kernel) : kernel_(kernel), runnable_(CanRun(kernel)) {}

CudaBackend::~CudaBackend() {
  if (workspace_ != nullptr) cudaFree(workspace_);
}

Status CudaBackend::Supports(const ForwardArgs& args, int64_t block_size) const {
  RAINSERVE_RETURN_IF_ERROR(runnable_);
  const TensorView& q = args.q;
  if (q.dtype != DType::kBFloat16 && q.dtype != DType::kFloat16) {
    return UnimplementedError(std::string("cuda backend: dtype must be bfloat16 or float16, got ") +
                              DTypeName(q.dtype));
  }
  if (q.head_dim != 64 && q.head_dim != 128) {
    return UnimplementedError("cuda backend: head_dim must be 64 or 128, got " +
                              std::to_string(q.head_dim));
  }
  if (block_size != 128) {
    return UnimplementedError("cuda backend: block_size must be 128, got " +
                              std::to_string(block_size));
  }
  if (q.tokens > INT_MAX / 2 || q.heads > 65535 || q.batch > 65535 ||
      args.blocks.num_blocks * q.heads * q.batch > INT_MAX) {
    return UnimplementedError("cuda backend: problem too large for one launch");
  }
  if (args.blocks.num_blocks > cuda::kMaxMaskBlocks) {
    return UnimplementedError("cuda backend: at most " + std::to_string(cuda::kMaxMaskBlocks) +
                              " blocks");
  }
  RAINSERVE_RETURN_IF_ERROR(CheckView(args.q, "q"));
  RAINSERVE_RETURN_IF_ERROR(CheckView(args.k, "k"));
  RAINSERVE_RETURN_IF_ERROR(CheckView(args.v, "v"));
  return CheckView(args.out, "out");
}

Status CudaBackend::PredictMask(const MaskArgs& args) {
  std::lock_guard<std::mutex> lock(mutex_);
  const int64_t nb = args.blocks.num_blocks;
  const size_t pooled_bytes =
      2 * sizeof(float) * static_cast<size_t>(args.q.batch * args.q.heads * nb * args.q.head_dim);
  const size_t order_slots =
      static_cast<size_t>(cuda::MaskOrderSlots(args.q.batch, args.q.heads, nb));
  const size_t need = pooled_bytes + 2 * sizeof(int32_t) * order_slots;
  if (workspace_bytes_ < need) {
    if (workspace_ != nullptr) cudaFree(workspace_);
    workspace_ = nullptr;
    workspace_bytes_ = 0;
    const cudaError_t err = cudaMalloc(&workspace_, need);
    if (err != cudaSuccess) {
      return ResourceExhaustedError(std::string("cuda mask workspace: ") + cudaGetErrorString(err));
    }
    workspace_bytes_ = need;
  }
  cuda::MaskParams p;
  p.q = args.q;
  p.k = args.k;
  p.num_blocks = static_cast<int>(nb);
  p.block_starts = args.blocks.starts;
  p.block_forced = args.blocks.forced;
  p.scale = args.scale;
  p.top_k = static_cast<int>(TopKCount(nb, args.sparsity));
  p.pooled = static_cast<float*>(workspace_);
  p.counts = args.counts;
  p.indices = args.indices;
  p.kept = args.kept;
  p.kept_mass = args.kept_mass;
  p.min_kept_blocks = static_cast<int>(std::min<int64_t>(args.min_kept_blocks, nb));
  p.max_kept_blocks = static_cast<int>(std::min<int64_t>(args.max_kept_blocks, nb));
  p.order = args.order;
  p.order_workspace = reinterpret_cast<int32_t*>(static_cast<char*>(workspace_) + pooled_bytes);
  return cuda::LaunchMaskPrediction(p, args.stream);
}

Status CudaBackend::Forward(const ForwardArgs& args) {
  cuda::FlashParams p;
  p.q = args.q.data;
  p.k = args.k.data;
  p.v = args.v.data;
  p.out = args.out.data;
  p.lse = args.lse;
  const TensorView* views[4] = {&args.q, &args.k, &args.v, &args.out};
  int64_t* strides[4] = {p.q_stride, p.k_stride, p.v_stride, p.o_stride};
  for (int i = 0; i < 4; ++i) {
    strides[i][0] = views[i]->stride_batch;
    strides[i][1] = views[i]->stride_token;
    strides[i][2] = views[i]->stride_head;
  }
  p.batch = static_cast<int>(args.q.batch);
  p.tokens = static_cast<int>(args.q.tokens);
  p.heads = static_cast<int>(args.q.heads);
  p.head_dim = static_cast<int>(args.q.head_dim);
  p.num_blocks = static_cast<int>(args.blocks.num_blocks);
  p.heavy_rows = static_cast<int>(args.blocks.trailing_forced);
  p.block_starts = args.blocks.starts;
  p.mask_counts = args.mask.counts;
  p.mask_indices = args.mask.indices;
  p.row_order = args.mask.order;
  p.scale_log2 = args.scale * 1.4426950408889634f;
  p.dtype = args.q.dtype;
  return kernel_ == FlashKernel::kSm90 ? cuda::LaunchFlashForwardSm90(p, args.stream)
                                       : cuda::LaunchFlashForward(p, args.stream);
}

Status CudaBackend::GatherRows(const void* src, void* dst, const int64_t* index, int64_t outer,
                               int64_t rows, int64_t row_bytes, void* stream) {
  return cuda::LaunchGatherRows(src, dst, index, outer, rows, row_bytes, stream);
}

}  // namespace rainserve::attention
