// wan_ops_gpu_bench: the element-wise ops of a Wan block (pipelines/wan/wan_ops.h)
// as fused CUDA kernels and as the separate ATen ops they replace, bf16 on the
// GPU, classifier-free guidance batch 2, at the W1 shape of Wan2.1-1.3B
// (32,760 tokens, 12 heads x 128) and the W2 shape of Wan2.1-14B (75,600
// tokens, 40 heads x 128).
//
//   build-gpu/bench/wan_ops_gpu_bench [--reps 30] [--out bench/results/wan_ops_gpu.json]
//
// Per op: median microseconds per call with the fastest and slowest (CUDA
// events, after 3 warm-ups; ATen and fused timed round-robin), the bandwidth
// of the bytes the fused kernel has to move (16-bit activations in and out: 4
// bytes per element, 6 for the residual, 8 for a residual fused with the norm
// after it), and the per-block total with each op counted as often as a block
// calls it (the ATen baseline runs the same ops unfused).
#include <ATen/ATen.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "bench/cuda_timing.h"
#include "pipelines/wan/wan_ops.h"

namespace {

using rainserve::ElementwiseImpl;
using rainserve::StatusOr;
namespace wan_ops = rainserve::wan_ops;

struct Shape {
  const char* name;
  int64_t batch, tokens, heads, head_dim;
};

struct Op {
  const char* name;
  int per_block;          // calls per transformer block
  double bytes_per_elem;  // what the fused kernel reads and writes
  std::function<StatusOr<at::Tensor>(ElementwiseImpl)> run;
};

// The ATen and the fused version of an op, `reps` calls each timed with CUDA
// events, round-robin: {ATen, fused}.
std::vector<rainserve::bench::Timing> TimeOp(const Op& op, int reps) {
  auto call = [&op](ElementwiseImpl impl) {
    return [&op, impl] {
      auto r = op.run(impl);
      if (!r.ok()) {
        std::fprintf(stderr, "%s: %s\n", op.name, r.status().ToString().c_str());
        std::exit(1);
      }
    };
  };
  return rainserve::bench::TimeCudaInterleaved(
      reps, {call(ElementwiseImpl::kAten), call(ElementwiseImpl::kFused)});
}

constexpr double kEps = 1e-6;  // of every norm

// The inputs of the ops at one shape.
struct OpInputs {
  at::Tensor x, y;              // [B, N, C] bf16
  std::vector<at::Tensor> mod;  // six [B, 1, C] fp32 views of the modulation table
  at::Tensor norm_w, norm_b;    // [C] fp32
  at::Tensor qk_w;              // [C] bf16
  at::Tensor cos, sin;          // [N, D / 2] fp32 RoPE tables
};

OpInputs MakeInputs(const Shape& s) {
  const int64_t B = s.batch, N = s.tokens, C = s.heads * s.head_dim, D = s.head_dim;
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  const auto f32 = bf16.dtype(at::kFloat);
  at::manual_seed(1);
  OpInputs in;
  in.x = at::randn({B, N, C}, bf16);
  in.y = at::randn({B, N, C}, bf16);
  in.mod = (at::randn({B, 6, C}, f32) * 0.5).chunk(6, 1);
  in.norm_w = at::ones({C}, f32);
  in.norm_b = at::zeros({C}, f32);
  in.qk_w = at::ones({C}, bf16);
  const at::Tensor angles = at::rand({N, D / 2}, f32);
  in.cos = at::cos(angles);
  in.sin = at::sin(angles);
  return in;
}

// The sum of a residual-fused norm, ignoring its norm output.
StatusOr<at::Tensor> NormOf(StatusOr<wan_ops::ResidualNorm> r) {
  if (!r.ok()) return r.status();
  return r->norm;
}

// The ops over `in` (which must outlive them), with how often a block calls
// each. Per block: norm1 comes fused with the previous block's FFN residual
// (plain layer_norm_modulate runs once per forward, for block 0), norm2 with
// the self-attention residual, norm3 with the plain cross-attention residual,
// and the last block's FFN residual with norm_out. The plain affine norm and
// the lone gated residual serve models without cross_attn_norm only.
std::vector<Op> BlockOps(const OpInputs& in, int64_t heads) {
  return {
      {"layer_norm_modulate", 0, 4.0,
       [&in](ElementwiseImpl i) {
         return wan_ops::ModulatedLayerNorm(in.x, in.mod[1], in.mod[0], kEps, i);
       }},
      {"layer_norm_affine", 0, 4.0,
       [&in](ElementwiseImpl i) {
         return wan_ops::AffineLayerNorm(in.x, in.norm_w, in.norm_b, kEps, i);
       }},
      {"residual_layer_norm_modulate", 2, 8.0,
       [&in](ElementwiseImpl i) {
         return NormOf(wan_ops::GatedResidualModulatedLayerNorm(in.x, in.y, in.mod[5], in.mod[1],
                                                                in.mod[0], kEps, i));
       }},
      {"residual_layer_norm_affine", 1, 8.0,
       [&in](ElementwiseImpl i) {
         return NormOf(wan_ops::GatedResidualAffineLayerNorm(in.x, in.y, in.mod[2], in.norm_w,
                                                             in.norm_b, kEps, i));
       }},
      {"rms_norm_rope", 2, 4.0,
       [&in, heads](ElementwiseImpl i) {
         return wan_ops::RmsNormRope(in.x, in.qk_w, kEps, heads, in.cos, in.sin, i);
       }},
      {"rms_norm", 1, 4.0,
       [&in, heads](ElementwiseImpl i) {
         return wan_ops::RmsNormRope(in.x, in.qk_w, kEps, heads, {}, {}, i);
       }},
      {"gated_residual", 0, 6.0,
       [&in](ElementwiseImpl i) { return wan_ops::GatedResidual(in.x, in.y, in.mod[2], i); }},
  };
}

// Every op at one shape: a row each and the per-block total; false (after
// printing why) if the fused kernels do not apply here.
bool RunShape(const Shape& s, int reps, nlohmann::json* rows) {
  const int64_t B = s.batch, N = s.tokens, C = s.heads * s.head_dim;
  const OpInputs in = MakeInputs(s);
  if (!wan_ops::FusedKernelsApply(in.x)) {
    std::fprintf(stderr, "the fused kernels do not apply here (no CUDA LibTorch?)\n");
    return false;
  }
  const std::vector<Op> ops = BlockOps(in, s.heads);
  double block_fused = 0, block_aten = 0;
  for (const Op& op : ops) {
    const std::vector<rainserve::bench::Timing> t = TimeOp(op, reps);
    const rainserve::bench::Timing &aten_t = t[0], &fused_t = t[1];
    const double aten = aten_t.median_ms * 1e3, fused = fused_t.median_ms * 1e3;
    const double gbps = op.bytes_per_elem * double(B * N * C) / (fused * 1e3);
    block_fused += op.per_block * fused;
    block_aten += op.per_block * aten;
    std::printf("  %s %-28s aten %8.1f us  fused %7.1f us  x%.1f  %6.0f GB/s\n", s.name, op.name,
                aten, fused, aten / fused, gbps);
    rows->push_back({{"shape", s.name},
                     {"op", op.name},
                     {"tokens", N},
                     {"channels", C},
                     {"us_aten", aten},
                     {"us_fused", fused},
                     {"us_aten_min", aten_t.min_ms * 1e3},
                     {"us_aten_max", aten_t.max_ms * 1e3},
                     {"us_fused_min", fused_t.min_ms * 1e3},
                     {"us_fused_max", fused_t.max_ms * 1e3},
                     {"speedup", aten / fused},
                     {"fused_gb_per_s", gbps},
                     {"calls_per_block", op.per_block}});
  }
  std::printf("  %s per block: aten %.2f ms, fused %.2f ms (x%.1f)\n", s.name, block_aten / 1e3,
              block_fused / 1e3, block_aten / block_fused);
  rows->push_back({{"shape", s.name},
                   {"op", "per_block"},
                   {"us_aten", block_aten},
                   {"us_fused", block_fused},
                   {"speedup", block_aten / block_fused}});
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 30;
  std::string out_path;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--reps") reps = std::stoi(value);
    else if (flag == "--out") out_path = value;
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("%s\n", prop.name);
  nlohmann::json rows = nlohmann::json::array();
  for (const Shape& s : {Shape{"W1", 2, 32760, 12, 128}, Shape{"W2", 2, 75600, 40, 128}}) {
    if (!RunShape(s, reps, &rows)) return 1;
  }
  if (!out_path.empty()) {
    nlohmann::json result = {{"benchmark", "wan_ops_gpu"},
                             {"date", rainserve::bench::Today()},
                             {"machine", prop.name},
                             {"command", rainserve::bench::CommandLine(
                                             "build-gpu/bench/wan_ops_gpu_bench", argc, argv)},
                             {"rows", rows}};
    std::ofstream(out_path) << result.dump(2) << "\n";
  }
  return 0;
}
