// The CUDA attention backend (Hopper, sm_90a build): mask prediction, the
// block-sparse flash forward and token permutation on the device. Torch-free.
//
// All pointers in the args are device pointers, including the block table
// and the mask. Work is enqueued on args.stream; nothing synchronises.
// One backend per device; calls are serialised (the pooled-means workspace
// is shared), which matches the server's one worker per device.
#pragma once

#include <mutex>
#include <vector>

#include "attention/backend.h"

namespace rainserve::attention {

// The flash forward kernels of the CUDA backend (cuda/kernels.h).
enum class FlashKernel : int {
  kSm90 = 0,  // TMA + warp-specialised wgmma (flash_fwd_sm90.cu): Hopper only
  kMma = 1,   // mma.sync (flash_fwd.cu): any sm_80+ device the build targets
};

class CudaBackend final : public AttentionBackend {
 public:
  // The default kernel for the current device, what the server runs: kSm90
  // on Hopper (compute capability 9.x), kMma elsewhere;
  // RAINSERVE_FLASH_KERNEL=mma in the environment forces kMma.
  CudaBackend();
  // A chosen kernel (tests and benchmarks run each one). When the current
  // device cannot run it, Supports() refuses every call with CanRun's reason.
  explicit CudaBackend(FlashKernel kernel);
  ~CudaBackend() override;

  // Every forward kernel this backend has, the Hopper one first.
  static std::vector<FlashKernel> Kernels();
  // OK when the current device runs `kernel`; FAILED_PRECONDITION saying why
  // not (no CUDA device, or not Hopper for kSm90).
  static Status CanRun(FlashKernel kernel);

  // "cuda-sm90" or "cuda-mma": Name() of a backend running `kernel`.
  static const char* NameOf(FlashKernel kernel) {
    return kernel == FlashKernel::kSm90 ? "cuda-sm90" : "cuda-mma";
  }

  FlashKernel kernel() const { return kernel_; }
  const char* Name() const override { return NameOf(kernel_); }
  Status Supports(const ForwardArgs& args, int64_t block_size) const override;
  Status PredictMask(const MaskArgs& args) override;
  Status Forward(const ForwardArgs& args) override;

  Status GatherRows(const void* src, void* dst, const int64_t* index, int64_t outer, int64_t rows,
                    int64_t row_bytes, void* stream) override;

 private:
  FlashKernel kernel_;
  Status runnable_;  // CanRun(kernel_), checked once at construction
  std::mutex mutex_;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
};

}  // namespace rainserve::attention
