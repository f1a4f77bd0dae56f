// Whether the GPU test suites have a device to run on (they skip otherwise).
#pragma once

#include <cuda_runtime.h>

namespace rainserve::testing {

inline bool HasCudaDevice() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

}  // namespace rainserve::testing
