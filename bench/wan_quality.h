// The embedded-model half of attention_quality_bench: whole requests of a Wan
// checkpoint (wan-tiny) at dense, at the mass-targeted mode per kept_mass and
// at fixed top-k matched to each one's realized sparsity.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/status.h"

namespace rainserve::bench {

struct ModelQualityOptions {
  std::string workload = "wan-tiny";  // the rows' "workload"
  std::string model_dir;              // diffusers-format checkpoint folder
  std::string device = "cpu";         // "cpu" | "cuda:N"
  std::string dtype = "fp32";
  int threads = 0;
  int64_t width = 512, height = 512, frames = 17, steps = 8;
  int reps = 3;  // timed requests per setting, round-robin over the settings
  std::vector<double> kept_masses;
  int64_t min_kept_blocks = 1, max_kept_blocks = 0;
};

// The rows (impl rainserve_dense, and per kept_mass one rainserve_mass and one
// rainserve_sparse row): realized sparsity, cosine and relative L2 of the
// final latents against the dense request's, median seconds per request
// (text encoding + denoising; the latents are not decoded). Prints one line
// per row and a summary per pair. An error when the model does not load, a
// request fails, or the sequence is too short to run sparse.
StatusOr<nlohmann::json> ModelQualityRows(const ModelQualityOptions& options);

}  // namespace rainserve::bench
