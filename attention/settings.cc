#include "attention/settings.h"

#include <cmath>
#include <sstream>

namespace rainserve::attention {
namespace {

// The one table of names per enum: ModeName/ParseMode and friends read it.
struct ModeEntry {
  AttentionMode mode;
  const char* name;
};
constexpr ModeEntry kModes[] = {{AttentionMode::kDense, "dense"},
                                {AttentionMode::kRainFusion, "rainfusion"},
                                {AttentionMode::kRainFusionMass, "rainfusion_mass"}};

struct RefreshEntry {
  MaskRefresh refresh;
  const char* name;
};
constexpr RefreshEntry kRefreshes[] = {{MaskRefresh::kEveryLayer, "every_layer"},
                                       {MaskRefresh::kPerStep, "per_step"}};

template <typename Table>
std::string JoinNames(const Table& table) {
  std::string out;
  for (const auto& entry : table) out += (out.empty() ? "" : "|") + std::string(entry.name);
  return out;
}

Status UnknownName(const std::string& field, const std::string& names, const std::string& got) {
  return InvalidArgumentError(field + " must be one of " + names + " (got \"" + got + "\")");
}

Status CheckRange(const std::string& field, int64_t value, int64_t lo, int64_t hi) {
  if (value >= lo && value <= hi) return OkStatus();
  return InvalidArgumentError(field + " must be in [" + std::to_string(lo) + ", " +
                              std::to_string(hi) + "] (got " + std::to_string(value) + ")");
}

}  // namespace

Status ValidateSettings(const SparseSettings& s, const SettingsBounds& bounds,
                        const std::string& prefix) {
  if (!(s.sparsity >= 0.0 && s.sparsity < 1.0)) {  // also rejects NaN
    std::ostringstream msg;
    msg << prefix << "sparsity must be in [0, 1) (got " << s.sparsity << ")";
    return InvalidArgumentError(msg.str());
  }
  RAINSERVE_RETURN_IF_ERROR(
      CheckRange(prefix + "sink_frames", s.sink_frames, 0, bounds.latent_frames));
  const char* axes[] = {"window.t", "window.h", "window.w"};
  for (int i = 0; i < 3; ++i) {
    RAINSERVE_RETURN_IF_ERROR(CheckRange(prefix + axes[i], s.window[i], 0, kMaxWindowSide));
  }
  RAINSERVE_RETURN_IF_ERROR(
      CheckRange(prefix + "dense_warmup_steps", s.dense_warmup_steps, 0, bounds.steps));
  // Above the server's cap is refused, not clamped: the caller learns the cap.
  if (!(s.quality_probe_rate >= 0.0 && s.quality_probe_rate <= bounds.max_quality_probe_rate)) {
    std::ostringstream msg;
    msg << prefix << "quality_probe.rate must be in [0, " << bounds.max_quality_probe_rate
        << "] (got " << s.quality_probe_rate << ")";
    return InvalidArgumentError(msg.str());
  }
  if (!(s.kept_mass > 0.0 && s.kept_mass <= 1.0)) {
    std::ostringstream msg;
    msg << prefix << "kept_mass must be in (0, 1] (got " << s.kept_mass << ")";
    return InvalidArgumentError(msg.str());
  }
  RAINSERVE_RETURN_IF_ERROR(
      CheckRange(prefix + "min_kept_blocks", s.min_kept_blocks, 1, kMaxKeptBlocks));
  if (s.max_kept_blocks != 0) {
    RAINSERVE_RETURN_IF_ERROR(CheckRange(prefix + "max_kept_blocks", s.max_kept_blocks,
                                         s.min_kept_blocks, kMaxKeptBlocks));
  }
  return OkStatus();
}

const char* ModeName(AttentionMode mode) {
  for (const auto& e : kModes) {
    if (e.mode == mode) return e.name;
  }
  return "unknown";
}

const char* MaskRefreshName(MaskRefresh refresh) {
  for (const auto& e : kRefreshes) {
    if (e.refresh == refresh) return e.name;
  }
  return "unknown";
}

StatusOr<AttentionMode> ParseMode(const std::string& name, const std::string& field) {
  for (const auto& e : kModes) {
    if (name == e.name) return e.mode;
  }
  return UnknownName(field, ModeNames(), name);
}

StatusOr<MaskRefresh> ParseMaskRefresh(const std::string& name, const std::string& field) {
  for (const auto& e : kRefreshes) {
    if (name == e.name) return e.refresh;
  }
  return UnknownName(field, MaskRefreshNames(), name);
}

std::string ModeNames() { return JoinNames(kModes); }
std::string MaskRefreshNames() { return JoinNames(kRefreshes); }

}  // namespace rainserve::attention
