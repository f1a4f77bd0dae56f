#include "pipelines/core/step_cache.h"

#include <algorithm>
#include <cmath>

namespace rainserve {

const char* StepCacheModeName(StepCacheMode mode) {
  switch (mode) {
    case StepCacheMode::kOff: return "off";
    case StepCacheMode::kFirstBlock: return "first_block";
    case StepCacheMode::kTeaCache: return "teacache";
  }
  return "off";
}

StatusOr<StepCacheMode> ParseStepCacheMode(const std::string& name, const std::string& field) {
  for (StepCacheMode m : {StepCacheMode::kOff, StepCacheMode::kFirstBlock,
                          StepCacheMode::kTeaCache}) {
    if (name == StepCacheModeName(m)) return m;
  }
  return InvalidArgumentError(field + " must be off, first_block or teacache (got \"" + name +
                              "\")");
}

double TeaCachePolynomial(const TeaCacheCoefficients& c, double x) {
  double y = 0.0;
  for (double coefficient : c) y = y * x + coefficient;  // Horner
  return y;
}

TeaCacheCoefficients WanTeaCacheCoefficients(int64_t inner_dim) {
  // TeaCache4Wan2.1's fits on the modulated input (Wan2.1 T2V 14B and 1.3B).
  if (inner_dim == 5120) {
    return {-3.03318725e+05, 4.90537029e+04, -2.65530556e+03, 5.87365115e+01, -3.15583525e-01};
  }
  return {-5.21862437e+04, 9.23041404e+03, -5.28275948e+02, 1.36987616e+01, -4.99875664e-02};
}

StepCachePolicy::StepCachePolicy(const StepCacheSettings& settings, int64_t total_steps,
                                 const TeaCacheCoefficients& coefficients)
    : settings_(settings), total_steps_(total_steps), coefficients_(coefficients) {}

bool StepCachePolicy::Skip(int64_t step, bool has_reference, double change) {
  const bool forced = settings_.mode == StepCacheMode::kOff || step < settings_.warmup_steps ||
                      step + 1 >= total_steps_ || !has_reference || !std::isfinite(change);
  bool skip = false;
  if (settings_.mode == StepCacheMode::kTeaCache) {
    // A rescaled distance is never negative: the fitted polynomial dips below
    // zero near x = 0, which would let threshold 0 skip.
    if (!forced) accumulated_ += std::max(0.0, TeaCachePolynomial(coefficients_, change));
    skip = !forced && accumulated_ < settings_.threshold;
    if (!skip) accumulated_ = 0.0;
  } else if (settings_.mode == StepCacheMode::kFirstBlock) {
    skip = !forced && change < settings_.threshold;
  }
  if (skip) ++skipped_;
  return skip;
}

}  // namespace rainserve
