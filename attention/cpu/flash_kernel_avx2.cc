// CPU flash-attention inner loops, avx2 build (8 floats per vector).
#define RAINSERVE_KERNEL_NS avx2
#define RAINSERVE_KERNEL_NAME "avx2"
#define RAINSERVE_KERNEL_LANES 8
#define RAINSERVE_KERNEL_ROWS 4
#define RAINSERVE_KERNEL_COLS 3
#include "attention/cpu/flash_kernel_impl.h"

namespace rainserve::attention::cpu {
const KernelSet& Avx2Kernels() { return avx2::Kernels(); }
}  // namespace rainserve::attention::cpu
