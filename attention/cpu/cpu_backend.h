// The CPU attention backend: mask prediction (mask.h) and a multi-threaded,
// vectorised block-sparse flash-attention forward (flash_kernel_impl.h).
//
// Forward, per call:
//   1. pack every key/value block once to fp32 (K transposed), zero padded;
//   2. one task per (b, h, query block), handed out dynamically over the
//      thread pool: load Q (scaled), run the online softmax over the row's
//      kept key blocks, normalise, store O (and LSE).
// One call runs at a time per backend (the workspace is reused).
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "attention/backend.h"
#include "attention/cpu/flash_kernel.h"
#include "common/thread_pool.h"

namespace rainserve::attention {

class CpuBackend final : public AttentionBackend {
 public:
  // num_threads <= 0: one per hardware thread.
  explicit CpuBackend(int num_threads, const cpu::KernelSet* kernels = nullptr);

  const char* Name() const override { return name_.c_str(); }
  Status Supports(const ForwardArgs& args, int64_t block_size) const override;
  Status PredictMask(const MaskArgs& args) override;
  Status Forward(const ForwardArgs& args) override;
  Status GatherRows(const void* src, void* dst, const int64_t* index, int64_t outer, int64_t rows,
                    int64_t row_bytes, void* stream) override;

  ThreadPool& pool() { return pool_; }
  const cpu::KernelSet& kernels() const { return *kernels_; }

 private:
  ThreadPool pool_;
  const cpu::KernelSet* kernels_;
  std::string name_;
  std::mutex mutex_;            // serialises calls (workspace below)
  std::vector<float> packed_;   // [B, H, nb] slots of packed K/V
  std::vector<float> scratch_;  // per-thread row scratch
  std::vector<float> pooled_;   // [2, B, H, nb, D] pooled q and k
};

}  // namespace rainserve::attention
