// Request validation shared by the server's edge checks and the pipelines.
#include "pipelines/core/pipeline.h"

#if RAINSERVE_WITH_CUDA
#include <cuda_runtime.h>
#include <dlfcn.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <tuple>

namespace rainserve {
namespace {

// Integers print in full ("got 4294967296", "50"), other numbers as the
// shortest text that reads back the same ("got 0.95").
std::string Num(int64_t v) { return std::to_string(v); }
std::string Num(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 1e15) {
    return std::to_string(static_cast<int64_t>(v));
  }
  std::ostringstream s;
  s.precision(17);
  s << v;
  for (int precision = 1; precision < 17; ++precision) {
    std::ostringstream shorter;
    shorter.precision(precision);
    shorter << v;
    // strtod, not stod: a subnormal reads back with ERANGE, which stod throws.
    if (std::strtod(shorter.str().c_str(), nullptr) == v) return shorter.str();
  }
  return s.str();
}

template <typename Number>
Status OutOfRange(const std::string& field, const std::string& allowed, Number got) {
  return InvalidArgumentError(field + " must be " + allowed + " (got " + Num(got) + ")");
}

Status CheckInt(const std::string& field, int64_t value, int64_t lo, int64_t hi) {
  if (value >= lo && value <= hi) return OkStatus();
  return OutOfRange(field, "in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]", value);
}

std::string TaskList(const std::vector<Task>& tasks) {
  std::string out;
  for (Task t : tasks) out += std::string(out.empty() ? "" : ", ") + TaskName(t);
  return out.empty() ? "none" : out;
}

bool Serves(const PipelineDescription& model, Task task) {
  for (Task t : model.tasks) {
    if (t == task) return true;
  }
  return false;
}

// The input image against the model's tasks and limits.
Status CheckImage(const PipelineDescription& model, const GenerationRequest& request) {
  const Task task = RequestTask(model, request);
  if (!Serves(model, task)) {
    const bool image_task = Serves(model, Task::kImageToVideo) ||
                            Serves(model, Task::kTextImageToVideo);
    if (!request.image.empty()) {
      return InvalidArgumentError("image: model '" + model.name +
                                  "' does not take an input image (it serves " +
                                  TaskList(model.tasks) + ")");
    }
    return InvalidArgumentError(
        std::string(image_task ? "image: model '" + model.name + "' needs an input image"
                               : "num_frames: model '" + model.name + "' does not serve " +
                                     TaskName(task)) +
        " (it serves " + TaskList(model.tasks) + ")");
  }
  if (request.image.empty()) return OkStatus();
  const InputImage& image = request.image;
  if (image.width < 1 || image.height < 1 ||
      image.width * image.height > model.limits.max_image_pixels) {
    return InvalidArgumentError("image: " + std::to_string(image.width) + "x" +
                                std::to_string(image.height) + " pixels, at most " +
                                std::to_string(model.limits.max_image_pixels) + " in all");
  }
  if (static_cast<int64_t>(image.rgb.size()) != image.width * image.height * 3) {
    return InvalidArgumentError("image: " + std::to_string(image.rgb.size()) +
                                " bytes of RGB for a " + std::to_string(image.width) + "x" +
                                std::to_string(image.height) + " image");
  }
  return OkStatus();
}

Status CheckGuidance(const std::string& field, double value, double max) {
  if (std::isfinite(value) && value >= 0 && value <= max) return OkStatus();
  return OutOfRange(field, "finite in [0, " + Num(max) + "]", value);
}

}  // namespace

const char* TaskName(Task task) {
  switch (task) {
    case Task::kTextToVideo: return "t2v";
    case Task::kTextToImage: return "t2i";
    case Task::kImageToVideo: return "i2v";
    case Task::kTextImageToVideo: return "ti2v";
  }
  return "unknown";
}

Task RequestTask(const PipelineDescription& model, const GenerationRequest& request) {
  if (!request.image.empty()) {
    return Serves(model, Task::kTextImageToVideo) ? Task::kTextImageToVideo
                                                  : Task::kImageToVideo;
  }
  return request.num_frames == 1 ? Task::kTextToImage : Task::kTextToVideo;
}

ImageSize SizeForImage(int64_t image_width, int64_t image_height, int64_t max_area,
                       int64_t multiple) {
  const double aspect = static_cast<double>(image_height) / static_cast<double>(image_width);
  const double area = static_cast<double>(max_area);
  auto snap = [multiple](double v) {
    const int64_t r = static_cast<int64_t>(std::nearbyint(v));
    return std::max(multiple, r / multiple * multiple);
  };
  return {snap(std::sqrt(area / aspect)), snap(std::sqrt(area * aspect))};
}

Status ValidateGenerationRequest(const PipelineDescription& model,
                                 const GenerationRequest& request) {
  const PipelineLimits& limits = model.limits;
  if (request.prompt.empty()) return InvalidArgumentError("prompt must not be empty");
  if (static_cast<int64_t>(request.prompt.size()) > limits.max_prompt_bytes) {
    return OutOfRange("prompt", "at most " + std::to_string(limits.max_prompt_bytes) + " bytes",
                      static_cast<int64_t>(request.prompt.size()));
  }
  if (static_cast<int64_t>(request.negative_prompt.size()) > limits.max_prompt_bytes) {
    return OutOfRange("negative_prompt",
                      "at most " + std::to_string(limits.max_prompt_bytes) + " bytes",
                      static_cast<int64_t>(request.negative_prompt.size()));
  }
  const int64_t m = limits.size_multiple;
  for (auto [field, value, max] : {std::make_tuple("width", request.width, limits.max_width),
                                   std::make_tuple("height", request.height, limits.max_height)}) {
    if (value < m || value > max || value % m != 0) {
      return OutOfRange(field,
                        "a multiple of " + std::to_string(m) + " in [" + std::to_string(m) +
                            ", " + std::to_string(max) + "]",
                        static_cast<int64_t>(value));
    }
  }
  if (request.width * request.height > limits.max_pixels) {
    return OutOfRange("width", "such that width * height <= " + std::to_string(limits.max_pixels),
                      static_cast<int64_t>(request.width * request.height));
  }
  const int64_t f = limits.frame_multiple;
  if (request.num_frames < 1 || request.num_frames > limits.max_frames ||
      (request.num_frames - 1) % f != 0) {
    return OutOfRange("num_frames",
                      std::to_string(f) + "k+1 in [1, " + std::to_string(limits.max_frames) + "]",
                      static_cast<int64_t>(request.num_frames));
  }
  if (!request.timesteps.empty()) {
    const int64_t count = static_cast<int64_t>(request.timesteps.size());
    RAINSERVE_RETURN_IF_ERROR(CheckInt("timesteps (the number of values)", count, 1,
                                       limits.max_steps));
    if (count != request.steps) {
      return InvalidArgumentError("timesteps: " + Num(count) + " values for steps " +
                                  Num(request.steps) + " (leave steps unset or equal)");
    }
    RAINSERVE_RETURN_IF_ERROR(ValidateExplicitTimesteps(request.timesteps,
                                                        model.num_train_timesteps));
  }
  RAINSERVE_RETURN_IF_ERROR(CheckInt("steps", request.steps, 1, limits.max_steps));
  RAINSERVE_RETURN_IF_ERROR(
      CheckGuidance("guidance_scale", request.guidance_scale, limits.max_guidance_scale));
  if (request.guidance_scale_2) {
    if (model.experts < 2) {
      return InvalidArgumentError("guidance_scale_2: model '" + model.name +
                                  "' has one transformer (only two-expert models take it)");
    }
    RAINSERVE_RETURN_IF_ERROR(
        CheckGuidance("guidance_scale_2", *request.guidance_scale_2, limits.max_guidance_scale));
  }
  RAINSERVE_RETURN_IF_ERROR(CheckImage(model, request));
  if (!std::isfinite(request.flow_shift) || request.flow_shift <= 0 ||
      request.flow_shift > limits.max_flow_shift) {
    return OutOfRange("flow_shift",
                      "finite in (0, " + Num(limits.max_flow_shift) + "]",
                      request.flow_shift);
  }
  if (request.scheduler != "unipc" && request.scheduler != "euler") {
    return InvalidArgumentError("scheduler must be unipc or euler (got \"" + request.scheduler +
                                "\")");
  }
  const StepCacheSettings& cache = request.step_cache;
  if (!std::isfinite(cache.threshold) || cache.threshold < 0 ||
      cache.threshold > kMaxStepCacheThreshold) {
    return OutOfRange("step_cache.threshold", "finite in [0, " + Num(kMaxStepCacheThreshold) + "]",
                      cache.threshold);
  }
  RAINSERVE_RETURN_IF_ERROR(
      CheckInt("step_cache.warmup_steps", cache.warmup_steps, 0, request.steps));
  const int64_t latent_frames = (request.num_frames - 1) / f + 1;
  RAINSERVE_RETURN_IF_ERROR(
      attention::ValidateSettings(request.sparse, {latent_frames, request.steps,
                                                   limits.max_quality_probe_rate}));
  if (limits.max_memory_bytes > 0) {
    const uint64_t need = model.memory.Estimate(request.width, request.height, request.num_frames);
    if (need > limits.max_memory_bytes) {
      std::ostringstream msg;
      msg.precision(3);
      msg << "this request needs about " << need / 1e9 << " GB on " << model.device
          << ", over the model's budget of " << limits.max_memory_bytes / 1e9
          << " GB (limits.max_memory_gb): ask for fewer pixels or frames";
      return ResourceExhaustedError(msg.str());
    }
  }
  return OkStatus();
}

Status ValidateExplicitTimesteps(const std::vector<double>& timesteps,
                                 int64_t num_train_timesteps) {
  const double max = static_cast<double>(num_train_timesteps);
  for (size_t i = 0; i < timesteps.size(); ++i) {
    const std::string field = "timesteps[" + std::to_string(i) + "]";
    const double t = timesteps[i];
    if (!std::isfinite(t) || t <= 0 || t > max) {
      return OutOfRange(field, "finite in (0, " + Num(max) + "]", t);
    }
    if (i > 0 && t >= timesteps[i - 1]) {
      return OutOfRange(field, "below timesteps[" + std::to_string(i - 1) + "] = " +
                                   Num(timesteps[i - 1]) + " (strictly decreasing)",
                        t);
    }
  }
  return OkStatus();
}

Status ApplyImageAndExpertOverrides(const ModelOptions& entry, PipelineDescription* d) {
  if (entry.defaults.guidance_scale_2) {
    if (d->experts < 2) {
      return InvalidArgumentError("defaults.guidance_scale_2: model '" + entry.name +
                                  "' has one transformer (only two-expert models take it)");
    }
    d->defaults.guidance_scale_2 = *entry.defaults.guidance_scale_2;
  }
  const ModelLimitsOverride& m = entry.limits;
  if (m.max_image_bytes) d->limits.max_image_bytes = *m.max_image_bytes;
  if (m.max_image_pixels) d->limits.max_image_pixels = *m.max_image_pixels;
  return OkStatus();
}

GenerationRequest DefaultRequest(const PipelineDefaults& d) {
  GenerationRequest r;
  r.steps = d.steps;
  r.guidance_scale = d.guidance_scale;
  r.guidance_scale_2 = d.guidance_scale_2;
  r.flow_shift = d.flow_shift;
  r.scheduler = d.scheduler;
  r.timesteps = d.timesteps;
  if (!r.timesteps.empty()) r.steps = static_cast<int64_t>(r.timesteps.size());
  r.width = d.width;
  r.height = d.height;
  r.num_frames = d.num_frames;
  r.sparse = d.sparse;
  r.step_cache = d.step_cache;
  if (r.num_frames == 1) r.sparse.sink_frames = 0;
  return r;
}

uint64_t MemoryModel::Estimate(int64_t width, int64_t height, int64_t frames) const {
  const double pixels = static_cast<double>(width) * static_cast<double>(height);
  const double latent_frames = static_cast<double>((frames - 1) / latent_frame_stride + 1);
  const double tokens = latent_frames * pixels / static_cast<double>(latent_token_pixels);
  const double bytes = static_cast<double>(fixed_bytes) + bytes_per_latent_token * tokens +
                       bytes_per_output_pixel * pixels +
                       bytes_per_output_value * static_cast<double>(frames) * pixels * 3.0;
  return static_cast<uint64_t>(bytes);
}

namespace {

#if RAINSERVE_WITH_CUDA
// NVML through dlopen (the driver's libnvidia-ml.so.1 is present wherever a
// GPU is, but not at build time): device utilisation only.
struct Nvml {
  struct Rates {  // nvmlUtilization_t
    unsigned int gpu, memory;
  };
  using Init = int (*)();
  using ByIndex = int (*)(unsigned int, void**);
  using GetRates = int (*)(void*, Rates*);
  ByIndex by_index = nullptr;
  GetRates rates = nullptr;

  static const Nvml& Get() {
    static const Nvml nvml = [] {
      Nvml n;
      void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
      if (lib == nullptr) return n;
      auto init = reinterpret_cast<Init>(dlsym(lib, "nvmlInit_v2"));
      n.by_index = reinterpret_cast<ByIndex>(dlsym(lib, "nvmlDeviceGetHandleByIndex_v2"));
      n.rates = reinterpret_cast<GetRates>(dlsym(lib, "nvmlDeviceGetUtilizationRates"));
      if (init == nullptr || init() != 0) n.by_index = nullptr;
      return n;
    }();
    return nvml;
  }

  // NVML indexes devices in PCI order, as CUDA does by default.
  double Utilization(int device) const {
    void* handle = nullptr;
    Rates u{};
    if (by_index == nullptr || rates == nullptr || by_index(device, &handle) != 0 ||
        rates(handle, &u) != 0) {
      return -1;
    }
    return u.gpu / 100.0;
  }
};
#endif

}  // namespace

std::vector<DeviceMemoryInfo> QueryDeviceMemory() {
  std::vector<DeviceMemoryInfo> out;
#if RAINSERVE_WITH_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // not sticky: clear it
    return out;
  }
  int current = 0;
  cudaGetDevice(&current);
  for (int d = 0; d < count; ++d) {
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaSetDevice(d) != cudaSuccess || cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
      cudaGetLastError();
      continue;
    }
    out.push_back({"cuda:" + std::to_string(d), total_bytes - free_bytes, total_bytes,
                   Nvml::Get().Utilization(d)});
  }
  cudaSetDevice(current);
#endif
  return out;
}

}  // namespace rainserve
