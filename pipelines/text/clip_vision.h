// CLIP vision encoder (transformers' CLIPVisionModel: the Wan2.1 I2V image
// encoder, ViT-H/14) in LibTorch with the published parameter names, and
// transformers' CLIPImageProcessor that prepares its input.
//
// Forward (batch B, channels C, image S, patch p, grid g = S / p, tokens
// N = 1 + g^2, hidden D, heads H, head dim K = D / H, layers L):
//   x = [class_embedding; conv_p(pixels)] + position_embedding     [B, N, D]
//   x = LayerNorm_pre(x)                                 hidden_states[0]
//   layer i (0 <= i < L):
//     x += out_proj(attention(q, k, v))  q, k, v [B, N, H, K] from LayerNorm1(x),
//                                   dense, scale 1 / sqrt(K), no mask
//                                   (attention::DenseTorchAttention: SDPA)
//     x += fc2(act(fc1(LayerNorm2(x))))  act: "gelu" (erf) or "quick_gelu"
//                                                        hidden_states[i + 1]
// The Wan I2V pipeline (diffusers' WanImageToVideoPipeline.encode_image)
// takes hidden_states[-2] = hidden_states[L - 1]: the output of layer L - 2,
// which is the input of the last layer; post_layernorm is not applied. Every
// op runs in the model dtype, as transformers does.
//
// Image preprocessing (CLIPImageProcessor.preprocess, one image), as the
// class diffusers loads for image_processor/ computes it: in transformers 5
// the torchvision backend, in transformers 4 the PIL one (ClipImageBackend):
//   resize so that the shortest edge is shortest_edge, the long edge
//   int(shortest_edge * long / short): ATen's uint8 antialiased kernel
//   (torchvision) or Pillow's resize (PIL), pipelines/core/image_ops.h;
//   centre crop to crop_size; then
//   torchvision: (x - mean / rescale_factor) / (std / rescale_factor) in
//     float32, mean and std float32 tensors scaled by the float32 of
//     1 / rescale_factor (transformers fuses rescale into normalise);
//   PIL: x * rescale_factor in float64 stored as float32, then
//     (x - mean) / std in float32;
//   channels first. Bit-identical with transformers for both.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "pipelines/core/image_ops.h"
#include "pipelines/core/pipeline.h"

namespace rainserve {

// transformers' CLIPVisionConfig; unset keys take its defaults (ViT-B/32).
struct ClipVisionConfig {
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t num_channels = 3;
  int64_t image_size = 224;
  int64_t patch_size = 32;
  std::string hidden_act = "quick_gelu";  // "gelu" (erf) | "quick_gelu"
  double layer_norm_eps = 1e-5;
  int64_t projection_dim = 512;  // unused by the vision tower; written back
  double initializer_range = 0.02;
  double initializer_factor = 1.0;

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  int64_t grid() const { return image_size / patch_size; }
  int64_t num_positions() const { return grid() * grid() + 1; }
};

// Parses image_encoder/config.json: a CLIPVisionModel config (model_type
// "clip_vision_model"), or a whole CLIPModel config (model_type "clip"),
// whose "vision_config" is read, as CLIPVisionConfig.from_pretrained does.
// Keys are typed and range checked (hidden_size divisible by
// num_attention_heads, patch_size <= image_size); a hidden_act other than
// "gelu" / "quick_gelu" or another model_type is UNIMPLEMENTED; transformers'
// bookkeeping keys are accepted. Errors name the key and `source`.
StatusOr<ClipVisionConfig> ParseClipVisionConfig(const std::string& json_text,
                                                 const std::string& source);

// The config as transformers' config.json text (model_type
// "clip_vision_model", architectures ["CLIPVisionModel"]).
std::string ClipVisionConfigJson(const ClipVisionConfig& config);

class ClipVisionEncoder {
 public:
  // Reads <dir>/config.json and <dir>/model.safetensors (or the shards named
  // by model.safetensors.index.json). Parameter names carry the
  // vision_model. prefix (the published layout, transformers 4) or not
  // (CLIPVisionModel.save_pretrained in transformers 5). Besides the vision
  // tower the checkpoint may hold what a CLIPVisionModelWithProjection or a
  // CLIPModel saves and this encoder does not use, which is skipped: exactly
  // visual_projection.weight, text_projection.weight, logit_scale,
  // [vision_model.]embeddings.position_ids (older transformers) and the
  // text_model.* tower. Missing, mis-shaped and any other parameters are
  // INVALID_ARGUMENT listing them. Called once at model load, from the
  // loading thread.
  static StatusOr<std::unique_ptr<ClipVisionEncoder>> Load(const std::string& dir,
                                                           at::ScalarType dtype, at::Device device);
  // Random weights, drawn as transformers' _init_weights draws them (std per
  // tensor), except that the biases and LayerNorm parameters, which
  // transformers starts at 0 and 1, get N(0, 0.02) noise (N(1, 0.02) for
  // LayerNorm weights) so that a parity check on a random checkpoint
  // exercises them. For tests and the tiny-checkpoint generator.
  static std::unique_ptr<ClipVisionEncoder> Random(const ClipVisionConfig& config,
                                                   at::ScalarType dtype, at::Device device,
                                                   uint64_t seed);

  // Every parameter with its published name and shape, in a stable order.
  static std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedParameters(
      const ClipVisionConfig& config);
  std::vector<std::pair<std::string, at::Tensor>> NamedParameters() const { return params_; }

  // pixel_values: [B, num_channels, image_size, image_size] floating (any
  // device; B in [1, 1024]). Returns hidden_states[-2], the image embedding
  // the Wan I2V transformer takes: [B, num_positions, hidden_size] in the
  // model dtype on the model device. Bad inputs are INVALID_ARGUMENT naming
  // pixel_values; LibTorch exceptions propagate (pipelines/core/torch_status.h).
  // Const and stateless: any thread may call it.
  StatusOr<at::Tensor> Forward(const at::Tensor& pixel_values) const;
  // hidden_states[index] of transformers' output for index in [0, L]: the
  // pre-LayerNormed embeddings after `index` layers.
  StatusOr<at::Tensor> HiddenState(const at::Tensor& pixel_values, int64_t index) const;

  const ClipVisionConfig& config() const { return config_; }
  at::ScalarType dtype() const { return dtype_; }
  at::Device device() const { return device_; }

  // Writes config.json + model.safetensors (sharded above max_shard_bytes,
  // with model.safetensors.index.json) to `dir`: a folder
  // CLIPVisionModel.from_pretrained reads.
  Status Save(const std::string& dir, int64_t max_shard_bytes) const;

 private:
  // One encoder layer's weights (names under vision_model.encoder.layers.N.).
  struct LayerWeights {
    at::Tensor q_w, q_b, k_w, k_b, v_w, v_b, out_w, out_b;  // self_attn.*_proj
    at::Tensor ln1_w, ln1_b, fc1_w, fc1_b, fc2_w, fc2_b, ln2_w, ln2_b;
  };

  ClipVisionEncoder(ClipVisionConfig config, at::ScalarType dtype, at::Device device);
  // Points the typed weights at params_ (ExpectedParameters order).
  void BindWeights();
  // x: [B, N, D] -> the layer's output [B, N, D].
  at::Tensor LayerForward(const at::Tensor& x, const LayerWeights& w) const;
  // hidden_states[layers] for validated pixel values.
  at::Tensor Run(const at::Tensor& pixel_values, int64_t layers) const;

  ClipVisionConfig config_;
  at::ScalarType dtype_;
  at::Device device_;
  std::vector<std::pair<std::string, at::Tensor>> params_;  // ExpectedParameters order
  at::Tensor class_embedding_, patch_embedding_, position_embedding_, pre_ln_w_, pre_ln_b_;
  std::vector<LayerWeights> layers_;
};

// Which implementation of transformers' CLIP image processor ClipImageProcessor
// reproduces. The preprocessor_config.json is the same for both; the library
// version picks the class.
enum class ClipImageBackend {
  // transformers 5's CLIPImageProcessor (TorchvisionBackend), the class
  // diffusers' Wan I2V pipeline loads: torchvision's antialiased resize of the
  // uint8 tensor on the CPU, fused rescale and normalise in float32.
  kTorchvision,
  // CLIPImageProcessorPil (transformers 5), transformers 4's
  // CLIPImageProcessor: Pillow's resize, float64 rescale.
  kPil,
};

// transformers' CLIPImageProcessor settings (image_processor/preprocessor_config.json);
// unset keys take its defaults (OpenAI CLIP's 224 pipeline).
struct ClipImageProcessorConfig {
  ClipImageBackend backend = ClipImageBackend::kTorchvision;  // not in the JSON
  bool do_resize = true;
  // size: {"shortest_edge": n} (or a bare n), or {"height": h, "width": w}
  // (resize_height / resize_width set, shortest_edge 0).
  int64_t shortest_edge = 224;
  int64_t resize_height = 0, resize_width = 0;
  // Pillow's numbering. The torchvision backend resizes BICUBIC and LANCZOS
  // (which transformers replaces by bicubic) with torchvision's bicubic,
  // BILINEAR with its bilinear, and has no kernel for BOX and HAMMING.
  ResampleFilter resample = ResampleFilter::kBicubic;
  bool do_center_crop = true;
  int64_t crop_height = 224, crop_width = 224;  // crop_size (or a bare n)
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  std::array<double, 3> image_mean = {0.48145466, 0.4578275, 0.40821073};
  std::array<double, 3> image_std = {0.26862954, 0.26130258, 0.27577711};
  bool do_convert_rgb = true;  // images are RGB already (InputImage)
};

// Errors name the key and `source`; sizes must be in [1, kMaxImageSide],
// image_std positive, resample a Pillow convolution filter. `backend` is left
// at its default.
StatusOr<ClipImageProcessorConfig> ParseClipImageProcessorConfig(const std::string& json_text,
                                                                 const std::string& source);
std::string ClipImageProcessorConfigJson(const ClipImageProcessorConfig& config);

// transformers' get_resize_output_image_size(default_to_square=False): the
// short side becomes `shortest_edge`, the long side int(shortest_edge * long
// / short) (truncated); a square stays square.
ImageSize ShortestEdgeSize(int64_t width, int64_t height, int64_t shortest_edge);

class ClipImageProcessor {
 public:
  explicit ClipImageProcessor(ClipImageProcessorConfig config) : config_(std::move(config)) {}
  // Reads <dir>/preprocessor_config.json for `backend`. A resample filter the
  // backend has no kernel for (BOX, HAMMING with kTorchvision) is
  // UNIMPLEMENTED naming the key and the file. Called at model load.
  static StatusOr<ClipImageProcessor> Load(const std::string& dir,
                                           ClipImageBackend backend = ClipImageBackend::kTorchvision);

  // The resized and centre-cropped image (uint8), as far as the steps are
  // enabled. An image whose resize would exceed kMaxImageSide on a side (an
  // extreme aspect ratio) is INVALID_ARGUMENT naming `image`; a filter the
  // backend lacks is UNIMPLEMENTED naming `resample`.
  StatusOr<InputImage> ResizeAndCrop(const InputImage& image) const;
  // pixel_values [1, 3, H, W] float32 on the CPU (H, W the crop size when
  // cropping). With neither rescale nor normalise, the byte values as floats.
  // Const: any thread may call it.
  StatusOr<at::Tensor> Preprocess(const InputImage& image) const;

  // Writes <dir>/preprocessor_config.json (made if missing).
  Status SavePreprocessorConfig(const std::string& dir) const;

  const ClipImageProcessorConfig& config() const { return config_; }

 private:
  ClipImageProcessorConfig config_;
};

}  // namespace rainserve
