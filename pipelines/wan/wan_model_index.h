// model_index.json of a diffusers Wan checkpoint folder: which pipeline class
// and components it names, and the Wan2.2 switches (two experts with their
// boundary, per-frame timesteps). Torch-free.
#pragma once

#include <optional>
#include <string>

#include "common/status.h"

namespace rainserve {

struct WanModelIndex {
  // "WanPipeline" (text-to-video; TI2V-5B too) or "WanImageToVideoPipeline".
  std::string pipeline_class = "WanPipeline";
  // transformer_2/ holds a second expert (Wan2.2 A14B): it runs the steps
  // whose timestep is below boundary_ratio x num_train_timesteps.
  bool has_transformer_2 = false;
  std::optional<double> boundary_ratio;
  // Wan2.2 TI2V: the timestep is given per latent frame; in image mode the
  // first frame holds the encoded image at timestep 0.
  bool expand_timesteps = false;
  // image_encoder/ and image_processor/ (CLIP vision, Wan2.1 I2V).
  bool has_image_encoder = false;

  bool image_to_video() const { return pipeline_class == "WanImageToVideoPipeline"; }
};

// Parses model_index.json text. Unknown pipeline classes are UNIMPLEMENTED; a
// second expert without boundary_ratio, a boundary_ratio outside (0, 1) and
// an image encoder without its processor are INVALID_ARGUMENT naming the key
// and `source`.
StatusOr<WanModelIndex> ParseWanModelIndex(const std::string& json_text,
                                           const std::string& source);

// <dir>/model_index.json, or the text-to-video defaults when the folder has none.
StatusOr<WanModelIndex> ReadWanModelIndex(const std::string& dir);

}  // namespace rainserve
