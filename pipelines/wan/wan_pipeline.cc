// WanPipeline: prompt -> UMT5 -> flow-matching denoising with CFG -> VAE -> frames.
//
// Generate() follows diffusers' WanPipeline.__call__:
//   embeds = UMT5(tokenize(prompt, max_len)) with positions past the prompt
//            zeroed (and the same for the negative prompt when guidance > 1)
//   latents ~ N(0, 1) [1, z, (frames-1)/4+1, H/8, W/8], fp32, seeded on the CPU
//   for each scheduler step t:
//     v = transformer([latents, latents], t, [embeds, negative])  (one batch of 2)
//     v = v_uncond + guidance * (v_cond - v_uncond)
//     latents = scheduler.step(v, t, latents)
//   frames = VAE.decode(latents)   (de-normalised with the VAE's mean/std)
// The sparse-attention settings of the request pick the attention per step
// (dense warm-up steps, then RainFusion2.0 at the requested sparsity).
#include "pipelines/wan/wan_pipeline.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#if RAINSERVE_WITH_CUDA
#include <cuda_runtime.h>
#endif

#include "attention/engine.h"
#include "common/logging.h"
#include "pipelines/core/parallel_plan.h"
#include "pipelines/core/schedulers.h"
#include "pipelines/core/step_cache.h"
#include "pipelines/text/tokenizer.h"
#include "pipelines/core/torch_device.h"
#include "pipelines/core/torch_status.h"
#include "common/clock.h"
#include "common/files.h"
#include "pipelines/text/umt5.h"
#include "pipelines/text/clip_vision.h"
#include "pipelines/wan/wan_experts.h"
#include "pipelines/wan/wan_image_conditioning.h"
#include "pipelines/wan/wan_model_index.h"
#include "pipelines/wan/wan_parallel.h"
#include "pipelines/wan/wan_transformer.h"
#include "pipelines/wan/wan_vae.h"

namespace rainserve {
namespace {

using nlohmann::json;
using Clock = SteadyClock;

// models[].linear_precision: "bf16", or "fp8" on a CUDA device with dtype bf16.
Status CheckLinearPrecision(const ModelOptions& entry, const at::Device& device) {
  if (entry.linear_precision == "bf16") return OkStatus();
  if (entry.linear_precision != "fp8") {
    return InvalidArgumentError("linear_precision: expected bf16 or fp8, got '" +
                                entry.linear_precision + "'");
  }
  if (!device.is_cuda()) {
    return InvalidArgumentError(
        "linear_precision: fp8 needs a CUDA device (FP8 GEMMs on Hopper); this model's device is " +
        entry.device);
  }
  if (entry.dtype != "bf16") {
    return InvalidArgumentError("linear_precision: fp8 needs dtype bf16, got " + entry.dtype);
  }
  return OkStatus();
}

// One request's step cache: the policy (pipelines/core/step_cache.h) behind
// the transformer's hook. The probe's change is mean |a - b| / mean |b| over
// the whole batch, so both CFG branches share one decision per step.
class StepCacheRun {
 public:
  StepCacheRun(const StepCacheSettings& settings, int64_t steps, int64_t inner_dim)
      : policy_(settings, steps, WanTeaCacheCoefficients(inner_dim)) {
    hook_.mode = settings.mode;
    hook_.skip = [this](const at::Tensor& probe) { return Decide(probe); };
  }
  StepCacheRun(const StepCacheRun&) = delete;
  StepCacheRun& operator=(const StepCacheRun&) = delete;
  // The hook for step `step` (0-based), null when caching is off.
  WanStepCacheHook* Hook(int64_t step) {
    step_ = step;
    hook_.skipped = false;
    return hook_.mode == StepCacheMode::kOff ? nullptr : &hook_;
  }
  // A new expert starts without a reference: its first step computes.
  void Reset() { reference_ = at::Tensor(); }
  bool skipped() const { return hook_.skipped; }
  int64_t skipped_steps() const { return policy_.skipped(); }

 private:
  bool Decide(const at::Tensor& probe) {
    const at::Tensor p = probe.to(at::kFloat);
    const bool has_reference = reference_.defined();
    double change = 0.0;
    if (has_reference) {
      change = ((p - reference_).abs().mean() / reference_.abs().mean()).item<double>();
    }
    const bool skip = policy_.Skip(step_, has_reference, change);
    // First-Block-Cache compares with the last computed step, TeaCache with
    // the previous step.
    if (!skip || hook_.mode == StepCacheMode::kTeaCache) reference_ = p.clone();
    return skip;
  }

  StepCachePolicy policy_;
  WanStepCacheHook hook_;
  at::Tensor reference_;  // fp32 probe of the reference step
  int64_t step_ = 0;
};

// The scheduler kind a diffusers scheduler_config.json names.
StatusOr<std::string> SchedulerKind(const std::string& json_text, const std::string& source) {
  try {
    const json j = json::parse(json_text);
    const std::string cls = j.value("_class_name", "UniPCMultistepScheduler");
    if (cls == "UniPCMultistepScheduler") return std::string("unipc");
    if (cls == "FlowMatchEulerDiscreteScheduler") return std::string("euler");
    return UnimplementedError(source + ": scheduler class '" + cls +
                              "' is not supported (UniPCMultistepScheduler, "
                              "FlowMatchEulerDiscreteScheduler)");
  } catch (const json::exception& e) {
    return InvalidArgumentError(source + ": " + e.what());
  }
}

// ModelOptions::dense_attention.
StatusOr<attention::DenseKernel> ParseDenseKernel(const std::string& name) {
  if (name == "auto") return attention::DenseKernel::kAuto;
  if (name == "ours") return attention::DenseKernel::kOurs;
  if (name == "sdpa") return attention::DenseKernel::kTorch;
  return InvalidArgumentError("dense_attention must be auto, ours or sdpa (got \"" + name +
                              "\")");
}

void ApplyOverrides(const ModelOptions& entry, PipelineDefaults* d, PipelineLimits* l) {
  const ModelDefaultsOverride& o = entry.defaults;
  if (o.width) d->width = *o.width;
  if (o.height) d->height = *o.height;
  if (o.num_frames) d->num_frames = *o.num_frames;
  if (o.fps) d->fps = *o.fps;
  if (o.steps) d->steps = *o.steps;
  if (o.timesteps) {  // an explicit schedule sets the step count
    d->timesteps = *o.timesteps;
    d->steps = static_cast<int64_t>(o.timesteps->size());
  }
  if (o.guidance_scale) d->guidance_scale = *o.guidance_scale;
  if (o.flow_shift) d->flow_shift = *o.flow_shift;
  if (o.scheduler) d->scheduler = *o.scheduler;
  if (o.attention_mode) d->sparse.mode = *o.attention_mode;
  if (o.sparsity) d->sparse.sparsity = *o.sparsity;
  if (o.sink_frames) d->sparse.sink_frames = *o.sink_frames;
  if (o.dense_warmup_steps) d->sparse.dense_warmup_steps = *o.dense_warmup_steps;
  if (o.window) d->sparse.window = {(*o.window)[0], (*o.window)[1], (*o.window)[2]};
  if (o.mask_refresh) d->sparse.mask_refresh = *o.mask_refresh;
  if (o.quality_probe_rate) d->sparse.quality_probe_rate = *o.quality_probe_rate;
  if (o.kept_mass) d->sparse.kept_mass = *o.kept_mass;
  if (o.step_cache_mode) d->step_cache.mode = *o.step_cache_mode;
  if (o.step_cache_threshold) d->step_cache.threshold = *o.step_cache_threshold;
  if (o.step_cache_warmup_steps) d->step_cache.warmup_steps = *o.step_cache_warmup_steps;
  const ModelLimitsOverride& m = entry.limits;
  if (m.max_width) l->max_width = *m.max_width;
  if (m.max_height) l->max_height = *m.max_height;
  if (m.max_pixels) l->max_pixels = *m.max_pixels;
  if (m.max_frames) l->max_frames = *m.max_frames;
  if (m.max_steps) l->max_steps = *m.max_steps;
  if (m.max_prompt_tokens) l->max_prompt_tokens = *m.max_prompt_tokens;
  if (m.max_memory_gb) l->max_memory_bytes = static_cast<uint64_t>(*m.max_memory_gb * 1e9);
  if (m.max_quality_probe_rate) l->max_quality_probe_rate = *m.max_quality_probe_rate;
}


class WanPipeline final : public Pipeline {
 public:
  static StatusOr<std::unique_ptr<WanPipeline>> Load(const ModelOptions& entry,
                                                     const WanPipelineHooks& hooks);

  PipelineDescription Describe() const override { return description_; }
  Status DeviceStatus() const override;
  StatusOr<GenerationOutput> Generate(const GenerationRequest& request,
                                      const ProgressCallback& progress,
                                      const CancelToken& cancel) override;

 private:
  WanPipeline() = default;
  // Load's description of the model: tasks, limits, defaults (checkpoint,
  // then the entry's overrides), validated as a request.
  Status FillDescription(const ModelOptions& entry, const std::string& scheduler_kind);
  // Load's checks that the text encoder, transformer and VAE fit together.
  Status CheckComponentsMatch(const std::string& dir) const;
  // Several devices: the transformer's replicas, engines and the groups of
  // both plans (with and without CFG).
  Status LoadRanks(const WanPipelineHooks& hooks);
  // One transformer forward: on device_, or over every device (several).
  // A failure over several devices marks the model lost (DeviceStatus).
  StatusOr<at::Tensor> Forward(const WanTransformer& transformer, const at::Tensor& x,
                               const at::Tensor& t, const at::Tensor& text, bool cfg,
                               const WanForwardOptions& options, WanForwardStats* stats);
  // The memory model of a request, sized from the loaded components.
  MemoryModel SizeMemoryModel(int64_t size_multiple) const;
  // prompts -> [B, max_prompt_tokens, d_model], zero past each prompt's length.
  StatusOr<at::Tensor> EncodePrompts(const std::vector<std::string>& prompts) const;
  // Generate's work; *stage names the stage running (for error messages).
  StatusOr<GenerationOutput> Run(const GenerationRequest& request, const ProgressCallback& progress,
                                 const CancelToken& cancel, const char** stage);
  // Noise from the seed, then every denoising step; fills the step statistics
  // and timings of *out. Returns the final latents [1, z, F, h, w] fp32.
  StatusOr<at::Tensor> Denoise(const GenerationRequest& request, const at::Tensor& text,
                               const WanImageConditioning& image,
                               const std::function<void(int64_t)>& step_done,
                               const CancelToken& cancel, GenerationOutput* out);
  // The latents themselves, or the decoded frames, into *out.
  Status Output(const GenerationRequest& request, const at::Tensor& latents,
                GenerationOutput* out);

  PipelineDescription description_;
  at::Device device_{at::kCPU};  // devices_[0]: text encoder, VAE, the loop's tensors
  std::vector<at::Device> devices_;
  // Several devices only: rank r >= 1's transformer copy and engine (rank 0
  // runs experts_->expert(0) and engine_), and the groups of the plan with
  // CFG ([1]) and without ([0]).
  std::vector<std::unique_ptr<WanTransformer>> replicas_;
  std::vector<std::unique_ptr<attention::AttentionEngine>> rank_engines_;
  std::array<std::unique_ptr<WanParallelGroups>, 2> groups_;
  // Set when a forward over several devices failed: its groups are aborted,
  // so the model serves nothing more (DeviceStatus reports it).
  mutable std::mutex lost_mu_;
  Status lost_ = OkStatus();
  at::ScalarType dtype_ = at::kFloat;
  std::unique_ptr<attention::AttentionEngine> engine_;
  attention::DenseKernel dense_kernel_ = attention::DenseKernel::kAuto;
  std::unique_ptr<UMT5Tokenizer> tokenizer_;
  std::unique_ptr<UMT5Encoder> text_encoder_;
  WanModelIndex index_;
  WanImageMode image_mode_ = WanImageMode::kNone;  // how an input image conditions
  std::unique_ptr<WanExperts> experts_;
  std::unique_ptr<ClipVisionEncoder> image_encoder_;   // Wan2.1 I2V only
  std::unique_ptr<ClipImageProcessor> image_processor_;
  std::unique_ptr<WanVAE> vae_;
  SchedulerConfig scheduler_config_;
  // LibTorch intra-op threads of this model, set on the thread that runs
  // each request (OpenMP keeps the setting per thread), never process-wide.
  int threads_ = 1;
};

namespace {

// models[].devices with several devices: every transformer's heads must
// split evenly over them (pipelines/core/parallel_plan.h), the model must
// have one expert, and this build and machine must have the GPUs ("cpu"
// ranks, all of them, are allowed for tests). Checked before anything is
// loaded; returns the devices.
StatusOr<std::vector<at::Device>> CheckDevices(const ModelOptions& entry) {
  const int64_t n = entry.DeviceCount();
  if (n == 1) {
    RAINSERVE_ASSIGN_OR_RETURN(at::Device device, ParseDevice(entry.device));
    return std::vector<at::Device>{device};
  }
  const std::string& dir = entry.path;
  RAINSERVE_ASSIGN_OR_RETURN(const WanModelIndex index, ReadWanModelIndex(dir));
  for (const char* folder : {"/transformer", "/transformer_2"}) {
    if (std::string(folder) == "/transformer_2" && !index.has_transformer_2) break;
    std::string text;
    const std::string path = dir + folder + "/config.json";
    RAINSERVE_RETURN_IF_ERROR(ReadFile(path, &text));
    RAINSERVE_ASSIGN_OR_RETURN(const WanTransformerConfig config,
                               ParseWanTransformerConfig(text, path));
    const Status heads = CheckHeadsDivisible(n, config.num_attention_heads);
    if (!heads.ok()) {
      return InvalidArgumentError("model '" + entry.name + "': " + heads.message() + " (" +
                                  path + ")");
    }
  }
  // "cuda:N" (the config checks it; options built in code are checked here),
  // or "cpu" for every rank.
  const bool cpu = std::all_of(entry.devices.begin(), entry.devices.end(),
                               [](const std::string& d) { return d == "cpu"; });
  for (const std::string& device : entry.devices) {
    if (!cpu && CudaDeviceIndex(device) < 0) {
      return InvalidArgumentError("model '" + entry.name +
                                  "': devices: expected \"cuda:N\", got '" + device + "'");
    }
  }
  std::vector<at::Device> devices;
  const int64_t visible = cpu ? 0 : CudaDeviceCount();
  for (const std::string& device : entry.devices) {
    if (cpu) {
      devices.emplace_back(at::kCPU);
      continue;
    }
    const int64_t ordinal = CudaDeviceIndex(device);
    if (ordinal >= visible) {
      return FailedPreconditionError("model '" + entry.name + "': devices: '" + device +
                                     "' is not available: this build or machine has " +
                                     std::to_string(visible) + " CUDA devices");
    }
    devices.emplace_back(at::kCUDA, static_cast<c10::DeviceIndex>(ordinal));
  }
  if (index.has_transformer_2) {
    return UnimplementedError("model '" + entry.name + "': devices: a two-expert model (" + dir +
                              "/transformer_2) runs on one device per request; use device");
  }
  return devices;
}

}  // namespace

StatusOr<std::unique_ptr<WanPipeline>> WanPipeline::Load(const ModelOptions& entry,
                                                         const WanPipelineHooks& hooks) {
  const std::string& dir = entry.path;
  std::unique_ptr<WanPipeline> p(new WanPipeline());
  RAINSERVE_ASSIGN_OR_RETURN(p->devices_, CheckDevices(entry));
  p->device_ = p->devices_[0];
  RAINSERVE_ASSIGN_OR_RETURN(p->dtype_, ParseDtype(entry.dtype));
  RAINSERVE_RETURN_IF_ERROR(CheckLinearPrecision(entry, p->device_));
  RAINSERVE_ASSIGN_OR_RETURN(p->dense_kernel_, ParseDenseKernel(entry.dense_attention));
  RAINSERVE_ASSIGN_OR_RETURN(p->index_, ReadWanModelIndex(dir));
  p->image_mode_ = p->index_.expand_timesteps  ? WanImageMode::kFirstFrame
                   : p->index_.image_to_video() ? WanImageMode::kConcat
                                                : WanImageMode::kNone;

  const int threads = entry.threads > 0 ? static_cast<int>(entry.threads)
                                        : static_cast<int>(std::thread::hardware_concurrency());
  p->threads_ = std::max(threads, 1);
  p->engine_ = std::make_unique<attention::AttentionEngine>(threads);

  std::string text;
  const std::string scheduler_path = dir + "/scheduler/scheduler_config.json";
  RAINSERVE_RETURN_IF_ERROR(ReadFile(scheduler_path, &text));
  RAINSERVE_ASSIGN_OR_RETURN(p->scheduler_config_, ParseSchedulerConfig(text, scheduler_path));
  RAINSERVE_ASSIGN_OR_RETURN(const std::string scheduler_kind, SchedulerKind(text, scheduler_path));

  RAINSERVE_ASSIGN_OR_RETURN(p->tokenizer_, UMT5Tokenizer::Load(dir + "/tokenizer"));
  RAINSERVE_ASSIGN_OR_RETURN(p->text_encoder_,
                             UMT5Encoder::Load(dir + "/text_encoder", p->dtype_, p->device_));
  RAINSERVE_ASSIGN_OR_RETURN(
      p->experts_, WanExperts::Load(dir, p->index_, p->scheduler_config_.num_train_timesteps,
                                    p->dtype_, p->device_, entry.offload_idle_expert,
                                    entry.loras, entry.linear_precision == "fp8"));
  RAINSERVE_ASSIGN_OR_RETURN(p->vae_, WanVAE::Load(dir + "/vae", at::kFloat, p->device_));
  if (p->index_.has_image_encoder) {
    // fp32 like the VAE: one encoding per request.
    RAINSERVE_ASSIGN_OR_RETURN(p->image_encoder_, ClipVisionEncoder::Load(dir + "/image_encoder",
                                                                          at::kFloat, p->device_));
    RAINSERVE_ASSIGN_OR_RETURN(ClipImageProcessor processor,
                               ClipImageProcessor::Load(dir + "/image_processor"));
    p->image_processor_ = std::make_unique<ClipImageProcessor>(std::move(processor));
  }

  RAINSERVE_RETURN_IF_ERROR(p->CheckComponentsMatch(dir));
  RAINSERVE_RETURN_IF_ERROR(p->FillDescription(entry, scheduler_kind));
  if (p->devices_.size() > 1) RAINSERVE_RETURN_IF_ERROR(p->LoadRanks(hooks));
  return p;
}

Status WanPipeline::LoadRanks(const WanPipelineHooks& hooks) {
  const WanTransformer& first = experts_->expert(0);
  const int64_t n = static_cast<int64_t>(devices_.size());
  for (int64_t r = 1; r < n; ++r) {
    RAINSERVE_ASSIGN_OR_RETURN(std::unique_ptr<WanTransformer> copy, first.CopyTo(devices_[r]));
    replicas_.push_back(std::move(copy));
    rank_engines_.push_back(std::make_unique<attention::AttentionEngine>(threads_));
  }
  for (const bool cfg : {false, true}) {
    RAINSERVE_ASSIGN_OR_RETURN(const ParallelPlan plan,
                               MakeParallelPlan(n, cfg, first.config().num_attention_heads));
    RAINSERVE_ASSIGN_OR_RETURN(groups_[cfg ? 1 : 0],
                               WanParallelGroups::Create(plan, devices_, hooks.collective_fault));
  }
  return OkStatus();
}

StatusOr<at::Tensor> WanPipeline::Forward(const WanTransformer& transformer, const at::Tensor& x,
                                          const at::Tensor& t, const at::Tensor& text, bool cfg,
                                          const WanForwardOptions& options,
                                          WanForwardStats* stats) {
  if (devices_.size() == 1) return transformer.Forward(x, t, text, options, stats);
  const WanParallelGroups& groups = *groups_[cfg ? 1 : 0];
  std::vector<WanRank> ranks;
  for (int64_t r = 0; r < groups.plan().world; ++r) {
    ranks.push_back({r == 0 ? &transformer : replicas_[r - 1].get(),
                     r == 0 ? engine_.get() : rank_engines_[r - 1].get(), groups.ulysses(r),
                     groups.cfg(r)});
  }
  StatusOr<at::Tensor> v = ParallelWanForward(groups.plan(), ranks, x, t, text, options, stats);
  if (!v.ok()) {
    std::lock_guard<std::mutex> lock(lost_mu_);
    if (lost_.ok()) lost_ = v.status();
  }
  return v;
}

Status WanPipeline::FillDescription(const ModelOptions& entry, const std::string& scheduler_kind) {
  const WanTransformerConfig& tc = experts_->expert(0).config();

  PipelineDescription& d = description_;
  d.name = entry.name;
  d.pipeline = "wan";
  switch (image_mode_) {
    case WanImageMode::kNone: d.tasks = {Task::kTextToVideo, Task::kTextToImage}; break;
    case WanImageMode::kConcat: d.tasks = {Task::kImageToVideo}; break;
    case WanImageMode::kFirstFrame:
      d.tasks = {Task::kTextToVideo, Task::kTextToImage, Task::kTextImageToVideo};
      break;
  }
  d.experts = experts_->count();
  d.boundary_timestep = experts_->boundary_timestep();
  d.num_train_timesteps = scheduler_config_.num_train_timesteps;
  d.device = entry.device;
  d.dtype = entry.dtype;
  d.attention_backends = {device_.is_cuda() ? "cuda" : "cpu"};
  d.limits.size_multiple = vae_->spatial_scale() * tc.patch_size[1];
  d.limits.frame_multiple = vae_->temporal_scale();
  d.memory = SizeMemoryModel(d.limits.size_multiple);
  if (image_mode_ == WanImageMode::kFirstFrame) {
    // Wan2.2 TI2V-5B's published defaults: 1280 x 704, 121 frames at 24 fps.
    d.defaults.width = 1280;
    d.defaults.height = 704;
    d.defaults.num_frames = 121;
    d.defaults.fps = 24;
    d.limits.max_frames = std::max<int64_t>(d.limits.max_frames, 121);
  }
  d.defaults.scheduler = scheduler_kind;
  d.defaults.flow_shift = scheduler_config_.flow_shift;
  ApplyOverrides(entry, &d.defaults, &d.limits);
  RAINSERVE_RETURN_IF_ERROR(ApplyImageAndExpertOverrides(entry, &d));
  // The defaults must themselves be a valid request.
  GenerationRequest probe = DefaultRequest(d.defaults);
  probe.prompt = "defaults";
  if (image_mode_ == WanImageMode::kConcat) {  // image-only models: any image
    probe.image.width = probe.image.height = 1;
    probe.image.rgb.assign(3, 0);
  }
  const Status ok = ValidateGenerationRequest(d, probe);
  if (!ok.ok()) {
    return InvalidArgumentError("model '" + entry.name + "': its defaults are invalid: " +
                                ok.message());
  }
  return OkStatus();
}

Status WanPipeline::CheckComponentsMatch(const std::string& dir) const {
  const WanTransformerConfig& tc = experts_->expert(0).config();
  if (text_encoder_->config().d_model != tc.text_dim) {
    return InvalidArgumentError(dir + ": text_encoder d_model " +
                                std::to_string(text_encoder_->config().d_model) +
                                " != transformer text_dim " + std::to_string(tc.text_dim));
  }
  // Image-to-video concatenates the mask and the image's latents to the noise.
  const int64_t z = vae_->config().z_dim;
  const int64_t in = image_mode_ == WanImageMode::kConcat ? 2 * z + vae_->temporal_scale() : z;
  if (tc.in_channels != in || tc.out_channels != z) {
    return InvalidArgumentError(dir + ": transformer in/out channels " +
                                std::to_string(tc.in_channels) + "/" +
                                std::to_string(tc.out_channels) + " do not fit vae z_dim " +
                                std::to_string(z) + " (expected " + std::to_string(in) + "/" +
                                std::to_string(z) + ")");
  }
  const bool image_attention = tc.image_dim > 0;
  if (image_attention != (image_encoder_ != nullptr)) {
    return InvalidArgumentError(dir + (image_attention
                                           ? ": the transformer has image_dim but the folder has "
                                             "no image_encoder"
                                           : ": image_encoder is set but the transformer has no "
                                             "image_dim"));
  }
  if (image_attention && image_encoder_->config().hidden_size != tc.image_dim) {
    return InvalidArgumentError(dir + ": image_encoder hidden_size " +
                                std::to_string(image_encoder_->config().hidden_size) +
                                " != transformer image_dim " + std::to_string(tc.image_dim));
  }
  return OkStatus();
}

// Memory model (MemoryModel in pipeline.h), sized from this checkpoint:
//  - weights: every parameter as loaded;
//  - per latent token, for the CFG batch of 2: the fp32 residual stream,
//    norm and modulation outputs (3 x 4 bytes x inner), q, k, v, the
//    attention output and their permuted copies (7 x inner in the model
//    dtype), the FFN intermediate and its GELU (2 x ffn), plus 25% for the
//    allocator;
//  - VAE: one decoded chunk (4 frames) at full resolution with the
//    decoder's widest full-resolution channel count, ~6 live fp32 copies
//    (input, output, cache, norm, activation, temporary);
//  - the decoded video (fp32 and its copy) and the uint8 frames: ~10 bytes
//    per output value.
MemoryModel WanPipeline::SizeMemoryModel(int64_t size_multiple) const {
  const WanTransformerConfig& tc = experts_->expert(0).config();
  const double s = static_cast<double>(c10::elementSize(dtype_));
  const double inner = static_cast<double>(tc.inner_dim());
  const double ffn = static_cast<double>(tc.ffn_dim);
  MemoryModel mm;
  mm.fixed_bytes = experts_->DeviceParameterBytes() +
                   ParameterBytes(text_encoder_->NamedParameters()) +
                   ParameterBytes(vae_->NamedParameters());
  mm.bytes_per_latent_token = 1.25 * 2.0 * (12.0 * inner + 7.0 * inner * s + 2.0 * ffn * s);
  mm.bytes_per_output_pixel =
      static_cast<double>(vae_->config().decoder_dim()) * 4.0 /*frames*/ * 4.0 * 6.0;
  mm.bytes_per_output_value = 10.0;
  mm.latent_frame_stride = vae_->temporal_scale();
  mm.latent_token_pixels = size_multiple * size_multiple;
  return mm;
}

StatusOr<at::Tensor> WanPipeline::EncodePrompts(const std::vector<std::string>& prompts) const {
  const int64_t L = description_.limits.max_prompt_tokens;
  const int64_t B = static_cast<int64_t>(prompts.size());
  at::Tensor ids = at::zeros({B, L}, at::kLong);
  at::Tensor mask = at::zeros({B, L}, at::kLong);
  std::vector<int64_t> lengths;
  for (int64_t b = 0; b < B; ++b) {
    const TokenizedText t = tokenizer_->Encode(prompts[b], L);
    std::memcpy(ids[b].data_ptr<int64_t>(), t.ids.data(), L * sizeof(int64_t));
    std::memcpy(mask[b].data_ptr<int64_t>(), t.mask.data(), L * sizeof(int64_t));
    lengths.push_back(t.length);
  }
  // embeds: [B, L, d_model]
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor embeds,
                             text_encoder_->Forward(ids.to(device_), mask.to(device_)));
  for (int64_t b = 0; b < B; ++b) {
    if (lengths[b] < L) embeds[b].narrow(0, lengths[b], L - lengths[b]).zero_();
  }
  return embeds;
}

Status WanPipeline::DeviceStatus() const {
  {
    std::lock_guard<std::mutex> lock(lost_mu_);
    if (!lost_.ok()) {
      return UnavailableError("a forward over the model's " + std::to_string(devices_.size()) +
                              " devices failed and aborted their collectives: " +
                              lost_.message());
    }
  }
#if RAINSERVE_WITH_CUDA
  for (const at::Device& device : devices_) {
    if (!device.is_cuda()) continue;
    // A sticky error (illegal address, launch failure, ECC, ...) is returned
    // by every synchronisation, even after cudaGetLastError() cleared the
    // last one; a transient one (e.g. a failed allocation) is not.
    cudaSetDevice(device.index());
    if (cudaDeviceSynchronize() != cudaSuccess) {
      cudaGetLastError();
      const cudaError_t again = cudaDeviceSynchronize();
      if (again != cudaSuccess) {
        return UnavailableError("device " + device.str() +
                                " has a sticky CUDA error: " + cudaGetErrorString(again));
      }
    }
  }
#endif
  return OkStatus();
}

StatusOr<GenerationOutput> WanPipeline::Generate(const GenerationRequest& request,
                                                 const ProgressCallback& progress,
                                                 const CancelToken& cancel) {
  RAINSERVE_RETURN_IF_ERROR(ValidateGenerationRequest(description_, request));
  if (devices_.size() > 1 && request.step_cache.mode != StepCacheMode::kOff) {
    // Its skip decision would have to agree across the ranks.
    return InvalidArgumentError("step_cache: not available on a model with several devices");
  }
  at::set_num_threads(threads_);
  // The model boundary: the one place where a LibTorch exception from any
  // stage becomes a Status (pipelines/core/torch_status.h).
  const char* stage = "text encode";
  try {
    return Run(request, progress, cancel, &stage);
  } catch (const std::exception& e) {
    return TorchExceptionStatus("model '" + description_.name + "' (" + stage + ")", e);
  }
}

StatusOr<GenerationOutput> WanPipeline::Run(const GenerationRequest& request,
                                            const ProgressCallback& progress,
                                            const CancelToken& cancel, const char** stage) {
  c10::InferenceMode inference;
  const auto start = Clock::now();
  auto report = [&](const char* stage, int64_t step, int64_t total) {
    if (progress) progress({stage, step, total, SecondsSince(start)});
  };
  for (const at::Device& device : devices_) ResetPeakMemory(device);
  GenerationOutput out;
  out.width = request.width;
  out.height = request.height;
  out.requested_sparsity = attention::RequestedSparsity(request.sparse);

  // 1. Prompts: [2, L, d] (cond, uncond) with guidance, else [1, L, d].
  report("text_encode", 0, request.steps);
  std::vector<std::string> prompts = {request.prompt};
  if (request.guidance_scale > 1.0) prompts.push_back(request.negative_prompt);
  const auto stage_start = Clock::now();
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor text, EncodePrompts(prompts));
  Synchronize(device_);
  out.text_encode_seconds = SecondsSince(stage_start);
  if (cancel.cancelled()) return CancelledError("cancelled before denoising");

  // 2. The input image, encoded (image-to-video).
  WanImageConditioning image;
  if (!request.image.empty()) {
    *stage = "image encode";
    report("image_encode", 0, request.steps);
    const auto image_start = Clock::now();
    RAINSERVE_ASSIGN_OR_RETURN(
        image, WanImageConditioning::Prepare(image_mode_, request.image, request.width,
                                             request.height, request.num_frames, *vae_,
                                             image_encoder_.get(), image_processor_.get()));
    Synchronize(device_);
    out.image_encode_seconds = SecondsSince(image_start);
    if (cancel.cancelled()) return CancelledError("cancelled before denoising");
  }

  // 3-4. Noise, then the denoising loop.
  *stage = "denoise";
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor latents,
                             Denoise(request, text, image, [&](int64_t i) {
                               report("denoise", i, request.steps);
                             }, cancel, &out));
  if (cancel.cancelled()) return CancelledError("cancelled before decoding");
  *stage = "decode";
  if (request.decode_frames) report("decode", request.steps, request.steps);
  RAINSERVE_RETURN_IF_ERROR(Output(request, latents, &out));
  // Several devices: the largest peak of any of them (each device's use is
  // in the server's device memory gauges).
  for (const at::Device& device : devices_) {
    out.peak_memory_bytes = std::max(out.peak_memory_bytes, PeakMemory(device));
  }
  return out;
}

StatusOr<at::Tensor> WanPipeline::Denoise(const GenerationRequest& request, const at::Tensor& text,
                                          const WanImageConditioning& image,
                                          const std::function<void(int64_t)>& step_done,
                                          const CancelToken& cancel, GenerationOutput* out) {
  // Latents: [1, z, F, h, w] fp32, the noise drawn on the CPU so that a seed
  // means the same video on every device.
  const int64_t z = vae_->config().z_dim;
  const int64_t F = (request.num_frames - 1) / vae_->temporal_scale() + 1;
  const int64_t h = request.height / vae_->spatial_scale();
  const int64_t w = request.width / vae_->spatial_scale();
  at::Generator gen = at::detail::createCPUGenerator(request.seed);
  at::Tensor latents = at::randn({1, z, F, h, w}, gen, at::TensorOptions().dtype(at::kFloat))
                           .to(device_);
  RAINSERVE_ASSIGN_OR_RETURN(std::unique_ptr<FlowScheduler> scheduler,
                             MakeScheduler(request.scheduler, scheduler_config_));
  RAINSERVE_RETURN_IF_ERROR(scheduler->SetTimesteps(static_cast<int>(request.steps),
                                                    request.flow_shift, request.timesteps));
  WanForwardOptions options;
  options.engine = engine_.get();
  options.sparse = request.sparse;
  options.attention.probe_seed = request.seed;
  options.attention.dense_kernel = dense_kernel_;
  const bool cfg = request.guidance_scale > 1.0;
  const int64_t B = cfg ? 2 : 1;
  options.image_embeds = image.ImageEmbeds(B);
  attention::SparsityTally tally;
  StepCacheRun cache(request.step_cache, request.steps,
                     experts_->expert(0).config().inner_dim());
  int64_t expert = -1;
  const WanTransformer* transformer = nullptr;
  const auto start = Clock::now();
  for (int64_t i = 0; i < request.steps; ++i) {
    if (cancel.cancelled()) {
      return CancelledError("cancelled after " + std::to_string(i) + " of " +
                            std::to_string(request.steps) + " steps");
    }
    const auto step_start = Clock::now();
    const double timestep = scheduler->timesteps()[i];
    if (experts_->ExpertFor(timestep) != expert) {
      expert = experts_->ExpertFor(timestep);
      RAINSERVE_ASSIGN_OR_RETURN(transformer,
                                 experts_->Resident(expert, &out->expert_switch_seconds));
      if (i > 0) cache.Reset();
    }
    // Two experts: the low-noise one guides with guidance_scale_2 (CFG runs
    // whenever guidance_scale > 1, as in the reference pipeline).
    const double guidance = expert == 1 ? request.guidance_scale_2.value_or(request.guidance_scale)
                                        : request.guidance_scale;
    options.step = i;
    options.step_cache = cache.Hook(i);
    const at::Tensor t = image.Timesteps(timestep, B, F, device_);
    const at::Tensor x = image.ModelInput(latents, B, dtype_);
    WanForwardStats stats;
    StatusOr<at::Tensor> forward = Forward(*transformer, x, t, text, cfg, options, &stats);
    if (!forward.ok()) {
      return Status(forward.status().code(), "denoise step " + std::to_string(i + 1) + ": " +
                                                 forward.status().message());
    }
    at::Tensor v = std::move(forward).value();
    v = v.to(at::kFloat);
    if (cfg) v = v[1] + guidance * (v[0] - v[1]);
    latents = scheduler->Step(v.view_as(latents), static_cast<int>(i), latents);
    if (!latents.defined()) return InternalError("scheduler step " + std::to_string(i) + " failed");
    Synchronize(device_);
    out->steps.push_back({i + 1, stats.sparse, stats.realized_sparsity, SecondsSince(step_start),
                          cache.skipped(), expert, timestep, x.size(0)});
    out->mask_seconds += stats.mask_seconds;
    for (const attention::ProbeRecord& p : stats.probes) {
      out->quality_probes.push_back(
          {i + 1, p.layer, p.rows, p.rel_l2, p.cosine, p.kept_mass});
    }
    tally.Add(stats);
    step_done(i + 1);
  }
  out->denoise_seconds = SecondsSince(start);
  out->realized_sparsity = tally.Mean();
  latents = image.Finish(latents);
  out->cache_skipped_steps = cache.skipped_steps();
  return latents;
}

Status WanPipeline::Output(const GenerationRequest& request, const at::Tensor& latents,
                           GenerationOutput* out) {
  // Latents only: [C, F, H, W] fp32 on the CPU, no decode.
  if (!request.decode_frames) {
    const at::Tensor l = latents.squeeze(0).to(at::kCPU, at::kFloat).contiguous();
    out->latent_shape = l.sizes().vec();
    out->latents.assign(l.data_ptr<float>(), l.data_ptr<float>() + l.numel());
    out->num_frames = request.num_frames;
    return OkStatus();
  }
  // Decode: [1, T, H, W, 3] uint8 on the CPU.
  const auto start = Clock::now();
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor frames, vae_->DecodeToFrames(latents));
  out->decode_seconds = SecondsSince(start);
  frames = frames.contiguous();
  out->num_frames = frames.size(1);
  if (frames.size(2) != request.height || frames.size(3) != request.width) {
    return InternalError("the VAE decoded " + std::to_string(frames.size(3)) + "x" +
                         std::to_string(frames.size(2)) + " frames for a " +
                         std::to_string(request.width) + "x" + std::to_string(request.height) +
                         " request");
  }
  const uint8_t* data = frames.data_ptr<uint8_t>();
  out->rgb.assign(data, data + frames.numel());
  return OkStatus();
}

}  // namespace

StatusOr<std::unique_ptr<Pipeline>> LoadWanPipeline(const ModelOptions& entry) {
  return LoadWanPipelineWithHooks(entry, WanPipelineHooks());
}

StatusOr<std::unique_ptr<Pipeline>> LoadWanPipelineWithHooks(const ModelOptions& entry,
                                                             const WanPipelineHooks& hooks) {
  try {
    RAINSERVE_ASSIGN_OR_RETURN(std::unique_ptr<WanPipeline> p, WanPipeline::Load(entry, hooks));
    return std::unique_ptr<Pipeline>(std::move(p));
  } catch (const std::exception& e) {
    return TorchExceptionStatus("model '" + entry.name + "': loading", e);
  }
}

}  // namespace rainserve
