// The Pipeline interface: one loaded generation model (text encoder,
// transformer, VAE, scheduler) behind Describe() and Generate().
//
// pipelines/ never sees protobuf types; the server maps its requests onto the
// plain structs here. Pipelines are created by name through the registry
// (pipelines/core/registry.h) from a model entry of the server configuration.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "attention/settings.h"
#include "pipelines/core/model_options.h"
#include "pipelines/core/step_cache.h"
#include "common/status.h"

namespace rainserve {

// The sparse-attention settings and their names live in attention/.
using attention::AttentionMode;
using attention::MaskRefresh;
using attention::SparseSettings;

// What a model can be asked to do (Models.Describe tasks). A request's task
// follows from its inputs (RequestTask): an input image makes it the model's
// image task (i2v or ti2v), one frame without an image t2i, else t2v.
enum class Task {
  kTextToVideo,       // "t2v"
  kTextToImage,       // "t2i": one frame
  kImageToVideo,      // "i2v": an image conditions the video (Wan I2V models)
  kTextImageToVideo,  // "ti2v": TI2V-5B's image mode (the image is latent frame 0)
};
const char* TaskName(Task task);

// A decoded input image: RGB, 8 bits per channel, rows top to bottom,
// [height, width, 3]. Empty when the request has none.
struct InputImage {
  int64_t width = 0;
  int64_t height = 0;
  std::vector<uint8_t> rgb;
  bool empty() const { return rgb.empty(); }
};

// The output size for an input image when the request sets no width and
// height (the reference pipelines' rule): with aspect = height / width,
//   height = floor(round(sqrt(max_area * aspect)) / multiple) * multiple
//   width  = floor(round(sqrt(max_area / aspect)) / multiple) * multiple
// each at least `multiple`.
struct ImageSize {
  int64_t width = 0, height = 0;
};
ImageSize SizeForImage(int64_t image_width, int64_t image_height, int64_t max_area,
                       int64_t multiple);

// What a request may ask for (Models.Describe limits).
struct PipelineLimits {
  int64_t size_multiple = 16;  // width and height
  int64_t max_width = 1280;
  int64_t max_height = 1280;
  int64_t max_pixels = 1280 * 720;
  int64_t frame_multiple = 4;  // num_frames = frame_multiple * k + 1
  int64_t max_frames = 81;
  int64_t max_steps = 200;
  int64_t max_prompt_tokens = 512;  // longer prompts are truncated to this
  int64_t max_prompt_bytes = 16384;  // longer prompts are rejected
  double max_guidance_scale = 50.0;
  double max_flow_shift = 100.0;
  // Input images: encoded bytes, and decoded pixels (width * height).
  int64_t max_image_bytes = 16 << 20;
  int64_t max_image_pixels = 4096 * 4096;
  // Peak-memory budget of one request on the model's device (0 = none):
  // requests whose MemoryModel estimate exceeds it are refused up front with
  // RESOURCE_EXHAUSTED instead of failing mid-run.
  uint64_t max_memory_bytes = 0;
  // Cap on sparse_attention.quality_probe.rate: requests above it are refused.
  double max_quality_probe_rate = 1.0;
};

// A request's peak memory on the model's device, approximately:
//   fixed_bytes (weights, resident)
//   + bytes_per_latent_token * latent tokens (transformer activations, CFG batch included)
//   + bytes_per_output_pixel * width * height (VAE decode working set of one chunk)
//   + bytes_per_output_value * frames * width * height * 3 (decoded video and frames)
// The pipeline derives the coefficients from its model at load time
// (pipelines/wan/wan_pipeline.cc says how); docs/service.md documents the rule.
struct MemoryModel {
  uint64_t fixed_bytes = 0;
  double bytes_per_latent_token = 0;
  double bytes_per_output_pixel = 0;
  double bytes_per_output_value = 0;
  int64_t latent_frame_stride = 4;   // video frames per latent frame (after the first)
  int64_t latent_token_pixels = 256; // output pixels per latent token in one frame (16 x 16)

  uint64_t Estimate(int64_t width, int64_t height, int64_t frames) const;
};

// What an unset request field becomes (Models.Describe defaults).
struct PipelineDefaults {
  int64_t width = 832;
  int64_t height = 480;
  int64_t num_frames = 81;
  int64_t fps = 16;
  int64_t steps = 50;
  double guidance_scale = 5.0;
  // Two-expert models: the low-noise expert's guidance; unset means the
  // request's guidance_scale (as the reference pipeline does).
  std::optional<double> guidance_scale_2;
  double flow_shift = 3.0;
  std::string scheduler = "unipc";  // "unipc" | "euler"
  // An explicit schedule (few-step distilled checkpoints, e.g. [1000, 750,
  // 500, 250]); empty: `steps` evenly spaced. When set, steps is its size.
  std::vector<double> timesteps;
  SparseSettings sparse;
  StepCacheSettings step_cache;  // off unless the model's defaults say otherwise
};

// What a model accepts and what it does by default (Models.Describe).
struct PipelineDescription {
  std::string name;
  std::string pipeline;  // "wan"
  std::vector<Task> tasks;  // what it serves, e.g. {t2v, t2i}
  // 2 for Wan2.2 A14B (high-noise and low-noise transformers), else 1.
  int64_t experts = 1;
  // Two experts: the switch timestep, boundary_ratio x num_train_timesteps
  // (steps with timestep >= it run the high-noise expert).
  double boundary_timestep = 0.0;
  // The scheduler's training timesteps: explicit timesteps lie in (0, it].
  int64_t num_train_timesteps = 1000;
  std::string device;
  std::string dtype;
  std::vector<std::string> attention_backends;
  PipelineLimits limits;
  PipelineDefaults defaults;
  MemoryModel memory;
};

// One generation, every field resolved (the server fills defaults).
struct GenerationRequest {
  std::string prompt;
  std::string negative_prompt;
  uint64_t seed = 0;
  int64_t steps = 50;
  double guidance_scale = 5.0;
  // Two-expert models only: the low-noise expert's guidance (resolved: the
  // model's default, else guidance_scale). Unset for one-expert models.
  std::optional<double> guidance_scale_2;
  double flow_shift = 3.0;
  std::string scheduler = "unipc";
  // Explicit schedule: `steps` values, strictly decreasing, in (0,
  // num_train_timesteps] (FlowScheduler::SetTimesteps says how they become
  // sigmas); empty: `steps` evenly spaced.
  std::vector<double> timesteps;
  int64_t width = 832;
  int64_t height = 480;
  int64_t num_frames = 81;
  SparseSettings sparse;
  StepCacheSettings step_cache;
  // Image-to-video conditioning (decoded at the edge); empty for text tasks.
  InputImage image;
  // false: stop after denoising and return the latents (no VAE decode).
  bool decode_frames = true;
};

// Applies a model entry's overrides that the image and expert fields have
// (models[].defaults.guidance_scale_2, models[].limits.max_image_bytes and
// max_image_pixels) to `description`, whose `experts` must already be set.
// Called by a pipeline's Load next to its other overrides; INVALID_ARGUMENT
// naming the key when guidance_scale_2 is set for a one-expert model (the
// load fails with that reason).
Status ApplyImageAndExpertOverrides(const ModelOptions& entry, PipelineDescription* description);

// The request every unset field gives: the model's defaults, no prompt,
// seed 0, and the sink off for one frame (text-to-image has nothing to sink).
GenerationRequest DefaultRequest(const PipelineDefaults& defaults);

// Reported after every denoising step (stage "denoise") and at the start of
// the other stages ("text_encode", "decode").
struct ProgressUpdate {
  std::string stage;
  int64_t step = 0;  // steps done (denoise), 0 otherwise
  int64_t total_steps = 0;
  double elapsed_seconds = 0.0;  // since Generate() started
};
using ProgressCallback = std::function<void(const ProgressUpdate&)>;

struct StepStat {
  int64_t step = 0;  // 1-based
  bool sparse = false;
  double realized_sparsity = 0.0;
  double seconds = 0.0;
  // The step reused the step cache's residual (pipelines/core/step_cache.h).
  bool cache_skipped = false;
  int64_t expert = 0;  // two-expert models: 0 high-noise, 1 low-noise
  double timestep = 0.0;  // the timestep the transformer got
  int64_t batch = 0;      // the transformer's batch: 2 with CFG, 1 without
};

// One probed self-attention layer of one denoising step (attention/probe.h).
struct QualityProbeStat {
  int64_t step = 0;   // 1-based, as StepStat
  int64_t layer = 0;  // 0-based self-attention layer
  int64_t rows = 0;   // sampled query rows, over the CFG batch and heads
  double rel_l2 = 0.0;
  double cosine = 0.0;
  double kept_mass = 0.0;
};

struct GenerationOutput {
  int64_t width = 0;
  int64_t height = 0;
  int64_t num_frames = 0;
  std::vector<uint8_t> rgb;  // [num_frames, height, width, 3]; empty without decode_frames
  // Without decode_frames: the denoised latents, float32 [C, F, H, W] of
  // latent_shape (the VAE's input, before its de-normalisation).
  std::vector<float> latents;
  std::vector<int64_t> latent_shape;
  std::vector<StepStat> steps;
  // The quality probe's records, in step and layer order (empty unless the
  // request's quality_probe_rate drew sparse steps).
  std::vector<QualityProbeStat> quality_probes;
  int64_t cache_skipped_steps = 0;  // steps with cache_skipped
  double requested_sparsity = 0.0;
  double realized_sparsity = 0.0;  // mean over sparse steps (0 when none)
  double text_encode_seconds = 0.0;
  double image_encode_seconds = 0.0;  // CLIP and VAE encoding of the input image
  // Two experts with the idle one kept in host memory: time spent moving
  // experts between host and device (0 when both stay resident).
  double expert_switch_seconds = 0.0;
  double denoise_seconds = 0.0;
  double decode_seconds = 0.0;
  // Mask prediction, summed over steps and layers (host clock: on a GPU this
  // is the launch time unless the pipeline synchronises).
  double mask_seconds = 0.0;
  uint64_t peak_memory_bytes = 0;  // device memory (CUDA) or process RSS peak (CPU)
};

// Set by the server (client cancel, deadline, drain); polled by the pipeline
// between denoising steps.
class CancelToken {
 public:
  void Cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }

 private:
  std::atomic<bool> cancelled_{false};
};

// Memory of one CUDA device, as the CUDA runtime reports it.
struct DeviceMemoryInfo {
  std::string device;  // "cuda:0"
  uint64_t used_bytes = 0;
  uint64_t total_bytes = 0;
  // GPU busy fraction over NVML's last sample period, in [0, 1]; -1 when
  // NVML (libnvidia-ml, loaded at run time) is not available.
  double utilization = -1;
};
// Every CUDA device this process can see; empty in CPU-only builds or
// without a device. Cheap (one runtime call per device); any thread.
std::vector<DeviceMemoryInfo> QueryDeviceMemory();

// Checks a resolved request against a model's limits. INVALID_ARGUMENT naming
// the field (request field names: "width", "sparse_attention.sparsity", ...)
// and the allowed range. The server calls it at the edge; pipelines call it
// again so that nothing invalid reaches a model.
Status ValidateGenerationRequest(const PipelineDescription& model, const GenerationRequest& request);

// Checks an explicit schedule: every value finite in (0, num_train_timesteps]
// and below the one before. INVALID_ARGUMENT naming "timesteps[i]". Called
// by ValidateGenerationRequest and by the schedulers.
Status ValidateExplicitTimesteps(const std::vector<double>& timesteps,
                                 int64_t num_train_timesteps);

// The task a (resolved) request asks `model` for, from its inputs; the
// validator refuses a task the model does not list (INVALID_ARGUMENT naming
// "image" and the model's tasks).
Task RequestTask(const PipelineDescription& model, const GenerationRequest& request);

class Pipeline {
 public:
  virtual ~Pipeline() = default;
  // Called by the server on any thread; cheap and const.
  virtual PipelineDescription Describe() const = 0;
  // Called by the model's worker thread, one request at a time. Returns
  // INVALID_ARGUMENT for a request outside the limits, CANCELLED when `cancel`
  // fired (checked between steps), INTERNAL/RESOURCE_EXHAUSTED for failures of
  // the model itself; the pipeline stays usable after any of them. `progress`
  // runs on the worker thread and must not block.
  virtual StatusOr<GenerationOutput> Generate(const GenerationRequest& request,
                                              const ProgressCallback& progress,
                                              const CancelToken& cancel) = 0;
  // Called by the model's worker after a job failed: OK while the device is
  // usable, UNAVAILABLE after a sticky device fault (a CUDA context that
  // every later call would fail on). The server then takes the model out of
  // service (FAILED, health NOT_SERVING) instead of failing job after job.
  virtual Status DeviceStatus() const { return OkStatus(); }
};

// Creates a pipeline for a configured model entry. Called by the server's
// model manager on a loading thread; a failure leaves the model not ready
// with the returned reason and the server keeps serving other models.
using PipelineFactory = std::function<StatusOr<std::unique_ptr<Pipeline>>(const ModelOptions&)>;

}  // namespace rainserve
