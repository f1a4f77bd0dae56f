#include "attention/config.h"

#include <atomic>
#include <cmath>
#include <sstream>
#include <string>

namespace rainserve::attention {

Status ValidateConfig(const AttentionConfig& config) {
  if (!(config.sparsity >= 0.0 && config.sparsity < 1.0)) {  // also rejects NaN
    std::ostringstream msg;
    msg << "sparsity must be in [0, 1), got " << config.sparsity;
    return InvalidArgumentError(msg.str());
  }
  if (!(config.kept_mass >= 0.0 && config.kept_mass <= 1.0)) {
    std::ostringstream msg;
    msg << "kept_mass must be in [0, 1], got " << config.kept_mass;
    return InvalidArgumentError(msg.str());
  }
  if (config.min_kept_blocks < 1 || config.max_kept_blocks < 0) {
    return InvalidArgumentError("min_kept_blocks must be >= 1 and max_kept_blocks >= 0, got " +
                                std::to_string(config.min_kept_blocks) + " and " +
                                std::to_string(config.max_kept_blocks));
  }
  if (config.min_sparse_blocks < 1) {
    return InvalidArgumentError("min_sparse_blocks must be >= 1, got " +
                                std::to_string(config.min_sparse_blocks));
  }
  return OkStatus();
}

Status ValidateBlockSize(int64_t block_size) {
  const bool power_of_two = block_size > 0 && (block_size & (block_size - 1)) == 0;
  if (!power_of_two || block_size < 16 || block_size > 256) {
    return InvalidArgumentError("block_size must be a power of two in [16, 256], got " +
                                std::to_string(block_size));
  }
  return OkStatus();
}

int64_t TopKCount(int64_t k_blocks, double sparsity) {
  // The small epsilon keeps exact products (e.g. 10 * 0.8 = 8.000000000000002)
  // from rounding up to one block more than intended.
  const double raw = std::ceil(static_cast<double>(k_blocks) * (1.0 - sparsity) - 1e-9);
  const int64_t k = static_cast<int64_t>(raw);
  if (k < 1) return 1;
  return k > k_blocks ? k_blocks : k;
}

StatusOr<AttentionPlan> AttentionPlan::Build(const TokenLayout& layout, const WindowShape& window,
                                             int64_t block_size) {
  RAINSERVE_RETURN_IF_ERROR(ValidateBlockSize(block_size));
  AttentionPlan plan;
  plan.layout = layout;
  plan.window = window;
  RAINSERVE_ASSIGN_OR_RETURN(plan.permutation, BuildPermutation(layout, window));
  RAINSERVE_ASSIGN_OR_RETURN(plan.blocks, BuildBlockTable(layout, block_size));
  static std::atomic<uint64_t> next_id{1};
  plan.id = next_id.fetch_add(1);
  return plan;
}

}  // namespace rainserve::attention
