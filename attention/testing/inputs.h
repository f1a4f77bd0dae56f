// Synthetic attention inputs for tests and benchmarks (never the server).
//
// Random: q, k, v ~ N(0, 1).
// Structured: q and k whose attention is local in space and time, the way it
// is in trained video DiTs. Per (batch, head):
//   u(t, y, x) = sqrt(2/M) sum_m a_m cos(w_m . (t, y, x) + phi_m)   (R^D, M = 64 modes)
//   a_m ~ N(0, I_D),  w_m ~ N(0, diag(1/lt^2, 1/ls^2, 1/ls^2)),  phi_m ~ U[0, 2pi)
//   q = gain * u + noise,  k = gain * u + noise              (neighbours look alike)
//   q, k <- 3D RoPE(t, y, x)  (Wan's split of D between t, h and w)
// With random Gaussian frequencies the field's correlation decays like
// exp(-|dt|^2 / 2lt^2 - |ds|^2 / 2ls^2) (lt = 1.5 frames, ls = 3 tokens), so a
// query's large scores (about gain^2 sqrt(D) at distance 0) fall on nearby
// tokens and the rest sit near 0; text tokens are plain noise.
// Everything is produced in the ORIGINAL token order of the layout.
#pragma once

#include <cstdint>
#include <vector>

#include "attention/layout.h"
#include "attention/types.h"

namespace rainserve::attention::testing {

struct Qkv {
  int64_t batch = 0, tokens = 0, heads = 0, head_dim = 0;
  std::vector<float> q, k, v;  // [B, N, H, D] each

  TensorView View(std::vector<float>& x) {
    return TensorView::Contiguous(x.data(), DType::kFloat32, batch, tokens, heads, head_dim);
  }
};

// A T x H x W layout with `sink` sink frames and `text` text tokens after the video.
TokenLayout VideoLayout(int64_t t, int64_t h, int64_t w, int64_t sink = 0, int64_t text = 0,
                        TextPlacement where = TextPlacement::kAfter);

void FillNormal(float* x, int64_t n, uint64_t seed, float stddev = 1.0f);

Qkv RandomQkv(int64_t batch, int64_t tokens, int64_t heads, int64_t head_dim, uint64_t seed);

// gain sets how peaked the attention is (logits ~ gain^2 * sqrt(D) * correlation).
Qkv StructuredQkv(const TokenLayout& layout, int64_t batch, int64_t heads, int64_t head_dim,
                  uint64_t seed, float gain = 1.0f);

// Applies `perm` to a [B, N, H, D] float buffer (returns the permuted copy).
std::vector<float> Permuted(const TokenPermutation& perm, const std::vector<float>& x,
                            int64_t batch, int64_t heads, int64_t head_dim);

// Cosine similarity and relative L2 error ||a - b|| / ||b||.
double Cosine(const float* a, const float* b, int64_t n);
double RelativeL2(const float* a, const float* b, int64_t n);

}  // namespace rainserve::attention::testing
