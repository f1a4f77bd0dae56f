#include "attention/testing/inputs.h"

#include <cmath>
#include <random>

namespace rainserve::attention::testing {

TokenLayout VideoLayout(int64_t t, int64_t h, int64_t w, int64_t sink, int64_t text,
                        TextPlacement where) {
  TokenLayout l;
  l.frames = t;
  l.height = h;
  l.width = w;
  l.sink_frames = sink;
  l.text_tokens = text;
  l.text_placement = text > 0 ? where : TextPlacement::kNone;
  return l;
}

void FillNormal(float* x, int64_t n, uint64_t seed, float stddev) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  for (int64_t i = 0; i < n; ++i) x[i] = dist(rng);
}

Qkv RandomQkv(int64_t batch, int64_t tokens, int64_t heads, int64_t head_dim, uint64_t seed) {
  Qkv x;
  x.batch = batch;
  x.tokens = tokens;
  x.heads = heads;
  x.head_dim = head_dim;
  const int64_t n = batch * tokens * heads * head_dim;
  x.q.resize(static_cast<size_t>(n));
  x.k.resize(static_cast<size_t>(n));
  x.v.resize(static_cast<size_t>(n));
  FillNormal(x.q.data(), n, seed * 3 + 1);
  FillNormal(x.k.data(), n, seed * 3 + 2);
  FillNormal(x.v.data(), n, seed * 3 + 3);
  return x;
}

namespace {

// Rotates pairs (2i, 2i+1) of vec[offset, offset + dim) by pos * theta_i,
// theta_i = 10000^(-2i/dim): one axis of a 3D rotary embedding.
void RotateAxis(float* vec, int64_t offset, int64_t dim, double pos) {
  for (int64_t i = 0; i + 1 < dim; i += 2) {
    const double theta = std::pow(10000.0, -static_cast<double>(i) / static_cast<double>(dim));
    const double c = std::cos(pos * theta), s = std::sin(pos * theta);
    float& a = vec[offset + i];
    float& b = vec[offset + i + 1];
    const double x = a, y = b;
    a = static_cast<float>(x * c - y * s);
    b = static_cast<float>(x * s + y * c);
  }
}

}  // namespace

Qkv StructuredQkv(const TokenLayout& layout, int64_t batch, int64_t heads, int64_t head_dim,
                  uint64_t seed, float gain) {
  const int64_t N = layout.total_tokens(), D = head_dim, H = heads;
  Qkv x = RandomQkv(batch, N, heads, head_dim, seed);  // v random; q, k overwritten below
  const int64_t text_offset =
      layout.text_placement == TextPlacement::kBefore ? layout.text_tokens : 0;
  // Wan's RoPE split: h and w get 2 * (D / 6) each, t the rest.
  const int64_t dh = 2 * (D / 6), dw = dh, dt = D - dh - dw;
  constexpr int kModes = 64;
  constexpr double kPi = 3.14159265358979323846;
  constexpr double kTimeLength = 1.5, kSpaceLength = 3.0;  // correlation lengths
  std::mt19937_64 rng(seed * 7919 + 17);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> phase(0.0, 2.0 * kPi);
  const double noise = 0.3;
  std::vector<double> u(static_cast<size_t>(D));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      double w[kModes][3], phi[kModes];
      std::vector<double> amp(static_cast<size_t>(kModes * D));
      for (int m = 0; m < kModes; ++m) {
        w[m][0] = normal(rng) / kTimeLength;
        w[m][1] = normal(rng) / kSpaceLength;
        w[m][2] = normal(rng) / kSpaceLength;
        phi[m] = phase(rng);
        for (int64_t d = 0; d < D; ++d) amp[m * D + d] = normal(rng) * std::sqrt(2.0 / kModes);
      }
      for (int64_t t = 0; t < layout.frames; ++t) {
        for (int64_t yy = 0; yy < layout.height; ++yy) {
          for (int64_t xx = 0; xx < layout.width; ++xx) {
            std::fill(u.begin(), u.end(), 0.0);
            for (int m = 0; m < kModes; ++m) {
              const double c = std::cos(w[m][0] * t + w[m][1] * yy + w[m][2] * xx + phi[m]);
              for (int64_t d = 0; d < D; ++d) u[d] += amp[m * D + d] * c;
            }
            const int64_t n = text_offset + (t * layout.height + yy) * layout.width + xx;
            for (std::vector<float>* dst : {&x.q, &x.k}) {
              float* row = dst->data() + ((b * N + n) * H + h) * D;
              for (int64_t d = 0; d < D; ++d) {
                row[d] = static_cast<float>(gain * u[d] + noise * normal(rng));
              }
              RotateAxis(row, 0, dt, static_cast<double>(t));
              RotateAxis(row, dt, dh, static_cast<double>(yy));
              RotateAxis(row, dt + dh, dw, static_cast<double>(xx));
            }
          }
        }
      }
    }
  }
  return x;
}

std::vector<float> Permuted(const TokenPermutation& perm, const std::vector<float>& x,
                            int64_t batch, int64_t heads, int64_t head_dim) {
  std::vector<float> out(x.size());
  ApplyPermutation(perm, x.data(), out.data(), batch,
                   heads * head_dim * static_cast<int64_t>(sizeof(float)));
  return out;
}

double Cosine(const float* a, const float* b, int64_t n) {
  double ab = 0, aa = 0, bb = 0;
  for (int64_t i = 0; i < n; ++i) {
    ab += double(a[i]) * b[i];
    aa += double(a[i]) * a[i];
    bb += double(b[i]) * b[i];
  }
  return ab / std::sqrt(aa * bb + 1e-300);
}

double RelativeL2(const float* a, const float* b, int64_t n) {
  double diff = 0, ref = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    ref += double(b[i]) * b[i];
  }
  return std::sqrt(diff / (ref + 1e-300));
}

}  // namespace rainserve::attention::testing
