// How one request is split over the GPUs of a model with several devices
// (models[].devices): CFG parallel (the conditional and unconditional
// branches on different GPU groups) times Ulysses sequence parallel (each
// GPU of a group holds a contiguous slice of the forward's permuted token
// sequence; an all-to-all before self-attention turns token slices into head
// slices, so each GPU runs RainFusion2.0 over the whole sequence for its
// heads, and the reverse all-to-all after). Torch-free: sizes and ranges only.
//
// Ranks: rank = cfg_rank * ulysses_degree + ulysses_rank, so the GPUs of one
// Ulysses group are consecutive entries of `devices`.
//
// Token shards: the permuted sequence (RainFusion's window order, sink tokens
// after the windows; the permutation is applied once per forward on the full
// sequence, before sharding) is cut into ulysses_degree contiguous shards,
// balanced: the first tokens % P shards hold one token more. No padding and
// no mask: the all-to-all carries per-peer counts, so uneven shards are exact.
// Wan's text tokens never enter self-attention (they are cross-attention keys,
// replicated on every rank); the sink tokens are ordinary tokens of the
// permuted sequence here, and the attention mask, computed per head over the
// full sequence after the all-to-all, forces them dense as on one device.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace rainserve {

// Most devices one model entry may name (the GPUs of one host).
inline constexpr int64_t kMaxModelDevices = 16;

// The N of a device name "cuda:N" (N decimal digits, below 1000); -1 for
// anything else ("cpu", "cuda", "cuda:x", "gpu1"). Inline: the torch-free
// config reader uses it without linking the plan.
inline int64_t CudaDeviceIndex(const std::string& name) {
  const std::string prefix = "cuda:";
  if (name.size() <= prefix.size() || name.size() > prefix.size() + 3 ||
      name.compare(0, prefix.size(), prefix) != 0 ||
      name.find_first_not_of("0123456789", prefix.size()) != std::string::npos) {
    return -1;
  }
  return std::stoll(name.substr(prefix.size()));
}

// A half-open range [begin, begin + size).
struct IndexRange {
  int64_t begin = 0;
  int64_t size = 0;
  int64_t end() const { return begin + size; }
  bool operator==(const IndexRange& o) const { return begin == o.begin && size == o.size; }
};

struct ParallelPlan {
  int64_t world = 1;           // devices of the model
  int64_t cfg_degree = 1;      // 2: the CFG branches run on different groups
  int64_t ulysses_degree = 1;  // devices per group (sequence parallel)
  int64_t CfgRank(int64_t rank) const { return rank / ulysses_degree; }
  int64_t UlyssesRank(int64_t rank) const { return rank % ulysses_degree; }
  // The ranks of `rank`'s Ulysses group, and of its CFG pair (one entry
  // when cfg_degree is 1), in rank order.
  std::vector<int64_t> UlyssesGroup(int64_t rank) const;
  std::vector<int64_t> CfgGroup(int64_t rank) const;
};

// The device count a model's heads allow: every count must divide the
// attention head count (a forward without CFG runs all devices as one
// Ulysses group). INVALID_ARGUMENT naming `devices` and the head count.
Status CheckHeadsDivisible(int64_t devices, int64_t heads);

// The plan of one forward: cfg_degree 2 when the request uses classifier-free
// guidance and the device count is even, else 1; ulysses_degree = devices /
// cfg_degree. INVALID_ARGUMENT for 0 or more than kMaxModelDevices devices,
// or heads not divisible by the device count.
StatusOr<ParallelPlan> MakeParallelPlan(int64_t devices, bool cfg, int64_t heads);

// Balanced contiguous shards of `tokens` over `parts` ranks (the first
// tokens % parts shards one longer); every token in exactly one shard. A
// shard is empty when tokens < parts.
std::vector<IndexRange> TokenShards(int64_t tokens, int64_t parts);

// Where a token of the full sequence lives: its rank and its index there.
struct ShardIndex {
  int64_t rank = 0;
  int64_t local = 0;
};
ShardIndex LocateToken(const std::vector<IndexRange>& shards, int64_t token);

// The heads `rank` attends over after the all-to-all (heads % parts == 0).
IndexRange HeadSlice(int64_t heads, int64_t parts, int64_t rank);

// Element counts of the token -> head all-to-all of `rank` for q, k or v of
// [batch, tokens, heads, head_dim]: send[s] goes to rank s (this rank's
// tokens, s's heads), recv[r] comes from rank r (r's tokens, this rank's
// heads). The head -> token all-to-all after attention swaps the two.
struct AllToAllCounts {
  std::vector<int64_t> send, recv;
};
AllToAllCounts UlyssesCounts(const std::vector<IndexRange>& shards, int64_t rank, int64_t batch,
                             int64_t heads, int64_t head_dim);

}  // namespace rainserve
