// Runs one function per rank on its own thread (the loopback collective's
// ranks in tests).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "common/status.h"

namespace rainserve::testing {

// Runs fn(rank) on one thread per rank; the statuses in rank order.
inline std::vector<Status> RunRanks(int64_t n, const std::function<Status(int64_t)>& fn) {
  std::vector<Status> status(n, OkStatus());
  std::vector<std::thread> threads;
  for (int64_t r = 0; r < n; ++r) threads.emplace_back([&, r] { status[r] = fn(r); });
  for (std::thread& t : threads) t.join();
  return status;
}

inline void ExpectAllOk(const std::vector<Status>& status) {
  for (size_t r = 0; r < status.size(); ++r) {
    EXPECT_TRUE(status[r].ok()) << "rank " << r << ": " << status[r].ToString();
  }
}

}  // namespace rainserve::testing
