#include "common/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <vector>

namespace rainserve {
namespace {

TEST(ThreadPoolTest, RunsEveryTaskExactlyOnce) {
  ThreadPool pool(4);
  EXPECT_EQ(pool.num_threads(), 4);
  std::vector<std::atomic<int>> hits(1000);
  pool.ParallelFor(1000, [&](int64_t i, int) { hits[i].fetch_add(1); });
  for (const auto& h : hits) EXPECT_EQ(h.load(), 1);
}

TEST(ThreadPoolTest, ThreadIndexIsInRangeAndWorkIsShared) {
  ThreadPool pool(3);
  std::vector<std::atomic<int>> per_thread(3);
  std::atomic<bool> out_of_range{false};
  pool.ParallelFor(3000, [&](int64_t, int t) {
    if (t < 0 || t >= 3) {
      out_of_range = true;
      return;
    }
    per_thread[t].fetch_add(1);
    // A little work so that more than one thread gets a share.
    volatile double x = 0;
    for (int k = 0; k < 2000; ++k) x = x + k;
  });
  EXPECT_FALSE(out_of_range.load());
  int total = 0;
  for (auto& c : per_thread) total += c.load();
  EXPECT_EQ(total, 3000);
}

TEST(ThreadPoolTest, ReusableAcrossManyCallsAndEmptyRanges) {
  ThreadPool pool(2);
  int64_t sum = 0;
  for (int round = 0; round < 200; ++round) {
    std::atomic<int64_t> s{0};
    pool.ParallelFor(round, [&](int64_t i, int) { s.fetch_add(i); });
    sum += s.load();
  }
  // sum over rounds r of r*(r-1)/2
  int64_t expected = 0;
  for (int r = 0; r < 200; ++r) expected += int64_t{r} * (r - 1) / 2;
  EXPECT_EQ(sum, expected);
}

TEST(ThreadPoolTest, SingleThreadPoolRunsInline) {
  ThreadPool pool(1);
  std::set<int> threads;
  pool.ParallelFor(10, [&](int64_t, int t) { threads.insert(t); });
  EXPECT_EQ(threads, std::set<int>({0}));
}

}  // namespace
}  // namespace rainserve
