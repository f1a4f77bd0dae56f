#include "attention/engine.h"

#if RAINSERVE_WITH_CUDA
#include "attention/cuda/cuda_backend.h"
#endif

namespace rainserve::attention {

AttentionEngine::AttentionEngine(int cpu_threads)
    : cpu_(std::make_unique<CpuBackend>(cpu_threads)) {
#if RAINSERVE_WITH_CUDA
  cuda_ = std::make_unique<CudaBackend>();
#endif
}

AttentionEngine::~AttentionEngine() = default;

}  // namespace rainserve::attention
