// Small helpers shared by the benchmark programs: date, CPU name, flag lists,
// timings in result rows.
#pragma once

#include <cstddef>
#include <ctime>
#include <fstream>
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
