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

// Writes counts [B, H, nb] and indices [B, H, nb, nb] from pooled q and k
// ([B, H, nb, D]). Returns the number of kept block pairs.
int64_t SelectBlocks(const float* pooled_q, const float* pooled_k, int64_t batch, int64_t heads,
                     int64_t head_dim, const BlockTableView& blocks, float scale, double sparsity,
                     int32_t* counts, int32_t* indices, ThreadPool* pool = nullptr);

// The same selection for one (b, h): `scores` holds the logits of query row
// qb ([nb]); writes the kept, ascending indices to `out` and returns the count.
// Exposed for tests and other backends' reference checks.
int32_t SelectRow(const float* scores, int64_t nb, const uint8_t* forced, bool forced_row,
                  int64_t top_k, int32_t* out);

}  // namespace rainserve::attention
