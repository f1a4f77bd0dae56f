// The canonical attention workloads of the benchmark programs (docs/benchmarks.md)
// and their inputs as at::Tensor on any device: the latent grid, the
// structured q and k, and Must() for the torch adapter's StatusOr results.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <utility>
#include <vector>

#include "attention/layout.h"
#include "common/status.h"

namespace rainserve::bench {

struct AttentionWorkload {
  const char* id;
  int64_t t, h, w, heads, head_dim;
};
// W1-W3: the GPU workloads; C1, C2: the CPU ones.
inline constexpr AttentionWorkload kAttentionWorkloads[] = {
    {"W1", 21, 30, 52, 12, 128}, {"W2", 21, 45, 80, 40, 128}, {"W3", 1, 64, 64, 12, 128},
    {"C1", 9, 16, 16, 4, 64},    {"C2", 13, 24, 40, 12, 64}};

// The workload's latent grid, with one sink frame for video (none for T = 1).
inline attention::TokenLayout LayoutOf(const AttentionWorkload& wl) {
  attention::TokenLayout l;
  l.frames = wl.t;
  l.height = wl.h;
  l.width = wl.w;
  l.sink_frames = wl.t > 1 ? 1 : 0;
  return l;
}

// The value, or exit(1) after printing the error (benchmarks only).
template <typename T>
T Must(StatusOr<T> v) {
  if (!v.ok()) {
    std::fprintf(stderr, "error: %s\n", v.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(v).value();
}

// Structured q, k (see attention/testing/inputs.h), computed with tensor ops
// on `device`: smooth random field (64 Gaussian-frequency modes, correlation
// 1.5 frames / 3 tokens) + noise, then Wan's 3D RoPE. [1, N, H, D] float,
// in the layout's original token order.
inline std::pair<at::Tensor, at::Tensor> StructuredQk(const attention::TokenLayout& l, int64_t H,
                                                      int64_t D, uint64_t seed,
                                                      const at::Device& device) {
  at::manual_seed(seed);
  const auto f = at::TensorOptions().dtype(at::kFloat).device(device);
  const int64_t M = 64, N = l.video_tokens();
  const at::Tensor t = at::arange(l.frames, f).view({-1, 1, 1}).expand({l.frames, l.height, l.width});
  const at::Tensor y = at::arange(l.height, f).view({1, -1, 1}).expand({l.frames, l.height, l.width});
  const at::Tensor x = at::arange(l.width, f).view({1, 1, -1}).expand({l.frames, l.height, l.width});
  const at::Tensor pos = at::stack({t.reshape(-1), y.reshape(-1), x.reshape(-1)}, 1);  // [N, 3]
  const at::Tensor lengths = at::tensor({1.5f, 3.0f, 3.0f}).to(device);
  const at::Tensor w = at::randn({H, 3, M}, f) / lengths.view({1, 3, 1});
  const at::Tensor phi = at::rand({H, 1, M}, f) * (2 * M_PI);
  const at::Tensor amp = at::randn({H, M, D}, f) * std::sqrt(2.0 / M);
  const at::Tensor u = at::bmm(at::cos(at::matmul(pos, w) + phi), amp);  // [H, N, D]
  at::Tensor q = (u + 0.3 * at::randn_like(u)).permute({1, 0, 2}).contiguous();
  at::Tensor k = (u + 0.3 * at::randn_like(u)).permute({1, 0, 2}).contiguous();
  // RoPE: t gets D - 4 (D / 6) dims, h and w 2 (D / 6) each.
  const int64_t dh = 2 * (D / 6), dt = D - 2 * dh;
  std::vector<at::Tensor> angles;
  const int64_t dims[3] = {dt, dh, dh};
  for (int a = 0; a < 3; ++a) {
    const at::Tensor i = at::arange(0, dims[a], 2, f);
    const at::Tensor theta = at::pow(10000.0, -i / static_cast<double>(dims[a]));
    angles.push_back(pos.select(1, a).unsqueeze(1) * theta.unsqueeze(0));  // [N, dims/2]
  }
  const at::Tensor ang = at::cat(angles, 1).unsqueeze(1);  // [N, 1, D/2]
  auto rope = [&](const at::Tensor& v) {
    const at::Tensor even = v.slice(2, 0, D, 2), odd = v.slice(2, 1, D, 2);
    const at::Tensor c = at::cos(ang), s = at::sin(ang);
    return at::stack({even * c - odd * s, even * s + odd * c}, 3).reshape({N, H, D});
  };
  return {rope(q).unsqueeze(0), rope(k).unsqueeze(0)};
}

}  // namespace rainserve::bench
