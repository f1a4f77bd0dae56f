#include "attention/engine.h"

namespace rainserve::attention {

AttentionEngine::AttentionEngine(int cpu_threads)
    : cpu_(std::make_unique<CpuBackend>(cpu_threads)) {}

AttentionEngine::~AttentionEngine() = default;

}  // namespace rainserve::attention
