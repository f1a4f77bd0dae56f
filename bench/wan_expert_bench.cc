// wan_expert_bench: the two-expert switch of Wan2.2 A14B on the GPU. Two
// transformers of the 14B configuration (random bf16 weights, ~28 GB each)
// run one classifier-free-guidance step each (RainFusion2.0 0.8, sink 1) at
// the W1 latent shape (480p, 81 frames), in two modes:
//   resident      both experts on the GPU;
//   offload_idle  the idle expert in pinned host memory, moved in at the
//                 switch (models[].offload_idle_expert).
// Reports per mode the peak GPU memory (caching allocator) over the two
// steps and the switch time (median of --switches host-to-device moves,
// synchronised), as rows {"impl", "peak_gb", "switch_s", "s_per_step"}.
//
//   build-gpu/bench/wan_expert_bench [--switches 3] [--out bench/results/wan_experts_gpu.json]
#include <ATen/ATen.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "pipelines/core/torch_device.h"
#include "pipelines/wan/wan_experts.h"

namespace {

using namespace rainserve;

WanTransformerConfig Config14B() {
  WanTransformerConfig c;  // Wan2.2-T2V-A14B: each expert is Wan2.1-14B-sized
  c.num_attention_heads = 40;
  c.ffn_dim = 13824;
  c.num_layers = 40;
  return c;
}

struct Result {
  double peak_gb = 0, switch_s = 0, step_s = 0;
};

// One CFG step of each expert, then `switches` more switches timed alone.
StatusOr<Result> RunMode(bool offload, int switches, attention::AttentionEngine& engine) {
  const at::Device cuda(at::kCUDA, 0);
  c10::cuda::CUDACachingAllocator::emptyCache();
  auto high = WanTransformer::Random(Config14B(), at::kBFloat16, cuda, 1);
  auto low = WanTransformer::Random(Config14B(), at::kBFloat16, cuda, 2);
  RAINSERVE_ASSIGN_OR_RETURN(auto experts,
                             WanExperts::FromModels(std::move(high), std::move(low), 875.0,
                                                    cuda, offload));
  const WanTransformerConfig c = Config14B();
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(cuda);
  const at::Tensor lat = at::randn({2, c.in_channels, 21, 60, 104}, bf16);
  const at::Tensor text = at::randn({2, 512, c.text_dim}, bf16);
  WanForwardOptions options;
  options.engine = &engine;
  options.sparse.mode = attention::AttentionMode::kRainFusion;
  options.sparse.sparsity = 0.8;
  options.sparse.sink_frames = 1;
  Synchronize(cuda);
  ResetPeakMemory(cuda);
  Result r;
  double moved = 0;
  for (int64_t expert : {0, 1}) {
    RAINSERVE_ASSIGN_OR_RETURN(const WanTransformer* model, experts->Resident(expert, &moved));
    const at::Tensor t = at::full({2}, expert == 0 ? 900.0 : 500.0, at::TensorOptions().device(cuda));
    const auto start = std::chrono::steady_clock::now();
    RAINSERVE_ASSIGN_OR_RETURN(at::Tensor v, model->Forward(lat, t, text, options));
    Synchronize(cuda);
    r.step_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / 2;
  }
  r.peak_gb = PeakMemory(cuda) / 1e9;
  std::vector<double> times;
  for (int i = 0; i < switches && offload; ++i) {
    double s = 0;
    RAINSERVE_ASSIGN_OR_RETURN(const WanTransformer* unused, experts->Resident(i % 2, &s));
    (void)unused;
    times.push_back(s);
  }
  std::sort(times.begin(), times.end());
  r.switch_s = times.empty() ? 0.0 : times[times.size() / 2];
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  int switches = 3;
  std::string out_path;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--switches") switches = std::atoi(argv[i + 1]);
    else if (flag == "--out") out_path = argv[i + 1];
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("%s\n", prop.name);
  attention::AttentionEngine engine(8);
  nlohmann::json rows = nlohmann::json::array();
  for (bool offload : {false, true}) {
    const char* name = offload ? "offload_idle" : "resident";
    auto r = RunMode(offload, switches, engine);
    if (!r.ok()) {
      std::fprintf(stderr, "%s: %s\n", name, r.status().ToString().c_str());
      return 1;
    }
    std::printf("%-13s peak %.1f GB  switch %.2f s  step %.2f s\n", name, r->peak_gb,
                r->switch_s, r->step_s);
    rows.push_back({{"shape", "W1"}, {"model", "A14B (2 x 14B experts, bf16)"}, {"impl", name},
                    {"peak_gb", r->peak_gb}, {"switch_s", r->switch_s},
                    {"s_per_step", r->step_s}});
  }
  if (!out_path.empty()) {
    nlohmann::json result = {
        {"benchmark", "wan_experts_gpu"}, {"date", rainserve::bench::Today()},
        {"machine", prop.name},
        {"command", rainserve::bench::CommandLine("build-gpu/bench/wan_expert_bench", argc, argv)},
        {"rows", rows}};
    std::ofstream(out_path) << result.dump(2) << "\n";
  }
  return 0;
}
