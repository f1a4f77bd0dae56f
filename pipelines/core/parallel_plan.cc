#include "pipelines/core/parallel_plan.h"

namespace rainserve {

std::vector<int64_t> ParallelPlan::UlyssesGroup(int64_t rank) const {
  std::vector<int64_t> group;
  const int64_t first = CfgRank(rank) * ulysses_degree;
  for (int64_t r = 0; r < ulysses_degree; ++r) group.push_back(first + r);
  return group;
}

std::vector<int64_t> ParallelPlan::CfgGroup(int64_t rank) const {
  std::vector<int64_t> group;
  for (int64_t c = 0; c < cfg_degree; ++c) group.push_back(c * ulysses_degree + UlyssesRank(rank));
  return group;
}

Status CheckHeadsDivisible(int64_t devices, int64_t heads) {
  if (devices < 1 || devices > kMaxModelDevices) {
    return InvalidArgumentError("devices: expected 1 to " + std::to_string(kMaxModelDevices) +
                                " devices, got " + std::to_string(devices));
  }
  if (heads < 1 || heads % devices != 0) {
    return InvalidArgumentError(
        "devices: " + std::to_string(devices) + " devices do not divide the transformer's " +
        std::to_string(heads) +
        " attention heads (sequence parallel splits the heads evenly over the devices)");
  }
  return OkStatus();
}

StatusOr<ParallelPlan> MakeParallelPlan(int64_t devices, bool cfg, int64_t heads) {
  RAINSERVE_RETURN_IF_ERROR(CheckHeadsDivisible(devices, heads));
  ParallelPlan plan;
  plan.world = devices;
  plan.cfg_degree = cfg && devices % 2 == 0 ? 2 : 1;
  plan.ulysses_degree = devices / plan.cfg_degree;
  return plan;
}

std::vector<IndexRange> TokenShards(int64_t tokens, int64_t parts) {
  std::vector<IndexRange> shards;
  const int64_t base = tokens / parts, extra = tokens % parts;
  int64_t begin = 0;
  for (int64_t r = 0; r < parts; ++r) {
    const int64_t size = base + (r < extra ? 1 : 0);
    shards.push_back({begin, size});
    begin += size;
  }
  return shards;
}

ShardIndex LocateToken(const std::vector<IndexRange>& shards, int64_t token) {
  for (size_t r = 0; r < shards.size(); ++r) {
    if (token < shards[r].end()) return {static_cast<int64_t>(r), token - shards[r].begin};
  }
  return {static_cast<int64_t>(shards.size()), 0};  // past the end
}

IndexRange HeadSlice(int64_t heads, int64_t parts, int64_t rank) {
  const int64_t per = heads / parts;
  return {rank * per, per};
}

AllToAllCounts UlyssesCounts(const std::vector<IndexRange>& shards, int64_t rank, int64_t batch,
                             int64_t heads, int64_t head_dim) {
  const int64_t parts = static_cast<int64_t>(shards.size());
  const int64_t per_token = batch * (heads / parts) * head_dim;  // one token, one head slice
  AllToAllCounts counts;
  for (int64_t peer = 0; peer < parts; ++peer) {
    counts.send.push_back(shards[rank].size * per_token);
    counts.recv.push_back(shards[peer].size * per_token);
  }
  return counts;
}

}  // namespace rainserve
