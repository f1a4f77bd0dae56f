// CPU flash-attention inner loops, generic build (4 floats per vector).
#define RAINSERVE_KERNEL_NS generic
#define RAINSERVE_KERNEL_NAME "generic"
#define RAINSERVE_KERNEL_LANES 4
#define RAINSERVE_KERNEL_ROWS 4
#define RAINSERVE_KERNEL_COLS 3
#include "attention/cpu/flash_kernel_impl.h"

namespace rainserve::attention::cpu {
const KernelSet& GenericKernels() { return generic::Kernels(); }
}  // namespace rainserve::attention::cpu
