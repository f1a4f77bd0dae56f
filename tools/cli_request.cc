#include "tools/cli_request.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>

#include "attention/settings.h"
#include "common/files.h"

namespace rainserve::cli {
namespace {

constexpr uint64_t kUint32Max = std::numeric_limits<uint32_t>::max();

template <typename Enum>
StatusOr<Enum> Choice(const Args& args, const std::string& flag,
                      const std::map<std::string, Enum>& choices) {
  const auto it = choices.find(args.Get(flag));
  if (it != choices.end()) return it->second;
  std::string list;
  for (const auto& c : choices) list += (list.empty() ? "" : "|") + c.first;
  return InvalidArgumentError("--" + flag + " expects " + list + ", got '" + args.Get(flag) + "'");
}

// Sets a uint32 field from `flag` when given.
template <typename Setter>
Status Uint32(const Args& args, const std::string& flag, Setter set) {
  if (!args.Has(flag)) return OkStatus();
  RAINSERVE_ASSIGN_OR_RETURN(const uint64_t v, ParseUint(flag, args.Get(flag), kUint32Max));
  set(static_cast<uint32_t>(v));
  return OkStatus();
}

template <typename Setter>
Status Double(const Args& args, const std::string& flag, Setter set) {
  if (!args.Has(flag)) return OkStatus();
  RAINSERVE_ASSIGN_OR_RETURN(const double v, ParseDouble(flag, args.Get(flag)));
  set(v);
  return OkStatus();
}

Status Window(const Args& args, v1::Window* window) {
  if (!args.Has("window")) return OkStatus();
  const std::string text = args.Get("window");
  uint32_t parts[3] = {0, 0, 0};
  size_t start = 0;
  for (int i = 0; i < 3; ++i) {
    const size_t comma = i < 2 ? text.find(',', start) : text.size();
    if (comma == std::string::npos) {
      return InvalidArgumentError("--window expects T,H,W (three integers), got '" + text + "'");
    }
    auto v = ParseUint("window", text.substr(start, comma - start), kUint32Max);
    if (!v.ok()) return InvalidArgumentError("--window expects T,H,W (three integers), got '" + text + "'");
    parts[i] = static_cast<uint32_t>(*v);
    start = comma + 1;
  }
  window->set_t(parts[0]);
  window->set_h(parts[1]);
  window->set_w(parts[2]);
  return OkStatus();
}

Status SparseAttention(const Args& args, v1::SparseAttention* sa) {
  if (args.Has("attention")) {
    RAINSERVE_ASSIGN_OR_RETURN(
        const v1::AttentionMode mode,
        Choice<v1::AttentionMode>(
            args, "attention",
            {{attention::ModeName(attention::AttentionMode::kDense), v1::ATTENTION_MODE_DENSE},
             {attention::ModeName(attention::AttentionMode::kRainFusion),
              v1::ATTENTION_MODE_RAINFUSION},
             {attention::ModeName(attention::AttentionMode::kRainFusionMass),
              v1::ATTENTION_MODE_RAINFUSION_MASS}}));
    sa->set_mode(mode);
  }
  if (args.Has("mask-refresh")) {
    RAINSERVE_ASSIGN_OR_RETURN(
        const v1::MaskRefresh refresh,
        Choice<v1::MaskRefresh>(
            args, "mask-refresh",
            {{attention::MaskRefreshName(attention::MaskRefresh::kEveryLayer),
              v1::MASK_REFRESH_EVERY_LAYER},
             {attention::MaskRefreshName(attention::MaskRefresh::kPerStep),
              v1::MASK_REFRESH_PER_STEP}}));
    sa->set_mask_refresh(refresh);
  }
  RAINSERVE_RETURN_IF_ERROR(Double(args, "sparsity", [sa](double v) { sa->set_sparsity(v); }));
  RAINSERVE_RETURN_IF_ERROR(Double(args, "kept-mass", [sa](double v) { sa->set_kept_mass(v); }));
  RAINSERVE_RETURN_IF_ERROR(Double(
      args, "quality-probe", [sa](double v) { sa->mutable_quality_probe()->set_rate(v); }));
  RAINSERVE_RETURN_IF_ERROR(
      Uint32(args, "sink-frames", [sa](uint32_t v) { sa->set_sink_frames(v); }));
  RAINSERVE_RETURN_IF_ERROR(
      Uint32(args, "dense-warmup-steps", [sa](uint32_t v) { sa->set_dense_warmup_steps(v); }));
  return Window(args, sa->mutable_window());
}

Status StepCache(const Args& args, v1::StepCache* sc) {
  if (args.Has("step-cache")) {
    RAINSERVE_ASSIGN_OR_RETURN(
        const v1::StepCacheMode mode,
        Choice<v1::StepCacheMode>(args, "step-cache",
                                  {{"off", v1::STEP_CACHE_MODE_OFF},
                                   {"first_block", v1::STEP_CACHE_MODE_FIRST_BLOCK},
                                   {"teacache", v1::STEP_CACHE_MODE_TEACACHE}}));
    sc->set_mode(mode);
  }
  RAINSERVE_RETURN_IF_ERROR(
      Double(args, "step-cache-threshold", [sc](double v) { sc->set_threshold(v); }));
  return Uint32(args, "step-cache-warmup", [sc](uint32_t v) { sc->set_warmup_steps(v); });
}

// --timesteps T1,T2,...: at most kMaxTimesteps numbers (the server checks
// the values against the model).
constexpr size_t kMaxTimesteps = 1000;
Status Timesteps(const Args& args, v1::GenerateRequest* r) {
  if (!args.Has("timesteps")) return OkStatus();
  const std::string text = args.Get("timesteps");
  size_t start = 0;
  while (start <= text.size()) {
    if (static_cast<size_t>(r->timesteps_size()) == kMaxTimesteps) {
      return InvalidArgumentError("--timesteps: at most " + std::to_string(kMaxTimesteps) +
                                  " values");
    }
    const size_t comma = std::min(text.find(',', start), text.size());
    RAINSERVE_ASSIGN_OR_RETURN(const double t,
                               ParseDouble("timesteps", text.substr(start, comma - start)));
    r->add_timesteps(t);
    start = comma + 1;
  }
  return OkStatus();
}

}  // namespace

StatusOr<v1::GenerateRequest> BuildRequest(const Args& args) {
  v1::GenerateRequest r;
  v1::GenerateRequest* p = &r;
  r.set_model(args.Get("model", "wan-tiny"));
  r.set_prompt(args.Get("prompt"));
  r.set_negative_prompt(args.Get("negative-prompt"));
  r.set_client_request_id(args.Get("request-id"));
  r.set_detached(args.Has("detached"));
  if (args.Has("seed")) {
    RAINSERVE_ASSIGN_OR_RETURN(const uint64_t seed,
                               ParseUint("seed", args.Get("seed"), UINT64_MAX));
    r.set_seed(seed);
  }
  if (args.Has("priority")) {
    RAINSERVE_ASSIGN_OR_RETURN(const int64_t priority,
                               ParseInt("priority", args.Get("priority"), INT32_MIN, INT32_MAX));
    r.set_priority(static_cast<int32_t>(priority));
  }
  RAINSERVE_RETURN_IF_ERROR(Uint32(args, "steps", [p](uint32_t v) { p->set_steps(v); }));
  RAINSERVE_RETURN_IF_ERROR(Timesteps(args, &r));
  RAINSERVE_RETURN_IF_ERROR(Uint32(args, "width", [p](uint32_t v) { p->set_width(v); }));
  RAINSERVE_RETURN_IF_ERROR(Uint32(args, "height", [p](uint32_t v) { p->set_height(v); }));
  RAINSERVE_RETURN_IF_ERROR(Uint32(args, "frames", [p](uint32_t v) { p->set_num_frames(v); }));
  RAINSERVE_RETURN_IF_ERROR(Uint32(args, "fps", [p](uint32_t v) { p->set_fps(v); }));
  RAINSERVE_RETURN_IF_ERROR(Double(args, "guidance", [p](double v) { p->set_guidance_scale(v); }));
  RAINSERVE_RETURN_IF_ERROR(
      Double(args, "guidance-scale-2", [p](double v) { p->set_guidance_scale_2(v); }));
  RAINSERVE_RETURN_IF_ERROR(Uint32(args, "max-area", [p](uint32_t v) { p->set_max_area(v); }));
  if (args.Has("image")) {
    // The server decodes and checks it (type, size, pixels).
    if (Status read = ReadFile(args.Get("image"), r.mutable_image()); !read.ok()) {
      return InvalidArgumentError("--image: " + read.message());
    }
  }
  RAINSERVE_RETURN_IF_ERROR(Double(args, "flow-shift", [p](double v) { p->set_flow_shift(v); }));
  if (args.Has("scheduler")) {
    RAINSERVE_ASSIGN_OR_RETURN(
        const v1::Scheduler scheduler,
        Choice<v1::Scheduler>(args, "scheduler",
                              {{"unipc", v1::SCHEDULER_UNIPC}, {"euler", v1::SCHEDULER_EULER}}));
    r.set_scheduler(scheduler);
  }
  if (args.Has("format")) {
    RAINSERVE_ASSIGN_OR_RETURN(const v1::OutputFormat format,
                               Choice<v1::OutputFormat>(args, "format",
                                                        {{"png", v1::OUTPUT_FORMAT_PNG},
                                                         {"mp4", v1::OUTPUT_FORMAT_MP4},
                                                         {"raw", v1::OUTPUT_FORMAT_RAW_RGB},
                                                         {"latents", v1::OUTPUT_FORMAT_LATENTS}}));
    r.set_output_format(format);
  }
  RAINSERVE_RETURN_IF_ERROR(SparseAttention(args, r.mutable_sparse_attention()));
  RAINSERVE_RETURN_IF_ERROR(StepCache(args, r.mutable_step_cache()));
  return r;
}

std::string Extension(const v1::ArtifactInfo& info) {
  if (info.mime_type() == "image/png") return ".png";
  if (info.mime_type() == "video/mp4") return ".mp4";
  return info.dtype() == "float32" ? ".f32" : ".rgb";
}

std::string ArtifactPath(const std::string& out, const std::string& extension, uint32_t index,
                         size_t count) {
  std::string stem = out;
  if (stem.size() > extension.size() &&
      stem.compare(stem.size() - extension.size(), extension.size(), extension) == 0) {
    stem.resize(stem.size() - extension.size());
  }
  if (count > 1) stem += "-" + std::to_string(index);
  return stem + extension;
}

}  // namespace rainserve::cli
