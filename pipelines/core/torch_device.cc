#include "pipelines/core/torch_device.h"

#include <sys/resource.h>

#if RAINSERVE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace rainserve {

StatusOr<at::ScalarType> ParseDtype(const std::string& name) {
  if (name == "fp32") return at::kFloat;
  if (name == "bf16") return at::kBFloat16;
  if (name == "fp16") return at::kHalf;
  return InvalidArgumentError("unknown dtype '" + name + "' (fp32, bf16, fp16)");
}

StatusOr<at::Device> ParseDevice(const std::string& name) {
  try {
    const at::Device device(name);
    if (device.is_cuda() && !at::hasCUDA()) {
      return FailedPreconditionError("device '" + name +
                                     "': this build or machine has no CUDA device");
    }
    if (!device.is_cpu() && !device.is_cuda()) {
      return InvalidArgumentError("device '" + name + "': expected cpu or cuda:N");
    }
    return device;
  } catch (const std::exception&) {
    return InvalidArgumentError("device '" + name + "': expected cpu or cuda:N");
  }
}

int64_t CudaDeviceCount() {
#if RAINSERVE_WITH_CUDA
  return at::hasCUDA() ? static_cast<int64_t>(c10::cuda::device_count()) : 0;
#else
  return 0;
#endif
}

void ResetPeakMemory(const at::Device& device) {
#if RAINSERVE_WITH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
#else
  (void)device;
#endif
}

uint64_t PeakMemory(const at::Device& device) {
#if RAINSERVE_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return static_cast<uint64_t>(stats.allocated_bytes[0].peak);
  }
#endif
  (void)device;
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<uint64_t>(usage.ru_maxrss) * 1024;
}

void Synchronize(const at::Device& device) {
#if RAINSERVE_WITH_CUDA
  if (device.is_cuda()) c10::cuda::device_synchronize();
#else
  (void)device;
#endif
}

}  // namespace rainserve
