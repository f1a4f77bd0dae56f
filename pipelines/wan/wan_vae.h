// Wan2.1 video VAE (diffusers AutoencoderKLWan) in LibTorch, with the
// published diffusers parameter names.
//
// Decode (latents [B, z_dim, F, h, w] -> video [B, 3, 1 + 4(F-1), 8h, 8w] for
// the published temperal_downsample [False, True, True]):
//   z = latents * latents_std + latents_mean        (de-normalise, as WanPipeline)
//   z = post_quant_conv(z)                          1x1x1
//   per latent frame f (chunk), with per-convolution causal caches:
//     conv_in (causal 3x3x3) -> mid: res, attention, res
//     -> up_blocks[i]: (num_res_blocks + 1) res blocks, then Resample
//        (upsample3d: frames x2 except on chunk 0, H, W x2, channels /2;
//         upsample2d: H, W x2, channels /2; the last block has none)
//     -> RMS norm, SiLU, conv_out (causal 3x3x3) -> 3 channels
//   concatenated over chunks, clamped to [-1, 1].
// Memory stays bounded by one chunk's activations plus 2 cached frames per
// causal convolution, whatever F is.
//
// Encode (video [B, 3, 1 + 4k, H, W] -> normalised latent means
// [B, z_dim, 1 + k, H/8, W/8]) runs the encoder chunked the same way (frame 0,
// then 4 frames at a time) and returns (mu - latents_mean) / latents_std, the
// form the transformer consumes (as diffusers' image-to-video pipeline does).
//
// The Wan2.2 TI2V-5B VAE (is_residual, patch_size) is not supported.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace rainserve {

namespace wan_vae {
struct Model;  // the bound layers, defined in wan_vae.cc
}  // namespace wan_vae

// The published Wan2.1 latent statistics (16 values each), the defaults of
// WanVAEConfig and of config.json files that leave them out.
const std::vector<double>& WanVAEDefaultLatentsMean();
const std::vector<double>& WanVAEDefaultLatentsStd();

struct WanVAEConfig {
  int64_t base_dim = 96;
  int64_t decoder_base_dim = 0;  // 0: base_dim (config null or absent)
  int64_t z_dim = 16;
  std::vector<int64_t> dim_mult = {1, 2, 4, 4};
  int64_t num_res_blocks = 2;
  std::vector<double> attn_scales;  // must be empty (as published)
  std::vector<bool> temperal_downsample = {false, true, true};  // (sic, diffusers' spelling)
  double dropout = 0.0;               // inference: unused
  // z_dim values each: video latents are normalised as (mu - mean) / std.
  std::vector<double> latents_mean = WanVAEDefaultLatentsMean();
  std::vector<double> latents_std = WanVAEDefaultLatentsStd();

  int64_t decoder_dim() const { return decoder_base_dim > 0 ? decoder_base_dim : base_dim; }
  // Video pixels per latent pixel along H and W (8 as published).
  int64_t spatial_scale() const { return int64_t{1} << temperal_downsample.size(); }
  // Video frames per latent frame after the first (4 as published).
  int64_t temporal_scale() const;
};

// Parses vae/config.json text. Keys are typed and range checked; errors name
// the key and `source`. The Wan2.2 TI2V-5B VAE (is_residual true, patch_size
// > 1, in_channels != 3) and attention inside up/down blocks (attn_scales
// non-empty) are UNIMPLEMENTED. diffusers bookkeeping keys (_class_name,
// _diffusers_version, scale_factor_*, ...) are accepted.
StatusOr<WanVAEConfig> ParseWanVAEConfig(const std::string& json_text, const std::string& source);

// The same config written back as diffusers config.json text
// (_class_name "AutoencoderKLWan").
std::string WanVAEConfigJson(const WanVAEConfig& config);

class WanVAE {
 public:
  // Progress of Decode / Encode: called after each chunk on the caller's
  // thread with the chunks done and the total.
  using Progress = std::function<void(int64_t done, int64_t total)>;

  // Reads <dir>/config.json and the safetensors weights (sharded or not).
  // Missing, unexpected and mis-shaped parameters are INVALID_ARGUMENT listing
  // them; file problems are the loader's errors, naming file and tensor.
  static StatusOr<std::unique_ptr<WanVAE>> Load(const std::string& dir, at::ScalarType dtype,
                                                at::Device device);
  // Random weights initialised as torch does (convolutions U(+-1/sqrt(fan_in)),
  // RMS norm gammas 1), for tests, benchmarks and the shipped tiny model.
  static std::unique_ptr<WanVAE> Random(const WanVAEConfig& config, at::ScalarType dtype,
                                        at::Device device, uint64_t seed);
  ~WanVAE();

  // Every parameter (encoder and decoder) with its diffusers name and shape,
  // in a stable order.
  static std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedParameters(
      const WanVAEConfig& config);
  std::vector<std::pair<std::string, at::Tensor>> NamedParameters() const { return params_; }

  // Writes config.json + safetensors (sharded above max_shard_bytes) to `dir`.
  Status Save(const std::string& dir, int64_t max_shard_bytes) const;

  // latents: [B, z_dim, F, h, w], normalised as the transformer produces them.
  // Returns float32 video [B, 3, FramesFor(F), h * spatial_scale, w * spatial_scale]
  // in [-1, 1] on the model's device. Bad shapes are INVALID_ARGUMENT; a
  // LibTorch failure is INTERNAL, running out of memory RESOURCE_EXHAUSTED
  // (pipelines/core/torch_status.h). Thread-safe: the model is read-only, caches
  // live on the call's stack.
  StatusOr<at::Tensor> Decode(const at::Tensor& latents, const Progress& progress = {}) const;
  // The same, as uint8 frames [B, T, H, W, 3] on the CPU: round((x + 1) / 2 * 255).
  StatusOr<at::Tensor> DecodeToFrames(const at::Tensor& latents, const Progress& progress = {}) const;

  // video: [B, 3, 1 + temporal_scale * k, H, W] in [-1, 1], H and W multiples
  // of spatial_scale. Returns the normalised latent means
  // [B, z_dim, 1 + k, H / spatial_scale, W / spatial_scale], float32.
  StatusOr<at::Tensor> Encode(const at::Tensor& video, const Progress& progress = {}) const;

  // Video frames decoded from `latent_frames` latent frames (0 for 0).
  int64_t FramesFor(int64_t latent_frames) const;
  int64_t spatial_scale() const { return config_.spatial_scale(); }
  int64_t temporal_scale() const { return config_.temporal_scale(); }

  const WanVAEConfig& config() const { return config_; }
  at::ScalarType dtype() const { return dtype_; }
  at::Device device() const { return device_; }

 private:
  WanVAE(WanVAEConfig config, at::ScalarType dtype, at::Device device);
  // Builds model_ from params_ (called once by Load and Random).
  void Bind();
  at::Tensor DecodeImpl(const at::Tensor& latents, const Progress& progress) const;
  at::Tensor EncodeImpl(const at::Tensor& video, const Progress& progress) const;

  WanVAEConfig config_;
  at::ScalarType dtype_;
  at::Device device_;
  std::vector<std::pair<std::string, at::Tensor>> params_;  // ExpectedParameters order
  std::unique_ptr<wan_vae::Model> model_;
  at::Tensor mean_, std_;  // [1, z_dim, 1, 1, 1] float32 on device_
};

}  // namespace rainserve
