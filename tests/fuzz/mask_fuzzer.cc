// Fuzzes RainFusion2.0 planning and mask prediction (attention/, torch-free):
// the bytes pick a layout (T, H, W, sink frames, text tokens and placement),
// a window, a block size, a sparsity, B/H/D, a dtype and tiny pseudo-random
// q/k/v. AttentionPlan::Build and ValidateConfig must accept or reject them
// with a Status; an accepted plan is a true permutation with a consistent
// block table, the CPU backend's mask keeps exactly what mask.h says, and for
// short sequences its forward pass matches the float64 reference.
//
//   build-fuzz/tests/fuzz/fuzz_mask tests/fuzz/corpus/mask
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "attention/bf16.h"
#include "attention/config.h"
#include "attention/cpu/cpu_backend.h"
#include "attention/layout.h"
#include "attention/mask.h"
#include "attention/reference.h"
#include "tests/fuzz/fuzz_util.h"

namespace rainserve::attention {
namespace {

constexpr int64_t kMaxForwardTokens = 256;  // longer sequences skip the O(N^2) reference

void CheckPlan(const AttentionPlan& plan) {
  const TokenLayout& l = plan.layout;
  const int64_t n = l.total_tokens();
  const TokenPermutation& p = plan.permutation;
  RAINSERVE_FUZZ_CHECK(p.size() == n && static_cast<int64_t>(p.scatter.size()) == n);
  for (int64_t i = 0; i < n; ++i) {
    RAINSERVE_FUZZ_CHECK(p.gather[i] >= 0 && p.gather[i] < n);
    RAINSERVE_FUZZ_CHECK(p.scatter[p.gather[i]] == i);
  }
  // Segments [windowed | sink | text] of the permuted order.
  const int64_t text_begin = l.text_placement == TextPlacement::kBefore ? 0 : l.video_tokens();
  const int64_t video_begin = l.text_placement == TextPlacement::kBefore ? l.text_tokens : 0;
  const int64_t frame = l.height * l.width;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = p.gather[i];
    const bool is_text = j >= text_begin && j < text_begin + l.text_tokens;
    const int64_t t = is_text ? -1 : (j - video_begin) / frame;
    if (i < l.windowed_tokens()) {
      RAINSERVE_FUZZ_CHECK(!is_text && t >= l.sink_frames && t < l.frames);
    } else if (i < l.video_tokens()) {
      RAINSERVE_FUZZ_CHECK(!is_text && t >= 0 && t < l.sink_frames);
    } else {
      RAINSERVE_FUZZ_CHECK(is_text && j - text_begin == i - l.video_tokens());
    }
  }
  // Blocks tile [0, N), at most block_size tokens each, never across segments.
  const BlockTable& b = plan.blocks;
  const int64_t nb = b.num_blocks();
  RAINSERVE_FUZZ_CHECK(nb >= 1 && static_cast<int64_t>(b.starts.size()) == nb + 1);
  RAINSERVE_FUZZ_CHECK(b.starts.front() == 0 && b.starts.back() == n);
  const int64_t segment_end[] = {l.windowed_tokens(), l.video_tokens(), n};
  for (int64_t i = 0; i < nb; ++i) {
    const int64_t begin = b.starts[i], end = b.starts[i + 1];
    RAINSERVE_FUZZ_CHECK(end > begin && end - begin <= b.block_size);
    const int kind = static_cast<int>(b.kinds[i]);
    RAINSERVE_FUZZ_CHECK(kind >= 0 && kind <= 2);
    RAINSERVE_FUZZ_CHECK(b.forced[i] == (b.kinds[i] != BlockKind::kVideo ? 1 : 0));
    RAINSERVE_FUZZ_CHECK(end <= segment_end[kind] && (kind == 0 || begin >= segment_end[kind - 1]));
    if (i > 0) RAINSERVE_FUZZ_CHECK(b.kinds[i] >= b.kinds[i - 1]);
  }
}

// Pooled logits in float64: scores[b, h, qb, kb] = mean(q_qb) . mean(k_kb) * scale.
std::vector<double> PooledScores(const TensorView& q, const TensorView& k,
                                 const BlockTableView& blocks, double scale) {
  const int64_t B = q.batch, H = q.heads, D = q.head_dim, nb = blocks.num_blocks;
  auto pool = [&](const TensorView& x) {
    std::vector<double> out(static_cast<size_t>(B * H * nb * D), 0.0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t blk = 0; blk < nb; ++blk) {
          double* o = &out[static_cast<size_t>(((b * H + h) * nb + blk) * D)];
          const int64_t begin = blocks.starts[blk], end = blocks.starts[blk + 1];
          for (int64_t n = begin; n < end; ++n)
            for (int64_t d = 0; d < D; ++d) o[d] += LoadAsFloat(x.data, x.dtype, x.Offset(b, n, h) + d);
          for (int64_t d = 0; d < D; ++d) o[d] /= static_cast<double>(end - begin);
        }
    return out;
  };
  const std::vector<double> pq = pool(q), pk = pool(k);
  std::vector<double> scores(static_cast<size_t>(B * H * nb * nb));
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t qb = 0; qb < nb; ++qb)
      for (int64_t kb = 0; kb < nb; ++kb) {
        double dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += pq[(bh * nb + qb) * D + d] * pk[(bh * nb + kb) * D + d];
        scores[static_cast<size_t>((bh * nb + qb) * nb + kb)] = dot * scale;
      }
  return scores;
}

// mask.h's rule: forced rows keep everything; other rows keep their top_k
// key blocks by score plus every forced block, indices ascending.
void CheckMask(const BlockMask& mask, const BlockTable& table, int64_t top_k,
               const std::vector<double>* scores) {
  const int64_t nb = table.num_blocks();
  for (int64_t row = 0; row < mask.batch * mask.heads * nb; ++row) {
    const int64_t qb = row % nb, count = mask.counts[row];
    const int32_t* idx = &mask.indices[static_cast<size_t>(row * nb)];
    RAINSERVE_FUZZ_CHECK(count >= 1 && count <= nb);
    std::vector<uint8_t> kept(static_cast<size_t>(nb), 0);
    for (int64_t c = 0; c < count; ++c) {
      RAINSERVE_FUZZ_CHECK(idx[c] >= 0 && idx[c] < nb);
      if (c > 0) RAINSERVE_FUZZ_CHECK(idx[c] > idx[c - 1]);
      kept[idx[c]] = 1;
    }
    if (table.forced[qb] || scores == nullptr) {
      if (table.forced[qb]) RAINSERVE_FUZZ_CHECK(count == nb);
      continue;
    }
    RAINSERVE_FUZZ_CHECK(count >= top_k && count <= top_k + table.num_forced());
    double lowest_kept = INFINITY, highest_dropped = -INFINITY;
    for (int64_t kb = 0; kb < nb; ++kb) {
      if (table.forced[kb]) RAINSERVE_FUZZ_CHECK(kept[kb]);
      const double s = (*scores)[static_cast<size_t>(row * nb + kb)];
      if (kept[kb] && !table.forced[kb]) lowest_kept = std::min(lowest_kept, s);
      if (!kept[kb]) highest_dropped = std::max(highest_dropped, s);
    }
    // The kernel ranks float32 logits; allow their rounding.
    RAINSERVE_FUZZ_CHECK(highest_dropped <= lowest_kept + 1e-3 * (1.0 + std::fabs(lowest_kept)));
  }
}

struct Buffer {
  std::vector<uint16_t> half;
  std::vector<float> full;
  void* data(DType dtype) { return dtype == DType::kFloat32 ? static_cast<void*>(full.data()) : half.data(); }
};

// Values on a coarse grid (ties are likely) or spread out, times `gain`.
Buffer Fill(int64_t count, DType dtype, uint64_t* state, bool coarse, float gain) {
  Buffer buf;
  buf.full.resize(static_cast<size_t>(count));
  for (float& x : buf.full) {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    const float u = static_cast<float>(*state >> 40) / static_cast<float>(1 << 24) * 2.0f - 1.0f;
    x = gain * (coarse ? std::round(u * 2.0f) / 2.0f : u);
  }
  if (dtype != DType::kFloat32) {
    for (float x : buf.full) buf.half.push_back(FloatToHalf(x, dtype));
  }
  return buf;
}

}  // namespace
}  // namespace rainserve::attention

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace rainserve::attention;
  static CpuBackend backend(1);
  FuzzedDataProvider in(data, size);

  TokenLayout layout;
  layout.frames = in.ConsumeIntegralInRange<int64_t>(0, 6);
  layout.height = in.ConsumeIntegralInRange<int64_t>(0, 12);
  layout.width = in.ConsumeIntegralInRange<int64_t>(0, 12);
  layout.sink_frames = in.ConsumeIntegralInRange<int64_t>(-1, 7);
  layout.text_tokens = in.ConsumeIntegralInRange<int64_t>(-1, 40);
  layout.text_placement = static_cast<TextPlacement>(in.ConsumeIntegralInRange<int>(0, 2));
  WindowShape window;
  window.t = in.ConsumeIntegralInRange<int64_t>(0, 4);
  window.h = in.ConsumeIntegralInRange<int64_t>(0, 16);
  window.w = in.ConsumeIntegralInRange<int64_t>(0, 16);
  // Mostly the supported sizes (powers of two in [16, 256]), sometimes anything.
  const int64_t block_size = in.ConsumeBool() ? int64_t{16} << in.ConsumeIntegralInRange<int>(0, 4)
                                              : in.ConsumeIntegralInRange<int64_t>(-2, 300);
  AttentionConfig config;
  config.sparsity = in.ConsumeBool() ? in.ConsumeFloatingPointInRange<double>(0.0, 0.999)
                                     : in.ConsumeFloatingPoint<double>();
  config.min_sparse_blocks = in.ConsumeIntegralInRange<int64_t>(0, 6);
  const int64_t batch = in.ConsumeIntegralInRange<int64_t>(1, 2);
  const int64_t heads = in.ConsumeIntegralInRange<int64_t>(1, 3);
  const int64_t head_dim = in.ConsumeIntegralInRange<int64_t>(1, 40);
  const DType dtype = static_cast<DType>(in.ConsumeIntegralInRange<int>(0, 2));
  const bool coarse = in.ConsumeBool();
  const float gain = in.ConsumeFloatingPointInRange<float>(0.05f, 8.0f);
  uint64_t seed = in.ConsumeIntegral<uint64_t>() | 1;

  auto plan = AttentionPlan::Build(layout, window, block_size);
  const bool config_ok = ValidateConfig(config).ok();
  if (!plan.ok()) {
    RAINSERVE_FUZZ_CHECK(plan.status().code() == rainserve::StatusCode::kInvalidArgument);
    return 0;
  }
  CheckPlan(*plan);
  if (!config_ok) return 0;

  // q, k, v: [B, N, H, D], already permuted (the content is random anyway).
  const int64_t n = plan->tokens(), nb = plan->num_blocks();
  const int64_t count = batch * n * heads * head_dim;
  Buffer q = Fill(count, dtype, &seed, coarse, gain);
  Buffer k = Fill(count, dtype, &seed, coarse, gain);
  Buffer v = Fill(count, dtype, &seed, false, 1.0f);
  const TensorView qv = TensorView::Contiguous(q.data(dtype), dtype, batch, n, heads, head_dim);
  const TensorView kv = TensorView::Contiguous(k.data(dtype), dtype, batch, n, heads, head_dim);
  const TensorView vv = TensorView::Contiguous(v.data(dtype), dtype, batch, n, heads, head_dim);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));

  BlockMask mask;
  const bool dense = RunsDense(config, nb);
  if (dense) {
    mask = DenseBlockMask(batch, heads, nb);
    CheckMask(mask, plan->blocks, nb, nullptr);
  } else {
    mask.Resize(batch, heads, nb, nb);
    MaskArgs args;
    args.q = qv;
    args.k = kv;
    args.blocks = plan->blocks.view();
    args.scale = scale;
    args.sparsity = config.sparsity;
    args.counts = mask.counts.data();
    args.indices = mask.indices.data();
    int64_t kept = 0;
    args.kept = &kept;
    RAINSERVE_FUZZ_CHECK(backend.PredictMask(args).ok());
    RAINSERVE_FUZZ_CHECK(kept == mask.kept());
    const std::vector<double> scores = PooledScores(qv, kv, args.blocks, scale);
    CheckMask(mask, plan->blocks, TopKCount(nb, config.sparsity), &scores);
  }
  RAINSERVE_FUZZ_CHECK(mask.sparsity() >= 0.0 && mask.sparsity() < 1.0);

  if (n > kMaxForwardTokens) return 0;
  Buffer out = Fill(count, dtype, &seed, false, 0.0f);
  std::vector<float> lse(static_cast<size_t>(batch * heads * n));
  ForwardArgs f;
  f.q = qv;
  f.k = kv;
  f.v = vv;
  f.out = TensorView::Contiguous(out.data(dtype), dtype, batch, n, heads, head_dim);
  f.lse = lse.data();
  f.blocks = plan->blocks.view();
  f.mask = mask.view();
  f.scale = scale;
  if (!backend.Supports(f, plan->blocks.block_size).ok()) return 0;
  RAINSERVE_FUZZ_CHECK(backend.Forward(f).ok());
  std::vector<double> want, want_lse;
  ReferenceAttention(qv, kv, vv, f.blocks, f.mask, scale, &want, &want_lse);
  // The output is stored in its dtype: bf16 keeps 8 bits, fp16 11, |out| <= 1.
  const double tol = dtype == DType::kFloat32 ? 1e-4 : dtype == DType::kBFloat16 ? 1e-2 : 2e-3;
  for (int64_t i = 0; i < count; ++i) {
    RAINSERVE_FUZZ_CHECK(std::fabs(LoadAsFloat(f.out.data, dtype, i) - want[i]) <= tol);
  }
  for (size_t i = 0; i < lse.size(); ++i) {
    RAINSERVE_FUZZ_CHECK(std::fabs(lse[i] - want_lse[i]) <= 1e-3 * (1.0 + std::fabs(want_lse[i])));
  }
  return 0;
}
