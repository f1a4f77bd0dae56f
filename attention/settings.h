// The sparse-attention settings of one request, their names and their one
// validator. Torch-free.
//
// Route of a setting: the server maps the proto's SparseAttention (or a model's
// YAML defaults) onto SparseSettings, ValidateSettings checks it once at the
// edge, and the per-forward ForwardAttention (attention/forward.h) turns it
// into kernel parameters. Nothing downstream re-checks or clamps it.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "common/status.h"

namespace rainserve::attention {

enum class AttentionMode {
  kDense,       // every block pair computed
  kRainFusion,  // RainFusion2.0 block-sparse attention (top-k key blocks per row)
  // Mass-targeted RainFusion2.0: each row keeps the fewest key blocks whose
  // pooled-softmax probability reaches kept_mass (attention/mask.h).
  kRainFusionMass,
};

enum class MaskRefresh {
  kEveryLayer,  // predict a mask in every self-attention layer
  kPerStep,     // predict it in the first layer and share it for the forward
};

// Sparse-attention settings of one request (every field resolved).
struct SparseSettings {
  AttentionMode mode = AttentionMode::kRainFusion;
  double sparsity = 0.8;      // fraction of key blocks each query row skips, [0, 1)
  int64_t sink_frames = 1;    // leading latent frames attended densely
  std::array<int64_t, 3> window = {0, 0, 0};  // latent (t, h, w); 0s = the layout's default
  int64_t dense_warmup_steps = 0;             // first denoising steps run dense
  MaskRefresh mask_refresh = MaskRefresh::kEveryLayer;
  // Quality probe (attention/probe.h): the fraction of sparse forwards
  // (denoising steps) whose sampled rows are compared with exact dense
  // attention, [0, 1]; 0 = off.
  double quality_probe_rate = 0.0;
  // Mass-targeted mode (kRainFusionMass): the pooled-softmax mass each query
  // row keeps, (0, 1]; and the floor and cap on a row's kept key blocks
  // (forced sink blocks included; they are kept even above the cap).
  // max_kept_blocks 0 = no cap.
  double kept_mass = 0.9;
  int64_t min_kept_blocks = 1;
  int64_t max_kept_blocks = 0;
};

// Largest min_kept_blocks / max_kept_blocks a request may ask for.
inline constexpr int64_t kMaxKeptBlocks = 1 << 20;

// Largest window side a request may ask for (latent tokens).
inline constexpr int64_t kMaxWindowSide = 64;

// What the settings are checked against: the request's latent frame count
// (sink_frames <= it), its step count (dense_warmup_steps <= it) and the
// server's cap on the probe rate (quality_probe.rate <= it).
struct SettingsBounds {
  int64_t latent_frames = 0;
  int64_t steps = 0;
  double max_quality_probe_rate = 1.0;
};

// The one validator. INVALID_ARGUMENT naming the field (`prefix` + name, e.g.
// "sparse_attention.sparsity") and its allowed range.
Status ValidateSettings(const SparseSettings& settings, const SettingsBounds& bounds,
                        const std::string& prefix = "sparse_attention.");

// The names of the modes and refresh policies, shared by the YAML config, the
// CLI and the docs: "dense" | "rainfusion" | "rainfusion_mass",
// "every_layer" | "per_step".
const char* ModeName(AttentionMode mode);
const char* MaskRefreshName(MaskRefresh refresh);
// INVALID_ARGUMENT naming `field` and the accepted names.
StatusOr<AttentionMode> ParseMode(const std::string& name, const std::string& field);
StatusOr<MaskRefresh> ParseMaskRefresh(const std::string& name, const std::string& field);
// "dense|rainfusion|rainfusion_mass" and "every_layer|per_step", for help texts.
std::string ModeNames();
std::string MaskRefreshNames();

// The sparsity a request's attention runs at: its sparsity in rainfusion mode,
// 0 in dense mode and in mass mode (which has no fixed sparsity: its realized
// sparsity follows the scores).
inline double RequestedSparsity(const SparseSettings& settings) {
  return settings.mode == AttentionMode::kRainFusion ? settings.sparsity : 0.0;
}

// True when the request's attention may run block-sparse: rainfusion mode
// with a sparsity above 0, or mass mode.
inline bool SparseMode(const SparseSettings& settings) {
  return settings.mode == AttentionMode::kRainFusionMass || RequestedSparsity(settings) > 0.0;
}

}  // namespace rainserve::attention
