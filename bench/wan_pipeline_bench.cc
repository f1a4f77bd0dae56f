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
#include "pipelines/wan_pipeline.h"

namespace {

using rainserve::GenerationOutput;
using rainserve::GenerationRequest;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  using rainserve::bench::Split;
  std::string model, device = "cpu", dtype = "fp32", out_path, sparsities = "0,0.5,0.8", machine;
  int threads = 2, reps = 2, prompt_tokens = 512;
  GenerationRequest request;
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
  const std::string command = rainserve::bench::CommandLine(argv[0], argc, argv);
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--model") model = value;
    else if (flag == "--device") device = value;
    else if (flag == "--dtype") dtype = value;
    else if (flag == "--threads") threads = std::stoi(value);
    else if (flag == "--width") request.width = std::stoi(value);
    else if (flag == "--height") request.height = std::stoi(value);
    else if (flag == "--frames") request.num_frames = std::stoi(value);
    else if (flag == "--steps") request.steps = std::stoi(value);
    else if (flag == "--sparsities") sparsities = value;
    else if (flag == "--reps") reps = std::stoi(value);
    else if (flag == "--out") out_path = value;
    else if (flag == "--machine") machine = value;
    else if (flag == "--prompt-tokens") prompt_tokens = std::stoi(value);
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (model.empty()) {
    std::fprintf(stderr, "usage: wan_pipeline_bench --model DIR [flags]\n");
    return 2;
  }

  rainserve::ModelEntry entry;
  entry.name = "bench";
  entry.path = model;
  entry.device = device;
  entry.dtype = dtype;
  entry.threads = threads;
  entry.limits.max_prompt_tokens = prompt_tokens;
  auto loaded = rainserve::LoadWanPipeline(entry);
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s\n", loaded.status().ToString().c_str());
    return 1;
  }
  rainserve::Pipeline& pipeline = **loaded;
  rainserve::CancelToken cancel;

  // Warm-up: one short request (allocators, kernels, thread pools).
  GenerationRequest warm = request;
  warm.steps = 1;
  if (!pipeline.Generate(warm, nullptr, cancel).ok()) return 1;

  nlohmann::json rows = nlohmann::json::array();
  double dense_total = 0, dense_denoise = 0;
  for (const std::string& sp : Split(sparsities)) {
    GenerationRequest r = request;
    r.sparse.sparsity = std::stod(sp);
    r.sparse.mode = r.sparse.sparsity > 0 ? rainserve::AttentionMode::kRainFusion
                                          : rainserve::AttentionMode::kDense;
    std::vector<double> total, text, denoise, decode;
    GenerationOutput last;
    for (int i = 0; i < reps; ++i) {
      auto out = pipeline.Generate(r, nullptr, cancel);
      if (!out.ok()) {
        std::fprintf(stderr, "%s\n", out.status().ToString().c_str());
        return 1;
      }
      last = std::move(out).value();
      text.push_back(last.text_encode_seconds);
      denoise.push_back(last.denoise_seconds);
      decode.push_back(last.decode_seconds);
      total.push_back(last.text_encode_seconds + last.denoise_seconds + last.decode_seconds);
    }
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
      dense_total = Median(total);
      dense_denoise = Median(denoise);
    } else if (dense_total > 0) {
      row["speedup_total_vs_dense"] = dense_total / Median(total);
      row["speedup_denoise_vs_dense"] = dense_denoise / Median(denoise);
    }
    std::printf("sparsity %.2f (realized %.3f): total %.2f s = text %.3f + denoise %.2f (%.3f s/step) "
                "+ decode %.2f\n",
                r.sparse.sparsity, last.realized_sparsity, Median(total), Median(text),
                Median(denoise), Median(denoise) / r.steps, Median(decode));
    rows.push_back(row);
  }

  nlohmann::json result;
  result["benchmark"] = "wan_pipeline";
  result["date"] = rainserve::bench::Today();
  if (machine.empty()) {
    machine = device == "cpu" ? rainserve::bench::CpuModel() + ", " + std::to_string(threads) +
                                    " threads"
                              : device;
  }
  result["machine"] = machine;
  result["command"] = command;
  result["request"] = {{"width", request.width},   {"height", request.height},
                       {"frames", request.num_frames}, {"steps", request.steps},
                       {"guidance_scale", request.guidance_scale},
                       {"sink_frames", request.sparse.sink_frames}, {"dtype", dtype},
                       {"max_prompt_tokens", prompt_tokens}};
  result["rows"] = rows;
  if (!out_path.empty()) {
    std::ofstream(out_path) << result.dump(2) << "\n";
    std::printf("wrote %s\n", out_path.c_str());
  }
  return 0;
}
