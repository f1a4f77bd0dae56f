// A trivial CUDA kernel used to prove the GPU build works end to end
// (tests/gpu/cuda_smoke_test.cc). Torch-free.
#pragma once

#include <cstdint>

#include "common/status.h"

namespace rainserve::cuda {

// y[i] = a * x[i] + y[i] for i < n, on `stream` (a cudaStream_t, may be null).
// x and y are device pointers. Launch errors come back as INTERNAL.
Status Saxpy(float a, const float* x, float* y, int64_t n, void* stream);

// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)" for the current device, or an error.
StatusOr<std::string> DeviceDescription();

}  // namespace rainserve::cuda
