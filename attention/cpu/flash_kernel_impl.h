// Template body of the CPU flash-attention inner loops. Included by one .cc
// per instruction set, each defining before the include:
//   RAINSERVE_KERNEL_NS     namespace for this copy (e.g. avx512)
//   RAINSERVE_KERNEL_LANES  floats per vector (16, 8, 4)
//   RAINSERVE_KERNEL_ROWS   rows per micro-tile
//   RAINSERVE_KERNEL_COLS   vectors per micro-tile row
// and compiled with the matching -m flags; the code uses GCC vector
// extensions, so one source yields AVX-512, AVX2 or SSE code.
//
// Per query block (rows x dp) and kept key block (len tokens):
//   S = Q Kt                      micro-tiles of ROWS x (COLS * LANES)
//   m' = max(m, rowmax S); P = exp2(S - m'); l = l * exp2(m - m') + rowsum P
//   O = O * exp2(m - m') + P V    micro-tiles of ROWS x (COLS * LANES)
// Q is pre-scaled by scale*log2(e), so exp2 replaces exp.

#include <chrono>
#include <cstring>
#include <limits>

#include "attention/cpu/flash_kernel.h"

namespace rainserve::attention::cpu::RAINSERVE_KERNEL_NS {
namespace {

constexpr int kLanes = RAINSERVE_KERNEL_LANES;
constexpr int kRows = RAINSERVE_KERNEL_ROWS;
constexpr int kCols = RAINSERVE_KERNEL_COLS;

typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t IVec __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline Vec Load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void Store(float* p, Vec v) { std::memcpy(p, &v, sizeof(v)); }
inline Vec Splat(float x) { return Vec{} + x; }
inline Vec Max(Vec a, Vec b) { return a > b ? a : b; }

// 2^x for x <= 0 (the only inputs here), relative error ~2e-7; exactly 0
// below -126 (also for -inf).
inline Vec Exp2(Vec x) {
  const Vec lo = Splat(-127.0f);
  x = x < lo ? lo : x;
  // r = round(x) by the 1.5 * 2^23 trick; f = x - r in [-0.5, 0.5].
  const Vec magic = Splat(12582912.0f);
  const Vec r = (x + magic) - magic;
  const Vec f = x - r;
  // 2^f = e^(f ln2): Taylor series to degree 6 (c_k = ln2^k / k!); the
  // truncation error is below (0.347^7 / 7!) ~ 1.2e-7.
  Vec p = Splat(1.5403530393381606e-4f);
  p = p * f + Splat(1.3333558146428443e-3f);
  p = p * f + Splat(9.6181291076284772e-3f);
  p = p * f + Splat(5.5504108664821580e-2f);
  p = p * f + Splat(2.4022650695910071e-1f);
  p = p * f + Splat(6.9314718055994531e-1f);
  p = p * f + Splat(1.0f);
  const IVec e = __builtin_convertvector(r, IVec) << 23;
  IVec bits;
  std::memcpy(&bits, &p, sizeof(bits));
  bits += e;
  Vec out;
  std::memcpy(&out, &bits, sizeof(out));
  return x < Splat(-126.0f) ? Vec{} : out;
}

// C[R][C*kLanes] (=|+=) A[R][K] * B[K][C*kLanes]; A by row broadcast, B by
// vector loads. With `c_scale`, C is first multiplied row-wise by it (the
// online-softmax rescale of O); with `accumulate` false, C starts at zero.
template <int R, int C>
inline void MicroTile(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t k,
                      float* c, int64_t ldc, const float* c_scale, bool accumulate) {
  Vec acc[R][C];
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < C; ++j) {
      acc[r][j] = accumulate ? Load(c + r * ldc + j * kLanes) * Splat(c_scale[r]) : Vec{};
    }
  }
  for (int64_t kk = 0; kk < k; ++kk) {
    Vec bv[C];
    for (int j = 0; j < C; ++j) bv[j] = Load(b + kk * ldb + j * kLanes);
    for (int r = 0; r < R; ++r) {
      const Vec av = Splat(a[r * lda + kk]);
      for (int j = 0; j < C; ++j) acc[r][j] += av * bv[j];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < C; ++j) Store(c + r * ldc + j * kLanes, acc[r][j]);
  }
}

template <int R>
inline void MicroRow(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t k, float* c,
                     int64_t ldc, int64_t vectors, const float* c_scale, bool accumulate) {
  int64_t j = 0;
  for (; j + kCols <= vectors; j += kCols) {
    MicroTile<R, kCols>(a, lda, b + j * kLanes, ldb, k, c + j * kLanes, ldc, c_scale, accumulate);
  }
  const int64_t rest = vectors - j;
  b += j * kLanes;
  c += j * kLanes;
  // kCols <= 4: at most three leftover vectors.
  if (rest == 1) MicroTile<R, 1>(a, lda, b, ldb, k, c, ldc, c_scale, accumulate);
  if (rest == 2) MicroTile<R, 2>(a, lda, b, ldb, k, c, ldc, c_scale, accumulate);
  if (rest == 3) MicroTile<R, 3>(a, lda, b, ldb, k, c, ldc, c_scale, accumulate);
}

template <int R = kRows>
inline void GemmRows(int64_t rows, const float* a, int64_t lda, const float* b, int64_t ldb,
                     int64_t k, float* c, int64_t ldc, int64_t vectors, const float* c_scale,
                     bool accumulate) {
  int64_t r = 0;
  for (; r + R <= rows; r += R) {
    MicroRow<R>(a + r * lda, lda, b, ldb, k, c + r * ldc, ldc, vectors,
                c_scale ? c_scale + r : nullptr, accumulate);
  }
  if constexpr (R > 1) {
    if (r < rows) {
      GemmRows<R - 1>(rows - r, a + r * lda, lda, b, ldb, k, c + r * ldc, ldc, vectors,
                      c_scale ? c_scale + r : nullptr, accumulate);
    }
  }
}

void AttendRow(const RowProblem& p) {
  const int64_t rows = p.rows, dp = p.dp, bsp = p.bsp;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < rows; ++r) {
    p.m[r] = kNegInf;
    p.l[r] = 0.0f;
  }
  std::memset(p.o, 0, sizeof(float) * static_cast<size_t>(rows * dp));
  float alpha[256 + kRows];
  for (int32_t i = 0; i < p.num_blocks; ++i) {
    const float* kt = p.packed + static_cast<int64_t>(p.block_ids[i]) * p.slot_floats;
    const float* vp = kt + dp * bsp;
    const int64_t len = p.block_lens[i];
    const int64_t cols = (len + kLanes - 1) / kLanes;  // vectors of S per row
    // S[rows][cols*kLanes] = Q[rows][dp] * Kt[dp][bsp]
    GemmRows(rows, p.q, dp, kt, bsp, dp, p.s, bsp, cols, nullptr, false);
    // Online softmax over the row's `len` valid scores.
    for (int64_t r = 0; r < rows; ++r) {
      float* s = p.s + r * bsp;
      for (int64_t j = len; j < cols * kLanes; ++j) s[j] = kNegInf;
      Vec vmax = Splat(kNegInf);
      for (int64_t j = 0; j < cols; ++j) vmax = Max(vmax, Load(s + j * kLanes));
      float row_max = vmax[0];
      for (int k = 1; k < kLanes; ++k) row_max = vmax[k] > row_max ? vmax[k] : row_max;
      const float m_new = row_max > p.m[r] ? row_max : p.m[r];
      const Vec vm = Splat(m_new);
      Vec vsum = Vec{};
      for (int64_t j = 0; j < cols; ++j) {
        const Vec e = Exp2(Load(s + j * kLanes) - vm);
        Store(s + j * kLanes, e);
        vsum += e;
      }
      float row_sum = 0.0f;
      for (int k = 0; k < kLanes; ++k) row_sum += vsum[k];
      const float a = Exp2(Splat(p.m[r] - m_new))[0];
      alpha[r] = a;
      p.l[r] = p.l[r] * a + row_sum;
      p.m[r] = m_new;
    }
    // O[rows][dp] = alpha * O + P[rows][len] * V[len][dp]
    GemmRows(rows, p.s, bsp, vp, dp, len, p.o, dp, dp / kLanes, alpha, true);
  }
}

// Peak FMA throughput of one thread: many independent accumulators so the
// FMA pipes never wait on latency.
double FmaPeakGflops(double seconds) {
  constexpr int kAcc = 12;
  Vec acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = Splat(0.001f * static_cast<float>(i));
  const Vec x = Splat(0.999999f), y = Splat(1e-7f);
  int64_t iterations = 0;
  const auto start = std::chrono::steady_clock::now();
  double elapsed = 0;
  do {
    for (int rep = 0; rep < 4096; ++rep) {
      for (int i = 0; i < kAcc; ++i) acc[i] = acc[i] * x + y;
    }
    iterations += 4096;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  } while (elapsed < seconds);
  volatile float sink = 0;
  for (int i = 0; i < kAcc; ++i) sink = sink + acc[i][0];
  (void)sink;
  return static_cast<double>(iterations) * kAcc * kLanes * 2.0 / elapsed * 1e-9;
}

}  // namespace

const KernelSet& Kernels() {
  static const KernelSet set{RAINSERVE_KERNEL_NAME, kLanes, &AttendRow, &FmaPeakGflops};
  return set;
}

}  // namespace rainserve::attention::cpu::RAINSERVE_KERNEL_NS
