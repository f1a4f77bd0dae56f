// attention_gpu_bench: RainFusion2.0 on the GPU against LibTorch SDPA (and,
// through bench/flex_attention_bench.py, FlexAttention with the same masks),
// on the canonical GPU workloads of BENCH.md.
//
//   build-gpu/bench/attention_gpu_bench [--workloads W1,W2,W3] [--reps 20]
//       [--out bench/results/attention_gpu.json] [--mask-dir DIR] [--burst-ms 0]
//
// Per workload and input kind (random, structured), bf16, B = 1, one sink
// frame for video (none for T = 1): torch_sdpa, rainserve_dense,
// rainserve_sparse at 0.5/0.8/0.9, rainserve_mask, rainserve_permute; medians
// (and min, max) of CUDA-event timings after warm-up, all implementations
// timed round-robin, one call each per round (with --burst-ms X, back-to-back
// calls for about X ms each per round: every kernel at its own sustained
// clock); effective TFLOP/s, realized
// sparsity, sparse-vs-dense accuracy. With --mask-dir, the 0.8 and 0.9 masks
// are written there for the FlexAttention comparison.
#include <ATen/ATen.h>
#include <cuda_runtime.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "attention/torch_adapter.h"
#include "bench/attention_workloads.h"
#include "bench/bench_util.h"
#include "bench/cuda_timing.h"

namespace {

using namespace rainserve::attention;
using rainserve::bench::SetTimes;
using rainserve::bench::TimeCudaInterleaved;
using rainserve::bench::Timing;

using Workload = rainserve::bench::AttentionWorkload;
using rainserve::bench::LayoutOf;
using rainserve::bench::Must;

at::Tensor Sdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
#if TORCH_VERSION_MAJOR >= 2
  return at::scaled_dot_product_attention(q, k, v);
#else
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  return at::matmul(at::softmax(at::matmul(q, k.transpose(-1, -2)) * scale, -1), v);
#endif
}

struct Flags {
  std::string workloads = "W1,W2,W3", out_path, mask_dir, inputs = "random,structured";
  int reps = 20;
  double burst_ms = 0;
};

// False (after printing why) on an unknown flag.
bool ParseFlags(int argc, char** argv, Flags* f) {
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--workloads") f->workloads = value;
    else if (flag == "--reps") f->reps = std::stoi(value);
    else if (flag == "--out") f->out_path = value;
    else if (flag == "--mask-dir") f->mask_dir = value;
    else if (flag == "--inputs") f->inputs = value;
    else if (flag == "--burst-ms") f->burst_ms = std::stod(value);
    else { std::fprintf(stderr, "unknown flag %s\n", flag.c_str()); return false; }
  }
  return true;
}

// What every case shares.
struct Bench {
  const Flags& flags;
  AttentionEngine& engine;
  nlohmann::json rows = nlohmann::json::array();   // the result file's rows
  nlohmann::json masks = nlohmann::json::array();  // masks.json, with --mask-dir
};

// One workload and input kind: q, k, v as made and in plan order, and the
// [1, H, N, D] copies SDPA takes.
struct Case {
  Case(const Workload& wl, const std::string& kind, const TokenLayout& layout,
       const AttentionPlan& plan)
      : wl(wl), kind(kind), layout(layout), plan(plan), N(plan.tokens()), H(wl.heads),
        D(wl.head_dim), nb(plan.num_blocks()),
        dense_flops(4.0 * double(N) * double(N) * double(D) * double(H)) {}

  const Workload& wl;
  const std::string& kind;
  const TokenLayout& layout;
  const AttentionPlan& plan;
  const int64_t N, H, D, nb;
  const double dense_flops;
  at::Tensor q0, k0, v0;  // [1, N, H, D] bf16
  at::Tensor q, k, v;     // permuted
  at::Tensor qt, kt, vt;  // permuted, [1, H, N, D]

  // A result row of `impl` on this case.
  nlohmann::json Row(const char* impl) const {
    nlohmann::json r;
    r["workload"] = wl.id;
    r["inputs"] = kind;
    r["sink_frames"] = layout.sink_frames;
    r["impl"] = impl;
    r["tokens"] = N;
    r["blocks"] = nb;
    r["dtype"] = "bf16";
    return r;
  }
};

// The inputs of the case's kind (random, or structured q and k), bf16, and
// their permuted and transposed copies.
void MakeInputs(AttentionEngine& engine, Case* c) {
  const int64_t N = c->N, H = c->H, D = c->D;
  at::manual_seed(7);
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  if (c->kind == "random") {
    c->q0 = at::randn({1, N, H, D}, bf16);
    c->k0 = at::randn({1, N, H, D}, bf16);
  } else {
    auto qk = rainserve::bench::StructuredQk(c->layout, H, D, 11, at::kCUDA);
    c->q0 = qk.first.to(at::kBFloat16);
    c->k0 = qk.second.to(at::kBFloat16);
  }
  c->v0 = at::randn({1, N, H, D}, bf16);
  c->q = Must(PermuteTokens(engine, c->q0, c->plan));
  c->k = Must(PermuteTokens(engine, c->k0, c->plan));
  c->v = Must(PermuteTokens(engine, c->v0, c->plan));
  c->qt = c->q.transpose(1, 2).contiguous();
  c->kt = c->k.transpose(1, 2).contiguous();
  c->vt = c->v.transpose(1, 2).contiguous();
}

// The dense mask, and per sparsity its settings and predicted mask.
struct Masks {
  TorchBlockMask dense;
  std::vector<AttentionConfig> cfgs;
  std::vector<TorchBlockMask> sparse;
};

Masks PredictMasks(AttentionEngine& engine, const Case& c, const std::vector<double>& sparsities) {
  Masks m;
  m.dense = Must(PredictBlockMask(engine, c.q, c.k, c.plan, AttentionConfig{}));
  for (double sparsity : sparsities) {
    AttentionConfig cfg;
    cfg.sparsity = sparsity;
    m.cfgs.push_back(cfg);
    m.sparse.push_back(Must(PredictBlockMask(engine, c.q, c.k, c.plan, cfg)));
  }
  return m;
}

// The outputs of the timed calls, and the timings: permutation, SDPA, dense,
// then mask prediction and sparse kernel per sparsity.
struct Timed {
  at::Tensor sdpa_out;
  AttentionResult dense;
  std::vector<AttentionResult> sparse;
  std::vector<Timing> times;
};

// Every implementation timed round-robin (TimeCudaInterleaved): the
// permutation of q, k, v in and the output out, SDPA, our dense, and per
// sparsity the mask prediction and the sparse kernel.
Timed TimeAll(Bench& bench, const Case& c, const Masks& masks) {
  AttentionEngine& engine = bench.engine;
  const AttentionPlan& plan = c.plan;
  Timed timed;
  timed.sparse.resize(masks.cfgs.size());
  std::vector<std::function<void()>> fns = {
      [&] {
        (void)Must(PermuteTokens(engine, c.q0, plan));
        (void)Must(PermuteTokens(engine, c.k0, plan));
        (void)Must(PermuteTokens(engine, c.v0, plan));
        (void)Must(UnpermuteTokens(engine, c.q, plan));
      },
      [&] { timed.sdpa_out = Sdpa(c.qt, c.kt, c.vt); },
      [&] {
        timed.dense = Must(BlockSparseAttention(engine, c.q, c.k, c.v, plan, masks.dense, false));
      },
  };
  for (size_t i = 0; i < masks.cfgs.size(); ++i) {
    fns.push_back([&, i] { (void)Must(PredictBlockMask(engine, c.q, c.k, plan, masks.cfgs[i])); });
    fns.push_back([&, i] {
      timed.sparse[i] =
          Must(BlockSparseAttention(engine, c.q, c.k, c.v, plan, masks.sparse[i], false));
    });
  }
  timed.times = TimeCudaInterleaved(bench.flags.reps, fns, bench.flags.burst_ms);
  return timed;
}

// Our dense output (fp32) and its log-sum-exp: what the sparse rows compare with.
struct DenseReference {
  at::Tensor out, lse;
};

// The torch_sdpa, rainserve_dense and rainserve_permute rows.
DenseReference AddDenseRows(Bench& bench, const Case& c, const Masks& masks, const Timed& timed) {
  const Timing &perm_t = timed.times[0], &sdpa_t = timed.times[1], &dense_t = timed.times[2];
  {
    auto r = c.Row("torch_sdpa");
    r["sparsity"] = 0.0;
    SetTimes(sdpa_t, &r);
    r["tflops"] = c.dense_flops / sdpa_t.median_ms * 1e-9;
    bench.rows.push_back(r);
  }
  DenseReference ref;
  ref.lse = Must(BlockSparseAttention(bench.engine, c.q, c.k, c.v, c.plan, masks.dense, true)).lse;
  ref.out = timed.dense.out.to(at::kFloat);
  {
    auto r = c.Row("rainserve_dense");
    r["sparsity"] = 0.0;
    r["realized_sparsity"] = 0.0;
    SetTimes(dense_t, &r);
    r["tflops"] = c.dense_flops / dense_t.median_ms * 1e-9;
    r["speedup_vs_sdpa"] = sdpa_t.median_ms / dense_t.median_ms;
    const at::Tensor s = timed.sdpa_out.transpose(1, 2).to(at::kFloat);
    r["rel_l2_vs_sdpa"] = ((ref.out - s).norm() / s.norm()).item<double>();
    bench.rows.push_back(r);
  }
  {
    auto r = c.Row("rainserve_permute");
    r["sparsity"] = 0.0;
    SetTimes(perm_t, &r);
    bench.rows.push_back(r);
  }
  return ref;
}

// Writes a mask's counts and indices for the FlexAttention comparison and
// lists it in masks.json.
void SaveMask(Bench& bench, const Case& c, const TorchBlockMask& mask, double sparsity,
              double density) {
  const std::string stem =
      bench.flags.mask_dir + "/" + c.wl.id + "_" + std::to_string(int(sparsity * 10));
  const at::Tensor counts = mask.counts.cpu(), ix = mask.indices.cpu();
  std::ofstream(stem + "_counts.bin", std::ios::binary)
      .write(static_cast<const char*>(counts.data_ptr()), counts.nbytes());
  std::ofstream(stem + "_indices.bin", std::ios::binary)
      .write(static_cast<const char*>(ix.data_ptr()), ix.nbytes());
  bench.masks.push_back({{"workload", c.wl.id}, {"sparsity", sparsity}, {"stem", stem},
                         {"heads", c.H}, {"tokens", c.N}, {"head_dim", c.D}, {"blocks", c.nb},
                         {"realized_sparsity", 1.0 - density}});
}

// The rainserve_sparse and rainserve_mask rows of sparsity i; with
// --mask-dir, the 0.8 and 0.9 masks of random inputs are saved.
void AddSparseRows(Bench& bench, const Case& c, const Masks& masks, const Timed& timed, size_t i,
                   const DenseReference& ref) {
  const Timing &perm_t = timed.times[0], &sdpa_t = timed.times[1], &dense_t = timed.times[2];
  const double sparsity = masks.cfgs[i].sparsity;
  const TorchBlockMask& mask = masks.sparse[i];
  const Timing &mask_t = timed.times[3 + 2 * i], &sparse_t = timed.times[4 + 2 * i];
  const at::Tensor sparse_lse =
      Must(BlockSparseAttention(bench.engine, c.q, c.k, c.v, c.plan, mask, true)).lse;
  const double density = double(KeptBlocks(mask)) / double(c.nb * c.nb * c.H);
  const at::Tensor so = timed.sparse[i].out.to(at::kFloat);
  auto r = c.Row("rainserve_sparse");
  r["sparsity"] = sparsity;
  r["realized_sparsity"] = 1.0 - density;
  SetTimes(sparse_t, &r);
  r["tflops"] = c.dense_flops * density / sparse_t.median_ms * 1e-9;
  r["speedup_vs_sdpa"] = sdpa_t.median_ms / sparse_t.median_ms;
  r["speedup_vs_dense"] = dense_t.median_ms / sparse_t.median_ms;
  r["mask_share"] = mask_t.median_ms / sparse_t.median_ms;
  r["permute_share"] = perm_t.median_ms / sparse_t.median_ms;
  r["cosine_vs_dense"] = (at::sum(so * ref.out) / (so.norm() * ref.out.norm())).item<double>();
  r["rel_l2_vs_dense"] = ((so - ref.out).norm() / ref.out.norm()).item<double>();
  r["attention_mass_kept"] = at::exp(sparse_lse - ref.lse).mean().item<double>();
  bench.rows.push_back(r);
  auto m = c.Row("rainserve_mask");
  m["sparsity"] = sparsity;
  m["realized_sparsity"] = 1.0 - density;
  SetTimes(mask_t, &m);
  bench.rows.push_back(m);
  if (!bench.flags.mask_dir.empty() && c.kind == "random" && sparsity >= 0.8) {
    SaveMask(bench, c, mask, sparsity, density);
  }
}

// Prints the rows of one workload and input kind, one line each.
void PrintRows(const nlohmann::json& rows, const Workload& wl, const std::string& kind) {
  for (const auto& r : rows) {
    if (r["workload"] != wl.id || r["inputs"] != kind) continue;
    std::printf("  %-3s %-10s %-17s s=%-4s real=%-5.3f %8.3f ms %6.1f TF/s %s\n",
                wl.id, kind.c_str(), r["impl"].get<std::string>().c_str(),
                r["sparsity"].dump().c_str(), r.value("realized_sparsity", 0.0),
                r["ms"].get<double>(), r.value("tflops", 0.0),
                r.contains("speedup_vs_sdpa")
                    ? ("x" + std::to_string(r["speedup_vs_sdpa"].get<double>()) + " sdpa" +
                       (r.contains("cosine_vs_dense")
                            ? " cos=" + std::to_string(r["cosine_vs_dense"].get<double>()) +
                                  " mass=" + std::to_string(r["attention_mass_kept"].get<double>())
                            : ""))
                          .c_str()
                    : "");
  }
}

// Every implementation on one workload and input kind, its rows printed.
void RunCase(Bench& bench, const Workload& wl, const TokenLayout& layout, const AttentionPlan& plan,
             const std::string& kind) {
  Case c(wl, kind, layout, plan);
  MakeInputs(bench.engine, &c);
  const Masks masks = PredictMasks(bench.engine, c, {0.5, 0.8, 0.9});
  const Timed timed = TimeAll(bench, c, masks);
  const DenseReference ref = AddDenseRows(bench, c, masks, timed);
  for (size_t i = 0; i < masks.cfgs.size(); ++i) AddSparseRows(bench, c, masks, timed, i, ref);
  PrintRows(bench.rows, wl, kind);
}

void WriteResults(Bench& bench, const char* machine, const std::string& command) {
  const Flags& flags = bench.flags;
  nlohmann::json result;
  result["benchmark"] = "attention_gpu";
  result["date"] = rainserve::bench::Today();
  result["machine"] = machine;
  result["command"] = command;
  result["kernel"] = bench.engine.cuda() ? bench.engine.cuda()->Name() : "none";
  result["timing"] = flags.burst_ms > 0 ? "round-robin, back-to-back calls for ~" +
                                              std::to_string(static_cast<int>(flags.burst_ms)) +
                                              " ms per implementation and round"
                                        : "round-robin, one call per implementation and round";
  result["rows"] = bench.rows;
  if (!flags.out_path.empty()) std::ofstream(flags.out_path) << result.dump(2) << "\n";
  if (!flags.mask_dir.empty()) {
    std::ofstream(flags.mask_dir + "/masks.json") << bench.masks.dump(2) << "\n";
  }
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  if (!ParseFlags(argc, argv, &flags)) return 2;
  const std::string command =
      rainserve::bench::CommandLine("build-gpu/bench/attention_gpu_bench", argc, argv);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);

  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("%s, %d SMs\n", prop.name, prop.multiProcessorCount);
  AttentionEngine engine(8);
  Bench bench{flags, engine};

  for (const std::string& wid : rainserve::bench::Split(flags.workloads)) {
    const Workload* wl = rainserve::bench::FindById(rainserve::bench::kAttentionWorkloads, wid);
    if (!wl) { std::fprintf(stderr, "unknown workload %s\n", wid.c_str()); return 2; }
    const TokenLayout layout = LayoutOf(*wl);
    const AttentionPlan plan = Must(AttentionPlan::Build(layout, DefaultWindow(layout), 128));
    for (const std::string& kind : rainserve::bench::Split(flags.inputs)) {
      RunCase(bench, *wl, layout, plan, kind);
    }
  }
  WriteResults(bench, prop.name, command);
  return 0;
}
