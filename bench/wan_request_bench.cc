// wan_request_bench: whole requests (prompt -> decoded frames) through the Wan
// pipeline at the W1 shape (832 x 480, 81 frames), one row per request
// lever, all rows in one run on one device:
//
//   torch_sdpa_dense                      50 steps with CFG, dense attention by LibTorch SDPA
//   rainserve_sparse_0.8_sink1            50 steps with CFG, RainFusion2.0 0.8, first-frame sink
//   rainserve_sparse_0.8_sink1_fp8        + the model's linear layers in FP8 (linear_precision)
//   rainserve_sparse_0.8_sink1_fp8_cache  + the step cache (TeaCache, threshold 0.08, 5 warm-up steps)
//   rainserve_sparse_0.8_sink1_fp8_4step  4 explicit steps [1000, 750, 500, 250], flow_shift 5,
//                                         Euler, guidance 1 (no CFG: batch 1), RainFusion 0.8 + FP8
//
// The checkpoint: any Wan2.1 T2V folder; for W1 timing without real weights,
// the Wan2.1-T2V-1.3B transformer and VAE at full size with random weights
// and a one-layer text encoder (make_wan_checkpoint --preset 1.3b-text1):
//
//   build-gpu/tools/make_wan_checkpoint --out /tmp/w1 --preset 1.3b-text1 --device cuda:0
//   build-gpu/bench/wan_request_bench --model /tmp/w1 --device cuda:0 --dtype bf16
//       --machine "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
//       --out bench/results/request_levers_gpu.json
//
// Flags: --steps N (the CFG rows' step count, default 50), --only a,b (rows
// by impl name), --reps N (requests per row, the median is reported,
// default 1), --width/--height/--frames (default 832/480/81), --threads N
// (CPU), --cache-threshold X, --cache-warmup N, --no-fp8 1 (the cache and
// 4-step rows at bf16, named without "_fp8": rainserve_sparse_0.8_sink1_cache
// and _4step; the plain fp8 row is left out). A CPU smoke run:
//
//   build/bench/wan_request_bench --model models/wan-tiny --width 64 --height 64
//       --frames 5 --steps 3 --no-fp8 1
//
// s_per_request is the wall time of Pipeline::Generate: text encoding (a
// one-layer encoder with the 1.3b-text1 checkpoint), denoising, VAE decoding
// and the copy of the frames to the host; the stage times are reported
// beside it. s_per_step is the denoising time over the steps run (cache-
// skipped steps included); steps_computed counts the steps that ran the
// transformer's blocks. FP8 rows load the model with linear_precision fp8;
// where the model refuses it at load (CPU models do), they are skipped with
// the reason printed.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench_util.h"
#include "pipelines/wan/wan_pipeline.h"

namespace {

using rainserve::GenerationOutput;
using rainserve::GenerationRequest;
using rainserve::ModelOptions;
using rainserve::Pipeline;

// One row: the levers its request pulls.
struct Impl {
  const char* name;
  bool sparse;    // RainFusion2.0 at 0.8 with the first-frame sink, else dense
  bool fp8;       // linear_precision fp8
  bool cache;     // the step cache
  bool few_step;  // 4 explicit steps without CFG
};

constexpr Impl kImpls[] = {
    {"torch_sdpa_dense", false, false, false, false},
    {"rainserve_sparse_0.8_sink1", true, false, false, false},
    {"rainserve_sparse_0.8_sink1_fp8", true, true, false, false},
    {"rainserve_sparse_0.8_sink1_fp8_cache", true, true, true, false},
    {"rainserve_sparse_0.8_sink1_fp8_4step", true, true, false, true},
};

// The lightx2v 4-step distilled Wan schedule (docs/configuration.md).
const std::vector<double> kFourSteps = {1000, 750, 500, 250};

struct Flags {
  std::string model, device = "cpu", dtype = "fp32", out_path, only, machine;
  int steps = 50, reps = 1, threads = 2;
  int64_t width = 832, height = 480, frames = 81;
  double cache_threshold = 0.08;
  int cache_warmup = 5;
  bool no_fp8 = false;  // run the fp8 rows' other levers at bf16
};

// Returns 2 (after printing why) on an unknown flag or without --model, else 0.
int ParseFlags(int argc, char** argv, Flags* f) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--model") f->model = value;
    else if (flag == "--device") f->device = value;
    else if (flag == "--dtype") f->dtype = value;
    else if (flag == "--out") f->out_path = value;
    else if (flag == "--only") f->only = value;
    else if (flag == "--machine") f->machine = value;
    else if (flag == "--steps") f->steps = std::stoi(value);
    else if (flag == "--reps") f->reps = std::max(1, std::stoi(value));
    else if (flag == "--threads") f->threads = std::stoi(value);
    else if (flag == "--width") f->width = std::stoi(value);
    else if (flag == "--height") f->height = std::stoi(value);
    else if (flag == "--frames") f->frames = std::stoi(value);
    else if (flag == "--cache-threshold") f->cache_threshold = std::stod(value);
    else if (flag == "--cache-warmup") f->cache_warmup = std::stoi(value);
    else if (flag == "--no-fp8") f->no_fp8 = value == "1";
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (f->model.empty()) {
    std::fprintf(stderr, "usage: wan_request_bench --model DIR [flags]\n");
    return 2;
  }
  return 0;
}

// The pipeline of one precision; null (after printing why) if it cannot load.
std::unique_ptr<Pipeline> Load(const Flags& flags, bool fp8) {
  ModelOptions entry;
  entry.name = fp8 ? "bench-fp8" : "bench";
  entry.path = flags.model;
  entry.device = flags.device;
  entry.dtype = flags.dtype;
  entry.threads = flags.threads;
  entry.dense_attention = "sdpa";  // the dense row's baseline; sparse steps never use it
  if (fp8) entry.linear_precision = "fp8";
  auto loaded = rainserve::LoadWanPipeline(entry);
  if (!loaded.ok()) {
    std::printf("skipping the %s rows: %s\n", fp8 ? "fp8" : "bf16",
                loaded.status().ToString().c_str());
    return nullptr;
  }
  // Warm-up: allocators, kernels, thread pools (one step with and without CFG).
  GenerationRequest warm = rainserve::DefaultRequest((*loaded)->Describe().defaults);
  warm.prompt = "warm-up";
  warm.width = flags.width;
  warm.height = flags.height;
  warm.num_frames = flags.frames;
  warm.steps = 1;
  warm.timesteps.clear();
  rainserve::CancelToken cancel;
  for (double guidance : {5.0, 1.0}) {
    warm.guidance_scale = guidance;
    auto out = (*loaded)->Generate(warm, nullptr, cancel);
    if (!out.ok()) {
      std::printf("warm-up failed: %s\n", out.status().ToString().c_str());
      return nullptr;
    }
  }
  return std::move(loaded).value();
}

// The request of a row, on the model's defaults (scheduler, flow_shift).
GenerationRequest RequestFor(const Flags& flags, const Pipeline& pipeline, const Impl& impl) {
  GenerationRequest r = rainserve::DefaultRequest(pipeline.Describe().defaults);
  r.prompt = "a paper boat drifts down a rainy street, cinematic lighting";
  r.negative_prompt = "blurry, low quality";
  r.seed = 42;
  r.width = flags.width;
  r.height = flags.height;
  r.num_frames = flags.frames;
  r.steps = flags.steps;
  r.timesteps.clear();  // evenly spaced unless the row sets them
  r.guidance_scale = 5.0;
  r.sparse.mode = impl.sparse ? rainserve::AttentionMode::kRainFusion
                              : rainserve::AttentionMode::kDense;
  r.sparse.sparsity = impl.sparse ? 0.8 : 0.0;
  r.sparse.sink_frames = 1;
  r.sparse.dense_warmup_steps = 0;
  if (impl.cache) {
    r.step_cache = {rainserve::StepCacheMode::kTeaCache, flags.cache_threshold,
                    std::min<int64_t>(flags.cache_warmup, r.steps)};
  }
  if (impl.few_step) {
    r.timesteps = kFourSteps;
    r.steps = static_cast<int64_t>(kFourSteps.size());
    r.flow_shift = 5.0;
    r.scheduler = "euler";
    r.guidance_scale = 1.0;
  }
  return r;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Runs one row `flags.reps` times; its result row, or null (after printing
// why) if a request fails.
nlohmann::json RunImpl(const Flags& flags, Pipeline& pipeline, const Impl& impl,
                       const std::string& name) {
  const GenerationRequest r = RequestFor(flags, pipeline, impl);
  rainserve::CancelToken cancel;
  std::vector<double> wall, denoise;
  GenerationOutput last;
  for (int i = 0; i < flags.reps; ++i) {
    const auto start = std::chrono::steady_clock::now();
    auto out = pipeline.Generate(r, nullptr, cancel);
    wall.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    if (!out.ok()) {
      std::fprintf(stderr, "%s: %s\n", name.c_str(), out.status().ToString().c_str());
      return nullptr;
    }
    last = std::move(out).value();
    denoise.push_back(last.denoise_seconds);
  }
  const double steps = static_cast<double>(r.steps);
  nlohmann::json row = {
      {"shape", "W1"},
      {"impl", name},
      {"s_per_request", Median(wall)},
      {"s_per_step", Median(denoise) / steps},
      {"steps_computed", r.steps - last.cache_skipped_steps},
      {"steps", r.steps},
      {"batch", last.steps.empty() ? 0 : last.steps.front().batch},
      {"guidance_scale", r.guidance_scale},
      {"s_text_encode", last.text_encode_seconds},
      {"s_denoise", Median(denoise)},
      {"s_decode", last.decode_seconds},
      {"realized_sparsity", last.realized_sparsity},
      {"peak_memory_gb", static_cast<double>(last.peak_memory_bytes) / (1 << 30)},
      {"reps", flags.reps},
  };
  if (impl.cache) {
    row["step_cache"] = {{"mode", "teacache"},
                         {"threshold", r.step_cache.threshold},
                         {"warmup_steps", r.step_cache.warmup_steps}};
  }
  if (impl.few_step) row["timesteps"] = r.timesteps;
  std::printf("W1 %-38s %8.2f s/request  %.3f s/step  %2lld of %2lld steps computed (batch %lld)"
              "  text %.2f + denoise %.2f + decode %.2f s\n",
              name.c_str(), Median(wall), Median(denoise) / steps,
              static_cast<long long>(r.steps - last.cache_skipped_steps),
              static_cast<long long>(r.steps), static_cast<long long>(row["batch"].get<int64_t>()),
              last.text_encode_seconds, Median(denoise), last.decode_seconds);
  return row;
}

// The row's impl name: without "_fp8" when --no-fp8 runs it at bf16.
std::string NameOf(const Flags& flags, const Impl& impl) {
  std::string name = impl.name;
  if (impl.fp8 && flags.no_fp8) name.erase(name.find("_fp8"), 4);
  return name;
}

bool Selected(const Flags& flags, const std::string& name) {
  return flags.only.empty() || ("," + flags.only + ",").find("," + name + ",") != std::string::npos;
}

void WriteResult(const Flags& flags, const std::string& command, const nlohmann::json& rows) {
  std::string machine = flags.machine;
  if (machine.empty()) {
    machine = flags.device == "cpu" ? rainserve::bench::CpuModel() + ", " +
                                          std::to_string(flags.threads) + " threads"
                                    : flags.device;
  }
  const nlohmann::json result = {
      {"benchmark", "wan_request"},
      {"date", rainserve::bench::Today()},
      {"machine", machine},
      {"command", command},
      {"checkpoint", flags.model},
      {"request", {{"width", flags.width}, {"height", flags.height}, {"frames", flags.frames},
                   {"steps", flags.steps}, {"dtype", flags.dtype}}},
      {"s_per_request_includes",
       "Pipeline::Generate wall time: text encoding, denoising, VAE decode, frames to host"},
      {"rows", rows}};
  std::ofstream(flags.out_path) << result.dump(2) << "\n";
  std::printf("wrote %s\n", flags.out_path.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  const std::string command = rainserve::bench::CommandLine(argv[0], argc, argv);
  if (const int usage = ParseFlags(argc, argv, &flags); usage != 0) return usage;
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  nlohmann::json rows = nlohmann::json::array();
  // The bf16 rows on one pipeline, then the fp8 rows on another (one loaded
  // at a time); --no-fp8 runs every row on the bf16 one.
  for (const bool fp8 : {false, true}) {
    std::vector<const Impl*> impls;
    for (const Impl& impl : kImpls) {
      const bool on_this = flags.no_fp8 ? !fp8 && !(impl.fp8 && !impl.cache && !impl.few_step)
                                        : impl.fp8 == fp8;
      if (on_this && Selected(flags, NameOf(flags, impl))) impls.push_back(&impl);
    }
    if (impls.empty()) continue;
    std::unique_ptr<Pipeline> pipeline = Load(flags, fp8);
    if (pipeline == nullptr) {
      if (!fp8) return 1;
      continue;
    }
    for (const Impl* impl : impls) {
      nlohmann::json row = RunImpl(flags, *pipeline, *impl, NameOf(flags, *impl));
      if (row.is_null()) return 1;
      rows.push_back(std::move(row));
    }
  }
  if (!flags.out_path.empty()) WriteResult(flags, command, rows);
  return 0;
}
