// AttentionEngine: the attention backends of one process (or one model
// worker), created once and shared by every call. Torch-free.
#pragma once

#include <memory>

#include "attention/backend.h"
#include "attention/cpu/cpu_backend.h"

namespace rainserve::attention {

class AttentionEngine {
 public:
  // cpu_threads <= 0: one per hardware thread.
  explicit AttentionEngine(int cpu_threads);
  ~AttentionEngine();

  CpuBackend& cpu() { return *cpu_; }
  // The CUDA backend, or nullptr when this build has none.
  AttentionBackend* cuda() { return cuda_.get(); }

 private:
  std::unique_ptr<CpuBackend> cpu_;
  std::unique_ptr<AttentionBackend> cuda_;
};

}  // namespace rainserve::attention
