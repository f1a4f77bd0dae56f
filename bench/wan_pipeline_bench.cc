// wan_pipeline_bench: whole generations (prompt -> frames) through the Wan
// pipeline, split by stage, for several attention settings in one run.
//
//   wan_pipeline_bench --model models/wan-tiny [--device cpu] [--dtype fp32]
//       [--threads 2] [--width 256 --height 256 --frames 17 --steps 8]
//       [--sparsities 0,0.5,0.8] [--reps 2] [--out bench/results/wan_tiny_cpu.json]
//       [--machine NAME]   (the GPU's name for GPU runs)
//       [--prompt-tokens 512]  (max_prompt_tokens of the model entry)
//
// Sparsity 0 is the dense baseline (our dense kernel, same run); each row
// reports the median total time and its stage split (text encode, denoise,
// decode), seconds per step, realized sparsity and the speedup of the
// denoising stage and of the whole request over the dense row.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "pipelines/wan/wan_pipeline.h"

namespace {

using rainserve::GenerationOutput;
using rainserve::GenerationRequest;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Flags {
  std::string model, device = "cpu", dtype = "fp32", out_path, sparsities = "0,0.5,0.8", machine;
  int threads = 2, reps = 2, prompt_tokens = 512;
  GenerationRequest request;  // the request of every row, but for its sparsity
};

// Returns 2 (after printing why) on an unknown flag or without --model, else 0.
int ParseFlags(int argc, char** argv, Flags* f) {
  GenerationRequest& request = f->request;
  request.prompt = "a paper boat drifts down a rainy street, cinematic lighting";
  request.negative_prompt = "blurry, low quality";
  request.seed = 42;
  request.width = 256;
  request.height = 256;
  request.num_frames = 17;
  request.steps = 8;
  request.guidance_scale = 5.0;
  request.flow_shift = 3.0;
  request.sparse.sink_frames = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--model") f->model = value;
    else if (flag == "--device") f->device = value;
    else if (flag == "--dtype") f->dtype = value;
    else if (flag == "--threads") f->threads = std::stoi(value);
    else if (flag == "--width") request.width = std::stoi(value);
    else if (flag == "--height") request.height = std::stoi(value);
    else if (flag == "--frames") request.num_frames = std::stoi(value);
    else if (flag == "--steps") request.steps = std::stoi(value);
    else if (flag == "--sparsities") f->sparsities = value;
    else if (flag == "--reps") f->reps = std::stoi(value);
    else if (flag == "--out") f->out_path = value;
    else if (flag == "--machine") f->machine = value;
    else if (flag == "--prompt-tokens") f->prompt_tokens = std::stoi(value);
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (f->model.empty()) {
    std::fprintf(stderr, "usage: wan_pipeline_bench --model DIR [flags]\n");
    return 2;
  }
  return 0;
}

// The repetitions of one sparsity: its request, the last output and the
// stage times of every repetition.
struct SparsityRun {
  GenerationRequest request;
  GenerationOutput last;  // the output of the last repetition
  std::vector<double> total, text, denoise, decode;
};

// Runs `request` at `sparsity` `reps` times; false (after printing why) if a
// generation fails.
bool RunSparsity(rainserve::Pipeline& pipeline, const rainserve::CancelToken& cancel,
                 const Flags& flags, double sparsity, SparsityRun* run) {
  GenerationRequest& r = run->request;
  r = flags.request;
  r.sparse.sparsity = sparsity;
  r.sparse.mode = r.sparse.sparsity > 0 ? rainserve::AttentionMode::kRainFusion
                                        : rainserve::AttentionMode::kDense;
  for (int i = 0; i < flags.reps; ++i) {
    auto out = pipeline.Generate(r, nullptr, cancel);
    if (!out.ok()) {
      std::fprintf(stderr, "%s\n", out.status().ToString().c_str());
      return false;
    }
    GenerationOutput& last = run->last;
    last = std::move(out).value();
    run->text.push_back(last.text_encode_seconds);
    run->denoise.push_back(last.denoise_seconds);
    run->decode.push_back(last.decode_seconds);
    run->total.push_back(last.text_encode_seconds + last.denoise_seconds + last.decode_seconds);
  }
  return true;
}

// Prints the line of a sparsity and returns its result row; the dense row
// (sparsity 0) sets *dense_total and *dense_denoise, the sparse rows after it
// compare with them.
nlohmann::json ReportSparsity(const SparsityRun& run, double* dense_total, double* dense_denoise) {
  const GenerationRequest& r = run.request;
  const GenerationOutput& last = run.last;
  const std::vector<double> &total = run.total, &text = run.text, &denoise = run.denoise,
                            &decode = run.decode;
  nlohmann::json row = {
      {"impl", r.sparse.sparsity > 0 ? "rainserve_sparse" : "rainserve_dense"},
      {"sparsity", r.sparse.sparsity},
      {"realized_sparsity", last.realized_sparsity},
      {"seconds_total", Median(total)},
      {"seconds_text_encode", Median(text)},
      {"seconds_denoise", Median(denoise)},
      {"seconds_decode", Median(decode)},
      {"seconds_per_step", Median(denoise) / static_cast<double>(r.steps)},
      {"peak_memory_bytes", last.peak_memory_bytes},
      {"seconds_total_min", *std::min_element(total.begin(), total.end())},
      {"seconds_total_max", *std::max_element(total.begin(), total.end())},
  };
  if (r.sparse.sparsity == 0) {
    *dense_total = Median(total);
    *dense_denoise = Median(denoise);
  } else if (*dense_total > 0) {
    row["speedup_total_vs_dense"] = *dense_total / Median(total);
    row["speedup_denoise_vs_dense"] = *dense_denoise / Median(denoise);
  }
  std::printf("sparsity %.2f (realized %.3f): total %.2f s = text %.3f + denoise %.2f (%.3f s/step) "
              "+ decode %.2f\n",
              r.sparse.sparsity, last.realized_sparsity, Median(total), Median(text),
              Median(denoise), Median(denoise) / r.steps, Median(decode));
  return row;
}

void WriteResult(const Flags& flags, const std::string& command, const nlohmann::json& rows) {
  const GenerationRequest& request = flags.request;
  nlohmann::json result;
  result["benchmark"] = "wan_pipeline";
  result["date"] = rainserve::bench::Today();
  std::string machine = flags.machine;
  if (machine.empty()) {
    machine = flags.device == "cpu" ? rainserve::bench::CpuModel() + ", " +
                                          std::to_string(flags.threads) + " threads"
                                    : flags.device;
  }
  result["machine"] = machine;
  result["command"] = command;
  result["request"] = {{"width", request.width},   {"height", request.height},
                       {"frames", request.num_frames}, {"steps", request.steps},
                       {"guidance_scale", request.guidance_scale},
                       {"sink_frames", request.sparse.sink_frames}, {"dtype", flags.dtype},
                       {"max_prompt_tokens", flags.prompt_tokens}};
  result["rows"] = rows;
  std::ofstream(flags.out_path) << result.dump(2) << "\n";
  std::printf("wrote %s\n", flags.out_path.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  const std::string command = rainserve::bench::CommandLine(argv[0], argc, argv);
  if (const int usage = ParseFlags(argc, argv, &flags); usage != 0) return usage;

  rainserve::ModelOptions entry;
  entry.name = "bench";
  entry.path = flags.model;
  entry.device = flags.device;
  entry.dtype = flags.dtype;
  entry.threads = flags.threads;
  entry.limits.max_prompt_tokens = flags.prompt_tokens;
  auto loaded = rainserve::LoadWanPipeline(entry);
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s\n", loaded.status().ToString().c_str());
    return 1;
  }
  rainserve::Pipeline& pipeline = **loaded;
  rainserve::CancelToken cancel;

  // Warm-up: one short request (allocators, kernels, thread pools).
  GenerationRequest warm = flags.request;
  warm.steps = 1;
  if (!pipeline.Generate(warm, nullptr, cancel).ok()) return 1;

  nlohmann::json rows = nlohmann::json::array();
  double dense_total = 0, dense_denoise = 0;
  for (const std::string& sp : rainserve::bench::Split(flags.sparsities)) {
    SparsityRun run;
    if (!RunSparsity(pipeline, cancel, flags, std::stod(sp), &run)) return 1;
    rows.push_back(ReportSparsity(run, &dense_total, &dense_denoise));
  }
  if (!flags.out_path.empty()) WriteResult(flags, command, rows);
  return 0;
}
