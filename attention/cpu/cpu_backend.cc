#include "attention/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "attention/bf16.h"
#include "attention/layout.h"
#include "attention/mask.h"

namespace rainserve::attention {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

int64_t MaxBlockLen(const BlockTableView& blocks) {
  int64_t len = 0;
  for (int64_t i = 0; i < blocks.num_blocks; ++i) {
    len = std::max<int64_t>(len, blocks.starts[i + 1] - blocks.starts[i]);
  }
  return len;
}

// Copies row [n, h, 0..D) of x as fp32 into dst (times `mul`).
inline void LoadRow(const TensorView& x, int64_t b, int64_t n, int64_t h, float mul, float* dst) {
  const int64_t off = x.Offset(b, n, h);
  if (x.dtype == DType::kFloat32) {
    const float* src = static_cast<const float*>(x.data) + off;
    for (int64_t d = 0; d < x.head_dim; ++d) dst[d] = src[d] * mul;
  } else {
    const uint16_t* src = static_cast<const uint16_t*>(x.data) + off;
    for (int64_t d = 0; d < x.head_dim; ++d) dst[d] = HalfToFloat(src[d], x.dtype) * mul;
  }
}

}  // namespace

CpuBackend::CpuBackend(int num_threads, const cpu::KernelSet* kernels)
    : pool_(num_threads), kernels_(kernels ? kernels : &cpu::SelectKernels()) {
  name_ = std::string("cpu-") + kernels_->isa;
}

Status CpuBackend::Supports(const ForwardArgs& args, int64_t block_size) const {
  const TensorView& q = args.q;
  if (q.head_dim < 1 || q.head_dim > 256) {
    return UnimplementedError("cpu backend: head_dim must be in [1, 256], got " +
                              std::to_string(q.head_dim));
  }
  if (block_size > 256) {
    return UnimplementedError("cpu backend: block_size must be <= 256, got " +
                              std::to_string(block_size));
  }
  return OkStatus();
}

Status CpuBackend::PredictMask(const MaskArgs& args) {
  std::lock_guard<std::mutex> lock(mutex_);
  const int64_t B = args.q.batch, H = args.q.heads, D = args.q.head_dim;
  const int64_t nb = args.blocks.num_blocks;
  const size_t per = static_cast<size_t>(B * H * nb * D);
  if (pooled_.size() < 2 * per) pooled_.resize(2 * per);
  PoolBlocks(args.q, args.blocks, pooled_.data(), &pool_);
  PoolBlocks(args.k, args.blocks, pooled_.data() + per, &pool_);
  const SelectionRule rule{args.sparsity, args.kept_mass, args.min_kept_blocks,
                           args.max_kept_blocks};
  *args.kept = SelectBlocks(pooled_.data(), pooled_.data() + per, B, H, D, args.blocks, args.scale,
                            rule, args.counts, args.indices, &pool_);
  return OkStatus();
}

namespace {

// Padded sizes of one Forward call: head dim and block length rounded up to
// the kernel's lanes; one packed slot holds a block's K^T [dp][bsp] and V [bsp][dp].
struct Geometry {
  int64_t dp, max_len, bsp, slot;
};

// Packs K (transposed) and V of every (b, h, key block) to fp32 slots.
void PackKeysAndValues(const ForwardArgs& args, const Geometry& g, float* packed,
                       ThreadPool* pool) {
  const TensorView &k = args.k, &v = args.v;
  const int64_t H = k.heads, D = k.head_dim, nb = args.blocks.num_blocks;
  const int32_t* starts = args.blocks.starts;
  pool->ParallelFor(k.batch * H * nb, [&](int64_t task, int) {
    const int64_t kb = task % nb, bh = task / nb, b = bh / H, h = bh % H;
    const int64_t start = starts[kb], len = starts[kb + 1] - start;
    float* kt = packed + task * g.slot;  // [dp][bsp]
    float* vp = kt + g.dp * g.bsp;       // [bsp][dp]
    std::memset(kt, 0, sizeof(float) * static_cast<size_t>(g.slot));
    float row[256];
    for (int64_t j = 0; j < len; ++j) {
      LoadRow(k, b, start + j, h, 1.0f, row);
      for (int64_t d = 0; d < D; ++d) kt[d * g.bsp + j] = row[d];
      LoadRow(v, b, start + j, h, 1.0f, vp + j * g.dp);
    }
  });
}

// Normalises rows [start, start + rows) of (b, h) by their softmax sums and
// stores them in args.out (and their LSE, natural log, in args.lse).
// o: [rows][dp], m, l: [rows] (log2-scaled running max and sum).
void StoreRows(const ForwardArgs& args, int64_t b, int64_t h, int64_t start, int64_t rows,
               int64_t dp, const float* o, const float* m, const float* l) {
  const int64_t D = args.q.head_dim, bh = b * args.q.heads + h;
  for (int64_t r = 0; r < rows; ++r) {
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
    const int64_t off = args.out.Offset(b, start + r, h);
    const float* orow = o + r * dp;
    if (args.out.dtype == DType::kFloat32) {
      float* dst = static_cast<float*>(args.out.data) + off;
      for (int64_t d = 0; d < D; ++d) dst[d] = orow[d] * inv;
    } else {
      uint16_t* dst = static_cast<uint16_t*>(args.out.data) + off;
      for (int64_t d = 0; d < D; ++d) dst[d] = FloatToHalf(orow[d] * inv, args.out.dtype);
    }
    if (args.lse != nullptr) {
      args.lse[bh * args.q.tokens + start + r] = (m[r] + std::log2(l[r])) * kLn2;
    }
  }
}

}  // namespace

Status CpuBackend::Forward(const ForwardArgs& args) {
  std::lock_guard<std::mutex> lock(mutex_);
  const TensorView& q = args.q;
  const int64_t B = q.batch, H = q.heads, nb = args.blocks.num_blocks;
  const int64_t lanes = kernels_->lanes;
  Geometry g;
  g.dp = RoundUp(q.head_dim, lanes);
  g.max_len = MaxBlockLen(args.blocks);
  g.bsp = RoundUp(g.max_len, lanes);
  g.slot = 2 * g.dp * g.bsp;
  const int32_t* starts = args.blocks.starts;

  // 1. Pack K (transposed) and V of every block to fp32: one task per (b, h, kb).
  const size_t packed_size = static_cast<size_t>(B * H * nb * g.slot);
  if (packed_.size() < packed_size) packed_.resize(packed_size);
  float* packed = packed_.data();
  PackKeysAndValues(args, g, packed, &pool_);

  // 2. One task per (b, h, query block).
  const int64_t max_len = g.max_len, dp = g.dp;
  const int threads = pool_.num_threads();
  const int64_t per_thread = max_len * dp * 2 + max_len * g.bsp + 2 * max_len + 2 * nb + 64;
  if (scratch_.size() < static_cast<size_t>(threads * per_thread)) {
    scratch_.resize(static_cast<size_t>(threads * per_thread));
  }
  const float q_mul = args.scale * kLog2e;
  const BlockMaskView& mask = args.mask;
  pool_.ParallelFor(B * H * nb, [&](int64_t task, int thread) {
    const int64_t qb = task % nb, bh = task / nb, b = bh / H, h = bh % H;
    const int64_t start = starts[qb], rows = starts[qb + 1] - start;
    float* base = scratch_.data() + thread * per_thread;
    float* qs = base;                     // [rows][dp]
    float* o = qs + max_len * dp;         // [rows][dp]
    float* s = o + max_len * dp;          // [rows][bsp]
    float* m = s + max_len * g.bsp;       // [rows]
    float* l = m + max_len;               // [rows]
    auto* ids = reinterpret_cast<int32_t*>(l + max_len);  // [nb]
    int32_t* lens = ids + nb;                             // [nb]
    std::memset(qs, 0, sizeof(float) * static_cast<size_t>(rows * dp));
    for (int64_t r = 0; r < rows; ++r) LoadRow(q, b, start + r, h, q_mul, qs + r * dp);

    const int64_t mrow = mask.Row(b, h, qb);
    const int32_t count = mask.counts[mrow];
    const int32_t* kept = mask.indices + mrow * mask.k_blocks;
    for (int32_t i = 0; i < count; ++i) {
      ids[i] = static_cast<int32_t>(bh * nb + kept[i]);
      lens[i] = starts[kept[i] + 1] - starts[kept[i]];
    }
    cpu::RowProblem p;
    p.q = qs;
    p.rows = rows;
    p.dp = dp;
    p.bsp = g.bsp;
    p.packed = packed;
    p.slot_floats = g.slot;
    p.num_blocks = count;
    p.block_ids = ids;
    p.block_lens = lens;
    p.s = s;
    p.o = o;
    p.m = m;
    p.l = l;
    kernels_->attend_row(p);
    StoreRows(args, b, h, start, rows, dp, o, m, l);
  });
  return OkStatus();
}

Status CpuBackend::GatherRows(const void* src, void* dst, const int64_t* index, int64_t outer,
                              int64_t rows, int64_t row_bytes, void*) {
  attention::GatherRows(index, rows, src, dst, outer, row_bytes, &pool_);
  return OkStatus();
}

}  // namespace rainserve::attention
