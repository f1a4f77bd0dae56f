// attention_quality_bench: the mass-targeted mode (rainfusion_mass) against
// fixed top-k at equal realized density: output cosine against dense, and
// speed. On the canonical attention workloads and on the embedded model.
//
//   build-gpu/bench/attention_quality_bench [--device cuda|cpu]
//       [--workloads W1,W2,wan-tiny] [--inputs structured,random]
//       [--kept-mass 0.5,0.7,0.8,0.9,0.95] [--min-kept 1] [--max-kept 0]
//       [--reps 20] [--threads 8] [--out bench/results/quality_gpu.json]
//       [--model models/wan-tiny] [--model-size 512x512x17] [--model-steps 8]
//       [--model-reps 3] [--machine NAME]
//
// Per attention workload and input kind (structured q, k by default), bf16
// on the GPU and fp32 on the CPU, B = 1, one sink frame: for each kept_mass
// the mass mode's mask gives a realized sparsity; the top-k count whose
// realized sparsity lies closest to it is found by bisection over the count
// (bench/topk_match.h). Both, and our dense kernel, are timed round-robin
// (CUDA events on the GPU, the host clock on the CPU; warm-up, then --reps
// rounds, one call each): "ms" is the whole call (mask prediction and
// kernel), "mask_ms" the mask prediction alone. "cos" and "rel_l2" compare
// the sparse output with our dense output of the same inputs. The workload
// "wan-tiny" runs whole requests of the --model checkpoint instead
// (bench/wan_quality.h). Rows go to --out (default on the GPU:
// bench/results/quality_gpu.json; on the CPU only with --out).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "attention/torch_adapter.h"
#include "bench/attention_workloads.h"
#include "bench/bench_util.h"
#include "bench/topk_match.h"
#include "bench/wan_quality.h"
#include "pipelines/core/torch_device.h"

#if RAINSERVE_WITH_CUDA
#include <cuda_runtime.h>

#include "bench/cuda_timing.h"
#endif

namespace {

using namespace rainserve::attention;
using rainserve::bench::Must;
using rainserve::bench::SetTimes;
using rainserve::bench::Timing;
using Workload = rainserve::bench::AttentionWorkload;

// Round-robin timing on the device's clock: CUDA events on a GPU.
std::vector<Timing> TimeRoundRobin(const at::Device& device, int reps,
                                   const std::vector<std::function<void()>>& fns) {
#if RAINSERVE_WITH_CUDA
  if (device.is_cuda()) return rainserve::bench::TimeCudaInterleaved(reps, fns);
#endif
  (void)device;
  return rainserve::bench::TimeHostInterleaved(reps, fns);
}

// The GPU's name, or the CPU model and thread count.
std::string MachineName(const at::Device& device, int threads) {
#if RAINSERVE_WITH_CUDA
  if (device.is_cuda()) {
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, device.index() < 0 ? 0 : device.index());
    return prop.name;
  }
#endif
  return rainserve::bench::CpuModel() + ", " + std::to_string(threads) + " threads";
}

struct Flags {
  std::string device = "cuda", workloads, inputs = "structured",
              kept_masses = "0.5,0.7,0.8,0.9,0.95", out_path, model = "models/wan-tiny",
              model_size = "512x512x17", machine;
  int reps = 0, threads = 0, model_steps = 8, model_reps = 3;
  int64_t min_kept = 1, max_kept = 0;
};

// False (after printing why) on an unknown flag; fills the device-dependent
// defaults (workloads, reps, output path).
bool ParseFlags(int argc, char** argv, Flags* f) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--device") f->device = value;
    else if (flag == "--workloads") f->workloads = value;
    else if (flag == "--inputs") f->inputs = value;
    else if (flag == "--kept-mass") f->kept_masses = value;
    else if (flag == "--min-kept") f->min_kept = std::stoll(value);
    else if (flag == "--max-kept") f->max_kept = std::stoll(value);
    else if (flag == "--reps") f->reps = std::stoi(value);
    else if (flag == "--threads") f->threads = std::stoi(value);
    else if (flag == "--out") f->out_path = value;
    else if (flag == "--model") f->model = value;
    else if (flag == "--model-size") f->model_size = value;
    else if (flag == "--model-steps") f->model_steps = std::stoi(value);
    else if (flag == "--model-reps") f->model_reps = std::stoi(value);
    else if (flag == "--machine") f->machine = value;
    else { std::fprintf(stderr, "unknown flag %s\n", flag.c_str()); return false; }
  }
  if (f->device == "cuda") f->device = "cuda:0";
  const bool gpu = f->device != "cpu";
  if (f->workloads.empty()) f->workloads = gpu ? "W1,W2" : "C1";
  if (f->reps <= 0) f->reps = gpu ? 20 : 5;
  if (f->out_path.empty() && gpu) f->out_path = "bench/results/quality_gpu.json";
  if (f->model_reps < 1) f->model_reps = 1;
  return true;
}

std::vector<double> ParseList(const std::string& text) {
  std::vector<double> out;
  for (const std::string& item : rainserve::bench::Split(text)) out.push_back(std::stod(item));
  return out;
}

// What every case shares.
struct Bench {
  const Flags& flags;
  AttentionEngine& engine;
  at::Device device;
  at::ScalarType dtype;
  nlohmann::json rows = nlohmann::json::array();
};

// One workload and input kind: q, k, v in plan order and the dense reference.
struct Case {
  Case(const Workload& wl, const std::string& kind, AttentionPlan plan)
      : wl(wl), kind(kind), plan(std::move(plan)), H(wl.heads), D(wl.head_dim),
        nb(this->plan.num_blocks()) {}

  const Workload& wl;
  const std::string& kind;
  const AttentionPlan plan;
  const int64_t H, D, nb;
  at::Tensor q, k, v;         // [1, N, H, D], permuted
  at::Tensor ref_out, ref_lse;  // our dense output (fp32) and its log-sum-exp [1, H, N]

  nlohmann::json Row(const char* impl, const Bench& bench) const {
    return {{"workload", wl.id}, {"inputs", kind}, {"impl", impl},
            {"sink_frames", plan.layout.sink_frames}, {"tokens", plan.tokens()}, {"blocks", nb},
            {"dtype", bench.dtype == at::kBFloat16 ? "bf16" : "fp32"}};
  }
  double RealizedSparsity(const TorchBlockMask& mask) const {
    return 1.0 - double(KeptBlocks(mask)) / double(nb * nb * H);
  }
};

// The inputs of the case's kind (random, or structured q and k) in plan
// order, and the dense reference.
void MakeInputs(Bench& bench, Case* c) {
  const int64_t N = c->plan.tokens(), H = c->H, D = c->D;
  at::manual_seed(7);
  const auto opts = at::TensorOptions().dtype(bench.dtype).device(bench.device);
  at::Tensor q0, k0;
  if (c->kind == "random") {
    q0 = at::randn({1, N, H, D}, opts);
    k0 = at::randn({1, N, H, D}, opts);
  } else {
    auto qk = rainserve::bench::StructuredQk(c->plan.layout, H, D, 11, bench.device);
    q0 = qk.first.to(bench.dtype);
    k0 = qk.second.to(bench.dtype);
  }
  const at::Tensor v0 = at::randn({1, N, H, D}, opts);
  c->q = Must(PermuteTokens(bench.engine, q0, c->plan));
  c->k = Must(PermuteTokens(bench.engine, k0, c->plan));
  c->v = Must(PermuteTokens(bench.engine, v0, c->plan));
  AttentionConfig dense;
  dense.return_lse = true;
  AttentionResult ref = Must(RainFusionAttention(bench.engine, c->q, c->k, c->v, c->plan, dense));
  c->ref_out = ref.out.to(at::kFloat);
  c->ref_lse = ref.lse;
}

// One compared setting (dense, a kept_mass, or a top-k sparsity) and its row.
struct Setting {
  AttentionConfig config;
  nlohmann::json row;
};

// Fills the row's accuracy fields: realized sparsity, cosine and relative L2
// against dense, and the exact softmax mass the kept blocks hold.
void MeasureAccuracy(Bench& bench, const Case& c, Setting* s) {
  AttentionConfig cfg = s->config;
  cfg.return_lse = true;
  const TorchBlockMask mask = Must(PredictBlockMask(bench.engine, c.q, c.k, c.plan, cfg));
  const AttentionResult res = Must(BlockSparseAttention(bench.engine, c.q, c.k, c.v, c.plan, mask, true));
  const at::Tensor so = res.out.to(at::kFloat), &ref = c.ref_out;
  s->row["realized_sparsity"] = c.RealizedSparsity(mask);
  // Products in fp32, sums in fp64.
  const double dot = at::sum(so * ref, at::kDouble).item<double>();
  const double so2 = at::sum(so * so, at::kDouble).item<double>();
  const double ref2 = at::sum(ref * ref, at::kDouble).item<double>();
  const at::Tensor diff = so - ref;
  const double diff2 = at::sum(diff * diff, at::kDouble).item<double>();
  s->row["cos"] = dot / std::sqrt(so2 * ref2);
  s->row["rel_l2"] = std::sqrt(diff2 / ref2);
  s->row["attention_mass_kept"] = at::exp(res.lse - c.ref_lse).mean().item<double>();
}

// The dense setting, then per kept_mass the mass setting and the top-k
// setting whose realized sparsity matches it.
std::vector<Setting> CompareSettings(Bench& bench, const Case& c) {
  const Flags& flags = bench.flags;
  std::vector<Setting> settings = {{AttentionConfig{}, c.Row("rainserve_dense", bench)}};
  settings[0].row["sparsity"] = 0.0;
  rainserve::bench::TopKMatcher matcher(c.nb, [&](double sparsity) {
    AttentionConfig cfg;
    cfg.sparsity = sparsity;
    return c.RealizedSparsity(Must(PredictBlockMask(bench.engine, c.q, c.k, c.plan, cfg)));
  });
  for (double kept_mass : ParseList(flags.kept_masses)) {
    Setting mass{AttentionConfig{}, c.Row("rainserve_mass", bench)};
    mass.config.kept_mass = kept_mass;
    mass.config.min_kept_blocks = flags.min_kept;
    mass.config.max_kept_blocks = flags.max_kept;
    mass.row["kept_mass"] = kept_mass;
    const double realized =
        c.RealizedSparsity(Must(PredictBlockMask(bench.engine, c.q, c.k, c.plan, mass.config)));
    const rainserve::bench::TopKMatch match = matcher.Match(realized);
    Setting topk{AttentionConfig{}, c.Row("rainserve_sparse", bench)};
    topk.config.sparsity = match.sparsity;
    topk.row["sparsity"] = match.sparsity;
    topk.row["topk_count"] = match.count;
    topk.row["matched_kept_mass"] = kept_mass;
    settings.push_back(std::move(mass));
    settings.push_back(std::move(topk));
  }
  return settings;
}

// Times every setting round-robin: its mask prediction and its whole call.
void TimeSettings(Bench& bench, const Case& c, std::vector<Setting>* settings) {
  std::vector<std::function<void()>> fns;
  for (const Setting& s : *settings) {
    const AttentionConfig& cfg = s.config;
    fns.push_back([&] { (void)Must(PredictBlockMask(bench.engine, c.q, c.k, c.plan, cfg)); });
    fns.push_back([&] { (void)Must(RainFusionAttention(bench.engine, c.q, c.k, c.v, c.plan, cfg)); });
  }
  const std::vector<Timing> times = TimeRoundRobin(bench.device, bench.flags.reps, fns);
  for (size_t i = 0; i < settings->size(); ++i) {
    nlohmann::json& row = (*settings)[i].row;
    SetTimes(times[2 * i + 1], &row);
    row["mask_ms"] = times[2 * i].median_ms;
  }
}

void PrintRow(const nlohmann::json& r) {
  char setting[32];
  if (r.contains("kept_mass")) std::snprintf(setting, sizeof(setting), "m=%.2f", r["kept_mass"].get<double>());
  else std::snprintf(setting, sizeof(setting), "s=%.4f", r["sparsity"].get<double>());
  std::printf("  %-3s %-10s %-16s %-8s realized=%.4f cos=%.6f rel_l2=%.5f %9.3f ms (mask %.3f)\n",
              r["workload"].get<std::string>().c_str(), r["inputs"].get<std::string>().c_str(),
              r["impl"].get<std::string>().c_str(), setting,
              r["realized_sparsity"].get<double>(), r["cos"].get<double>(),
              r["rel_l2"].get<double>(), r["ms"].get<double>(), r["mask_ms"].get<double>());
}

// Every setting on one workload and input kind: rows, lines and pair summaries.
void RunCase(Bench& bench, const Workload& wl, const std::string& kind) {
  const TokenLayout layout = rainserve::bench::LayoutOf(wl);
  Case c(wl, kind, Must(AttentionPlan::Build(layout, DefaultWindow(layout), 128)));
  MakeInputs(bench, &c);
  std::vector<Setting> settings = CompareSettings(bench, c);
  for (Setting& s : settings) MeasureAccuracy(bench, c, &s);
  TimeSettings(bench, c, &settings);
  for (const Setting& s : settings) PrintRow(s.row);
  for (size_t i = 1; i + 1 < settings.size(); i += 2) {
    rainserve::bench::AddPairSummary(settings[i + 1].row, "ms", &settings[i].row);
  }
  for (Setting& s : settings) bench.rows.push_back(std::move(s.row));
}

// The wan-tiny rows: whole requests of the --model checkpoint.
bool RunModel(Bench& bench, const std::string& workload) {
  const Flags& flags = bench.flags;
  rainserve::bench::ModelQualityOptions o;
  o.workload = workload;
  o.model_dir = flags.model;
  o.device = flags.device;
  o.dtype = bench.dtype == at::kBFloat16 ? "bf16" : "fp32";
  o.threads = flags.threads;
  if (std::sscanf(flags.model_size.c_str(), "%" SCNd64 "x%" SCNd64 "x%" SCNd64, &o.width, &o.height, &o.frames) != 3) {
    std::fprintf(stderr, "--model-size: expected WIDTHxHEIGHTxFRAMES, got %s\n",
                 flags.model_size.c_str());
    return false;
  }
  o.steps = flags.model_steps;
  o.reps = flags.model_reps;
  o.kept_masses = ParseList(flags.kept_masses);
  o.min_kept_blocks = flags.min_kept;
  o.max_kept_blocks = flags.max_kept;
  auto rows = rainserve::bench::ModelQualityRows(o);
  if (!rows.ok()) {
    std::fprintf(stderr, "%s: %s\n", workload.c_str(), rows.status().ToString().c_str());
    return false;
  }
  for (auto& row : *rows) bench.rows.push_back(std::move(row));
  return true;
}

void WriteResults(const Bench& bench, const std::string& command, const std::string& machine) {
  nlohmann::json result;
  result["benchmark"] = bench.device.is_cuda() ? "attention_quality_gpu" : "attention_quality_cpu";
  result["date"] = rainserve::bench::Today();
  result["machine"] = machine;
  result["command"] = command;
  result["timing"] = std::string(bench.device.is_cuda() ? "CUDA events" : "host clock") +
                     ", round-robin, one call per setting and round, median of " +
                     std::to_string(bench.flags.reps) + " rounds after 3 warm-up calls";
  result["rows"] = bench.rows;
  std::ofstream(bench.flags.out_path) << result.dump(2) << "\n";
  std::printf("wrote %s\n", bench.flags.out_path.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  if (!ParseFlags(argc, argv, &flags)) return 2;
  const std::string command = rainserve::bench::CommandLine(
      flags.device == "cpu" ? "build/bench/attention_quality_bench"
                            : "build-gpu/bench/attention_quality_bench",
      argc, argv);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const at::Device device = Must(rainserve::ParseDevice(flags.device));
  AttentionEngine engine(device.is_cuda() ? 8 : flags.threads);
  const int threads = engine.cpu().pool().num_threads();
  at::set_num_threads(threads);
  Bench bench{flags, engine, device, device.is_cuda() ? at::kBFloat16 : at::kFloat};
  const std::string machine = flags.machine.empty() ? MachineName(device, threads) : flags.machine;
  std::printf("%s\n", machine.c_str());

  for (const std::string& wid : rainserve::bench::Split(flags.workloads)) {
    if (wid.rfind("wan", 0) == 0) {
      if (!RunModel(bench, wid)) return 1;
      continue;
    }
    const Workload* wl = rainserve::bench::FindById(rainserve::bench::kAttentionWorkloads, wid);
    if (!wl) { std::fprintf(stderr, "unknown workload %s\n", wid.c_str()); return 2; }
    for (const std::string& kind : rainserve::bench::Split(flags.inputs)) RunCase(bench, *wl, kind);
  }
  if (!flags.out_path.empty()) WriteResults(bench, command, machine);
  return 0;
}
