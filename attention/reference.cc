#include "attention/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "attention/bf16.h"

namespace rainserve::attention {
namespace {

// q, k, v of every (b, h), widened to T: q and v as [N][D] rows, k
// transposed to [D][N] so that score loops run over consecutive keys.
template <typename T>
struct WideHeads {
  std::vector<std::vector<T>> q, kt, v;  // [B * H] each
};

template <typename T>
std::vector<T> Widen(const TensorView& x, int64_t b, int64_t h, bool transpose) {
  const int64_t N = x.tokens, D = x.head_dim;
  std::vector<T> out(static_cast<size_t>(N * D));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t d = 0; d < D; ++d) {
      const T value = static_cast<T>(LoadAsFloat(x.data, x.dtype, x.Offset(b, n, h) + d));
      out[transpose ? d * N + n : n * D + d] = value;
    }
  }
  return out;
}

template <typename T>
WideHeads<T> WidenHeads(const TensorView& q, const TensorView& k, const TensorView& v) {
  WideHeads<T> w;
  for (int64_t b = 0; b < q.batch; ++b) {
    for (int64_t h = 0; h < q.heads; ++h) {
      w.q.push_back(Widen<T>(q, b, h, false));
      w.kt.push_back(Widen<T>(k, b, h, true));
      w.v.push_back(Widen<T>(v, b, h, false));
    }
  }
  return w;
}

// The token ranges [begin, end) query block `qb` of (b, h) may attend to:
// the kept key blocks, ascending.
std::vector<std::pair<int64_t, int64_t>> AllowedKeys(const BlockTableView& blocks,
                                                     const BlockMaskView& mask, int64_t b,
                                                     int64_t h, int64_t qb) {
  std::vector<std::pair<int64_t, int64_t>> ranges;
  const int64_t row = mask.Row(b, h, qb);
  for (int32_t c = 0; c < mask.counts[row]; ++c) {
    const int32_t kb = mask.indices[row * mask.k_blocks + c];
    ranges.emplace_back(blocks.starts[kb], blocks.starts[kb + 1]);
  }
  return ranges;
}

// Masked softmax attention of the query rows of block qb of (b, h), in T
// arithmetic, with `round` applied to scores, probabilities and the output:
//   s_j = (sum_d q_d k_jd) * scale      for allowed j (sum in order of d)
//   out = round(sum_j round(exp(s_j - max) / sum exp(s - max)) v_j)
//   lse = max + log(sum exp(s - max))
template <typename T, typename Round>
void AttendQueryBlock(const WideHeads<T>& w, const BlockTableView& blocks,
                      const BlockMaskView& mask, int64_t b, int64_t h, int64_t qb, T scale,
                      Round round, int64_t N, int64_t H, int64_t D, T* out, T* lse) {
  const std::vector<T>& qr = w.q[b * H + h];
  const std::vector<T>& kt = w.kt[b * H + h];
  const std::vector<T>& vr = w.v[b * H + h];
  const auto keys = AllowedKeys(blocks, mask, b, h, qb);
  std::vector<T> scores(static_cast<size_t>(N)), acc(static_cast<size_t>(D));
  for (int64_t i = blocks.starts[qb]; i < blocks.starts[qb + 1]; ++i) {
    T max_score = -std::numeric_limits<T>::infinity();
    for (const auto& [begin, end] : keys) {
      std::fill(scores.begin() + begin, scores.begin() + end, T(0));
      for (int64_t d = 0; d < D; ++d) {
        const T qd = qr[i * D + d];
        const T* kd = kt.data() + d * N;
        for (int64_t j = begin; j < end; ++j) scores[j] += qd * kd[j];
      }
      for (int64_t j = begin; j < end; ++j) {
        scores[j] = round(scores[j] * scale);
        max_score = std::max(max_score, scores[j]);
      }
    }
    T denom = 0;  // scores become exp(s_j - max)
    for (const auto& [begin, end] : keys) {
      for (int64_t j = begin; j < end; ++j) {
        scores[j] = std::exp(scores[j] - max_score);
        denom += scores[j];
      }
    }
    std::fill(acc.begin(), acc.end(), T(0));
    for (const auto& [begin, end] : keys) {
      for (int64_t j = begin; j < end; ++j) {
        const T p = round(scores[j] / denom);
        for (int64_t d = 0; d < D; ++d) acc[d] += p * vr[j * D + d];
      }
    }
    T* o = out + ((b * N + i) * H + h) * D;
    for (int64_t d = 0; d < D; ++d) o[d] = round(acc[d]);
    if (lse != nullptr) lse[(b * H + h) * N + i] = max_score + std::log(denom);
  }
}

// Runs AttendQueryBlock for every (b, h, query block), in parallel with a pool.
template <typename T, typename Round>
void MaskedAttention(const TensorView& q, const TensorView& k, const TensorView& v,
                     const BlockTableView& blocks, const BlockMaskView& mask, T scale, Round round,
                     std::vector<T>* out, std::vector<T>* lse, ThreadPool* pool) {
  const int64_t B = q.batch, N = q.tokens, H = q.heads, D = q.head_dim, nb = blocks.num_blocks;
  out->assign(static_cast<size_t>(B * N * H * D), T(0));
  if (lse) lse->assign(static_cast<size_t>(B * H * N), T(0));
  const WideHeads<T> w = WidenHeads<T>(q, k, v);
  auto task = [&](int64_t t, int) {
    const int64_t qb = t % nb, bh = t / nb;
    AttendQueryBlock(w, blocks, mask, bh / H, bh % H, qb, scale, round, N, H, D, out->data(),
                     lse ? lse->data() : nullptr);
  };
  if (pool != nullptr) {
    pool->ParallelFor(B * H * nb, task);
  } else {
    for (int64_t t = 0; t < B * H * nb; ++t) task(t, 0);
  }
}

}  // namespace

void ReferenceAttention(const TensorView& q, const TensorView& k, const TensorView& v,
                        const BlockTableView& blocks, const BlockMaskView& mask, double scale,
                        std::vector<double>* out, std::vector<double>* lse, ThreadPool* pool) {
  MaskedAttention<double>(q, k, v, blocks, mask, scale, [](double x) { return x; }, out, lse,
                          pool);
}

void NaiveAttention(const TensorView& q, const TensorView& k, const TensorView& v,
                    const BlockTableView& blocks, const BlockMaskView& mask, float scale,
                    DType precision, std::vector<float>* out, std::vector<float>* lse,
                    ThreadPool* pool) {
  auto round = [precision](float x) {
    return precision == DType::kFloat32 ? x : HalfToFloat(FloatToHalf(x, precision), precision);
  };
  MaskedAttention<float>(q, k, v, blocks, mask, scale, round, out, lse, pool);
}

}  // namespace rainserve::attention
