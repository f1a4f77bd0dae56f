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

// Times several functions round-robin: each is warmed up 3 times, then each
// of `reps` rounds calls every one once, each call between two CUDA events on
// the default stream, so that all of them meet the same clocks and
// temperatures (a power-limited GPU slows down as it warms up; timed one after
// another, the first would gain). Returns each one's median, fastest and
// slowest call.
inline std::vector<Timing> TimeCudaInterleaved(int reps,
                                               const std::vector<std::function<void()>>& fns) {
  for (const auto& fn : fns) {
    for (int i = 0; i < 3; ++i) fn();
  }
  cudaDeviceSynchronize();
  std::vector<std::vector<double>> ms(fns.size());
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int i = 0; i < reps; ++i) {
    for (size_t f = 0; f < fns.size(); ++f) {
      cudaEventRecord(start);
      fns[f]();
      cudaEventRecord(stop);
      cudaEventSynchronize(stop);
      float t = 0;
      cudaEventElapsedTime(&t, start, stop);
      ms[f].push_back(t);
    }
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::vector<Timing> out;
  for (auto& m : ms) {
    std::sort(m.begin(), m.end());
    out.push_back({m[m.size() / 2], m.front(), m.back()});
  }
  return out;
}

}  // namespace rainserve::bench
