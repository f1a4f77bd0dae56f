// The CUDA attention backend (Hopper, sm_90a build): mask prediction, the
// block-sparse flash forward and token permutation on the device. Torch-free.
//
// All pointers in the args are device pointers, including the block table
// and the mask. Work is enqueued on args.stream; nothing synchronises.
// One backend per device; calls are serialised (the pooled-means workspace
// is shared), which matches the server's one worker per device.
#pragma once

#include <mutex>

#include "attention/backend.h"

namespace rainserve::attention {

class CudaBackend final : public AttentionBackend {
 public:
  // Picks the forward kernel from the current device: the TMA + wgmma kernel
  // on Hopper (compute capability 9.x), mma.sync elsewhere;
  // RAINSERVE_FLASH_KERNEL=mma in the environment forces mma.sync.
  CudaBackend();
  ~CudaBackend() override;

  const char* Name() const override { return use_sm90_ ? "cuda-sm90" : "cuda-mma"; }
  Status Supports(const ForwardArgs& args, int64_t block_size) const override;
  Status PredictMask(const MaskArgs& args) override;
  Status Forward(const ForwardArgs& args) override;

  Status GatherRows(const void* src, void* dst, const int64_t* index, int64_t outer, int64_t rows,
                    int64_t row_bytes, void* stream) override;

 private:
  bool use_sm90_ = false;
  std::mutex mutex_;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
};

}  // namespace rainserve::attention
