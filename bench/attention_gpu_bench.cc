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
#include "bench/bench_util.h"
#include "bench/cuda_timing.h"

namespace {

using namespace rainserve::attention;
using rainserve::bench::TimeCudaInterleaved;
using rainserve::bench::Timing;

struct Workload {
  const char* id;
  int64_t t, h, w, heads, head_dim;
};
const Workload kWorkloads[] = {{"W1", 21, 30, 52, 12, 128},
                               {"W2", 21, 45, 80, 40, 128},
                               {"W3", 1, 64, 64, 12, 128}};

at::Tensor Sdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
#if TORCH_VERSION_MAJOR >= 2
  return at::scaled_dot_product_attention(q, k, v);
#else
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  return at::matmul(at::softmax(at::matmul(q, k.transpose(-1, -2)) * scale, -1), v);
#endif
}

// Structured q, k (see attention/testing/inputs.h), computed with tensor ops
// on the GPU: smooth random field (64 Gaussian-frequency modes, correlation
// 1.5 frames / 3 tokens) + noise, then Wan's 3D RoPE. [1, N, H, D] float.
std::pair<at::Tensor, at::Tensor> StructuredQk(const TokenLayout& l, int64_t H, int64_t D,
                                               uint64_t seed) {
  at::manual_seed(seed);
  const auto f = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
  const int64_t M = 64, N = l.video_tokens();
  const at::Tensor t = at::arange(l.frames, f).view({-1, 1, 1}).expand({l.frames, l.height, l.width});
  const at::Tensor y = at::arange(l.height, f).view({1, -1, 1}).expand({l.frames, l.height, l.width});
  const at::Tensor x = at::arange(l.width, f).view({1, 1, -1}).expand({l.frames, l.height, l.width});
  const at::Tensor pos = at::stack({t.reshape(-1), y.reshape(-1), x.reshape(-1)}, 1);  // [N, 3]
  const at::Tensor lengths = at::tensor({1.5f, 3.0f, 3.0f}).to(at::kCUDA);
  const at::Tensor w = at::randn({H, 3, M}, f) / lengths.view({1, 3, 1});
  const at::Tensor phi = at::rand({H, 1, M}, f) * (2 * M_PI);
  const at::Tensor amp = at::randn({H, M, D}, f) * std::sqrt(2.0 / M);
  const at::Tensor u = at::bmm(at::cos(at::matmul(pos, w) + phi), amp);  // [H, N, D]
  at::Tensor q = (u + 0.3 * at::randn_like(u)).permute({1, 0, 2}).contiguous();
  at::Tensor k = (u + 0.3 * at::randn_like(u)).permute({1, 0, 2}).contiguous();
  // RoPE: t gets D - 4 (D / 6) dims, h and w 2 (D / 6) each.
  const int64_t dh = 2 * (D / 6), dt = D - 2 * dh;
  std::vector<at::Tensor> angles;
  const int64_t dims[3] = {dt, dh, dh};
  for (int a = 0; a < 3; ++a) {
    const at::Tensor i = at::arange(0, dims[a], 2, f);
    const at::Tensor theta = at::pow(10000.0, -i / static_cast<double>(dims[a]));
    angles.push_back(pos.select(1, a).unsqueeze(1) * theta.unsqueeze(0));  // [N, dims/2]
  }
  const at::Tensor ang = at::cat(angles, 1).unsqueeze(1);  // [N, 1, D/2]
  auto rope = [&](const at::Tensor& v) {
    const at::Tensor even = v.slice(2, 0, D, 2), odd = v.slice(2, 1, D, 2);
    const at::Tensor c = at::cos(ang), s = at::sin(ang);
    return at::stack({even * c - odd * s, even * s + odd * c}, 3).reshape({N, H, D});
  };
  return {rope(q).unsqueeze(0), rope(k).unsqueeze(0)};
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) out.push_back(item);
  return out;
}

template <typename T>
T Must(rainserve::StatusOr<T> v) {
  if (!v.ok()) {
    std::fprintf(stderr, "error: %s\n", v.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(v).value();
}

}  // namespace

int main(int argc, char** argv) {
  std::string workloads = "W1,W2,W3", out_path, mask_dir, inputs = "random,structured";
  int reps = 20;
  double burst_ms = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--workloads") workloads = value;
    else if (flag == "--reps") reps = std::stoi(value);
    else if (flag == "--out") out_path = value;
    else if (flag == "--mask-dir") mask_dir = value;
    else if (flag == "--inputs") inputs = value;
    else if (flag == "--burst-ms") burst_ms = std::stod(value);
    else { std::fprintf(stderr, "unknown flag %s\n", flag.c_str()); return 2; }
  }
  const std::string command = rainserve::bench::CommandLine("build-gpu/bench/attention_gpu_bench", argc, argv);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);

  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("%s, %d SMs\n", prop.name, prop.multiProcessorCount);
  AttentionEngine engine(8);
  nlohmann::json rows = nlohmann::json::array();
  nlohmann::json masks = nlohmann::json::array();

  for (const std::string& wid : Split(workloads)) {
    const Workload* wl = nullptr;
    for (const auto& w : kWorkloads) if (wid == w.id) wl = &w;
    if (!wl) { std::fprintf(stderr, "unknown workload %s\n", wid.c_str()); return 2; }
    const TokenLayout layout = [&] {
      TokenLayout l;
      l.frames = wl->t;
      l.height = wl->h;
      l.width = wl->w;
      l.sink_frames = wl->t > 1 ? 1 : 0;
      return l;
    }();
    const AttentionPlan plan = Must(AttentionPlan::Build(layout, DefaultWindow(layout), 128));
    const int64_t N = plan.tokens(), H = wl->heads, D = wl->head_dim, nb = plan.num_blocks();
    const double dense_flops = 4.0 * double(N) * double(N) * double(D) * double(H);
    for (const std::string& kind : Split(inputs)) {
      at::manual_seed(7);
      const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
      at::Tensor q0, k0;
      if (kind == "random") {
        q0 = at::randn({1, N, H, D}, bf16);
        k0 = at::randn({1, N, H, D}, bf16);
      } else {
        auto qk = StructuredQk(layout, H, D, 11);
        q0 = qk.first.to(at::kBFloat16);
        k0 = qk.second.to(at::kBFloat16);
      }
      const at::Tensor v0 = at::randn({1, N, H, D}, bf16);
      auto base = [&](const char* impl) {
        nlohmann::json r;
        r["workload"] = wl->id;
        r["inputs"] = kind;
        r["sink_frames"] = layout.sink_frames;
        r["impl"] = impl;
        r["tokens"] = N;
        r["blocks"] = nb;
        r["dtype"] = "bf16";
        return r;
      };
      auto timing = [&](nlohmann::json& r, const Timing& t) {
        r["ms"] = t.median_ms;
        r["ms_min"] = t.min_ms;
        r["ms_max"] = t.max_ms;
      };

      const at::Tensor q = Must(PermuteTokens(engine, q0, plan)),
                       k = Must(PermuteTokens(engine, k0, plan)),
                       v = Must(PermuteTokens(engine, v0, plan));
      const at::Tensor qt = q.transpose(1, 2).contiguous(), kt = k.transpose(1, 2).contiguous(),
                       vt = v.transpose(1, 2).contiguous();
      const std::vector<double> sparsities = {0.5, 0.8, 0.9};
      const TorchBlockMask dense_mask =
          Must(PredictBlockMask(engine, q, k, plan, AttentionConfig{}));
      std::vector<AttentionConfig> cfgs;
      std::vector<TorchBlockMask> sparse_masks;
      for (double sparsity : sparsities) {
        AttentionConfig cfg;
        cfg.sparsity = sparsity;
        cfgs.push_back(cfg);
        sparse_masks.push_back(Must(PredictBlockMask(engine, q, k, plan, cfg)));
      }

      // Every implementation timed round-robin (TimeCudaInterleaved): the
      // permutation of q, k, v in and the output out, SDPA, our dense, and
      // per sparsity the mask prediction and the sparse kernel.
      at::Tensor sdpa_out;
      AttentionResult dense;
      std::vector<AttentionResult> sparse(sparsities.size());
      std::vector<std::function<void()>> fns = {
          [&] {
            (void)Must(PermuteTokens(engine, q0, plan));
            (void)Must(PermuteTokens(engine, k0, plan));
            (void)Must(PermuteTokens(engine, v0, plan));
            (void)Must(UnpermuteTokens(engine, q, plan));
          },
          [&] { sdpa_out = Sdpa(qt, kt, vt); },
          [&] { dense = Must(BlockSparseAttention(engine, q, k, v, plan, dense_mask, false)); },
      };
      for (size_t i = 0; i < sparsities.size(); ++i) {
        fns.push_back([&, i] { (void)Must(PredictBlockMask(engine, q, k, plan, cfgs[i])); });
        fns.push_back([&, i] {
          sparse[i] = Must(BlockSparseAttention(engine, q, k, v, plan, sparse_masks[i], false));
        });
      }
      const std::vector<Timing> times = TimeCudaInterleaved(reps, fns, burst_ms);
      const Timing &perm_t = times[0], &sdpa_t = times[1], &dense_t = times[2];

      {
        auto r = base("torch_sdpa");
        r["sparsity"] = 0.0;
        timing(r, sdpa_t);
        r["tflops"] = dense_flops / sdpa_t.median_ms * 1e-9;
        rows.push_back(r);
      }
      const at::Tensor dense_lse = Must(BlockSparseAttention(engine, q, k, v, plan, dense_mask, true)).lse;
      const at::Tensor dense_out = dense.out.to(at::kFloat);
      {
        auto r = base("rainserve_dense");
        r["sparsity"] = 0.0;
        r["realized_sparsity"] = 0.0;
        timing(r, dense_t);
        r["tflops"] = dense_flops / dense_t.median_ms * 1e-9;
        r["speedup_vs_sdpa"] = sdpa_t.median_ms / dense_t.median_ms;
        const at::Tensor s = sdpa_out.transpose(1, 2).to(at::kFloat);
        r["rel_l2_vs_sdpa"] = ((dense_out - s).norm() / s.norm()).item<double>();
        rows.push_back(r);
      }
      {
        auto r = base("rainserve_permute");
        r["sparsity"] = 0.0;
        timing(r, perm_t);
        rows.push_back(r);
      }

      for (size_t i = 0; i < sparsities.size(); ++i) {
        const double sparsity = sparsities[i];
        const TorchBlockMask& mask = sparse_masks[i];
        const Timing &mask_t = times[3 + 2 * i], &sparse_t = times[4 + 2 * i];
        const at::Tensor sparse_lse = Must(BlockSparseAttention(engine, q, k, v, plan, mask, true)).lse;
        const double density = double(KeptBlocks(mask)) / double(nb * nb * H);
        const at::Tensor so = sparse[i].out.to(at::kFloat);
        auto r = base("rainserve_sparse");
        r["sparsity"] = sparsity;
        r["realized_sparsity"] = 1.0 - density;
        timing(r, sparse_t);
        r["tflops"] = dense_flops * density / sparse_t.median_ms * 1e-9;
        r["speedup_vs_sdpa"] = sdpa_t.median_ms / sparse_t.median_ms;
        r["speedup_vs_dense"] = dense_t.median_ms / sparse_t.median_ms;
        r["mask_share"] = mask_t.median_ms / sparse_t.median_ms;
        r["permute_share"] = perm_t.median_ms / sparse_t.median_ms;
        r["cosine_vs_dense"] =
            (at::sum(so * dense_out) / (so.norm() * dense_out.norm())).item<double>();
        r["rel_l2_vs_dense"] = ((so - dense_out).norm() / dense_out.norm()).item<double>();
        r["attention_mass_kept"] = at::exp(sparse_lse - dense_lse).mean().item<double>();
        rows.push_back(r);
        auto m = base("rainserve_mask");
        m["sparsity"] = sparsity;
        m["realized_sparsity"] = 1.0 - density;
        timing(m, mask_t);
        rows.push_back(m);
        if (!mask_dir.empty() && kind == "random" && sparsity >= 0.8) {
          const std::string stem = mask_dir + "/" + wl->id + "_" + std::to_string(int(sparsity * 10));
          const at::Tensor c = mask.counts.cpu(), ix = mask.indices.cpu();
          std::ofstream(stem + "_counts.bin", std::ios::binary)
              .write(static_cast<const char*>(c.data_ptr()), c.nbytes());
          std::ofstream(stem + "_indices.bin", std::ios::binary)
              .write(static_cast<const char*>(ix.data_ptr()), ix.nbytes());
          masks.push_back({{"workload", wl->id}, {"sparsity", sparsity}, {"stem", stem},
                           {"heads", H}, {"tokens", N}, {"head_dim", D}, {"blocks", nb},
                           {"realized_sparsity", 1.0 - density}});
        }
      }
      for (const auto& r : rows) {
        if (r["workload"] != wl->id || r["inputs"] != kind) continue;
        std::printf("  %-3s %-10s %-17s s=%-4s real=%-5.3f %8.3f ms %6.1f TF/s %s\n",
                    wl->id, kind.c_str(), r["impl"].get<std::string>().c_str(),
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
  }
  nlohmann::json result;
  result["benchmark"] = "attention_gpu";
  result["date"] = rainserve::bench::Today();
  result["machine"] = prop.name;
  result["command"] = command;
  result["kernel"] = engine.cuda() ? engine.cuda()->Name() : "none";
  result["timing"] = burst_ms > 0 ? "round-robin, back-to-back calls for ~" +
                                        std::to_string(static_cast<int>(burst_ms)) +
                                        " ms per implementation and round"
                                  : "round-robin, one call per implementation and round";
  result["rows"] = rows;
  if (!out_path.empty()) std::ofstream(out_path) << result.dump(2) << "\n";
  if (!mask_dir.empty()) std::ofstream(mask_dir + "/masks.json") << masks.dump(2) << "\n";
  return 0;
}
