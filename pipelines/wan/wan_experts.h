// The denoising transformers of a Wan pipeline: one (Wan2.1, TI2V-5B) or two
// experts (Wan2.2 A14B). With two, `transformer/` (high-noise) runs the steps
// whose timestep is at or above the boundary, boundary_ratio x
// num_train_timesteps, and `transformer_2/` (low-noise) the rest.
//
// Both experts stay on the model's device by default. With offload_idle the
// expert that is not running lives in host memory (pinned) and moves in at
// the switch; the one it replaces drops its device copy.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "pipelines/core/model_options.h"
#include "pipelines/wan/wan_model_index.h"
#include "pipelines/wan/wan_transformer.h"

namespace rainserve {

class WanExperts {
 public:
  // Loads transformer/ (and transformer_2/ when `index` names it) from `dir`,
  // merging `loras` into every expert, then, with fp8, quantizing their
  // block linears to FP8 on `device` (WanTransformer::QuantizeLinearsToFp8).
  // Experts whose configs disagree are INVALID_ARGUMENT naming both folders.
  static StatusOr<std::unique_ptr<WanExperts>> Load(const std::string& dir,
                                                    const WanModelIndex& index,
                                                    int64_t num_train_timesteps,
                                                    at::ScalarType dtype, at::Device device,
                                                    bool offload_idle,
                                                    const std::vector<LoraFile>& loras,
                                                    bool fp8 = false);

  // Two experts already built (benchmarks, tests): `high` on `device`, `low`
  // anywhere; with offload_idle `low` moves to host memory now.
  static StatusOr<std::unique_ptr<WanExperts>> FromModels(std::unique_ptr<WanTransformer> high,
                                                          std::unique_ptr<WanTransformer> low,
                                                          double boundary_timestep,
                                                          at::Device device, bool offload_idle);

  int64_t count() const { return experts_[1] ? 2 : 1; }
  // The switch timestep (0 with one expert: every step runs expert 0).
  double boundary_timestep() const { return boundary_timestep_; }
  bool offload_idle() const { return offload_idle_; }
  // 0 for timesteps at or above the boundary, else 1 (two experts). The
  // comparison is in float32, the precision of the reference's timesteps.
  int64_t ExpertFor(double timestep) const {
    return count() == 2 && static_cast<float>(timestep) < static_cast<float>(boundary_timestep_)
               ? 1
               : 0;
  }
  // Expert `index` on the model's device. With offload_idle the other one
  // leaves the device first; *seconds grows by the time spent moving.
  StatusOr<const WanTransformer*> Resident(int64_t index, double* seconds);

  const WanTransformer& expert(int64_t index) const { return *experts_[index]; }
  // Parameter bytes on the device while one expert runs.
  uint64_t DeviceParameterBytes() const;

 private:
  WanExperts() = default;

  std::array<std::unique_ptr<WanTransformer>, 2> experts_;
  double boundary_timestep_ = 0.0;
  bool offload_idle_ = false;
  at::Device device_{at::kCPU};
};

}  // namespace rainserve
