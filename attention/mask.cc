#include "attention/mask.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "attention/bf16.h"
#include "attention/config.h"

namespace rainserve::attention {

void BlockMask::Resize(int64_t b, int64_t h, int64_t nq, int64_t nk) {
  batch = b;
  heads = h;
  q_blocks = nq;
  k_blocks = nk;
  counts.assign(static_cast<size_t>(b * h * nq), 0);
  indices.assign(static_cast<size_t>(b * h * nq * nk), 0);
}

int64_t BlockMask::kept() const {
  int64_t sum = 0;
  for (int32_t c : counts) sum += c;
  return sum;
}

BlockMask DenseBlockMask(int64_t batch, int64_t heads, int64_t num_blocks) {
  BlockMask mask;
  mask.Resize(batch, heads, num_blocks, num_blocks);
  std::fill(mask.counts.begin(), mask.counts.end(), static_cast<int32_t>(num_blocks));
  for (size_t row = 0; row < mask.counts.size(); ++row) {
    std::iota(mask.indices.begin() + static_cast<int64_t>(row) * num_blocks,
              mask.indices.begin() + static_cast<int64_t>(row + 1) * num_blocks, 0);
  }
  return mask;
}

void PoolBlocks(const TensorView& x, const BlockTableView& blocks, float* out, ThreadPool* pool) {
  const int64_t B = x.batch, H = x.heads, D = x.head_dim, nb = blocks.num_blocks;
  // One task per (b, blk): reads the block's tokens once for all heads.
  auto run = [&](int64_t task, int) {
    const int64_t b = task / nb, blk = task % nb;
    const int64_t begin = blocks.starts[blk], end = blocks.starts[blk + 1];
    std::vector<float> acc(static_cast<size_t>(H * D), 0.0f);
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t h = 0; h < H; ++h) {
        float* a = acc.data() + h * D;
        const int64_t off = x.Offset(b, n, h);
        if (x.dtype == DType::kFloat32) {
          const float* src = static_cast<const float*>(x.data) + off;
          for (int64_t d = 0; d < D; ++d) a[d] += src[d];
        } else {
          const uint16_t* src = static_cast<const uint16_t*>(x.data) + off;
          for (int64_t d = 0; d < D; ++d) a[d] += HalfToFloat(src[d], x.dtype);
        }
      }
    }
    const float inv = 1.0f / static_cast<float>(end - begin);
    for (int64_t h = 0; h < H; ++h) {
      float* dst = out + ((b * H + h) * nb + blk) * D;
      for (int64_t d = 0; d < D; ++d) dst[d] = acc[static_cast<size_t>(h * D + d)] * inv;
    }
  };
  if (pool) {
    pool->ParallelFor(B * nb, run);
  } else {
    for (int64_t t = 0; t < B * nb; ++t) run(t, 0);
  }
}

namespace {

// Key block indices ordered by (score desc, index asc); the first `n` sorted.
std::vector<int32_t> RankBlocks(const float* scores, int64_t nb, int64_t n) {
  std::vector<int32_t> order(static_cast<size_t>(nb));
  std::iota(order.begin(), order.end(), 0);
  auto better = [&](int32_t a, int32_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  };
  std::partial_sort(order.begin(), order.begin() + n, order.end(), better);
  return order;
}

// Writes the kept (keep[j] or forced[j]) indices ascending; returns the count.
int32_t WriteKept(const std::vector<uint8_t>& keep, const uint8_t* forced, int64_t nb,
                  int32_t* out) {
  int32_t count = 0;
  for (int64_t j = 0; j < nb; ++j) {
    if (keep[static_cast<size_t>(j)] || forced[j]) out[count++] = static_cast<int32_t>(j);
  }
  return count;
}

int32_t KeepAll(int64_t nb, int32_t* out) {
  for (int64_t j = 0; j < nb; ++j) out[j] = static_cast<int32_t>(j);
  return static_cast<int32_t>(nb);
}

// A kept mass within this of kept_mass reaches it: float logits carry about
// 1e-7 of relative rounding (0.5 + 0.3 reaches 0.8).
constexpr double kMassTolerance = 1e-6;

}  // namespace

int32_t SelectRow(const float* scores, int64_t nb, const uint8_t* forced, bool forced_row,
                  int64_t top_k, int32_t* out) {
  if (forced_row) return KeepAll(nb, out);
  // Keep the first top_k by rank, then add forced blocks, ascending.
  const std::vector<int32_t> order = RankBlocks(scores, nb, top_k);
  std::vector<uint8_t> keep(static_cast<size_t>(nb), 0);
  for (int64_t i = 0; i < top_k; ++i) keep[static_cast<size_t>(order[static_cast<size_t>(i)])] = 1;
  return WriteKept(keep, forced, nb, out);
}

int32_t SelectRowByMass(const float* scores, int64_t nb, const uint8_t* forced, bool forced_row,
                        const SelectionRule& rule, int32_t* out) {
  if (forced_row || rule.kept_mass >= 1.0) return KeepAll(nb, out);
  const int64_t floor = std::min<int64_t>(rule.min_kept_blocks, nb);
  const int64_t cap = rule.max_kept_blocks > 0 ? std::min<int64_t>(rule.max_kept_blocks, nb) : nb;
  // Softmax over the row's logits, in double.
  const float top = *std::max_element(scores, scores + nb);
  std::vector<double> p(static_cast<size_t>(nb));
  double sum = 0.0;
  for (int64_t j = 0; j < nb; ++j) {
    p[static_cast<size_t>(j)] = std::exp(double(scores[j]) - top);
    sum += p[static_cast<size_t>(j)];
  }
  std::vector<uint8_t> keep(static_cast<size_t>(nb), 0);
  double mass = 0.0;
  int64_t count = 0;
  for (int64_t j = 0; j < nb; ++j) {
    if (!forced[j]) continue;
    keep[static_cast<size_t>(j)] = 1;
    mass += p[static_cast<size_t>(j)] / sum;
    ++count;
  }
  const std::vector<int32_t> order = RankBlocks(scores, nb, nb);
  for (int32_t j : order) {
    if (count >= cap) break;
    if (count >= floor && mass >= rule.kept_mass - kMassTolerance) break;
    if (keep[static_cast<size_t>(j)]) continue;
    keep[static_cast<size_t>(j)] = 1;
    mass += p[static_cast<size_t>(j)] / sum;
    ++count;
  }
  return WriteKept(keep, forced, nb, out);
}

int64_t SelectBlocks(const float* pooled_q, const float* pooled_k, int64_t batch, int64_t heads,
                     int64_t head_dim, const BlockTableView& blocks, float scale,
                     const SelectionRule& rule, int32_t* counts, int32_t* indices,
                     ThreadPool* pool) {
  const int64_t nb = blocks.num_blocks, D = head_dim;
  const bool by_mass = rule.kept_mass > 0.0;
  const int64_t top_k = by_mass ? nb : TopKCount(nb, rule.sparsity);
  // One task per (b, h): scores of every query block against every key block.
  auto run = [&](int64_t bh, int) {
    const float* qp = pooled_q + bh * nb * D;
    const float* kp = pooled_k + bh * nb * D;
    std::vector<float> scores(static_cast<size_t>(nb));
    for (int64_t qb = 0; qb < nb; ++qb) {
      const bool forced_row = blocks.forced[qb] != 0;
      if (!forced_row) {
        for (int64_t kb = 0; kb < nb; ++kb) {
          float dot = 0.0f;
          for (int64_t d = 0; d < D; ++d) dot += qp[qb * D + d] * kp[kb * D + d];
          scores[static_cast<size_t>(kb)] = dot * scale;
        }
      }
      const int64_t row = bh * nb + qb;
      int32_t* out = indices + row * nb;
      counts[row] =
          by_mass ? SelectRowByMass(scores.data(), nb, blocks.forced, forced_row, rule, out)
                  : SelectRow(scores.data(), nb, blocks.forced, forced_row, top_k, out);
    }
  };
  if (pool) {
    pool->ParallelFor(batch * heads, run);
  } else {
    for (int64_t t = 0; t < batch * heads; ++t) run(t, 0);
  }
  int64_t kept = 0;
  for (int64_t row = 0; row < batch * heads * nb; ++row) kept += counts[row];
  return kept;
}

}  // namespace rainserve::attention
