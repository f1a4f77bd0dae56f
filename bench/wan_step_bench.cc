// wan_step_bench: whole denoising steps of a Wan2.1-T2V-1.3B-configuration
// transformer (random bf16 weights) at the W1 shape (480p, 81 frames: latent
// 21 x 60 x 104, 32,760 tokens), classifier-free guidance batch 2, on the GPU:
// dense with LibTorch SDPA, dense with our kernel, RainFusion2.0 at 0.8 and
// 0.9 with the first-frame sink, and 0.8 with 20% dense warm-up steps; plus
// one block of the 14B configuration at the W2 shape (720p, 75,600 tokens).
// The SDPA dense mode runs twice: with the fused element-wise kernels (the
// default, as every other mode) and with the norms, modulation, RoPE and
// residuals as separate ATen ops (the pre-fusion baseline).
//
//   build-gpu/bench/wan_step_bench [--steps 5] [--out bench/results/wan_step_gpu.json]
//                                  [--only MODE] [--profile 1]
//
// --only runs the named modes (comma-separated, e.g.
// torch_sdpa_dense,rainserve_sparse_0.8_sink1); --profile 1
// wraps one extra forward per mode in cudaProfilerStart/Stop, for a kernel-
// by-kernel time list:
//   ncu --profile-from-start off --clock-control none \
//       --metrics gpu__time_duration.sum --csv build-gpu/bench/wan_step_bench \
//       --steps 1 --only rainserve_sparse_0.8_sink1 --profile 1
//
// Reports seconds per step (median of timed steps after 2 warm-ups, CUDA
// events; the mean for warm-up modes; with the fastest and slowest step;
// the timed steps of all modes interleaved, round by round),
// the share of step time in attention, mask prediction and permutation (from
// a separate synchronised pass), realized sparsity and peak GPU memory of the
// forward.
#include <ATen/ATen.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "pipelines/wan/wan_transformer.h"

namespace {

using namespace rainserve;

struct Mode {
  std::string name;
  attention::DenseKernel dense;  // for dense steps
  double sparsity;               // 0: every step dense
  double warmup_fraction;  // share of steps run dense
  // kAten: norms, modulation, RoPE and residuals as separate ATen ops (the
  // baseline of the fused kernels, pipelines/wan/wan_ops.h).
  ElementwiseImpl elementwise = ElementwiseImpl::kFused;
};

double MedianMs(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 5;
  std::string out_path, only;
  bool profile = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--steps") steps = std::stoi(value);
    else if (flag == "--out") out_path = value;
    else if (flag == "--only") only = value;
    else if (flag == "--profile") profile = value == "1";
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("%s\n", prop.name);
  attention::AttentionEngine engine(8);
  const at::Device cuda(at::kCUDA, 0);
  nlohmann::json rows = nlohmann::json::array();

  auto run = [&](const char* shape, const WanTransformer& model, int64_t F, int64_t H, int64_t W,
                 const std::vector<Mode>& all_modes) {
    const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(cuda);
    const WanTransformerConfig& c = model.config();
    const at::Tensor lat = at::randn({2, c.in_channels, F, H, W}, bf16);
    const at::Tensor text = at::randn({2, 512, c.text_dim}, bf16);
    const at::Tensor t = at::full({2}, 900.0, at::TensorOptions().device(cuda));
    std::vector<Mode> modes;
    for (const Mode& mode : all_modes) {
      if (only.empty() || ("," + only + ",").find("," + mode.name + ",") != std::string::npos) {
        modes.push_back(mode);
      }
    }
    auto options = [&](const Mode& mode) {
      WanForwardOptions o;
      o.engine = &engine;
      o.sparse.mode = mode.sparsity > 0 ? attention::AttentionMode::kRainFusion
                                        : attention::AttentionMode::kDense;
      o.sparse.sparsity = mode.sparsity;
      o.sparse.sink_frames = 1;
      o.sparse.dense_warmup_steps = static_cast<int64_t>(mode.warmup_fraction * steps + 0.5);
      o.attention.dense_kernel = mode.dense;
      o.elementwise = mode.elementwise;
      o.step = steps;  // past the warm-up
      return o;
    };
    // Step i of a mode (i >= steps: a warm-up or extra step, sparse unless dense).
    auto step = [&](const Mode& mode, int i, WanForwardStats* st) {
      WanForwardOptions o = options(mode);
      o.step = i;
      auto r = model.Forward(lat, t, text, o, st);
      if (!r.ok()) {
        std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
        std::exit(1);
      }
    };
    struct Timed {
      std::vector<double> ms, host_ms;
      double realized = 0, peak_gb = 0;
      int sparse_steps = 0;
    };
    std::vector<Timed> timed(modes.size());
    for (const Mode& mode : modes) {
      for (int i = 0; i < 2; ++i) step(mode, steps, nullptr);
    }
    // Timed steps interleaved: round i runs step i of every mode in turn, so
    // that every mode meets the same clocks and temperatures (the card is
    // power-limited, and a mode timed first on a cooler card would gain).
    for (int i = 0; i < steps; ++i) {
      for (size_t m = 0; m < modes.size(); ++m) {
        Timed& tm = timed[m];
        cudaDeviceSynchronize();
        c10::cuda::CUDACachingAllocator::resetPeakStats(0);
        WanForwardStats st;
        cudaEvent_t a, b;
        cudaEventCreate(&a);
        cudaEventCreate(&b);
        cudaEventRecord(a);
        const auto host_start = std::chrono::steady_clock::now();
        step(modes[m], i, &st);
        tm.host_ms.push_back(std::chrono::duration<double, std::milli>(
                                 std::chrono::steady_clock::now() - host_start)
                                 .count());
        cudaEventRecord(b);
        cudaEventSynchronize(b);
        float e = 0;
        cudaEventElapsedTime(&e, a, b);
        tm.ms.push_back(e);
        if (st.sparse) {
          tm.realized += st.realized_sparsity;
          ++tm.sparse_steps;
        }
        cudaEventDestroy(a);
        cudaEventDestroy(b);
        const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(0);
        tm.peak_gb = std::max(tm.peak_gb,
                              static_cast<double>(stats.allocated_bytes[0].peak) / (1 << 30));
      }
    }
    double sdpa_ms = 0;
    for (size_t m = 0; m < modes.size(); ++m) {
      const Mode& mode = modes[m];
      const Timed& tm = timed[m];
      if (profile) {
        cudaDeviceSynchronize();
        cudaProfilerStart();
        step(mode, steps, nullptr);
        cudaDeviceSynchronize();
        cudaProfilerStop();
      }
      // A synchronised pass for the time split (slower, not the step time).
      WanForwardOptions prof = options(mode);
      prof.attention.synchronize = [] { cudaDeviceSynchronize(); };
      WanForwardStats ps;
      cudaDeviceSynchronize();
      cudaEvent_t a, b;
      cudaEventCreate(&a);
      cudaEventCreate(&b);
      cudaEventRecord(a);
      if (!model.Forward(lat, t, text, prof, &ps).ok()) return;
      cudaEventRecord(b);
      cudaEventSynchronize(b);
      float prof_ms = 0;
      cudaEventElapsedTime(&prof_ms, a, b);
      cudaEventDestroy(a);
      cudaEventDestroy(b);
      const double median = mode.warmup_fraction > 0
                                ? std::accumulate(tm.ms.begin(), tm.ms.end(), 0.0) / tm.ms.size()
                                : MedianMs(tm.ms);
      if (mode.dense == attention::DenseKernel::kTorch && mode.sparsity == 0 &&
          mode.elementwise == ElementwiseImpl::kFused) {
        sdpa_ms = median;
      }
      const double realized = tm.sparse_steps ? tm.realized / tm.sparse_steps : 0.0;
      nlohmann::json r = {{"shape", shape},
                          {"impl", mode.name},
                          {"fused_elementwise", mode.elementwise == ElementwiseImpl::kFused},
                          {"sparsity", mode.sparsity},
                          {"dense_warmup_fraction", mode.warmup_fraction},
                          {"s_per_step", median / 1000},
                          {"s_per_step_min", *std::min_element(tm.ms.begin(), tm.ms.end()) / 1000},
                          {"s_per_step_max", *std::max_element(tm.ms.begin(), tm.ms.end()) / 1000},
                          // How long the host took to enqueue a step: near
                          // s_per_step means the GPU waited on the host.
                          {"host_s_per_step", MedianMs(tm.host_ms) / 1000},
                          {"steps_timed", steps},
                          {"timing", "interleaved"},
                          {"realized_sparsity", realized},
                          {"attention_share", ps.attention_seconds * 1000 / prof_ms},
                          {"mask_share", ps.mask_seconds * 1000 / prof_ms},
                          {"permute_share", ps.permute_seconds * 1000 / prof_ms},
                          {"peak_gpu_gb", tm.peak_gb},
                          {"tokens", ps.tokens}};
      if (sdpa_ms > 0) r["speedup_vs_sdpa"] = sdpa_ms / median;
      std::printf("  %-4s %-36s %.3f s/step [%.3f, %.3f] (host %.3f)  x%.2f  attn %.0f%% "
                  "mask %.2f%% perm %.2f%%  real %.3f  peak %.1f GB\n",
                  shape, mode.name.c_str(), median / 1000, r["s_per_step_min"].get<double>(),
                  r["s_per_step_max"].get<double>(), MedianMs(tm.host_ms) / 1000,
                  sdpa_ms > 0 ? sdpa_ms / median : 1.0, r["attention_share"].get<double>() * 100,
                  r["mask_share"].get<double>() * 100, r["permute_share"].get<double>() * 100,
                  realized, tm.peak_gb);
      rows.push_back(r);
    }
  };

  const std::vector<Mode> modes = {
      {"torch_sdpa_dense", attention::DenseKernel::kTorch, 0.0, 0.0},
      {"torch_sdpa_dense_aten_elementwise", attention::DenseKernel::kTorch, 0.0, 0.0,
       ElementwiseImpl::kAten},
      {"rainserve_dense", attention::DenseKernel::kOurs, 0.0, 0.0},
      {"rainserve_sparse_0.8_sink1", attention::DenseKernel::kAuto, 0.8, 0.0},
      {"rainserve_sparse_0.9_sink1", attention::DenseKernel::kAuto, 0.9, 0.0},
      // Warm-up steps run dense with the kernel the service picks (kAuto).
      {"rainserve_sparse_0.8_sink1_warmup20", attention::DenseKernel::kAuto, 0.8, 0.2},
  };
  {
    WanTransformerConfig c13;  // Wan2.1-T2V-1.3B
    c13.num_attention_heads = 12;
    c13.ffn_dim = 8960;
    c13.num_layers = 30;
    auto model = WanTransformer::Random(c13, at::kBFloat16, cuda, 1);
    run("W1", *model, 21, 60, 104, modes);
  }
  {
    WanTransformerConfig c14;  // Wan2.1-T2V-14B, one block
    c14.num_attention_heads = 40;
    c14.ffn_dim = 13824;
    c14.num_layers = 1;
    auto model = WanTransformer::Random(c14, at::kBFloat16, cuda, 2);
    run("W2x1", *model, 21, 90, 160, {modes[0], modes[1], modes[2], modes[3], modes[4]});
  }
  if (!out_path.empty()) {
    nlohmann::json result = {{"benchmark", "wan_step_gpu"},
                             {"date", bench::Today()},
                             {"machine", prop.name},
                             {"command", bench::CommandLine("build-gpu/bench/wan_step_bench", argc, argv)},
                             {"rows", rows}};
    std::ofstream(out_path) << result.dump(2) << "\n";
  }
  return 0;
}
