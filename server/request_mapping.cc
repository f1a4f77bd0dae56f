#include "server/request_mapping.h"

#include <cmath>
#include <optional>
#include <string>

#include "media/image_decoder.h"
#include "media/sha256.h"

namespace rainserve {
namespace {

constexpr int64_t kMaxFps = 240;

// Proto3 enums are open: a client may send any number. UNSPECIFIED is fine
// (it means "the model's default"); a number the API does not define is not.
Status CheckEnum(const std::string& field, const google::protobuf::EnumDescriptor* descriptor,
                 int value) {
  if (descriptor->FindValueByNumber(value) != nullptr) return OkStatus();
  std::string allowed;
  for (int i = 0; i < descriptor->value_count(); ++i) {
    if (i > 0) allowed += ", ";
    allowed += descriptor->value(i)->name();
  }
  return InvalidArgumentError(field + " must be one of " + allowed + " (got " +
                              std::to_string(value) + ")");
}

v1::Scheduler SchedulerToProto(const std::string& name) {
  if (name == "euler") return v1::SCHEDULER_EULER;
  return v1::SCHEDULER_UNIPC;
}

std::string SchedulerName(v1::Scheduler scheduler, const std::string& model_default) {
  switch (scheduler) {
    case v1::SCHEDULER_UNIPC: return "unipc";
    case v1::SCHEDULER_EULER: return "euler";
    default: return model_default;
  }
}

v1::AttentionMode ModeToProto(AttentionMode mode) {
  switch (mode) {
    case AttentionMode::kDense: return v1::ATTENTION_MODE_DENSE;
    case AttentionMode::kRainFusionMass: return v1::ATTENTION_MODE_RAINFUSION_MASS;
    case AttentionMode::kRainFusion: break;
  }
  return v1::ATTENTION_MODE_RAINFUSION;
}

v1::MaskRefresh RefreshToProto(MaskRefresh refresh) {
  return refresh == MaskRefresh::kPerStep ? v1::MASK_REFRESH_PER_STEP
                                          : v1::MASK_REFRESH_EVERY_LAYER;
}

// Every field set, so the message reads as the settings actually applied.
void SparseToProto(const SparseSettings& s, v1::SparseAttention* out) {
  out->set_mode(ModeToProto(s.mode));
  out->set_sparsity(s.sparsity);
  out->set_sink_frames(static_cast<uint32_t>(s.sink_frames));
  out->mutable_window()->set_t(static_cast<uint32_t>(s.window[0]));
  out->mutable_window()->set_h(static_cast<uint32_t>(s.window[1]));
  out->mutable_window()->set_w(static_cast<uint32_t>(s.window[2]));
  out->set_dense_warmup_steps(static_cast<uint32_t>(s.dense_warmup_steps));
  out->set_mask_refresh(RefreshToProto(s.mask_refresh));
  out->mutable_quality_probe()->set_rate(s.quality_probe_rate);
  out->set_kept_mass(s.kept_mass);
  out->set_min_kept_blocks(static_cast<uint32_t>(s.min_kept_blocks));
  out->set_max_kept_blocks(static_cast<uint32_t>(s.max_kept_blocks));
}

StatusOr<SparseSettings> ResolveSparse(const v1::SparseAttention& in, const SparseSettings& dflt) {
  RAINSERVE_RETURN_IF_ERROR(
      CheckEnum("sparse_attention.mode", v1::AttentionMode_descriptor(), in.mode()));
  RAINSERVE_RETURN_IF_ERROR(CheckEnum("sparse_attention.mask_refresh",
                                      v1::MaskRefresh_descriptor(), in.mask_refresh()));
  SparseSettings s = dflt;
  if (in.mode() == v1::ATTENTION_MODE_DENSE) s.mode = AttentionMode::kDense;
  if (in.mode() == v1::ATTENTION_MODE_RAINFUSION) s.mode = AttentionMode::kRainFusion;
  if (in.mode() == v1::ATTENTION_MODE_RAINFUSION_MASS) s.mode = AttentionMode::kRainFusionMass;
  if (in.has_sparsity()) s.sparsity = in.sparsity();
  if (in.has_sink_frames()) s.sink_frames = in.sink_frames();
  // A zero window component keeps the model's default for that axis.
  const uint32_t window[3] = {in.window().t(), in.window().h(), in.window().w()};
  for (int i = 0; i < 3; ++i) {
    if (window[i] != 0) s.window[i] = window[i];
  }
  if (in.has_dense_warmup_steps()) s.dense_warmup_steps = in.dense_warmup_steps();
  if (in.mask_refresh() == v1::MASK_REFRESH_EVERY_LAYER) s.mask_refresh = MaskRefresh::kEveryLayer;
  if (in.mask_refresh() == v1::MASK_REFRESH_PER_STEP) s.mask_refresh = MaskRefresh::kPerStep;
  if (in.quality_probe().has_rate()) s.quality_probe_rate = in.quality_probe().rate();
  if (in.has_kept_mass()) s.kept_mass = in.kept_mass();
  if (in.has_min_kept_blocks()) s.min_kept_blocks = in.min_kept_blocks();
  if (in.has_max_kept_blocks()) s.max_kept_blocks = in.max_kept_blocks();
  return s;
}

v1::StepCacheMode StepCacheModeToProto(StepCacheMode mode) {
  switch (mode) {
    case StepCacheMode::kFirstBlock: return v1::STEP_CACHE_MODE_FIRST_BLOCK;
    case StepCacheMode::kTeaCache: return v1::STEP_CACHE_MODE_TEACACHE;
    case StepCacheMode::kOff: break;
  }
  return v1::STEP_CACHE_MODE_OFF;
}

// Unset fields keep the model's defaults; the ranges are checked by
// ValidateGenerationRequest.
StatusOr<StepCacheSettings> ResolveStepCache(const v1::StepCache& in,
                                             const StepCacheSettings& dflt) {
  RAINSERVE_RETURN_IF_ERROR(
      CheckEnum("step_cache.mode", v1::StepCacheMode_descriptor(), in.mode()));
  StepCacheSettings s = dflt;
  if (in.mode() == v1::STEP_CACHE_MODE_OFF) s.mode = StepCacheMode::kOff;
  if (in.mode() == v1::STEP_CACHE_MODE_FIRST_BLOCK) s.mode = StepCacheMode::kFirstBlock;
  if (in.mode() == v1::STEP_CACHE_MODE_TEACACHE) s.mode = StepCacheMode::kTeaCache;
  if (in.has_threshold()) s.threshold = in.threshold();
  if (in.has_warmup_steps()) s.warmup_steps = in.warmup_steps();
  return s;
}

void StepCacheToProto(const StepCacheSettings& s, v1::StepCache* out) {
  out->set_mode(StepCacheModeToProto(s.mode));
  out->set_threshold(s.threshold);
  out->set_warmup_steps(static_cast<uint32_t>(s.warmup_steps));
}

Status CheckLength(const std::string& field, const std::string& value, size_t max_bytes) {
  if (value.size() <= max_bytes) return OkStatus();
  return InvalidArgumentError(field + " must be at most " + std::to_string(max_bytes) +
                              " bytes (got " + std::to_string(value.size()) + ")");
}

bool TakesImage(const PipelineDescription& model) {
  for (Task t : model.tasks) {
    if (t == Task::kImageToVideo || t == Task::kTextImageToVideo) return true;
  }
  return false;
}

// The input image, decoded within the model's limits. A model that takes no
// image gets a one-pixel stand-in instead of a decode, so that the validator
// refuses the request for what it is (the task) whatever the bytes hold.
Status ResolveImage(const v1::GenerateRequest& request, const PipelineDescription& model,
                    GenerationRequest* g, v1::InputImageInfo* info) {
  if (request.image().empty()) return OkStatus();
  if (!TakesImage(model)) {
    g->image = {1, 1, {0, 0, 0}};
    return OkStatus();
  }
  RAINSERVE_ASSIGN_OR_RETURN(
      media::DecodedImage image,
      media::DecodeImage(request.image(),
                         {model.limits.max_image_bytes, model.limits.max_image_pixels}));
  info->set_mime_type(image.mime_type);
  info->set_width(static_cast<uint32_t>(image.width));
  info->set_height(static_cast<uint32_t>(image.height));
  info->set_size_bytes(request.image().size());
  info->set_sha256(media::Sha256Hex(request.image()));
  g->image = {image.width, image.height, std::move(image.rgb)};
  return OkStatus();
}

// Width and height: as given, else the model's defaults; an image request
// that sets neither is sized from the image (SizeForImage with max_area,
// returned in *max_area), one that sets only one is refused naming the other.
Status ResolveSize(const v1::GenerateRequest& request, const PipelineDescription& model,
                   GenerationRequest* g, std::optional<int64_t>* max_area) {
  const PipelineLimits& l = model.limits;
  const PipelineDefaults& d = model.defaults;
  if (request.has_max_area()) {
    const int64_t lo = l.size_multiple * l.size_multiple;
    if (request.max_area() < lo || request.max_area() > l.max_pixels) {
      return InvalidArgumentError("max_area must be in [" + std::to_string(lo) + ", " +
                                  std::to_string(l.max_pixels) + "] (got " +
                                  std::to_string(request.max_area()) + ")");
    }
  }
  g->width = request.has_width() ? request.width() : d.width;
  g->height = request.has_height() ? request.height() : d.height;
  if (g->image.empty() || !TakesImage(model)) return OkStatus();
  if (request.has_width() != request.has_height()) {
    return InvalidArgumentError(
        std::string(request.has_width() ? "height" : "width") +
        ": an image request sets width and height together, or neither (then the size "
        "follows the image's aspect ratio and max_area)");
  }
  if (request.has_width()) return OkStatus();
  *max_area = request.has_max_area() ? request.max_area() : d.width * d.height;
  const ImageSize size = SizeForImage(g->image.width, g->image.height, **max_area, l.size_multiple);
  g->width = size.width;
  g->height = size.height;
  if (size.width > l.max_width || size.height > l.max_height ||
      size.width * size.height > l.max_pixels) {
    return InvalidArgumentError(
        "image: a " + std::to_string(g->image.width) + "x" + std::to_string(g->image.height) +
        " image at max_area " + std::to_string(**max_area) + " gives " +
        std::to_string(size.width) + "x" + std::to_string(size.height) +
        ", beyond the model's limits (max_width " + std::to_string(l.max_width) +
        ", max_height " + std::to_string(l.max_height) + ", max_pixels " +
        std::to_string(l.max_pixels) + "): set width and height");
  }
  return OkStatus();
}

// The schedule: the request's timesteps (at most limits.max_steps, checked
// before they are copied), else the model's default schedule when steps is
// unset too, else `steps` evenly spaced. Values are checked by the validator.
Status ResolveTimesteps(const v1::GenerateRequest& request, const PipelineDescription& model,
                        GenerationRequest* g) {
  const PipelineDefaults& d = model.defaults;
  if (request.timesteps_size() > model.limits.max_steps) {
    return InvalidArgumentError("timesteps: at most " + std::to_string(model.limits.max_steps) +
                                " values (limits.max_steps; got " +
                                std::to_string(request.timesteps_size()) + ")");
  }
  if (request.timesteps_size() > 0) {
    g->timesteps.assign(request.timesteps().begin(), request.timesteps().end());
  } else if (!request.has_steps()) {
    g->timesteps = d.timesteps;
  }
  g->steps = request.has_steps() ? request.steps()
             : g->timesteps.empty() ? d.steps
                                    : static_cast<int64_t>(g->timesteps.size());
  return OkStatus();
}

}  // namespace

Status CheckRequestStrings(const v1::GenerateRequest& request) {
  RAINSERVE_RETURN_IF_ERROR(CheckLength("model", request.model(), kMaxModelNameBytes));
  return CheckLength("client_request_id", request.client_request_id(), kMaxClientRequestIdBytes);
}

Status CheckJobId(const std::string& job_id) {
  if (job_id.empty()) return InvalidArgumentError("job_id: required");
  return CheckLength("job_id", job_id, kMaxJobIdBytes);
}

google::protobuf::Duration SecondsToDuration(double seconds) {
  google::protobuf::Duration d;
  if (!std::isfinite(seconds) || seconds < 0) seconds = 0;
  const int64_t nanos = std::llround(seconds * 1e9);
  d.set_seconds(nanos / 1000000000);
  d.set_nanos(static_cast<int32_t>(nanos % 1000000000));
  return d;
}

StatusOr<ResolvedRequest> ResolveRequest(const v1::GenerateRequest& request,
                                         const PipelineDescription& model, uint64_t random_seed) {
  RAINSERVE_RETURN_IF_ERROR(CheckEnum("scheduler", v1::Scheduler_descriptor(), request.scheduler()));
  RAINSERVE_RETURN_IF_ERROR(
      CheckEnum("output_format", v1::OutputFormat_descriptor(), request.output_format()));
  const PipelineDefaults& d = model.defaults;

  ResolvedRequest out;
  GenerationRequest& g = out.generation;
  g.prompt = request.prompt();
  g.negative_prompt = request.negative_prompt();
  g.seed = request.has_seed() ? request.seed() : random_seed;
  RAINSERVE_RETURN_IF_ERROR(ResolveTimesteps(request, model, &g));
  g.guidance_scale = request.has_guidance_scale() ? request.guidance_scale() : d.guidance_scale;
  // Two experts: the request's, else the model's default, else the first
  // expert's. One expert: only a request's (which the validator refuses).
  if (request.has_guidance_scale_2()) {
    g.guidance_scale_2 = request.guidance_scale_2();
  } else if (model.experts >= 2) {
    g.guidance_scale_2 = d.guidance_scale_2.value_or(g.guidance_scale);
  }
  g.flow_shift = request.has_flow_shift() ? request.flow_shift() : d.flow_shift;
  g.scheduler = SchedulerName(request.scheduler(), d.scheduler);
  v1::InputImageInfo image_info;
  RAINSERVE_RETURN_IF_ERROR(ResolveImage(request, model, &g, &image_info));
  std::optional<int64_t> max_area;
  RAINSERVE_RETURN_IF_ERROR(ResolveSize(request, model, &g, &max_area));
  g.num_frames = request.has_num_frames() ? request.num_frames() : d.num_frames;
  RAINSERVE_ASSIGN_OR_RETURN(g.sparse, ResolveSparse(request.sparse_attention(), d.sparse));
  // Text-to-image: a single latent frame has nothing to sink.
  if (g.num_frames == 1) g.sparse.sink_frames = 0;
  RAINSERVE_ASSIGN_OR_RETURN(g.step_cache, ResolveStepCache(request.step_cache(), d.step_cache));
  g.decode_frames = request.output_format() != v1::OUTPUT_FORMAT_LATENTS;
  const int64_t fps = request.has_fps() ? request.fps() : d.fps;
  if (fps < 1 || fps > kMaxFps) {
    return InvalidArgumentError("fps must be in [1, " + std::to_string(kMaxFps) + "] (got " +
                                std::to_string(fps) + ")");
  }
  RAINSERVE_RETURN_IF_ERROR(ValidateGenerationRequest(model, g));

  v1::GenerateRequest& r = out.resolved;
  r = request;
  // The image's bytes stay out of everything echoed (Accepted, Job,
  // ListJobs, results); what was decoded is summarised instead.
  r.clear_image();
  r.clear_input_image();
  if (!image_info.mime_type().empty()) *r.mutable_input_image() = std::move(image_info);
  r.clear_max_area();
  if (max_area) r.set_max_area(static_cast<uint32_t>(*max_area));
  r.clear_guidance_scale_2();
  if (g.guidance_scale_2) r.set_guidance_scale_2(*g.guidance_scale_2);
  r.set_model(model.name);
  r.set_seed(g.seed);
  r.set_steps(static_cast<uint32_t>(g.steps));
  r.mutable_timesteps()->Assign(g.timesteps.begin(), g.timesteps.end());
  r.set_guidance_scale(g.guidance_scale);
  r.set_flow_shift(g.flow_shift);
  r.set_scheduler(SchedulerToProto(g.scheduler));
  r.set_width(static_cast<uint32_t>(g.width));
  r.set_height(static_cast<uint32_t>(g.height));
  r.set_num_frames(static_cast<uint32_t>(g.num_frames));
  r.set_fps(static_cast<uint32_t>(fps));
  if (r.output_format() == v1::OUTPUT_FORMAT_UNSPECIFIED) {
    r.set_output_format(g.num_frames == 1 ? v1::OUTPUT_FORMAT_PNG : v1::OUTPUT_FORMAT_MP4);
  }
  SparseToProto(g.sparse, r.mutable_sparse_attention());
  StepCacheToProto(g.step_cache, r.mutable_step_cache());
  return out;
}

void FillModelInfo(const PipelineDescription& model, v1::ModelInfo* info) {
  info->set_name(model.name);
  info->set_pipeline(model.pipeline);
  info->clear_tasks();
  for (Task task : model.tasks) info->add_tasks(TaskName(task));
  info->set_experts(static_cast<uint32_t>(model.experts));
  info->set_boundary_timestep(model.experts >= 2 ? model.boundary_timestep : 0.0);
  info->set_device(model.device);
  info->set_dtype(model.dtype);
  info->clear_attention_backends();
  for (const auto& backend : model.attention_backends) info->add_attention_backends(backend);

  const PipelineLimits& l = model.limits;
  v1::Limits* limits = info->mutable_limits();
  limits->set_size_multiple(static_cast<uint32_t>(l.size_multiple));
  limits->set_max_width(static_cast<uint32_t>(l.max_width));
  limits->set_max_height(static_cast<uint32_t>(l.max_height));
  limits->set_max_pixels(static_cast<uint32_t>(l.max_pixels));
  limits->set_frame_multiple(static_cast<uint32_t>(l.frame_multiple));
  limits->set_max_frames(static_cast<uint32_t>(l.max_frames));
  limits->set_max_steps(static_cast<uint32_t>(l.max_steps));
  limits->set_max_prompt_tokens(static_cast<uint32_t>(l.max_prompt_tokens));
  limits->set_max_memory_bytes(l.max_memory_bytes);
  limits->set_max_image_bytes(static_cast<uint64_t>(l.max_image_bytes));
  limits->set_max_image_pixels(static_cast<uint64_t>(l.max_image_pixels));
  limits->set_max_quality_probe_rate(l.max_quality_probe_rate);

  const PipelineDefaults& d = model.defaults;
  v1::Defaults* defaults = info->mutable_defaults();
  defaults->set_width(static_cast<uint32_t>(d.width));
  defaults->set_height(static_cast<uint32_t>(d.height));
  defaults->set_num_frames(static_cast<uint32_t>(d.num_frames));
  defaults->set_fps(static_cast<uint32_t>(d.fps));
  defaults->set_steps(static_cast<uint32_t>(d.steps));
  defaults->set_guidance_scale(d.guidance_scale);
  defaults->clear_guidance_scale_2();
  if (model.experts >= 2) {
    defaults->set_guidance_scale_2(d.guidance_scale_2.value_or(d.guidance_scale));
  }
  defaults->set_flow_shift(d.flow_shift);
  defaults->set_scheduler(d.scheduler);
  defaults->mutable_timesteps()->Assign(d.timesteps.begin(), d.timesteps.end());
  SparseToProto(d.sparse, defaults->mutable_sparse_attention());
  StepCacheToProto(d.step_cache, defaults->mutable_step_cache());
}

void FillResultFromOutput(const GenerationOutput& output, const v1::GenerateRequest& applied,
                          v1::GenerateResult* result) {
  *result->mutable_applied() = applied;
  result->set_requested_sparsity(output.requested_sparsity);
  result->set_realized_sparsity(output.realized_sparsity);
  result->clear_steps();
  for (const StepStat& s : output.steps) {
    v1::StepStats* step = result->add_steps();
    step->set_step(static_cast<uint32_t>(s.step));
    step->set_sparse(s.sparse);
    step->set_realized_sparsity(s.realized_sparsity);
    *step->mutable_duration() = SecondsToDuration(s.seconds);
    step->set_cache_skipped(s.cache_skipped);
    step->set_expert(static_cast<uint32_t>(s.expert));
    step->set_timestep(s.timestep);
    step->set_batch(static_cast<uint32_t>(s.batch));
  }
  result->set_cache_skipped_steps(static_cast<uint32_t>(output.cache_skipped_steps));
  result->clear_quality_probes();
  for (const QualityProbeStat& p : output.quality_probes) {
    v1::QualityProbeStats* q = result->add_quality_probes();
    q->set_step(static_cast<uint32_t>(p.step));
    q->set_layer(static_cast<uint32_t>(p.layer));
    q->set_rows(static_cast<uint32_t>(p.rows));
    q->set_rel_l2(p.rel_l2);
    q->set_cosine(p.cosine);
    q->set_kept_mass(p.kept_mass);
  }
  v1::StageTimings* t = result->mutable_timings();
  *t->mutable_text_encode() = SecondsToDuration(output.text_encode_seconds);
  *t->mutable_image_encode() = SecondsToDuration(output.image_encode_seconds);
  *t->mutable_expert_switch() = SecondsToDuration(output.expert_switch_seconds);
  *t->mutable_denoise() = SecondsToDuration(output.denoise_seconds);
  *t->mutable_decode() = SecondsToDuration(output.decode_seconds);
  result->set_peak_memory_bytes(output.peak_memory_bytes);
}

}  // namespace rainserve
