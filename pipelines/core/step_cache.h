// Step caching: the per-step decision whether a denoising step may reuse the
// transformer's cached residual instead of running (all or most of) its
// blocks. Torch-free: the pipeline measures the relative change of its probe
// tensor and asks the policy; the policy keeps the warm-up, the last step and
// TeaCache's accumulator.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "common/status.h"

namespace rainserve {

enum class StepCacheMode {
  kOff,
  // First-Block-Cache: the change is that of block 0's residual against the
  // previous fully computed step; a step is skipped while it is below the
  // threshold.
  kFirstBlock,
  // TeaCache: the change is that of block 0's modulated norm1 input against
  // the previous step, rescaled by a model polynomial and accumulated; steps
  // are skipped until the sum reaches the threshold.
  kTeaCache,
};

struct StepCacheSettings {
  StepCacheMode mode = StepCacheMode::kOff;
  double threshold = 0.0;     // finite, in [0, kMaxStepCacheThreshold]
  int64_t warmup_steps = 0;   // the first warmup_steps steps always compute
};

inline constexpr double kMaxStepCacheThreshold = 10.0;

// "off", "first_block", "teacache".
const char* StepCacheModeName(StepCacheMode mode);
// INVALID_ARGUMENT naming `field` for any other name.
StatusOr<StepCacheMode> ParseStepCacheMode(const std::string& name, const std::string& field);

// TeaCache's rescaling polynomial c[0] x^4 + c[1] x^3 + c[2] x^2 + c[3] x + c[4]
// (numpy.poly1d order), fitted per model on the modulated-input change.
using TeaCacheCoefficients = std::array<double, 5>;
double TeaCachePolynomial(const TeaCacheCoefficients& c, double x);
// The published Wan2.1 text-to-video coefficients: the 14B fit for a
// transformer of inner dimension 5120, the 1.3B fit for every other one.
TeaCacheCoefficients WanTeaCacheCoefficients(int64_t inner_dim);

// One request's decisions, step by step (0-based steps, in order).
class StepCachePolicy {
 public:
  StepCachePolicy(const StepCacheSettings& settings, int64_t total_steps,
                  const TeaCacheCoefficients& coefficients);

  // `change`: the relative L1 change of the mode's probe against its
  // reference; `has_reference` false on a step without one (the first).
  // Returns true when the step may reuse the cached residual. Warm-up steps,
  // the last step and steps without a reference always compute (false).
  bool Skip(int64_t step, bool has_reference, double change);

  int64_t skipped() const { return skipped_; }
  double accumulated() const { return accumulated_; }  // TeaCache's running sum

 private:
  StepCacheSettings settings_;
  int64_t total_steps_;
  TeaCacheCoefficients coefficients_;
  double accumulated_ = 0.0;
  int64_t skipped_ = 0;
};

}  // namespace rainserve
