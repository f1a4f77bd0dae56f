// Matching fixed top-k to a target realized sparsity, for comparing the
// mass-targeted mode with top-k at equal realized density.
//
// A top-k row keeps TopKCount(nb, sparsity) key blocks ranked over all key
// blocks, plus the forced (sink/text) blocks, so the realized sparsity of a
// call depends on the count k (and on how often the top k already hold the
// forced blocks), not on the requested sparsity itself. It does not increase
// with k. TopKMatcher bisects over k, measuring each probed k once through a
// callback (a mask prediction, or a whole request), and returns the k whose
// realized sparsity lies closest to the target.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <utility>

#include "attention/config.h"

namespace rainserve::bench {

struct TopKMatch {
  int64_t count = 0;        // key blocks per non-forced row, before the forced ones
  double sparsity = 0.0;    // the requested sparsity that gives `count`
  double realized = 0.0;    // its realized sparsity
};

class TopKMatcher {
 public:
  // realized_at(sparsity): the realized sparsity of a top-k call requesting
  // `sparsity` on the compared inputs; nb: the plan's block count.
  TopKMatcher(int64_t nb, std::function<double(double)> realized_at)
      : nb_(nb), realized_at_(std::move(realized_at)) {}

  // The requested sparsity whose TopKCount on nb blocks is k (1 <= k <= nb):
  // nb * (1 - s) = k - 1/2 lies strictly between k - 1 and k.
  static double SparsityFor(int64_t nb, int64_t k) {
    const double s = 1.0 - (static_cast<double>(k) - 0.5) / static_cast<double>(nb);
    if (attention::TopKCount(nb, s) != k) {
      throw std::logic_error("TopKCount(" + std::to_string(nb) + ", " + std::to_string(s) +
                             ") != " + std::to_string(k));
    }
    return s;
  }

  // The count whose realized sparsity is closest to `target` (the denser one
  // on a tie).
  TopKMatch Match(double target) {
    int64_t lo = 1, hi = nb_;  // the smallest k with Realized(k) <= target
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (Realized(mid) <= target) hi = mid;
      else lo = mid + 1;
    }
    int64_t k = lo;
    if (k > 1 && std::abs(Realized(k - 1) - target) < std::abs(Realized(k) - target)) --k;
    return {k, SparsityFor(nb_, k), Realized(k)};
  }

  // Distinct counts measured so far.
  int64_t probes() const { return static_cast<int64_t>(realized_.size()); }

 private:
  double Realized(int64_t k) {
    auto it = realized_.find(k);
    if (it == realized_.end()) it = realized_.emplace(k, realized_at_(SparsityFor(nb_, k))).first;
    return it->second;
  }

  int64_t nb_;
  std::function<double(double)> realized_at_;
  std::map<int64_t, double> realized_;
};

// Adds to a rainserve_mass row the comparison with its matched
// rainserve_sparse row (the top-k row's requested sparsity, cos_mass - cos_topk,
// and the speed ratio topk / mass of `time_key`, e.g. "ms") and prints it
// on one line.
inline void AddPairSummary(const nlohmann::json& topk, const char* time_key, nlohmann::json* mass) {
  nlohmann::json& m = *mass;
  m["topk_sparsity"] = topk["sparsity"];
  m["cos_minus_topk"] = m["cos"].get<double>() - topk["cos"].get<double>();
  m["speed_vs_topk"] = topk[time_key].get<double>() / m[time_key].get<double>();
  std::printf("  pair %s %s kept_mass %.2f: realized mass %.4f / top-k %.4f (s=%.4f); "
              "cos %.6f / %.6f, cos_mass - cos_topk %+.6f; speed topk_%s/mass_%s %.3fx\n",
              m["workload"].get<std::string>().c_str(), m["inputs"].get<std::string>().c_str(),
              m["kept_mass"].get<double>(), m["realized_sparsity"].get<double>(),
              topk["realized_sparsity"].get<double>(), topk["sparsity"].get<double>(),
              m["cos"].get<double>(), topk["cos"].get<double>(), m["cos_minus_topk"].get<double>(),
              time_key, time_key, m["speed_vs_topk"].get<double>());
}

}  // namespace rainserve::bench
