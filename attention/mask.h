// Block pooling and block-mask prediction (CPU implementations), and the
// host-owned BlockMask.
//
// Mask prediction, per batch element b and head h:
//   Qp, Kp = mean of q, k over each block                 [nb, D]
//   P      = softmax(Qp Kp^T * scale) over key blocks     [nb, nb]
//   row qb keeps its TopKCount(nb, sparsity) highest-scoring key blocks,
//   plus every forced (sink/text) key block; forced rows keep everything.
// Ties in score go to the lower block index, so the mask is deterministic.
// Selection ranks the logits Qp Kp^T * scale: softmax is monotonic, so this is
// the same order as ranking P, without exp's rounding creating new ties.
//
// Mass-targeted selection (rainfusion_mass) replaces the fixed top-k: row qb
// keeps every forced key block, then adds key blocks in the same ranking order
// until the kept blocks' probability in P[qb, :] (forced blocks counted)
// reaches kept_mass; the row's count is then clamped to
// [min_kept_blocks, max_kept_blocks] (0 = no cap; both at most nb), forced
// blocks staying kept above the cap. kept_mass 1 keeps every block. Rows
// therefore keep uneven counts: peaked (easy) rows few, flat (hard) rows many.
#pragma once

#include <cstdint>
#include <vector>

#include "attention/types.h"
#include "common/thread_pool.h"

namespace rainserve::attention {

struct BlockMask {
  int64_t batch = 0, heads = 0, q_blocks = 0, k_blocks = 0;
  std::vector<int32_t> counts;   // [B, H, q_blocks]
  std::vector<int32_t> indices;  // [B, H, q_blocks, k_blocks]

  void Resize(int64_t b, int64_t h, int64_t nq, int64_t nk);
  BlockMaskView view() const {
    return BlockMaskView{batch, heads, q_blocks, k_blocks, counts.data(), indices.data()};
  }
  int64_t kept() const;
  int64_t total() const { return batch * heads * q_blocks * k_blocks; }
  // Fraction of (query block, key block) pairs skipped.
  double sparsity() const { return total() == 0 ? 0.0 : 1.0 - double(kept()) / double(total()); }
};

// Every block kept: the dense mask.
BlockMask DenseBlockMask(int64_t batch, int64_t heads, int64_t num_blocks);

// out[b, h, blk, :] = mean of x[b, tokens of blk, h, :]   (fp32, [B, H, nb, D])
void PoolBlocks(const TensorView& x, const BlockTableView& blocks, float* out,
                ThreadPool* pool = nullptr);

// How a non-forced row picks its key blocks: top-k by sparsity
// (kept_mass == 0), or by mass (kept_mass in (0, 1]).
struct SelectionRule {
  double sparsity = 0.0;
  double kept_mass = 0.0;
  int64_t min_kept_blocks = 1;
  int64_t max_kept_blocks = 0;  // 0 = no cap
};

// Writes counts [B, H, nb] and indices [B, H, nb, nb] from pooled q and k
// ([B, H, nb, D]). Returns the number of kept block pairs.
int64_t SelectBlocks(const float* pooled_q, const float* pooled_k, int64_t batch, int64_t heads,
                     int64_t head_dim, const BlockTableView& blocks, float scale,
                     const SelectionRule& rule, int32_t* counts, int32_t* indices,
                     ThreadPool* pool = nullptr);

// The same selection for one (b, h): `scores` holds the logits of query row
// qb ([nb]); writes the kept, ascending indices to `out` and returns the count.
// Exposed for tests and other backends' reference checks.
int32_t SelectRow(const float* scores, int64_t nb, const uint8_t* forced, bool forced_row,
                  int64_t top_k, int32_t* out);

// The mass-targeted selection of one row (same arguments; `rule` gives
// kept_mass and the floor and cap).
int32_t SelectRowByMass(const float* scores, int64_t nb, const uint8_t* forced, bool forced_row,
                        const SelectionRule& rule, int32_t* out);

}  // namespace rainserve::attention
