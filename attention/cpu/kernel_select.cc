// Which CPU kernel sets this binary holds and which of them this CPU runs.
#include <cstdlib>
#include <cstring>

#include "attention/cpu/flash_kernel.h"

namespace rainserve::attention::cpu {

std::vector<const KernelSet*> CompiledKernels() {
#if defined(__x86_64__)
  return {&GenericKernels(), &Avx2Kernels(), &Avx512Kernels()};
#else
  return {&GenericKernels()};
#endif
}

bool CpuRuns(const KernelSet& set) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (&set == &Avx512Kernels()) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("fma");
  }
  if (&set == &Avx2Kernels()) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }
#endif
  return &set == &GenericKernels();
}

std::vector<const KernelSet*> AvailableKernels() {
  std::vector<const KernelSet*> sets;
  for (const KernelSet* set : CompiledKernels()) {
    if (CpuRuns(*set)) sets.push_back(set);
  }
  return sets;
}

const KernelSet& SelectKernels() {
  const std::vector<const KernelSet*> sets = AvailableKernels();
  if (const char* forced = std::getenv("RAINSERVE_CPU_ISA")) {
    for (const KernelSet* set : sets) {
      if (std::strcmp(set->isa, forced) == 0) return *set;
    }
  }
  return *sets.back();
}

}  // namespace rainserve::attention::cpu
