// Per-call RainFusion2.0 settings and the plan shared by all layers of one
// transformer forward.
#pragma once

#include <cstdint>

#include "attention/layout.h"
#include "common/status.h"

namespace rainserve::attention {

// Settings that may change from call to call (per request, per step).
struct AttentionConfig {
  double sparsity = 0.0;           // fraction of key blocks each query row skips, [0, 1)
  // > 0: mass-targeted selection (mask.h), the pooled-softmax mass each row
  // keeps, (0, 1]; sparsity is then unused. Rows keep between min_kept_blocks
  // and max_kept_blocks (0 = no cap) key blocks.
  double kept_mass = 0.0;
  int64_t min_kept_blocks = 1;
  int64_t max_kept_blocks = 0;
  int64_t min_sparse_blocks = 4;   // sequences with fewer blocks run dense
  bool return_lse = false;         // also produce the log-sum-exp per query row
};

// INVALID_ARGUMENT naming the field when a value is out of range.
Status ValidateConfig(const AttentionConfig& config);

// Supported block sizes: powers of two in [16, 256]. The CUDA backend accepts
// 128 only (its Supports() says so).
Status ValidateBlockSize(int64_t block_size);

// Key blocks a non-forced query row keeps by score: ceil(k_blocks * (1 - sparsity)),
// at least 1 and at most k_blocks.
int64_t TopKCount(int64_t k_blocks, double sparsity);

// True when this call runs with every block kept.
inline bool RunsDense(const AttentionConfig& config, int64_t num_blocks) {
  return (config.sparsity <= 0.0 && config.kept_mass <= 0.0) ||
         num_blocks < config.min_sparse_blocks;
}

// Everything fixed for one transformer forward: the layout, the window, the
// permutation and the block table. Built once (cheap, host only) and reused
// by every self-attention layer of that forward.
struct AttentionPlan {
  TokenLayout layout;
  WindowShape window;
  TokenPermutation permutation;
  BlockTable blocks;
  uint64_t id = 0;  // unique per Build(): keys device copies of the tables

  static StatusOr<AttentionPlan> Build(const TokenLayout& layout, const WindowShape& window,
                                       int64_t block_size = 128);
  int64_t tokens() const { return layout.total_tokens(); }
  int64_t num_blocks() const { return blocks.num_blocks(); }
};

}  // namespace rainserve::attention
