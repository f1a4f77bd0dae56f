// Small helpers shared by the benchmark programs: date, CPU name, flag lists,
// timings in result rows, round-robin timing on the host clock.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <ctime>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace rainserve::bench {

// The median, fastest and slowest of repeated timings.
struct Timing {
  double median_ms = 0, min_ms = 0, max_ms = 0;
};

// A result row's ms (the median), ms_min and ms_max.
inline void SetTimes(const Timing& t, nlohmann::json* row) {
  (*row)["ms"] = t.median_ms;
  (*row)["ms_min"] = t.min_ms;
  (*row)["ms_max"] = t.max_ms;
}

// The median, fastest and slowest of `ms` (not empty).
inline Timing Summarize(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms.front(), ms.back()};
}

// The host-clock twin of TimeCudaInterleaved (cuda_timing.h), for work that
// finishes before it returns (the CPU backend): each function is warmed up
// 3 times, then each of `reps` rounds calls every one once, in turn.
inline std::vector<Timing> TimeHostInterleaved(int reps,
                                               const std::vector<std::function<void()>>& fns) {
  using Clock = std::chrono::steady_clock;
  for (const auto& fn : fns) {
    for (int i = 0; i < 3; ++i) fn();
  }
  std::vector<std::vector<double>> ms(fns.size());
  for (int i = 0; i < reps; ++i) {
    for (size_t f = 0; f < fns.size(); ++f) {
      const auto start = Clock::now();
      fns[f]();
      ms[f].push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
    }
  }
  std::vector<Timing> out;
  for (auto& m : ms) out.push_back(Summarize(std::move(m)));
  return out;
}

// The entry of `table` whose `id` is `id`, or nullptr.
template <typename Entry, size_t N>
const Entry* FindById(const Entry (&table)[N], const std::string& id) {
  for (const Entry& e : table) {
    if (id == e.id) return &e;
  }
  return nullptr;
}

inline std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) out.push_back(item);
  return out;
}

// UTC date, YYYY-MM-DD, for result files.
inline std::string Today() {
  const std::time_t now = std::time(nullptr);
  char buf[16];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d", std::gmtime(&now));
  return buf;
}

// The command that made a result file: `program` and the arguments as given.
inline std::string CommandLine(const std::string& program, int argc, char** argv) {
  std::string command = program;
  for (int i = 1; i < argc; ++i) command += std::string(" ") + argv[i];
  return command;
}

inline std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown CPU";
}

}  // namespace rainserve::bench
