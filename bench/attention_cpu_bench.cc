// attention_cpu_bench: RainFusion2.0 on the CPU against LibTorch's
// matmul-softmax-matmul, on the canonical CPU workloads of BENCH.md.
//
//   build/bench/attention_cpu_bench [--workloads C1,C2] [--threads N]
//       [--reps R] [--sinks 1,0] [--out bench/results/attention_cpu.json]
//
// For each workload, input kind (random, structured) and sink setting it
// times, with the same thread count throughout:
//   torch_naive       per head: softmax(q k^T / sqrt(D)) v with at::matmul (dense)
//   rainserve_dense   our kernel with every block kept
//   rainserve_sparse  our kernel with the predicted mask, per sparsity
//   rainserve_mask    mask prediction alone (pooling + scores + top-k)
//   rainserve_permute permuting q, k, v and un-permuting the output
// and reports medians, effective GFLOP/s (4 N^2 D H per dense call, times the
// kept fraction when sparse), the machine's measured fp32 FMA peak, and the
// accuracy of sparse vs dense outputs (cosine, relative L2).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "attention/config.h"
#include "attention/cpu/cpu_backend.h"
#include "attention/mask.h"
#include "attention/testing/inputs.h"
#include "bench/bench_util.h"

namespace {

using namespace rainserve::attention;
using rainserve::ThreadPool;
using rainserve::bench::SetTimes;
using rainserve::bench::Timing;
using Clock = std::chrono::steady_clock;

struct Workload {
  const char* id;
  int64_t t, h, w, heads, head_dim;
};
const Workload kWorkloads[] = {{"C1", 9, 16, 16, 4, 64}, {"C2", 13, 24, 40, 12, 64}};

Timing Time(int reps, const std::function<void()>& fn) {
  fn();  // warm-up
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    const auto start = Clock::now();
    fn();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms.front(), ms.back()};
}

struct Flags {
  std::string workloads = "C1,C2", out_path, sinks = "1,0", inputs = "random,structured";
  int threads = 0, reps = 5;
  float gain = 1.0f;
};

// False (after printing why) on an unknown flag.
bool ParseFlags(int argc, char** argv, Flags* f) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--workloads") f->workloads = value;
    else if (flag == "--threads") f->threads = std::stoi(value);
    else if (flag == "--reps") f->reps = std::stoi(value);
    else if (flag == "--out") f->out_path = value;
    else if (flag == "--sinks") f->sinks = value;
    else if (flag == "--inputs") f->inputs = value;
    else if (flag == "--gain") f->gain = std::stof(value);
    else { std::fprintf(stderr, "unknown flag %s\n", flag.c_str()); return false; }
  }
  return true;
}

// Warms LibTorch up (thread pool, allocator), then measures the machine's
// fp32 FMA peak in GFLOP/s with every thread running the probe at once.
double WarmUpAndMeasurePeak(CpuBackend& backend, int threads) {
  {
    const at::Tensor a = at::randn({512, 512});
    for (int i = 0; i < 3; ++i) (void)at::softmax(at::mm(a, a), -1);
  }
  std::vector<double> per_thread(static_cast<size_t>(threads));
  backend.pool().ParallelFor(threads, [&](int64_t i, int) {
    per_thread[static_cast<size_t>(i)] = backend.kernels().fma_peak_gflops(0.5);
  });
  double peak = 0;
  for (double g : per_thread) peak += g;
  return peak;
}

// What every case shares.
struct Bench {
  const Flags& flags;
  CpuBackend& backend;
  int threads = 0;
  double peak = 0;                                 // GFLOP/s
  nlohmann::json rows = nlohmann::json::array();  // the result file's rows

  // Prints `row` as one line and appends it to the rows.
  void AddRow(nlohmann::json row) {
    std::printf("  %-4s %-10s sink=%s %-18s sparsity=%-4s realized=%-6.3f %9.2f ms  "
                "%7.1f GFLOP/s  %s\n",
                row["workload"].get<std::string>().c_str(), row["inputs"].get<std::string>().c_str(),
                row["sink_frames"].dump().c_str(), row["impl"].get<std::string>().c_str(),
                row["sparsity"].dump().c_str(), row.value("realized_sparsity", 0.0),
                row["ms"].get<double>(), row.value("gflops", 0.0),
                row.contains("cosine_vs_dense")
                    ? ("cos=" + std::to_string(row["cosine_vs_dense"].get<double>()) +
                       " relL2=" + std::to_string(row["rel_l2_vs_dense"].get<double>()) +
                       " mass=" + std::to_string(row["attention_mass_kept"].get<double>())).c_str()
                    : "");
    rows.push_back(std::move(row));
  }
};

// One case (workload, input kind, sink frames): the inputs, their copies in
// plan order, and the kernel arguments over those.
struct Case {
  const Workload* wl = nullptr;
  std::string input_kind;
  TokenLayout layout;
  AttentionPlan plan;
  int64_t B = 1, N = 0, H = 0, D = 0, nb = 0;
  testing::Qkv x;
  double dense_flops = 0;
  std::vector<float> q, k, v, o, back;  // [B, N, H, D] in plan order; back: q un-permuted
  int64_t row_bytes = 0;
  ForwardArgs args;                      // over q, k, v, o
  BlockMask dense_mask;

  // A result row of `impl` on this case.
  nlohmann::json Row(const char* impl, int threads) const {
    nlohmann::json r;
    r["workload"] = wl->id;
    r["inputs"] = input_kind;
    r["sink_frames"] = layout.sink_frames;
    r["impl"] = impl;
    r["threads"] = threads;
    r["tokens"] = N;
    r["blocks"] = nb;
    return r;
  }
};

// Builds the plan, the inputs and the buffers of a case into *c; false (after
// printing why) if the plan cannot be built.
bool SetUpCase(const Workload& wl, const std::string& input_kind, const std::string& sink_text,
               float gain, Case* c) {
  c->wl = &wl;
  c->input_kind = input_kind;
  c->layout.frames = wl.t;
  c->layout.height = wl.h;
  c->layout.width = wl.w;
  c->layout.sink_frames = std::stoi(sink_text);
  const int64_t B = c->B, N = c->layout.total_tokens(), H = wl.heads, D = wl.head_dim;
  auto plan = AttentionPlan::Build(c->layout, DefaultWindow(c->layout), 128);
  if (!plan.ok()) { std::fprintf(stderr, "%s\n", plan.status().ToString().c_str()); return false; }
  c->plan = std::move(plan).value();
  c->N = N;
  c->H = H;
  c->D = D;
  c->nb = c->plan.num_blocks();
  c->x = input_kind == "random" ? testing::RandomQkv(B, N, H, D, 42)
                                : testing::StructuredQkv(c->layout, B, H, D, 42, gain);
  c->dense_flops = 4.0 * double(N) * double(N) * double(D) * double(H) * double(B);
  for (auto* buffer : {&c->q, &c->k, &c->v, &c->o, &c->back}) buffer->resize(c->x.q.size());
  c->row_bytes = H * D * static_cast<int64_t>(sizeof(float));
  c->args.q = TensorView::Contiguous(c->q.data(), DType::kFloat32, B, N, H, D);
  c->args.k = TensorView::Contiguous(c->k.data(), DType::kFloat32, B, N, H, D);
  c->args.v = TensorView::Contiguous(c->v.data(), DType::kFloat32, B, N, H, D);
  c->args.out = TensorView::Contiguous(c->o.data(), DType::kFloat32, B, N, H, D);
  c->args.blocks = c->plan.blocks.view();
  c->args.scale = 1.0f / std::sqrt(static_cast<float>(D));
  return true;
}

// Permutation: q, k, v into plan order and the output back.
Timing TimePermutation(Case& c, Bench& bench) {
  ThreadPool* pool = &bench.backend.pool();
  const TokenPermutation& perm = c.plan.permutation;
  return Time(bench.flags.reps, [&] {
    ApplyPermutation(perm, c.x.q.data(), c.q.data(), c.B, c.row_bytes, pool);
    ApplyPermutation(perm, c.x.k.data(), c.k.data(), c.B, c.row_bytes, pool);
    ApplyPermutation(perm, c.x.v.data(), c.v.data(), c.B, c.row_bytes, pool);
    InvertPermutation(perm, c.q.data(), c.back.data(), c.B, c.row_bytes, pool);
  });
}

// LibTorch baseline on [B, H, N, D] copies, one head at a time (a [H, N, N]
// score tensor would not fit: 7.5 GB at C2); its output into *tout.
Timing RunTorchNaive(Case& c, Bench& bench, at::Tensor* tout) {
  const int64_t B = c.B, N = c.N, H = c.H, D = c.D;
  const at::Tensor tq = at::from_blob(c.x.q.data(), {B, N, H, D}).transpose(1, 2).contiguous();
  const at::Tensor tk = at::from_blob(c.x.k.data(), {B, N, H, D}).transpose(1, 2).contiguous();
  const at::Tensor tv = at::from_blob(c.x.v.data(), {B, N, H, D}).transpose(1, 2).contiguous();
  *tout = at::empty_like(tq);
  // Score and probability buffers reused across heads and runs, so the
  // baseline pays for arithmetic and memory traffic, not page faults.
  at::Tensor scores = at::empty({N, N}), probs = at::empty({N, N});
  const at::Tensor qs = tq * c.args.scale;
  const Timing naive_t = Time(std::max(1, bench.flags.reps / 2), [&] {
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < H; ++h) {
        at::mm_out(scores, qs[b][h], tk[b][h].transpose(0, 1));
        at::softmax_out(probs, scores, -1);
        at::Tensor dst = (*tout)[b][h];
        at::mm_out(dst, probs, tv[b][h]);
      }
    }
  });
  auto r = c.Row("torch_naive", bench.threads);
  r["sparsity"] = 0.0;
  SetTimes(naive_t, &r);
  r["gflops"] = c.dense_flops / naive_t.median_ms * 1e-6;
  bench.AddRow(r);
  return naive_t;
}

// Our kernel with every block kept: its time, output and log-sum-exp, the
// reference of the sparse rows.
struct DenseRun {
  Timing t;
  std::vector<float> out, lse;
};

DenseRun RunDense(Case& c, Bench& bench, const Timing& naive_t, const at::Tensor& tout) {
  c.dense_mask = DenseBlockMask(c.B, c.H, c.nb);
  c.args.mask = c.dense_mask.view();
  DenseRun dense;
  dense.t = Time(bench.flags.reps, [&] { (void)bench.backend.Forward(c.args); });
  dense.out = c.o;
  dense.lse.resize(static_cast<size_t>(c.B * c.H * c.N));
  c.args.lse = dense.lse.data();
  (void)bench.backend.Forward(c.args);
  c.args.lse = nullptr;
  auto r = c.Row("rainserve_dense", bench.threads);
  r["sparsity"] = 0.0;
  r["realized_sparsity"] = 0.0;
  SetTimes(dense.t, &r);
  r["gflops"] = c.dense_flops / dense.t.median_ms * 1e-6;
  r["fraction_of_peak"] = c.dense_flops / dense.t.median_ms * 1e-6 / bench.peak;
  r["speedup_vs_torch_naive"] = naive_t.median_ms / dense.t.median_ms;
  // Our dense kernel vs LibTorch's result (unpermute ours first).
  std::vector<float> ours(c.o.size());
  InvertPermutation(c.plan.permutation, c.o.data(), ours.data(), c.B, c.row_bytes,
                    &bench.backend.pool());
  const at::Tensor theirs = tout.transpose(1, 2).contiguous();
  r["rel_l2_vs_torch"] = testing::RelativeL2(ours.data(), theirs.data_ptr<float>(), c.o.size());
  bench.AddRow(r);
  return dense;
}

// Mask prediction and the sparse kernel at one sparsity: a rainserve_sparse
// and a rainserve_mask row.
void RunSparse(Case& c, Bench& bench, double sparsity, const Timing& naive_t,
               const DenseRun& dense, const Timing& perm_t) {
  BlockMask mask;
  mask.Resize(c.B, c.H, c.nb, c.nb);
  int64_t kept = 0;
  MaskArgs margs{c.args.q, c.args.k, c.args.blocks, c.args.scale, sparsity,
                 mask.counts.data(), mask.indices.data(), &kept};
  const Timing mask_t = Time(bench.flags.reps, [&] { (void)bench.backend.PredictMask(margs); });
  c.args.mask = mask.view();
  const Timing sparse_t = Time(bench.flags.reps, [&] { (void)bench.backend.Forward(c.args); });
  const double density = double(kept) / double(mask.total());
  auto r = c.Row("rainserve_sparse", bench.threads);
  r["sparsity"] = sparsity;
  r["realized_sparsity"] = 1.0 - density;
  SetTimes(sparse_t, &r);
  r["gflops"] = c.dense_flops * density / sparse_t.median_ms * 1e-6;
  r["speedup_vs_dense"] = dense.t.median_ms / sparse_t.median_ms;
  r["speedup_vs_torch_naive"] = naive_t.median_ms / sparse_t.median_ms;
  r["mask_plus_permute_share"] = (mask_t.median_ms + perm_t.median_ms) / sparse_t.median_ms;
  r["cosine_vs_dense"] = testing::Cosine(c.o.data(), dense.out.data(), c.o.size());
  r["rel_l2_vs_dense"] = testing::RelativeL2(c.o.data(), dense.out.data(), c.o.size());
  // Share of each query's softmax mass inside its kept blocks:
  // exp(lse_sparse - lse_dense), averaged over queries.
  std::vector<float> sparse_lse(dense.lse.size());
  c.args.lse = sparse_lse.data();
  (void)bench.backend.Forward(c.args);
  c.args.lse = nullptr;
  double mass = 0;
  for (size_t i = 0; i < dense.lse.size(); ++i) mass += std::exp(sparse_lse[i] - dense.lse[i]);
  r["attention_mass_kept"] = mass / double(dense.lse.size());
  bench.AddRow(r);
  auto m = c.Row("rainserve_mask", bench.threads);
  m["sparsity"] = sparsity;
  m["realized_sparsity"] = 1.0 - density;
  SetTimes(mask_t, &m);
  m["share_of_sparse"] = mask_t.median_ms / sparse_t.median_ms;
  bench.AddRow(m);
}

// Every implementation on one case, in row order.
void RunCase(Case& c, Bench& bench) {
  const Timing perm_t = TimePermutation(c, bench);
  at::Tensor tout;
  const Timing naive_t = RunTorchNaive(c, bench, &tout);
  const DenseRun dense = RunDense(c, bench, naive_t, tout);
  auto r = c.Row("rainserve_permute", bench.threads);
  r["sparsity"] = 0.0;
  SetTimes(perm_t, &r);
  r["share_of_dense"] = perm_t.median_ms / dense.t.median_ms;
  bench.AddRow(r);
  for (double sparsity : {0.5, 0.8, 0.9}) RunSparse(c, bench, sparsity, naive_t, dense, perm_t);
}

void WriteResult(const Bench& bench, const std::string& command) {
  using rainserve::bench::CpuModel;
  nlohmann::json result;
  result["benchmark"] = "attention_cpu";
  result["date"] = rainserve::bench::Today();
  result["machine"] = CpuModel() + ", " + std::to_string(ThreadPool::HardwareThreads()) + " cores";
  result["command"] = command;
  result["threads"] = bench.threads;
  result["kernels"] = bench.backend.Name();
  result["fp32_fma_peak_gflops"] = bench.peak;
  result["peak_method"] =
      "all threads run 12 independent chains of vector FMAs of the selected ISA for 0.5 s; "
      "GFLOP/s = FMAs * lanes * 2 / time, summed over threads";
  result["structured_gain"] = bench.flags.gain;
  result["rows"] = bench.rows;
  std::ofstream(bench.flags.out_path) << result.dump(2) << "\n";
  std::printf("wrote %s\n", bench.flags.out_path.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  if (!ParseFlags(argc, argv, &flags)) return 2;
  const std::string command =
      rainserve::bench::CommandLine("build/bench/attention_cpu_bench", argc, argv);

  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  CpuBackend backend(flags.threads);
  Bench bench{flags, backend};
  bench.threads = backend.pool().num_threads();
  at::set_num_threads(bench.threads);
  bench.peak = WarmUpAndMeasurePeak(backend, bench.threads);
  std::printf("%s, %d threads, kernels %s, measured fp32 FMA peak %.1f GFLOP/s\n",
              rainserve::bench::CpuModel().c_str(), bench.threads, backend.Name(), bench.peak);

  for (const std::string& wid : rainserve::bench::Split(flags.workloads)) {
    const Workload* wl = rainserve::bench::FindById(kWorkloads, wid);
    if (!wl) { std::fprintf(stderr, "unknown workload %s\n", wid.c_str()); return 2; }
    for (const std::string& input_kind : rainserve::bench::Split(flags.inputs)) {
      for (const std::string& sink_text : rainserve::bench::Split(flags.sinks)) {
        Case c;
        if (!SetUpCase(*wl, input_kind, sink_text, flags.gain, &c)) return 1;
        RunCase(c, bench);
      }
    }
  }
  if (!flags.out_path.empty()) WriteResult(bench, command);
  return 0;
}
