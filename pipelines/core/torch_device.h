// Devices and dtypes of a model as its options name them, and the device
// clock and memory figures the pipelines report.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

#include "common/status.h"

namespace rainserve {

// "fp32" | "bf16" | "fp16"; INVALID_ARGUMENT otherwise.
StatusOr<at::ScalarType> ParseDtype(const std::string& name);
// "cpu" | "cuda:N"; FAILED_PRECONDITION when this build or machine has no CUDA.
StatusOr<at::Device> ParseDevice(const std::string& name);

// CUDA devices this build and machine can use (0 without CUDA).
int64_t CudaDeviceCount();

// Waits for the device's queued work (stage and step times are device times).
void Synchronize(const at::Device& device);
// Peak memory since the last ResetPeakMemory on `device`: the CUDA caching
// allocator's peak for GPUs, the process's peak resident set on the CPU.
void ResetPeakMemory(const at::Device& device);
uint64_t PeakMemory(const at::Device& device);

}  // namespace rainserve
