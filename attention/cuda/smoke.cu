#include "attention/cuda/smoke.h"

#include <cuda_runtime.h>

#include <string>

namespace rainserve::cuda {
namespace {

__global__ void SaxpyKernel(float a, const float* __restrict__ x, float* __restrict__ y,
                            int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}

Status FromCuda(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return OkStatus();
  return InternalError(std::string(what) + ": " + cudaGetErrorString(err));
}

}  // namespace

Status Saxpy(float a, const float* x, float* y, int64_t n, void* stream) {
  if (n <= 0) return OkStatus();
  constexpr int kThreads = 256;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  SaxpyKernel<<<static_cast<unsigned>(blocks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      a, x, y, n);
  return FromCuda(cudaGetLastError(), "Saxpy launch");
}

StatusOr<std::string> DeviceDescription() {
  int device = 0;
  RAINSERVE_RETURN_IF_ERROR(FromCuda(cudaGetDevice(&device), "cudaGetDevice"));
  cudaDeviceProp prop{};
  RAINSERVE_RETURN_IF_ERROR(FromCuda(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties"));
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) +
         ", " + std::to_string(prop.multiProcessorCount) + " SMs)";
}

}  // namespace rainserve::cuda
