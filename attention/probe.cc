#include "attention/probe.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace rainserve::attention {
namespace {

// SplitMix64: the probe's only source of randomness, so that a request's
// seed reproduces its probed steps, layers and rows on every backend.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t Key(uint64_t seed, int64_t a, int64_t b = 0, int64_t c = 0, int64_t d = 0) {
  uint64_t h = Mix(seed);
  for (int64_t v : {a, b, c, d}) h = Mix(h ^ static_cast<uint64_t>(v));
  return h;
}

// `count` distinct values of [0, n), ascending: a partial Fisher-Yates
// shuffle driven by the stream Mix(key), Mix(key + 1), ...
std::vector<int64_t> Choose(uint64_t key, int64_t n, int64_t count) {
  std::vector<int64_t> all(static_cast<size_t>(n));
  std::iota(all.begin(), all.end(), 0);
  count = std::min(count, n);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t j = i + static_cast<int64_t>(Mix(key + static_cast<uint64_t>(i)) %
                                               static_cast<uint64_t>(n - i));
    std::swap(all[static_cast<size_t>(i)], all[static_cast<size_t>(j)]);
  }
  all.resize(static_cast<size_t>(count));
  std::sort(all.begin(), all.end());
  return all;
}

Status CheckProbeTensor(const at::Tensor& t, const char* name, const at::Tensor& q) {
  if (!t.defined() || t.dim() != 4 || t.sizes() != q.sizes() || t.device() != q.device()) {
    return InvalidArgumentError(std::string(name) + " must be [B, N, H, D] " + ShapeOf(q) +
                                " on q's device, got " + (t.defined() ? ShapeOf(t) : "undefined"));
  }
  return OkStatus();
}

// [B, H, nb, nb] float: 1 where the mask keeps (query block, key block).
at::Tensor KeptMatrix(const TorchBlockMask& mask, int64_t nb) {
  const at::Tensor slot = at::arange(nb, mask.counts.options());
  const at::Tensor valid = (slot < mask.counts.unsqueeze(-1)).to(at::kFloat);
  const at::Tensor index = mask.indices.to(at::kLong).clamp(0, nb - 1);
  // Slots past a row's count hold anything: they add 0.
  const at::Tensor hits = at::zeros(valid.sizes(), valid.options()).scatter_add_(3, index, valid);
  return (hits > 0).to(at::kFloat);
}

// [N] int64: the block of each token of the plan's order.
at::Tensor TokenBlocks(const BlockTable& blocks, const at::Device& device) {
  std::vector<int64_t> owner(static_cast<size_t>(blocks.starts.back()));
  for (int64_t b = 0; b < blocks.num_blocks(); ++b) {
    std::fill(owner.begin() + blocks.starts[b], owner.begin() + blocks.starts[b + 1], b);
  }
  return at::tensor(owner, at::TensorOptions().dtype(at::kLong)).to(device);
}

// Rows [B, H, R] of x [B, N, H, D] -> [B, H, R, D] float32.
at::Tensor GatherRows(const at::Tensor& x, const at::Tensor& rows) {
  const int64_t D = x.size(3);
  return at::gather(x.permute({0, 2, 1, 3}), 2, rows.unsqueeze(-1).expand({-1, -1, -1, D}))
      .to(at::kFloat);
}

}  // namespace

bool ProbeStep(uint64_t seed, int64_t step, double rate) {
  const double u = static_cast<double>(Key(seed, step) >> 11) * 0x1.0p-53;  // [0, 1)
  return u < rate;
}

std::vector<int64_t> ProbeLayers(uint64_t seed, int64_t step, int64_t layers) {
  return Choose(Key(seed, step, -1), layers, kProbeLayersPerStep);
}

ProbeSample SampleProbeRows(const BlockTable& blocks, int64_t batch, int64_t heads, uint64_t seed,
                            int64_t step, int64_t layer) {
  const int64_t nb = blocks.num_blocks();
  const int64_t per_head = std::min(kProbeBlocksPerHead, nb) * kProbeRowsPerBlock;
  std::vector<int64_t> rows, qblocks;
  rows.reserve(static_cast<size_t>(batch * heads * per_head));
  qblocks.reserve(rows.capacity());
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t qb : Choose(Key(seed, step, layer, b * heads + h), nb, kProbeBlocksPerHead)) {
        const int64_t start = blocks.starts[qb], len = blocks.starts[qb + 1] - start;
        for (int64_t i = 0; i < kProbeRowsPerBlock; ++i) {
          rows.push_back(start + i * len / kProbeRowsPerBlock);
          qblocks.push_back(qb);
        }
      }
    }
  }
  const auto opts = at::TensorOptions().dtype(at::kLong);
  return {at::tensor(rows, opts).view({batch, heads, per_head}),
          at::tensor(qblocks, opts).view({batch, heads, per_head})};
}

StatusOr<at::Tensor> ProbeAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& sparse_out, const AttentionPlan& plan,
                                    const TorchBlockMask& mask, const ProbeSample& sample) {
  if (!q.defined() || q.dim() != 4 || q.size(1) != plan.tokens()) {
    return InvalidArgumentError("q must be [B, " + std::to_string(plan.tokens()) +
                                ", H, D], got " + (q.defined() ? ShapeOf(q) : "undefined"));
  }
  RAINSERVE_RETURN_IF_ERROR(CheckProbeTensor(k, "k", q));
  RAINSERVE_RETURN_IF_ERROR(CheckProbeTensor(v, "v", q));
  RAINSERVE_RETURN_IF_ERROR(CheckProbeTensor(sparse_out, "sparse_out", q));
  const int64_t B = q.size(0), H = q.size(2), nb = plan.num_blocks();
  if (sample.rows.dim() != 3 || sample.rows.size(0) != B || sample.rows.size(1) != H) {
    return InvalidArgumentError("sample.rows must be [B, H, R] for q " + ShapeOf(q) + ", got " +
                                ShapeOf(sample.rows));
  }
  const at::Device device = q.device();
  const at::Tensor rows = sample.rows.to(device), qblocks = sample.blocks.to(device);
  const at::Tensor kept = KeptMatrix(mask, nb);         // [B, H, nb, nb]
  const at::Tensor token_block = TokenBlocks(plan.blocks, device);  // [N]
  const at::Tensor q_rows = GatherRows(q, rows);         // [B, H, R, D]
  const at::Tensor s_rows = GatherRows(sparse_out, rows);
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  const int64_t R = rows.size(2);
  at::Tensor sums = at::zeros({5}, q.options().dtype(at::kDouble));
  // One batch entry at a time bounds the fp32 copies to [H, N, D] each.
  for (int64_t b = 0; b < B; ++b) {
    const at::Tensor kb = k[b].permute({1, 0, 2}).to(at::kFloat);  // [H, N, D]
    const at::Tensor vb = v[b].permute({1, 0, 2}).to(at::kFloat);
    const at::Tensor p = at::softmax(at::matmul(q_rows[b], kb.transpose(1, 2)) * scale, -1);
    const at::Tensor dense = at::matmul(p, vb);  // [H, R, D]
    const at::Tensor s = s_rows[b];
    // Softmax mass per key block [H, R, nb], and the kept blocks of each row.
    const at::Tensor block_mass = at::zeros({H, R, nb}, p.options()).index_add_(2, token_block, p);
    const at::Tensor row_kept =
        at::gather(kept[b], 1, qblocks[b].unsqueeze(-1).expand({H, R, nb}));
    sums += at::stack({(s - dense).pow(2).sum(), dense.pow(2).sum(), s.pow(2).sum(),
                       (s * dense).sum(), (block_mass * row_kept).sum()})
                .to(at::kDouble);
  }
  return sums;
}

ProbeRecord ProbeRecordFromSums(int64_t layer, int64_t rows, const at::Tensor& sums) {
  const at::Tensor host = sums.to(at::kCPU).contiguous();
  const double* s = host.data_ptr<double>();
  ProbeRecord r;
  r.layer = layer;
  r.rows = rows;
  r.rel_l2 = s[1] > 0 ? std::sqrt(s[0] / s[1]) : 0.0;
  r.cosine = s[1] > 0 && s[2] > 0 ? s[3] / std::sqrt(s[1] * s[2]) : 1.0;
  r.kept_mass = rows > 0 ? s[4] / static_cast<double>(rows) : 1.0;
  return r;
}

}  // namespace rainserve::attention
