// CUDA-event timing shared by the GPU benchmark programs.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "bench/bench_util.h"

namespace rainserve::bench {

// Times several functions round-robin: each is warmed up 3 times, then each
// of `reps` rounds calls every one in turn, between two CUDA events on the
// default stream, so that all of them meet the same clocks and temperatures
// (a power-limited GPU slows down as it warms up; timed one after another,
// the first would gain). With burst_ms = 0 a round calls each function once.
// With burst_ms > 0 it calls each one back to back for about that long (the
// count from its last warm-up call) and records the mean per call, so that
// every function runs at the clock its own load settles at instead of the one
// the function before it left behind. Returns each one's median, fastest and
// slowest (per-call) time.
inline std::vector<Timing> TimeCudaInterleaved(int reps,
                                               const std::vector<std::function<void()>>& fns,
                                               double burst_ms = 0) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  auto time_calls = [&](const std::function<void()>& fn, int calls) {
    cudaEventRecord(start);
    for (int c = 0; c < calls; ++c) fn();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float t = 0;
    cudaEventElapsedTime(&t, start, stop);
    return static_cast<double>(t) / calls;
  };
  std::vector<int> calls(fns.size(), 1);
  for (size_t f = 0; f < fns.size(); ++f) {
    for (int i = 0; i < 2; ++i) fns[f]();
    const double warm_ms = time_calls(fns[f], 1);
    if (burst_ms > 0) {
      calls[f] = std::max(1, static_cast<int>(std::lround(burst_ms / std::max(warm_ms, 1e-3))));
    }
  }
  cudaDeviceSynchronize();
  std::vector<std::vector<double>> ms(fns.size());
  for (int i = 0; i < reps; ++i) {
    for (size_t f = 0; f < fns.size(); ++f) ms[f].push_back(time_calls(fns[f], calls[f]));
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::vector<Timing> out;
  for (auto& m : ms) out.push_back(Summarize(std::move(m)));
  return out;
}

}  // namespace rainserve::bench
