// multi_gpu_bench: seconds per denoising step of one Wan request over 1, 2,
// 4 and 8 GPUs of one host, as the pipeline runs it with several devices
// (docs/multi-gpu.md): ParallelWanForward over the NCCL groups of the CFG x
// Ulysses plan, one transformer copy per GPU. Wan2.1-T2V-14B configuration
// (40 heads x 128, 40 layers, ffn 13824) with random bf16 weights at the W2
// shape (720p, 81 frames: latent 21 x 90 x 160, 75,600 tokens), CFG batch 2;
// two attention modes: dense with LibTorch SDPA (torch_sdpa_dense) and
// RainFusion2.0 at 0.8 with the first-frame sink (rainserve_sparse_0.8_sink1).
//
//   build-gpu/bench/multi_gpu_bench [--gpus 1,2,4,8] [--steps 2] [--layers 40]
//                                   [--out bench/results/multi_gpu.json]
//
// Each GPU count runs one warm-up step per mode, then --steps timed steps
// (host clock around the forward, every device synchronised); a row per GPU
// count and mode: {"shape": "W2", "impl", "gpus", "s_per_step" (median),
// "s_min", "s_max", "cfg_degree", "ulysses_degree", "scaling_efficiency"
// (s_per_step at 1 GPU / (gpus x s_per_step)), "peak_gb" (largest per-GPU
// peak)}. GPU counts past the visible devices, or whose count does not divide
// the 40 heads, are skipped. --cpu N runs the same wiring on N CPU ranks
// (loopback groups) with a 4-head, 2-layer model on a 3 x 8 x 8 latent: a
// check that the program runs, without timing value.
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "attention/engine.h"
#include "bench/bench_util.h"
#include "pipelines/core/parallel_plan.h"
#include "pipelines/core/torch_device.h"
#include "pipelines/wan/wan_parallel.h"
#include "pipelines/wan/wan_transformer.h"

namespace rainserve {
namespace {

struct Flags {
  std::vector<int64_t> gpus = {1, 2, 4, 8};
  int steps = 2;
  int64_t layers = 40;
  int64_t cpu = 0;  // > 0: that many CPU ranks, tiny model
  std::string out_path;
};

Flags ParseFlags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--gpus") {
      f.gpus.clear();
      for (const std::string& g : bench::Split(v)) f.gpus.push_back(std::stoll(g));
    } else if (k == "--steps") {
      f.steps = std::max(1, std::stoi(v));
    } else if (k == "--layers") {
      f.layers = std::stoll(v);
    } else if (k == "--cpu") {
      f.cpu = std::stoll(v);
    } else if (k == "--out") {
      f.out_path = v;
    } else {
      std::fprintf(stderr, "unknown flag %s\n", k.c_str());
      std::exit(2);
    }
  }
  return f;
}

struct Mode {
  const char* impl;
  double sparsity;  // 0: dense with LibTorch SDPA
};

WanForwardOptions OptionsFor(const Mode& mode, int64_t step) {
  WanForwardOptions o;
  o.sparse.mode =
      mode.sparsity > 0 ? attention::AttentionMode::kRainFusion : attention::AttentionMode::kDense;
  o.sparse.sparsity = mode.sparsity;
  o.sparse.sink_frames = 1;
  o.attention.dense_kernel =
      mode.sparsity > 0 ? attention::DenseKernel::kAuto : attention::DenseKernel::kTorch;
  o.step = step;
  return o;
}

void Check(const Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    std::exit(1);
  }
}

// One transformer per device (rank 0's is read once, the others copied) and
// an engine per rank.
struct Ranks {
  std::vector<at::Device> devices;
  std::vector<std::unique_ptr<WanTransformer>> models;
  std::vector<std::unique_ptr<attention::AttentionEngine>> engines;
};

Ranks MakeRanks(const WanTransformerConfig& c, at::ScalarType dtype,
                const std::vector<at::Device>& devices) {
  Ranks r;
  r.devices = devices;
  r.models.push_back(WanTransformer::Random(c, dtype, devices[0], /*seed=*/7));
  if (!r.models[0]) Check(InternalError("random weights failed"));
  for (size_t i = 1; i < devices.size(); ++i) {
    auto copy = r.models[0]->CopyTo(devices[i]);
    Check(copy.status());
    r.models.push_back(std::move(copy).value());
  }
  for (size_t i = 0; i < devices.size(); ++i) {
    r.engines.push_back(std::make_unique<attention::AttentionEngine>(8));
  }
  return r;
}

// The timed steps of one mode on the first n ranks; seconds per step.
std::vector<double> TimeMode(Ranks& all, int64_t n, const Mode& mode, const at::Tensor& lat,
                             const at::Tensor& t, const at::Tensor& text, int steps,
                             ParallelPlan* plan_out) {
  const std::vector<at::Device> devices(all.devices.begin(), all.devices.begin() + n);
  auto plan = MakeParallelPlan(n, /*cfg=*/true, all.models[0]->config().num_attention_heads);
  Check(plan.status());
  *plan_out = *plan;
  auto groups = WanParallelGroups::Create(*plan, devices);
  Check(groups.status());
  std::vector<WanRank> ranks;
  for (int64_t r = 0; r < n; ++r) {
    ranks.push_back({all.models[r].get(), all.engines[r].get(), (*groups)->ulysses(r),
                     (*groups)->cfg(r)});
  }
  std::vector<double> seconds;
  for (int i = 0; i <= steps; ++i) {  // step 0 warms up
    const auto start = std::chrono::steady_clock::now();
    auto v = ParallelWanForward(*plan, ranks, lat, t, text, OptionsFor(mode, i));
    Check(v.status());
    for (const at::Device& d : devices) Synchronize(d);
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (i > 0) seconds.push_back(s);
  }
  return seconds;
}

}  // namespace
}  // namespace rainserve

int main(int argc, char** argv) {
  using namespace rainserve;
  const Flags flags = ParseFlags(argc, argv);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  WanTransformerConfig c;  // Wan2.1-T2V-14B
  c.num_attention_heads = 40;
  c.ffn_dim = 13824;
  c.num_layers = flags.layers;
  int64_t F = 21, H = 90, W = 160;
  at::ScalarType dtype = at::kBFloat16;
  std::vector<int64_t> counts;
  std::vector<at::Device> devices;
  if (flags.cpu > 0) {
    c.num_attention_heads = 4;
    c.attention_head_dim = 16;
    c.ffn_dim = 64;
    c.text_dim = 32;
    c.num_layers = 2;
    F = 3, H = 8, W = 8;
    dtype = at::kFloat;
    devices.assign(flags.cpu, at::Device(at::kCPU));
    counts = {1, flags.cpu};
  } else {
    const int64_t visible = CudaDeviceCount();
    for (int64_t n : flags.gpus) {
      if (n >= 1 && n <= visible && c.num_attention_heads % n == 0) counts.push_back(n);
    }
    if (counts.empty()) {
      std::fprintf(stderr, "no GPU count of --gpus fits the %ld visible CUDA devices\n",
                   static_cast<long>(visible));
      return 1;
    }
    for (int64_t i = 0; i < *std::max_element(counts.begin(), counts.end()); ++i) {
      devices.emplace_back(at::kCUDA, static_cast<c10::DeviceIndex>(i));
    }
  }
  Ranks ranks = MakeRanks(c, dtype, devices);
  const auto opts = at::TensorOptions().dtype(dtype).device(devices[0]);
  at::manual_seed(3);
  const at::Tensor lat = at::randn({2, c.in_channels, F, H, W}, opts);
  const at::Tensor text = at::randn({2, 512, c.text_dim}, opts);
  const at::Tensor t = at::full({2}, 900.0, at::TensorOptions().device(devices[0]));
  const Mode modes[] = {{"torch_sdpa_dense", 0.0}, {"rainserve_sparse_0.8_sink1", 0.8}};
  nlohmann::json rows = nlohmann::json::array();
  for (const Mode& mode : modes) {
    double one = 0;
    for (int64_t n : counts) {
      for (const at::Device& d : devices) ResetPeakMemory(d);
      ParallelPlan plan;
      // Summarize's fields hold seconds here.
      const bench::Timing tm =
          bench::Summarize(TimeMode(ranks, n, mode, lat, t, text, flags.steps, &plan));
      uint64_t peak = 0;
      for (int64_t r = 0; r < n; ++r) peak = std::max(peak, PeakMemory(devices[r]));
      if (n == 1) one = tm.median_ms;
      nlohmann::json row = {{"shape", flags.cpu > 0 ? "cpu_tiny" : "W2"},
                            {"impl", mode.impl},
                            {"gpus", n},
                            {"s_per_step", tm.median_ms},
                            {"s_min", tm.min_ms},
                            {"s_max", tm.max_ms},
                            {"cfg_degree", plan.cfg_degree},
                            {"ulysses_degree", plan.ulysses_degree},
                            {"peak_gb", static_cast<double>(peak) / 1e9}};
      if (one > 0) row["scaling_efficiency"] = one / (static_cast<double>(n) * tm.median_ms);
      std::printf("%s\n", row.dump().c_str());
      rows.push_back(row);
    }
  }
  if (!flags.out_path.empty()) {
    const nlohmann::json result = {
        {"benchmark", "multi_gpu"},
        {"date", bench::Today()},
        {"command", bench::CommandLine("build-gpu/bench/multi_gpu_bench", argc, argv)},
        {"rows", rows}};
    std::ofstream(flags.out_path) << result.dump(2) << "\n";
  }
  return 0;
}
