// CUDA-event timing shared by the GPU benchmark programs.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <functional>
#include <vector>

namespace rainserve::bench {

struct Timing {
  double median_ms = 0, min_ms = 0, max_ms = 0;
};

// Runs fn 3 times to warm up, then `reps` times, each call between two CUDA
// events on the default stream; returns the median, fastest and slowest call.
inline Timing TimeCuda(int reps, const std::function<void()>& fn) {
  for (int i = 0; i < 3; ++i) fn();
  cudaDeviceSynchronize();
  std::vector<double> ms;
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(start);
    fn();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float t = 0;
    cudaEventElapsedTime(&t, start, stop);
    ms.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms.front(), ms.back()};
}

}  // namespace rainserve::bench
