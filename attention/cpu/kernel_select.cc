#include <cstdlib>
#include <cstring>

#include "attention/cpu/flash_kernel.h"

namespace rainserve::attention::cpu {

const KernelSet& SelectKernels() {
  const char* forced = std::getenv("RAINSERVE_CPU_ISA");
#if defined(__x86_64__)
  __builtin_cpu_init();
  const bool has_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (forced != nullptr) {
    if (std::strcmp(forced, "avx512") == 0 && has_avx512) return Avx512Kernels();
    if (std::strcmp(forced, "avx2") == 0 && has_avx2) return Avx2Kernels();
    if (std::strcmp(forced, "generic") == 0) return GenericKernels();
  }
  if (has_avx512) return Avx512Kernels();
  if (has_avx2) return Avx2Kernels();
#else
  (void)forced;
#endif
  return GenericKernels();
}

}  // namespace rainserve::attention::cpu
