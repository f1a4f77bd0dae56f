// wan_step_bench: whole denoising steps of a Wan2.1-T2V-1.3B-configuration
// transformer (random bf16 weights) at the W1 shape (480p, 81 frames: latent
// 21 x 60 x 104, 32,760 tokens), classifier-free guidance batch 2, on the GPU:
// dense with LibTorch SDPA, dense with our kernel, RainFusion2.0 at 0.8 and
// 0.9 with the first-frame sink, 0.8 with 20% dense warm-up steps, and 0.8
// with the quality probe on every step (attention/probe.h: the cost of one
// probed step; at probe rate r a request pays r times its excess over
// rainserve_sparse_0.8_sink1, since unprobed steps run unchanged); plus
// one block of the 14B configuration at the W2 shape (720p, 75,600 tokens).
// The _fp8 modes run the same weights with linear_precision fp8
// (pipelines/wan/wan_fp8.h: e4m3 GEMMs through cuBLASLt) and report their
// step output's cosine against the bf16 model's in the same mode; the
// linear_layers rows time the GEMMs of one block alone at each shape, bf16
// (as the model runs them) against fp8 (GEMMs only, and with every
// activation quantize as a separate kernel: an upper bound, since three of
// the five run inside the norms in the model).
// The SDPA dense mode runs twice: with the fused element-wise kernels (the
// default, as every other mode) and with the norms, modulation, RoPE and
// residuals as separate ATen ops (the pre-fusion baseline).
//
//   build-gpu/bench/wan_step_bench [--steps 5] [--out bench/results/wan_step_gpu.json]
//                                  [--only MODE] [--profile 1]
//   e.g. the FP8 comparison alone:
//   --only torch_sdpa_dense,rainserve_sparse_0.8_sink1,rainserve_sparse_0.8_sink1_fp8,
//          rainserve_dense,rainserve_dense_fp8,linear_layers
//
// --only runs the named modes (comma-separated, e.g.
// torch_sdpa_dense,rainserve_sparse_0.8_sink1); --profile 1
// wraps one extra forward per mode in cudaProfilerStart/Stop, for a kernel-
// by-kernel time list (one command line):
//   ncu --profile-from-start off --clock-control none
//       --metrics gpu__time_duration.sum --csv build-gpu/bench/wan_step_bench
//       --steps 1 --only rainserve_sparse_0.8_sink1 --profile 1
//
// Reports seconds per step (median of timed steps after 2 warm-ups, CUDA
// events; the mean for warm-up modes; with the fastest and slowest step;
// the timed steps of all modes interleaved, round by round),
// the share of step time in attention, mask prediction and permutation (from
// a separate synchronised pass), realized sparsity and peak GPU memory of the
// forward (allocated bytes, less the other precision's model when both are
// resident: the peak with only this mode's model on the card).
#include <ATen/ATen.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <numeric>
#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench_util.h"
#include "pipelines/wan/wan_fp8.h"
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
  double probe_rate = 0.0;  // quality probe: 1 probes every (sparse) step
  bool fp8 = false;         // the linear_precision fp8 copy of the model
};

double MedianMs(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Flags {
  int steps = 5;
  std::string out_path, only;
  bool profile = false;
};

Flags ParseFlags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--steps") f.steps = std::stoi(value);
    else if (flag == "--out") f.out_path = value;
    else if (flag == "--only") f.only = value;
    else if (flag == "--profile") f.profile = value == "1";
  }
  return f;
}

// True when --only names `name` (or there is no --only).
bool Selected(const Flags& f, const std::string& name) {
  return f.only.empty() || ("," + f.only + ",").find("," + name + ",") != std::string::npos;
}

// What every shape shares.
struct Bench {
  const Flags& flags;
  attention::AttentionEngine& engine;
  const at::Device device;
  nlohmann::json rows = nlohmann::json::array();  // the result file's rows
};

// One shape: its models and inputs, the classifier-free guidance batch of 2.
struct ShapeInputs {
  const char* name;
  const WanTransformer& model;
  const WanTransformer* fp8_model;  // the same weights with fp8 linears, or null
  at::Tensor lat, text, t;
  const WanTransformer& For(const Mode& mode) const { return mode.fp8 ? *fp8_model : model; }
  // Device bytes of the model `mode` does not use (0 when it is not resident).
  double OtherModelBytes(const Mode& mode) const {
    if (fp8_model == nullptr) return 0;
    return static_cast<double>(ParameterBytes((mode.fp8 ? model : *fp8_model).NamedParameters()));
  }
};

// The options of a mode's steps, set past the warm-up.
WanForwardOptions OptionsFor(Bench& bench, const Mode& mode) {
  const int steps = bench.flags.steps;
  WanForwardOptions o;
  o.engine = &bench.engine;
  o.sparse.mode = mode.sparsity > 0 ? attention::AttentionMode::kRainFusion
                                    : attention::AttentionMode::kDense;
  o.sparse.sparsity = mode.sparsity;
  o.sparse.sink_frames = 1;
  o.sparse.dense_warmup_steps = static_cast<int64_t>(mode.warmup_fraction * steps + 0.5);
  o.sparse.quality_probe_rate = mode.probe_rate;
  o.attention.dense_kernel = mode.dense;
  o.elementwise = mode.elementwise;
  o.step = steps;  // past the warm-up
  return o;
}

// Step i of a mode (i >= steps: a warm-up or extra step, sparse unless dense).
void Step(Bench& bench, const ShapeInputs& in, const Mode& mode, int i, WanForwardStats* st) {
  WanForwardOptions o = OptionsFor(bench, mode);
  o.step = i;
  auto r = in.For(mode).Forward(in.lat, in.t, in.text, o, st);
  if (!r.ok()) {
    std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
    std::exit(1);
  }
}

// Runs fn between two CUDA events on the default stream; their distance in ms.
float CudaEventMs(const std::function<void()>& fn) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  cudaEventRecord(a);
  fn();
  cudaEventRecord(b);
  cudaEventSynchronize(b);
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms;
}

// The timed steps of one mode.
struct Timed {
  std::vector<double> ms, host_ms;
  double realized = 0, peak_gb = 0;
  int sparse_steps = 0;
};

// Two warm-up steps per mode, then the timed steps interleaved: round i runs
// step i of every mode in turn, so that every mode meets the same clocks and
// temperatures (the card is power-limited, and a mode timed first on a
// cooler card would gain).
std::vector<Timed> TimeSteps(Bench& bench, const ShapeInputs& in, const std::vector<Mode>& modes) {
  const int steps = bench.flags.steps;
  std::vector<Timed> timed(modes.size());
  for (const Mode& mode : modes) {
    for (int i = 0; i < 2; ++i) Step(bench, in, mode, steps, nullptr);
  }
  for (int i = 0; i < steps; ++i) {
    for (size_t m = 0; m < modes.size(); ++m) {
      Timed& tm = timed[m];
      cudaDeviceSynchronize();
      c10::cuda::CUDACachingAllocator::resetPeakStats(0);
      WanForwardStats st;
      tm.ms.push_back(CudaEventMs([&] {
        const auto host_start = std::chrono::steady_clock::now();
        Step(bench, in, modes[m], i, &st);
        tm.host_ms.push_back(std::chrono::duration<double, std::milli>(
                                 std::chrono::steady_clock::now() - host_start)
                                 .count());
      }));
      if (st.sparse) {
        tm.realized += st.realized_sparsity;
        ++tm.sparse_steps;
      }
      const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(0);
      const double peak = static_cast<double>(stats.allocated_bytes[0].peak);
      tm.peak_gb = std::max(tm.peak_gb, (peak - in.OtherModelBytes(modes[m])) / (1 << 30));
    }
  }
  return timed;
}

// A synchronised pass for the time split (slower, not the step time): its
// statistics into *ps, its time into *prof_ms; false if the forward fails.
bool TimeSplitPass(Bench& bench, const ShapeInputs& in, const Mode& mode, WanForwardStats* ps,
                   float* prof_ms) {
  WanForwardOptions prof = OptionsFor(bench, mode);
  prof.attention.synchronize = [] { cudaDeviceSynchronize(); };
  cudaDeviceSynchronize();
  bool ok = false;
  *prof_ms = CudaEventMs([&] { ok = in.For(mode).Forward(in.lat, in.t, in.text, prof, ps).ok(); });
  return ok;
}

// One step of `mode` (an fp8 one) and of the bf16 model in the same mode,
// same inputs: the cosine of the two outputs.
double CosineVsBf16(Bench& bench, const ShapeInputs& in, const Mode& mode) {
  const WanForwardOptions o = OptionsFor(bench, mode);
  auto fp8 = in.fp8_model->Forward(in.lat, in.t, in.text, o);
  auto bf16 = in.model.Forward(in.lat, in.t, in.text, o);
  if (!fp8.ok() || !bf16.ok()) return NAN;
  const at::Tensor a = fp8->to(at::kDouble).flatten(), b = bf16->to(at::kDouble).flatten();
  return (a.dot(b) / (a.norm() * b.norm())).item<double>();
}

// The row of one mode, printed and added. *sdpa_ms: the step time of the
// fused SDPA dense mode, set by its row, compared with by the rows after it.
// False if the synchronised pass fails.
bool ReportMode(Bench& bench, const ShapeInputs& in, const Mode& mode, const Timed& tm,
                double* sdpa_ms) {
  if (bench.flags.profile) {
    cudaDeviceSynchronize();
    cudaProfilerStart();
    Step(bench, in, mode, bench.flags.steps, nullptr);
    cudaDeviceSynchronize();
    cudaProfilerStop();
  }
  WanForwardStats ps;
  float prof_ms = 0;
  if (!TimeSplitPass(bench, in, mode, &ps, &prof_ms)) return false;
  const double median = mode.warmup_fraction > 0
                            ? std::accumulate(tm.ms.begin(), tm.ms.end(), 0.0) / tm.ms.size()
                            : MedianMs(tm.ms);
  if (mode.dense == attention::DenseKernel::kTorch && mode.sparsity == 0 &&
      mode.elementwise == ElementwiseImpl::kFused) {
    *sdpa_ms = median;
  }
  const double realized = tm.sparse_steps ? tm.realized / tm.sparse_steps : 0.0;
  nlohmann::json r = {{"shape", in.name},
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
                      {"steps_timed", bench.flags.steps},
                      {"timing", "interleaved"},
                      {"realized_sparsity", realized},
                      {"attention_share", ps.attention_seconds * 1000 / prof_ms},
                      {"mask_share", ps.mask_seconds * 1000 / prof_ms},
                      {"permute_share", ps.permute_seconds * 1000 / prof_ms},
                      {"peak_gpu_gb", tm.peak_gb},
                      {"tokens", ps.tokens}};
  if (*sdpa_ms > 0) r["speedup_vs_sdpa"] = *sdpa_ms / median;
  if (mode.fp8) {
    r["linear_precision"] = "fp8";
    r["fp8_gemm_path"] = Fp8GemmPathUsed();
    r["cosine_vs_bf16"] = CosineVsBf16(bench, in, mode);
    std::printf("  %-4s %-36s step output cosine vs bf16 %.5f (%s)\n", in.name, mode.name.c_str(),
                r["cosine_vs_bf16"].get<double>(), Fp8GemmPathUsed().c_str());
  }
  std::printf("  %-4s %-36s %.3f s/step [%.3f, %.3f] (host %.3f)  x%.2f  attn %.0f%% "
              "mask %.2f%% perm %.2f%%  real %.3f  peak %.1f GB\n",
              in.name, mode.name.c_str(), median / 1000, r["s_per_step_min"].get<double>(),
              r["s_per_step_max"].get<double>(), MedianMs(tm.host_ms) / 1000,
              *sdpa_ms > 0 ? *sdpa_ms / median : 1.0, r["attention_share"].get<double>() * 100,
              r["mask_share"].get<double>() * 100, r["permute_share"].get<double>() * 100,
              realized, tm.peak_gb);
  bench.rows.push_back(r);
  return true;
}

// The modes of `all_modes` that --only names (all without --only) on one
// latent shape F x H x W of `model`: warm-up, timed steps, a row per mode.
void RunShape(Bench& bench, const char* shape, const WanTransformer& model,
              const WanTransformer* fp8_model, int64_t F, int64_t H, int64_t W,
              const std::vector<Mode>& all_modes) {
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(bench.device);
  const WanTransformerConfig& c = model.config();
  const at::Tensor lat = at::randn({2, c.in_channels, F, H, W}, bf16);
  const at::Tensor text = at::randn({2, 512, c.text_dim}, bf16);
  const at::Tensor t = at::full({2}, 900.0, at::TensorOptions().device(bench.device));
  const ShapeInputs in{shape, model, fp8_model, lat, text, t};
  std::vector<Mode> modes;
  for (const Mode& mode : all_modes) {
    if (Selected(bench.flags, mode.name) && (!mode.fp8 || fp8_model != nullptr)) {
      modes.push_back(mode);
    }
  }
  const std::vector<Timed> timed = TimeSteps(bench, in, modes);
  double sdpa_ms = 0;
  for (size_t m = 0; m < modes.size(); ++m) {
    if (!ReportMode(bench, in, modes[m], timed[m], &sdpa_ms)) return;
  }
}

// ---- The linear layers of one block alone ----

// One GEMM of a block: rows x (in -> out); gelu: the FFN's first layer.
struct Gemm {
  const char* name;
  int64_t rows, in, out;
  bool gelu = false;
};

// A GEMM's operands in both precisions.
struct GemmOperands {
  Gemm g;
  at::Tensor x;               // [rows, in] bf16
  WanLinear bf16, fp8;        // the same weights
  wan_ops::Fp8Rows xq;        // x quantized
};

void Check(const Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    std::exit(1);
  }
}

GemmOperands MakeGemm(const Gemm& g, const at::Device& device) {
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(device);
  GemmOperands o{g, at::randn({g.rows, g.in}, bf16), {}, {}, {}};
  const at::Tensor w = at::randn({g.out, g.in}, bf16) / std::sqrt(static_cast<double>(g.in));
  o.bf16 = {w, at::randn({g.out}, bf16) * 0.01, {}};
  NamedTensors params = {{"blocks.0.ffn.net.2.weight", w}};
  Check(QuantizeWanLinears(device, &params));
  o.fp8 = {params[0].second, o.bf16.bias, params[1].second};
  auto xq = wan_ops::QuantizeRows(o.x);
  Check(xq.status());
  o.xq = *xq;
  return o;
}

// Median ms of `reps` timed calls of fn after 3 warm-ups.
double MedianCallMs(const std::function<void()>& fn, int reps) {
  for (int i = 0; i < 3; ++i) fn();
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) ms.push_back(CudaEventMs(fn));
  return MedianMs(ms);
}

// One block's GEMMs (batch 2 with CFG: rows = 2 x tokens; the text keys and
// values over 2 x 512 tokens), timed bf16 as the model runs them (the FFN's
// GELU in the epilogue), fp8 GEMMs alone (also with cuBLASLt's fast
// accumulation, which the model does not use), and fp8 with each GEMM's input
// quantized by its own kernel; rows per block and per step (x layers).
void RunLinears(Bench& bench, const char* shape, int64_t tokens, int64_t inner, int64_t ffn,
                int64_t layers) {
  const int64_t M = 2 * tokens, L = 2 * 512;
  const std::vector<Gemm> gemms = {
      {"self q", M, inner, inner}, {"self k", M, inner, inner}, {"self v", M, inner, inner},
      {"self out", M, inner, inner}, {"cross q", M, inner, inner}, {"cross k", L, inner, inner},
      {"cross v", L, inner, inner}, {"cross out", M, inner, inner},
      {"ffn in", M, inner, ffn, true}, {"ffn out", M, ffn, inner}};
  std::vector<GemmOperands> ops;
  for (const Gemm& g : gemms) ops.push_back(MakeGemm(g, bench.device));
  const int reps = 10;
  const double bf16_ms = MedianCallMs([&] {
    for (const GemmOperands& o : ops) {
      if (o.g.gelu) {
        at::_addmm_activation(o.bf16.bias, o.x, o.bf16.weight.t(), 1, 1, /*use_gelu=*/true);
      } else {
        at::linear(o.x, o.bf16.weight, o.bf16.bias);
      }
    }
  }, reps);
  const double gemm_ms = MedianCallMs([&] {
    for (const GemmOperands& o : ops) Check(Fp8Linear(o.xq, o.fp8).status());
  }, reps);
  Fp8LinearOptions fast;
  fast.fast_accum = true;
  const double fast_ms = MedianCallMs([&] {
    for (const GemmOperands& o : ops) Check(Fp8Linear(o.xq, o.fp8, fast).status());
  }, reps);
  const double quantized_ms = MedianCallMs([&] {
    for (const GemmOperands& o : ops) {
      auto xq = wan_ops::QuantizeRows(o.x, /*gelu_tanh=*/o.g.name == std::string("ffn out"));
      Check(xq.status());
      Check(Fp8Linear(*xq, o.fp8).status());
    }
  }, reps);
  const std::pair<const char*, double> rows[] = {
      {"linear_layers_bf16", bf16_ms},
      {"linear_layers_fp8_gemm_only", gemm_ms},
      {"linear_layers_fp8_gemm_only_fast_accum", fast_ms},
      {"linear_layers_fp8", quantized_ms}};
  for (const auto& [impl, ms] : rows) {
    nlohmann::json r = {{"shape", shape}, {"impl", impl}, {"tokens", tokens}, {"rows", M},
                        {"s_per_block", ms / 1000}, {"layers", layers},
                        {"s_per_step", ms * layers / 1000}, {"speedup_vs_bf16", bf16_ms / ms}};
    if (std::string(impl) != "linear_layers_bf16") r["fp8_gemm_path"] = Fp8GemmPathUsed();
    std::printf("  %-4s %-36s %.3f ms/block  %.3f s/step  x%.2f vs bf16\n", shape, impl, ms,
                ms * layers / 1000, bf16_ms / ms);
    bench.rows.push_back(r);
  }
}

// The model of `config` with random weights (seed), and, when a selected
// mode needs it, a copy with linear_precision fp8 (same seed, same weights).
std::pair<std::unique_ptr<WanTransformer>, std::unique_ptr<WanTransformer>> Models(
    const Bench& bench, const WanTransformerConfig& config, uint64_t seed,
    const std::vector<Mode>& modes) {
  auto model = WanTransformer::Random(config, at::kBFloat16, bench.device, seed);
  std::unique_ptr<WanTransformer> fp8;
  for (const Mode& mode : modes) {
    if (!mode.fp8 || !Selected(bench.flags, mode.name) || fp8) continue;
    fp8 = WanTransformer::Random(config, at::kBFloat16, bench.device, seed);
    Check(fp8->QuantizeLinearsToFp8(bench.device));
  }
  return {std::move(model), std::move(fp8)};
}

}  // namespace

int main(int argc, char** argv) {
  const Flags flags = ParseFlags(argc, argv);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("%s\n", prop.name);
  attention::AttentionEngine engine(8);
  const at::Device cuda(at::kCUDA, 0);
  Bench bench{flags, engine, cuda};

  const std::vector<Mode> modes = {
      {"torch_sdpa_dense", attention::DenseKernel::kTorch, 0.0, 0.0},
      {"torch_sdpa_dense_aten_elementwise", attention::DenseKernel::kTorch, 0.0, 0.0,
       ElementwiseImpl::kAten},
      {"rainserve_dense", attention::DenseKernel::kOurs, 0.0, 0.0},
      {"rainserve_sparse_0.8_sink1", attention::DenseKernel::kAuto, 0.8, 0.0},
      {"rainserve_sparse_0.9_sink1", attention::DenseKernel::kAuto, 0.9, 0.0},
      // Warm-up steps run dense with the kernel the service picks (kAuto).
      {"rainserve_sparse_0.8_sink1_warmup20", attention::DenseKernel::kAuto, 0.8, 0.2},
      {"rainserve_sparse_0.8_sink1_probe", attention::DenseKernel::kAuto, 0.8, 0.0,
       ElementwiseImpl::kFused, 1.0},
      {"rainserve_sparse_0.8_sink1_fp8", attention::DenseKernel::kAuto, 0.8, 0.0,
       ElementwiseImpl::kFused, 0.0, /*fp8=*/true},
      {"rainserve_dense_fp8", attention::DenseKernel::kOurs, 0.0, 0.0, ElementwiseImpl::kFused,
       0.0, /*fp8=*/true},
  };
  {
    WanTransformerConfig c13;  // Wan2.1-T2V-1.3B
    c13.num_attention_heads = 12;
    c13.ffn_dim = 8960;
    c13.num_layers = 30;
    auto [model, fp8] = Models(bench, c13, 1, modes);
    RunShape(bench, "W1", *model, fp8.get(), 21, 60, 104, modes);
  }
  {
    WanTransformerConfig c14;  // Wan2.1-T2V-14B, one block
    c14.num_attention_heads = 40;
    c14.ffn_dim = 13824;
    c14.num_layers = 1;
    const std::vector<Mode> w2_modes = {modes[0], modes[1], modes[2], modes[3],
                                        modes[4], modes[7], modes[8]};
    auto [model, fp8] = Models(bench, c14, 2, w2_modes);
    RunShape(bench, "W2x1", *model, fp8.get(), 21, 90, 160, w2_modes);
  }
  if (Selected(flags, "linear_layers")) {
    RunLinears(bench, "W1", 32760, 1536, 8960, 30);
    RunLinears(bench, "W2x1", 75600, 5120, 13824, 1);
  }
  if (!flags.out_path.empty()) {
    const std::string command =
        rainserve::bench::CommandLine("build-gpu/bench/wan_step_bench", argc, argv);
    nlohmann::json result = {{"benchmark", "wan_step_gpu"},
                             {"date", rainserve::bench::Today()},
                             {"machine", prop.name},
                             {"command", command},
                             {"rows", bench.rows}};
    std::ofstream(flags.out_path) << result.dump(2) << "\n";
  }
  return 0;
}
