// What a pipeline is loaded with: the model's identity, device and dtype,
// and overrides of the request defaults and limits its checkpoint implies.
// Torch-free; the server maps a YAML model entry (server/config.h) onto it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "attention/settings.h"
#include "pipelines/core/step_cache.h"

namespace rainserve {

// Per-model overrides of the request defaults the checkpoint implies
// (models[].defaults). Unset fields keep the pipeline's own default.
struct ModelDefaultsOverride {
  std::optional<int64_t> width, height, num_frames, fps, steps;
  // An explicit schedule (PipelineDefaults::timesteps); sets steps to its size.
  std::optional<std::vector<double>> timesteps;
  std::optional<double> guidance_scale, flow_shift;
  // Two-expert models only: the low-noise expert's guidance scale.
  std::optional<double> guidance_scale_2;
  std::optional<std::string> scheduler;  // "unipc" | "euler"
  // sparse_attention:
  std::optional<attention::AttentionMode> attention_mode;
  std::optional<double> sparsity;
  std::optional<int64_t> sink_frames, dense_warmup_steps;
  std::optional<std::vector<int64_t>> window;  // [t, h, w] latent tokens
  std::optional<attention::MaskRefresh> mask_refresh;
  std::optional<double> quality_probe_rate;  // sparse_attention.quality_probe.rate
  std::optional<double> kept_mass;           // sparse_attention.kept_mass (rainfusion_mass)
  // step_cache:
  std::optional<StepCacheMode> step_cache_mode;
  std::optional<double> step_cache_threshold;
  std::optional<int64_t> step_cache_warmup_steps;
};

// Per-model request limits (models[].limits); unset keeps the pipeline's.
struct ModelLimitsOverride {
  std::optional<int64_t> max_width, max_height, max_pixels, max_frames, max_steps,
      max_prompt_tokens;
  std::optional<double> max_memory_gb;  // per-request peak-memory budget on the device
  std::optional<double> max_quality_probe_rate;  // cap on sparse_attention.quality_probe.rate
  // Input images: the encoded file's bytes, and its width * height.
  std::optional<int64_t> max_image_bytes, max_image_pixels;
};

// One LoRA file merged into the model's weights at load (models[].loras):
// W += strength * (alpha / rank) * up @ down (pipelines/core/lora.h).
struct LoraFile {
  std::string path;       // a .safetensors file
  double strength = 1.0;  // finite, in [-kMaxLoraStrength, kMaxLoraStrength]
};
inline constexpr size_t kMaxLoraFiles = 16;
inline constexpr double kMaxLoraStrength = 100;

struct ModelOptions {
  std::string name;            // what clients put in GenerateRequest.model
  std::string pipeline = "wan";
  std::string path;            // checkpoint folder (diffusers layout)
  std::string device = "cpu";  // "cpu" or "cuda:N"
  // models[].devices: every GPU one request runs on (CFG parallel x Ulysses
  // sequence parallel, pipelines/core/parallel_plan.h), distinct "cuda:N",
  // at most kMaxModelDevices; `device` is devices[0]. Empty: `device` alone.
  std::vector<std::string> devices;
  std::string dtype = "fp32";  // "fp32" | "bf16" | "fp16"
  int64_t threads = 0;         // CPU threads for this model's worker; 0 = all cores
  ModelDefaultsOverride defaults;
  ModelLimitsOverride limits;
  std::vector<LoraFile> loras;  // merged in this order; at most kMaxLoraFiles
  // Precision of the transformer blocks' linear layers: "bf16" (the model
  // dtype) or "fp8" (e4m3 weights and activations with per-channel and
  // per-token scales, cuBLASLt FP8 GEMMs; CUDA Hopper devices and dtype bf16
  // only, checked at load: pipelines/wan/wan_fp8.h).
  std::string linear_precision = "bf16";
  // Two-expert models: keep the expert that is not running in host memory
  // and move it to the device at the switch (and the other one out), instead
  // of both staying resident. Saves one expert's weights of device memory at
  // the cost of two host-device copies per request.
  bool offload_idle_expert = false;
  // The kernel of dense self-attention steps: "auto" (the backend's measured
  // fastest, attention/forward.h), "ours" (the block kernel with every block
  // kept) or "sdpa" (LibTorch's dense attention). Benchmarks pin it to time
  // a baseline; serving keeps "auto".
  std::string dense_attention = "auto";

  // How many devices one request runs on (1 without `devices`).
  int64_t DeviceCount() const {
    return devices.empty() ? 1 : static_cast<int64_t>(devices.size());
  }
};

}  // namespace rainserve
