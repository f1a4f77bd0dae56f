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
using Clock = std::chrono::steady_clock;

struct Workload {
  const char* id;
  int64_t t, h, w, heads, head_dim;
};
const Workload kWorkloads[] = {{"C1", 9, 16, 16, 4, 64}, {"C2", 13, 24, 40, 12, 64}};

struct Timing {
  double median_ms = 0, min_ms = 0, max_ms = 0;
};

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

}  // namespace

int main(int argc, char** argv) {
  using rainserve::bench::CpuModel;
  using rainserve::bench::Split;
  using rainserve::bench::Today;
  std::string workloads = "C1,C2", out_path, sinks = "1,0", inputs = "random,structured";
  int threads = 0, reps = 5;
  float gain = 1.0f;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--workloads") workloads = value;
    else if (flag == "--threads") threads = std::stoi(value);
    else if (flag == "--reps") reps = std::stoi(value);
    else if (flag == "--out") out_path = value;
    else if (flag == "--sinks") sinks = value;
    else if (flag == "--inputs") inputs = value;
    else if (flag == "--gain") gain = std::stof(value);
    else { std::fprintf(stderr, "unknown flag %s\n", flag.c_str()); return 2; }
  }
  const std::string command =
      rainserve::bench::CommandLine("build/bench/attention_cpu_bench", argc, argv);

  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  CpuBackend backend(threads);
  threads = backend.pool().num_threads();
  at::set_num_threads(threads);
  ThreadPool& pool = backend.pool();

  // Warm LibTorch up (thread pool, allocator) before anything is timed.
  {
    const at::Tensor a = at::randn({512, 512});
    for (int i = 0; i < 3; ++i) (void)at::softmax(at::mm(a, a), -1);
  }
  // Machine peak: every thread runs the FMA probe at once.
  std::vector<double> per_thread(static_cast<size_t>(threads));
  pool.ParallelFor(threads, [&](int64_t i, int) {
    per_thread[static_cast<size_t>(i)] = backend.kernels().fma_peak_gflops(0.5);
  });
  double peak = 0;
  for (double g : per_thread) peak += g;
  std::printf("%s, %d threads, kernels %s, measured fp32 FMA peak %.1f GFLOP/s\n",
              CpuModel().c_str(), threads, backend.Name(), peak);

  nlohmann::json rows = nlohmann::json::array();
  auto add_row = [&](nlohmann::json row) {
    std::printf("  %-4s %-10s sink=%s %-18s sparsity=%-4s realized=%-6.3f %9.2f ms  %7.1f GFLOP/s  %s\n",
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
  };

  for (const std::string& wid : Split(workloads)) {
    const Workload* wl = nullptr;
    for (const auto& w : kWorkloads) if (wid == w.id) wl = &w;
    if (!wl) { std::fprintf(stderr, "unknown workload %s\n", wid.c_str()); return 2; }
    for (const std::string& input_kind : Split(inputs)) {
      for (const std::string& sink_text : Split(sinks)) {
        TokenLayout layout;
        layout.frames = wl->t;
        layout.height = wl->h;
        layout.width = wl->w;
        layout.sink_frames = std::stoi(sink_text);
        const int64_t B = 1, N = layout.total_tokens(), H = wl->heads, D = wl->head_dim;
        auto plan = AttentionPlan::Build(layout, DefaultWindow(layout), 128);
        if (!plan.ok()) { std::fprintf(stderr, "%s\n", plan.status().ToString().c_str()); return 1; }
        const int64_t nb = plan->num_blocks();
        testing::Qkv x = input_kind == "random" ? testing::RandomQkv(B, N, H, D, 42)
                                                : testing::StructuredQkv(layout, B, H, D, 42, gain);
        const double dense_flops = 4.0 * double(N) * double(N) * double(D) * double(H) * double(B);
        auto base = [&](const char* impl) {
          nlohmann::json r;
          r["workload"] = wl->id;
          r["inputs"] = input_kind;
          r["sink_frames"] = layout.sink_frames;
          r["impl"] = impl;
          r["threads"] = threads;
          r["tokens"] = N;
          r["blocks"] = nb;
          return r;
        };

        // Permutation: q, k, v into plan order and the output back.
        std::vector<float> q(x.q.size()), k(x.k.size()), v(x.v.size()), o(x.q.size()), back(x.q.size());
        const int64_t row_bytes = H * D * static_cast<int64_t>(sizeof(float));
        const Timing perm_t = Time(reps, [&] {
          ApplyPermutation(plan->permutation, x.q.data(), q.data(), B, row_bytes, &pool);
          ApplyPermutation(plan->permutation, x.k.data(), k.data(), B, row_bytes, &pool);
          ApplyPermutation(plan->permutation, x.v.data(), v.data(), B, row_bytes, &pool);
          InvertPermutation(plan->permutation, q.data(), back.data(), B, row_bytes, &pool);
        });

        ForwardArgs args;
        args.q = TensorView::Contiguous(q.data(), DType::kFloat32, B, N, H, D);
        args.k = TensorView::Contiguous(k.data(), DType::kFloat32, B, N, H, D);
        args.v = TensorView::Contiguous(v.data(), DType::kFloat32, B, N, H, D);
        args.out = TensorView::Contiguous(o.data(), DType::kFloat32, B, N, H, D);
        args.blocks = plan->blocks.view();
        args.scale = 1.0f / std::sqrt(static_cast<float>(D));

        // LibTorch baseline on [B, H, N, D] copies, one head at a time (a
        // [H, N, N] score tensor would not fit: 7.5 GB at C2).
        const at::Tensor tq = at::from_blob(x.q.data(), {B, N, H, D}).transpose(1, 2).contiguous();
        const at::Tensor tk = at::from_blob(x.k.data(), {B, N, H, D}).transpose(1, 2).contiguous();
        const at::Tensor tv = at::from_blob(x.v.data(), {B, N, H, D}).transpose(1, 2).contiguous();
        at::Tensor tout = at::empty_like(tq);
        // Score and probability buffers reused across heads and runs, so the
        // baseline pays for arithmetic and memory traffic, not page faults.
        at::Tensor scores = at::empty({N, N}), probs = at::empty({N, N});
        const at::Tensor qs = tq * args.scale;
        const Timing naive_t = Time(std::max(1, reps / 2), [&] {
          for (int64_t b = 0; b < B; ++b) {
            for (int64_t h = 0; h < H; ++h) {
              at::mm_out(scores, qs[b][h], tk[b][h].transpose(0, 1));
              at::softmax_out(probs, scores, -1);
              at::Tensor dst = tout[b][h];
              at::mm_out(dst, probs, tv[b][h]);
            }
          }
        });
        {
          auto r = base("torch_naive");
          r["sparsity"] = 0.0;
          r["ms"] = naive_t.median_ms;
          r["ms_min"] = naive_t.min_ms;
          r["ms_max"] = naive_t.max_ms;
          r["gflops"] = dense_flops / naive_t.median_ms * 1e-6;
          add_row(r);
        }

        const BlockMask dense_mask = DenseBlockMask(B, H, nb);
        args.mask = dense_mask.view();
        const Timing dense_t = Time(reps, [&] { (void)backend.Forward(args); });
        const std::vector<float> dense_out = o;
        std::vector<float> dense_lse(static_cast<size_t>(B * H * N)), sparse_lse(dense_lse.size());
        args.lse = dense_lse.data();
        (void)backend.Forward(args);
        args.lse = nullptr;
        {
          auto r = base("rainserve_dense");
          r["sparsity"] = 0.0;
          r["realized_sparsity"] = 0.0;
          r["ms"] = dense_t.median_ms;
          r["ms_min"] = dense_t.min_ms;
          r["ms_max"] = dense_t.max_ms;
          r["gflops"] = dense_flops / dense_t.median_ms * 1e-6;
          r["fraction_of_peak"] = dense_flops / dense_t.median_ms * 1e-6 / peak;
          r["speedup_vs_torch_naive"] = naive_t.median_ms / dense_t.median_ms;
          // Our dense kernel vs LibTorch's result (unpermute ours first).
          std::vector<float> ours(o.size());
          InvertPermutation(plan->permutation, o.data(), ours.data(), B, row_bytes, &pool);
          const at::Tensor theirs = tout.transpose(1, 2).contiguous();
          r["rel_l2_vs_torch"] = testing::RelativeL2(ours.data(), theirs.data_ptr<float>(), o.size());
          add_row(r);
        }
        {
          auto r = base("rainserve_permute");
          r["sparsity"] = 0.0;
          r["ms"] = perm_t.median_ms;
          r["ms_min"] = perm_t.min_ms;
          r["ms_max"] = perm_t.max_ms;
          r["share_of_dense"] = perm_t.median_ms / dense_t.median_ms;
          add_row(r);
        }

        for (double sparsity : {0.5, 0.8, 0.9}) {
          BlockMask mask;
          mask.Resize(B, H, nb, nb);
          int64_t kept = 0;
          MaskArgs margs{args.q, args.k, args.blocks, args.scale, sparsity,
                         mask.counts.data(), mask.indices.data(), &kept};
          const Timing mask_t = Time(reps, [&] { (void)backend.PredictMask(margs); });
          args.mask = mask.view();
          const Timing sparse_t = Time(reps, [&] { (void)backend.Forward(args); });
          const double density = double(kept) / double(mask.total());
          auto r = base("rainserve_sparse");
          r["sparsity"] = sparsity;
          r["realized_sparsity"] = 1.0 - density;
          r["ms"] = sparse_t.median_ms;
          r["ms_min"] = sparse_t.min_ms;
          r["ms_max"] = sparse_t.max_ms;
          r["gflops"] = dense_flops * density / sparse_t.median_ms * 1e-6;
          r["speedup_vs_dense"] = dense_t.median_ms / sparse_t.median_ms;
          r["speedup_vs_torch_naive"] = naive_t.median_ms / sparse_t.median_ms;
          r["mask_plus_permute_share"] = (mask_t.median_ms + perm_t.median_ms) / sparse_t.median_ms;
          r["cosine_vs_dense"] = testing::Cosine(o.data(), dense_out.data(), o.size());
          r["rel_l2_vs_dense"] = testing::RelativeL2(o.data(), dense_out.data(), o.size());
          // Share of each query's softmax mass inside its kept blocks:
          // exp(lse_sparse - lse_dense), averaged over queries.
          args.lse = sparse_lse.data();
          (void)backend.Forward(args);
          args.lse = nullptr;
          double mass = 0;
          for (size_t i = 0; i < dense_lse.size(); ++i) mass += std::exp(sparse_lse[i] - dense_lse[i]);
          r["attention_mass_kept"] = mass / double(dense_lse.size());
          add_row(r);
          auto m = base("rainserve_mask");
          m["sparsity"] = sparsity;
          m["realized_sparsity"] = 1.0 - density;
          m["ms"] = mask_t.median_ms;
          m["ms_min"] = mask_t.min_ms;
          m["ms_max"] = mask_t.max_ms;
          m["share_of_sparse"] = mask_t.median_ms / sparse_t.median_ms;
          add_row(m);
        }
      }
    }
  }

  nlohmann::json result;
  result["benchmark"] = "attention_cpu";
  result["date"] = Today();
  result["machine"] = CpuModel() + ", " + std::to_string(ThreadPool::HardwareThreads()) + " cores";
  result["command"] = command;
  result["threads"] = threads;
  result["kernels"] = backend.Name();
  result["fp32_fma_peak_gflops"] = peak;
  result["peak_method"] =
      "all threads run 12 independent chains of vector FMAs of the selected ISA for 0.5 s; "
      "GFLOP/s = FMAs * lanes * 2 / time, summed over threads";
  result["structured_gain"] = gain;
  result["rows"] = rows;
  if (!out_path.empty()) {
    std::ofstream(out_path) << result.dump(2) << "\n";
    std::printf("wrote %s\n", out_path.c_str());
  }
  return 0;
}
