// Wan video VAEs (diffusers AutoencoderKLWan) in LibTorch, with the
// published diffusers parameter names: Wan2.1 (z_dim 16, 8x spatial) and the
// Wan2.2 TI2V-5B VAE (z_dim 48, 16x spatial: is_residual, patch_size 2).
//
// Decode (latents [B, z_dim, F, h, w] -> video [B, 3, 1 + 4(F-1), s h, s w],
// s = spatial_scale(), for the published temperal_downsample [False, True, True]):
//   z = latents * latents_std + latents_mean        (de-normalise, as WanPipeline)
//   z = post_quant_conv(z)                          1x1x1
//   per latent frame f (chunk), with per-convolution causal caches:
//     conv_in (causal 3x3x3) -> mid: res, attention, res
//     -> up_blocks[i]: (num_res_blocks + 1) res blocks, then Resample
//        (upsample3d: frames x2 except on chunk 0, H, W x2;
//         upsample2d: H, W x2; the last block has none). Wan2.1 upsamplers
//        halve the channels; Wan2.2 ones keep them and the block adds
//        DupUp3D(block input) (on chunk 0 minus its first frame)
//     -> RMS norm, SiLU, conv_out (causal 3x3x3) -> 3 p^2 channels
//     -> unpatchify (Wan2.2: p = 2) -> 3 channels
//   concatenated over chunks, clamped to [-1, 1].
// Memory stays bounded by one chunk's activations plus 2 cached frames per
// causal convolution, whatever F is.
//
// Encode (video [B, 3, 1 + 4k, H, W] -> normalised latent means
// [B, z_dim, 1 + k, H/s, W/s]) runs the encoder chunked the same way (frame
// 0, then 4 frames at a time; each chunk patchified first; Wan2.2 levels add
// AvgDown3D(level input)) and returns (mu - latents_mean) / latents_std, the
// form the transformer consumes (as diffusers' image-to-video pipeline does).
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
// WanVAEConfig and of z_dim 16 config.json files that leave them out.
const std::vector<double>& WanVAEDefaultLatentsMean();
const std::vector<double>& WanVAEDefaultLatentsStd();
// The published Wan2.2 latent statistics (48 values each), the defaults of
// z_dim 48 config.json files that leave them out.
const std::vector<double>& WanVAE22LatentsMean();
const std::vector<double>& WanVAE22LatentsStd();

struct WanVAEConfig {
  int64_t base_dim = 96;
  int64_t decoder_base_dim = 0;  // 0: base_dim (config null or absent)
  int64_t z_dim = 16;
  std::vector<int64_t> dim_mult = {1, 2, 4, 4};
  int64_t num_res_blocks = 2;
  std::vector<double> attn_scales;  // must be empty (as published)
  std::vector<bool> temperal_downsample = {false, true, true};  // (sic, diffusers' spelling)
  double dropout = 0.0;               // inference: unused
  // Wan2.2: residual down/up blocks (AvgDown3D / DupUp3D shortcuts, per-level
  // parameter names, upsamplers that keep their channels).
  bool is_residual = false;
  // Pixels are patchified patch_size x patch_size into channels before the
  // encoder and back after the decoder (Wan2.2: 2; config null: 1).
  int64_t patch_size = 1;
  // z_dim values each: video latents are normalised as (mu - mean) / std.
  std::vector<double> latents_mean = WanVAEDefaultLatentsMean();
  std::vector<double> latents_std = WanVAEDefaultLatentsStd();

  int64_t decoder_dim() const { return decoder_base_dim > 0 ? decoder_base_dim : base_dim; }
  // Channels of encoder input and decoder output (in_channels, out_channels):
  // RGB, patchified.
  int64_t pixel_channels() const { return 3 * patch_size * patch_size; }
  // Video pixels per latent pixel along H and W (Wan2.1 8, Wan2.2 16).
  int64_t spatial_scale() const { return (int64_t{1} << temperal_downsample.size()) * patch_size; }
  // Video frames per latent frame after the first (4 as published).
  int64_t temporal_scale() const;
};

// The published Wan2.2 TI2V-5B VAE config (base_dim 160, decoder_base_dim
// 256, z_dim 48, is_residual, patch_size 2, the Wan2.2 statistics).
WanVAEConfig WanVAE22Config();

// Parses vae/config.json text. Keys are typed and range checked (in_channels
// and out_channels must be 3 * patch_size^2; the channel counts must suit the
// blocks); errors are INVALID_ARGUMENT naming the key and `source`. Attention
// inside up/down blocks (attn_scales non-empty) is UNIMPLEMENTED. diffusers
// bookkeeping keys (_diffusers_version, scale_factor_*, ...) are accepted and
// ignored: the scales follow from the architecture.
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
  // latents_mean and latents_std must hold z_dim values each (c10::Error
  // otherwise; WanVAE22Config() carries the 48 Wan2.2 ones).
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
  // of spatial_scale (Wan2.1 8, Wan2.2 16). Returns the normalised latent means
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
