// The quality probe: how far one block-sparse self-attention call is from
// exact dense attention, measured on a small deterministic sample of rows.
//
// ForwardAttention (attention/forward.h) decides what is probed: a sparse
// forward (denoising step) is probed with probability quality_probe_rate
// (ProbeStep, seeded by the request seed and the step, so reruns probe the
// same steps); in a probed forward, up to kProbeLayersPerStep self-attention
// layers (ProbeLayers); in a probed layer, per batch entry and head,
// kProbeBlocksPerHead query blocks with kProbeRowsPerBlock rows each
// (SampleProbeRows). For those rows ProbeAttention computes
//   dense = softmax(q k^T / sqrt(D)) v   over ALL keys, in fp32
// and compares it with the sparse kernel's rows:
//   rel_l2    = ||sparse - dense|| / ||dense||     (all sampled rows together)
//   cosine    = <sparse, dense> / (||sparse|| ||dense||)
//   kept_mass = mean over rows of the dense softmax probability held by the
//               key blocks the mask kept (forced sink/text blocks included)
// Cost per probed layer: B * H * R rows against all N keys (R = 64 rows per
// head): two [R, N] x [N, D] matmuls per head and the fp32 copies of k and v
// of one batch entry. ATen ops only, so it runs wherever the tensors are.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "attention/config.h"
#include "attention/torch_adapter.h"
#include "common/status.h"

namespace rainserve::attention {

inline constexpr int64_t kProbeLayersPerStep = 2;
inline constexpr int64_t kProbeBlocksPerHead = 4;
inline constexpr int64_t kProbeRowsPerBlock = 16;

// One probed self-attention call.
struct ProbeRecord {
  int64_t layer = 0;  // 0-based self-attention layer of the forward
  int64_t rows = 0;   // sampled query rows, over batch and heads
  double rel_l2 = 0.0;
  double cosine = 0.0;
  double kept_mass = 0.0;
};

// Whether the forward of `step` is probed at `rate`: a pseudo-random draw
// from (seed, step); rate 0 never, rate 1 always.
bool ProbeStep(uint64_t seed, int64_t step, double rate);

// The probed layers of a probed step: min(kProbeLayersPerStep, layers)
// distinct layers of [0, layers), ascending, drawn from (seed, step).
std::vector<int64_t> ProbeLayers(uint64_t seed, int64_t step, int64_t layers);

// The sampled rows of one probed call, in the plan's (permuted) token order.
struct ProbeSample {
  at::Tensor rows;    // [B, H, R] int64 token indices
  at::Tensor blocks;  // [B, H, R] int64 query block of each row
};
// Per (b, h): min(kProbeBlocksPerHead, nb) distinct query blocks drawn from
// (seed, step, layer, b, h), and kProbeRowsPerBlock rows evenly spaced in
// each (a block shorter than that repeats rows). On the CPU.
ProbeSample SampleProbeRows(const BlockTable& blocks, int64_t batch, int64_t heads, uint64_t seed,
                            int64_t step, int64_t layer);

// The probe's sums over the sampled rows, on q's device (reading them syncs):
// [5] float64 = {sum (s-d)^2, sum d^2, sum s^2, sum s*d, sum kept mass}.
// q, k, v, sparse_out: [B, N, H, D] in the plan's order; mask as predicted
// for this call. INVALID_ARGUMENT naming the tensor for a bad shape.
StatusOr<at::Tensor> ProbeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& sparse_out, const AttentionPlan& plan,
                                    const TorchBlockMask& mask, const ProbeSample& sample);

// The record of one call from its sums (reads them: syncs on a GPU).
ProbeRecord ProbeRecordFromSums(int64_t layer, int64_t rows, const at::Tensor& sums);

}  // namespace rainserve::attention
