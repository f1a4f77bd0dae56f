// The loopback collective (pipelines/core/collective.h) against direct
// tensor slicing: Ulysses token <-> head all-to-alls over uneven shards, the
// all-gather, and errors that reach every rank without a hang.
#include "pipelines/core/collective.h"

#include <gtest/gtest.h>

#include "pipelines/core/parallel_plan.h"
#include "tests/pipelines/rank_threads.h"

namespace rainserve {
namespace {

using testing::ExpectAllOk;
using testing::RunRanks;

TEST(CollectiveTest, TokensToHeadsGivesEachRankTheFullSequenceOfItsHeads) {
  // 10 tokens over 4 ranks (3, 3, 2, 2), 8 heads: rank r gets heads 2r, 2r+1.
  const at::Tensor full = at::randn({2, 10, 8, 3});  // [B, L, H, D]
  const std::vector<IndexRange> shards = TokenShards(10, 4);
  LoopbackGroup group(4);
  std::vector<at::Tensor> heads(4), back(4);
  ExpectAllOk(RunRanks(4, [&](int64_t r) -> Status {
    const at::Tensor mine = full.narrow(1, shards[r].begin, shards[r].size);
    RAINSERVE_ASSIGN_OR_RETURN(heads[r], TokensToHeads(group.rank(r), mine, shards));
    RAINSERVE_ASSIGN_OR_RETURN(back[r], HeadsToTokens(group.rank(r), heads[r], shards));
    return OkStatus();
  }));
  for (int64_t r = 0; r < 4; ++r) {
    const IndexRange h = HeadSlice(8, 4, r);
    EXPECT_TRUE(at::equal(heads[r], full.narrow(2, h.begin, h.size))) << r;
    EXPECT_TRUE(at::equal(back[r], full.narrow(1, shards[r].begin, shards[r].size))) << r;
  }
}

TEST(CollectiveTest, AllGatherConcatenatesUnevenShardsInRankOrder) {
  const at::Tensor full = at::randn({2, 7, 5});
  const std::vector<IndexRange> shards = TokenShards(7, 3);
  LoopbackGroup group(3);
  std::vector<at::Tensor> out(3);
  ExpectAllOk(RunRanks(3, [&](int64_t r) -> Status {
    RAINSERVE_ASSIGN_OR_RETURN(
        out[r], AllGather(group.rank(r), full.narrow(1, shards[r].begin, shards[r].size), 1,
                          {3, 2, 2}));
    return OkStatus();
  }));
  for (const at::Tensor& o : out) EXPECT_TRUE(at::equal(o, full));
}

TEST(CollectiveTest, MismatchedSizesFailOnEveryRankWithoutHanging) {
  LoopbackGroup group(2);
  const std::vector<Status> status = RunRanks(2, [&](int64_t r) -> Status {
    // Rank 1 expects 3 elements from rank 0, which sends 2.
    std::vector<at::Tensor> send = {at::zeros({2}), at::zeros({2})};
    std::vector<at::Tensor> recv = {at::empty({r == 1 ? 3 : 2}), at::empty({2})};
    return group.rank(r).AllToAll(send, recv);
  });
  EXPECT_TRUE(status[0].ok());
  ASSERT_FALSE(status[1].ok());
  EXPECT_NE(status[1].message().find("rank 1 expects [3] from rank 0, which sent [2]"),
            std::string::npos)
      << status[1].message();
  // The group is still usable after the failed exchange.
  ExpectAllOk(RunRanks(2, [&](int64_t r) {
    return group.rank(r).AllToAll({at::ones({1}), at::ones({1})}, {at::empty({1}), at::empty({1})});
  }));
}

TEST(CollectiveTest, AFailedRankLeavesItsPeersWaitingUntilTheGroupIsAborted) {
  // Rank 2 fails before reaching its peers, as a lost device would; ranks 0
  // and 1 wait in the exchange until Abort, then return UNAVAILABLE.
  LoopbackGroup group(3, [](int64_t r) {
    return r == 2 ? UnavailableError("rank 2 lost") : OkStatus();
  });
  const std::vector<Status> status = RunRanks(3, [&](int64_t r) -> Status {
    std::vector<at::Tensor> send(3, at::ones({1})), recv;
    for (int i = 0; i < 3; ++i) recv.push_back(at::empty({1}));
    const Status s = group.rank(r).AllToAll(send, recv);
    if (r == 2) group.rank(r).Abort();
    return s;
  });
  ASSERT_EQ(status.size(), 3u);
  EXPECT_EQ(status[2].message(), "rank 2 lost");
  for (int64_t r : {0, 1}) {
    EXPECT_EQ(status[r].code(), StatusCode::kUnavailable);
    EXPECT_NE(status[r].message().find("rank " + std::to_string(r) + "'s group was aborted"),
              std::string::npos)
        << status[r].message();
  }
  // Aborted for good: a later exchange fails at once instead of waiting.
  const Status later = group.rank(0).AllToAll(std::vector<at::Tensor>(3, at::ones({1})),
                                              std::vector<at::Tensor>(3, at::empty({1})));
  EXPECT_EQ(later.code(), StatusCode::kUnavailable);
}

}  // namespace
}  // namespace rainserve
