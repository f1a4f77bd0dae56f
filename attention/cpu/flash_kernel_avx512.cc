// CPU flash-attention inner loops, avx512 build (16 floats per vector).
#define RAINSERVE_KERNEL_NS avx512
#define RAINSERVE_KERNEL_NAME "avx512"
#define RAINSERVE_KERNEL_LANES 16
#define RAINSERVE_KERNEL_ROWS 6
#define RAINSERVE_KERNEL_COLS 4
#include "attention/cpu/flash_kernel_impl.h"

namespace rainserve::attention::cpu {
const KernelSet& Avx512Kernels() { return avx512::Kernels(); }
}  // namespace rainserve::attention::cpu
