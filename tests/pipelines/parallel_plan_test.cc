// The multi-GPU partitioning (pipelines/core/parallel_plan.h) on the CPU:
// plan degrees, token shards, the token -> shard mapping, head slices,
// all-to-all counts and the refusals.
#include "pipelines/core/parallel_plan.h"

#include <gtest/gtest.h>

#include <vector>

namespace rainserve {
namespace {

TEST(ParallelPlanTest, CudaDeviceIndexReadsOnlyCudaColonDigits) {
  EXPECT_EQ(CudaDeviceIndex("cuda:0"), 0);
  EXPECT_EQ(CudaDeviceIndex("cuda:7"), 7);
  EXPECT_EQ(CudaDeviceIndex("cuda:15"), 15);
  EXPECT_EQ(CudaDeviceIndex("cuda:999"), 999);
  for (const char* bad : {"cpu", "cuda", "cuda:", "cuda:x", "cuda:1x", "cuda:-1", "cuda:1000",
                          "gpu1", "CUDA:0", " cuda:0", "cuda:0 "}) {
    EXPECT_EQ(CudaDeviceIndex(bad), -1) << bad;
  }
}

TEST(ParallelPlanTest, CfgParallelTakesTwoGroupsWhenTheCountIsEven) {
  struct Case {
    int64_t devices;
    bool cfg;
    int64_t cfg_degree, ulysses;
  };
  for (const Case& c : std::vector<Case>{{1, true, 1, 1},  {1, false, 1, 1}, {2, true, 2, 1},
                                         {2, false, 1, 2}, {4, true, 2, 2},  {8, true, 2, 4},
                                         {8, false, 1, 8}, {3, true, 1, 3},  {6, true, 2, 3}}) {
    auto plan = MakeParallelPlan(c.devices, c.cfg, 24);
    ASSERT_TRUE(plan.ok()) << c.devices << ": " << plan.status().ToString();
    EXPECT_EQ(plan->world, c.devices);
    EXPECT_EQ(plan->cfg_degree, c.cfg_degree) << c.devices << " cfg " << c.cfg;
    EXPECT_EQ(plan->ulysses_degree, c.ulysses) << c.devices << " cfg " << c.cfg;
  }
}

TEST(ParallelPlanTest, GroupsPartitionTheRanks) {
  auto plan = MakeParallelPlan(8, true, 16);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->UlyssesGroup(0), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(plan->UlyssesGroup(6), (std::vector<int64_t>{4, 5, 6, 7}));
  EXPECT_EQ(plan->CfgGroup(1), (std::vector<int64_t>{1, 5}));
  EXPECT_EQ(plan->CfgGroup(7), (std::vector<int64_t>{3, 7}));
  for (int64_t r = 0; r < 8; ++r) {
    EXPECT_EQ(plan->CfgRank(r) * plan->ulysses_degree + plan->UlyssesRank(r), r);
  }
  auto single = MakeParallelPlan(4, false, 16);
  ASSERT_TRUE(single.ok());
  EXPECT_EQ(single->CfgGroup(2), (std::vector<int64_t>{2}));
}

TEST(ParallelPlanTest, HeadsNotDivisibleAreRefusedNamingDevicesAndHeads) {
  auto plan = MakeParallelPlan(4, true, 6);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(plan.status().message().rfind("devices: 4 devices do not divide the transformer's 6 "
                                          "attention heads",
                                          0),
            0u)
      << plan.status().message();
  // Even when CFG would leave 2 per group (6 % 2 == 0): a request without
  // guidance runs all 4 as one group.
  EXPECT_FALSE(CheckHeadsDivisible(4, 6).ok());
  EXPECT_TRUE(CheckHeadsDivisible(3, 6).ok());
  EXPECT_FALSE(MakeParallelPlan(0, false, 8).ok());
  EXPECT_FALSE(MakeParallelPlan(kMaxModelDevices + 1, false, 1 << 10).ok());
  EXPECT_FALSE(CheckHeadsDivisible(2, 0).ok());
}

// Every token in exactly one shard, shards contiguous, in order, balanced.
void ExpectPartition(int64_t tokens, int64_t parts) {
  const std::vector<IndexRange> shards = TokenShards(tokens, parts);
  ASSERT_EQ(static_cast<int64_t>(shards.size()), parts);
  std::vector<int> seen(tokens, 0);
  int64_t next = 0, lo = tokens, hi = 0;
  for (const IndexRange& s : shards) {
    EXPECT_EQ(s.begin, next);
    for (int64_t t = s.begin; t < s.end(); ++t) ++seen[t];
    next = s.end();
    lo = std::min(lo, s.size);
    hi = std::max(hi, s.size);
  }
  EXPECT_EQ(next, tokens);
  EXPECT_LE(hi - lo, 1) << tokens << " over " << parts;
  for (int64_t t = 0; t < tokens; ++t) ASSERT_EQ(seen[t], 1) << "token " << t;
}

TEST(ParallelPlanTest, ShardsCoverEveryTokenOnceForUnevenCounts) {
  // 81 frames at 480p: 21 x 30 x 52 latent tokens after 2x2 patching.
  for (int64_t tokens : {1, 2, 3, 7, 128, 1000, 21 * 30 * 52, 21 * 45 * 80 + 1}) {
    for (int64_t parts : {1, 2, 3, 4, 8}) ExpectPartition(tokens, parts);
  }
  const std::vector<IndexRange> shards = TokenShards(10, 4);
  EXPECT_EQ(shards, (std::vector<IndexRange>{{0, 3}, {3, 3}, {6, 2}, {8, 2}}));
  // Fewer tokens than ranks: the last shards are empty.
  EXPECT_EQ(TokenShards(2, 4), (std::vector<IndexRange>{{0, 1}, {1, 1}, {2, 0}, {2, 0}}));
}

TEST(ParallelPlanTest, LocateTokenIsTheInverseOfTheShards) {
  for (int64_t tokens : {5, 17, 130}) {
    for (int64_t parts : {1, 2, 3, 4, 8}) {
      const std::vector<IndexRange> shards = TokenShards(tokens, parts);
      for (int64_t t = 0; t < tokens; ++t) {
        const ShardIndex at = LocateToken(shards, t);
        ASSERT_LT(at.rank, parts);
        ASSERT_GE(at.local, 0);
        ASSERT_LT(at.local, shards[at.rank].size);
        EXPECT_EQ(shards[at.rank].begin + at.local, t);
      }
    }
  }
  EXPECT_EQ(LocateToken(TokenShards(10, 4), 7).rank, 2);
  EXPECT_EQ(LocateToken(TokenShards(10, 4), 7).local, 1);
}

TEST(ParallelPlanTest, HeadSlicesTileTheHeads) {
  EXPECT_EQ(HeadSlice(12, 4, 0), (IndexRange{0, 3}));
  EXPECT_EQ(HeadSlice(12, 4, 3), (IndexRange{9, 3}));
  for (int64_t parts : {1, 2, 4, 8}) {
    int64_t next = 0;
    for (int64_t r = 0; r < parts; ++r) {
      const IndexRange h = HeadSlice(40, parts, r);
      EXPECT_EQ(h.begin, next);
      EXPECT_EQ(h.size, 40 / parts);
      next = h.end();
    }
    EXPECT_EQ(next, 40);
  }
}

TEST(ParallelPlanTest, AllToAllCountsMatchBetweenPeers) {
  // 10 tokens over 4 ranks (3, 3, 2, 2), batch 2, 8 heads of 16.
  const std::vector<IndexRange> shards = TokenShards(10, 4);
  const AllToAllCounts r2 = UlyssesCounts(shards, 2, 2, 8, 16);
  EXPECT_EQ(r2.send, (std::vector<int64_t>(4, 2 * 2 * 2 * 16)));  // 2 tokens, 2 heads
  EXPECT_EQ(r2.recv, (std::vector<int64_t>{3 * 64, 3 * 64, 2 * 64, 2 * 64}));
  // What r sends to s is what s receives from r; each rank ends with the
  // whole sequence for its heads.
  for (int64_t r = 0; r < 4; ++r) {
    const AllToAllCounts cr = UlyssesCounts(shards, r, 2, 8, 16);
    int64_t received = 0;
    for (int64_t s = 0; s < 4; ++s) {
      EXPECT_EQ(cr.send[s], UlyssesCounts(shards, s, 2, 8, 16).recv[r]);
      received += cr.recv[s];
    }
    EXPECT_EQ(received, 2 * 10 * 2 * 16);
  }
}

}  // namespace
}  // namespace rainserve
