// Elapsed-time helpers shared by every module (durations in seconds, steady
// clock).
#pragma once

#include <chrono>

namespace rainserve {

using SteadyClock = std::chrono::steady_clock;

// Seconds from `start` to now.
inline double SecondsSince(SteadyClock::time_point start) {
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

// Seconds from `a` to `b` (negative when b is earlier).
inline double SecondsBetween(SteadyClock::time_point a, SteadyClock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace rainserve
