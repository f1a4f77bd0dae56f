// The image conditioning of Wan image-to-video generation, as diffusers'
// WanImageToVideoPipeline builds it, and the identity for text-only requests.
//
//   kConcat (Wan2.1 I2V, Wan2.2 I2V-A14B): the image, resized to the output
//     size (Pillow's Lanczos) and scaled to [-1, 1], followed by num_frames - 1
//     black frames, is VAE-encoded (posterior mode, normalised) and prefixed
//     with a 4-channel mask (1 on latent frame 0, 0 elsewhere): the condition
//     [1, 4 + z, F, h, w] is concatenated to the latents' channels at every
//     step. Wan2.1 I2V also encodes the image with CLIP (its penultimate
//     hidden states feed the transformer's image cross-attention).
//   kFirstFrame (Wan2.2 TI2V-5B image mode, expand_timesteps): the image is
//     encoded alone as latent frame 0; at every step frame 0 of the model
//     input is the image, its timestep 0 and the other frames' the step's;
//     the final latents keep the image as frame 0.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "common/status.h"
#include "pipelines/core/pipeline.h"

namespace rainserve {

class WanVAE;
class ClipVisionEncoder;
class ClipImageProcessor;

enum class WanImageMode { kNone, kConcat, kFirstFrame };

class WanImageConditioning {
 public:
  // The identity (text-to-video).
  WanImageConditioning() = default;

  // Encodes `image` for a request of width x height x num_frames. `clip` and
  // `processor` are null for models without image cross-attention.
  static StatusOr<WanImageConditioning> Prepare(WanImageMode mode, const InputImage& image,
                                                int64_t width, int64_t height,
                                                int64_t num_frames, const WanVAE& vae,
                                                const ClipVisionEncoder* clip,
                                                const ClipImageProcessor* processor);

  // The transformer's input for the CFG batch B at one step: latents
  // [1, z, F, h, w] fp32 -> [B, in_channels, F, h, w] in `dtype`.
  at::Tensor ModelInput(const at::Tensor& latents, int64_t batch, at::ScalarType dtype) const;
  // The step's timesteps: [B] or, in kFirstFrame, [B, F] (frame 0 at 0).
  at::Tensor Timesteps(double t, int64_t batch, int64_t latent_frames,
                       const at::Device& device) const;
  // The denoised latents as the decoder takes them (kFirstFrame: frame 0
  // replaced by the image's latents).
  at::Tensor Finish(const at::Tensor& latents) const;
  // CLIP hidden states [B, S, d] for the transformer, or undefined.
  at::Tensor ImageEmbeds(int64_t batch) const;

 private:
  // kFirstFrame: frame 0 from the image, the others from `latents`.
  at::Tensor WithImageFrame(const at::Tensor& latents) const;

  WanImageMode mode_ = WanImageMode::kNone;
  at::Tensor condition_;    // kConcat: [1, 4 + z, F, h, w]; kFirstFrame: [1, z, F, h, w] fp32
  at::Tensor frame_mask_;   // kFirstFrame: [1, 1, F, h, w], 0 on frame 0
  at::Tensor clip_embeds_;  // [1, S, d] or undefined
};

// The image as the VAE takes it: resized to width x height with Pillow's
// Lanczos filter (diffusers' VideoProcessor), [1, 3, 1, height, width] fp32 in
// [-1, 1] on `device`.
StatusOr<at::Tensor> WanVideoFrame(const InputImage& image, int64_t width, int64_t height,
                                   const at::Device& device);

}  // namespace rainserve
