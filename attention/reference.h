// Float64 reference attention, written to be read, used only by tests and
// benchmarks. It expands the block mask to token level and computes masked
// softmax attention directly (with a pool, query blocks run in parallel):
//   allowed(i, j) = block(j) is among the kept key blocks of block(i)
//   out[b, i, h] = sum_j softmax_j(q_i . k_j * scale | allowed) v_j
//   lse[b, h, i] = log sum_{allowed j} exp(q_i . k_j * scale)
#pragma once

#include <vector>

#include "attention/types.h"
#include "common/thread_pool.h"

namespace rainserve::attention {

// out: [B, N, H, D] doubles; lse: [B, H, N] (may be null).
void ReferenceAttention(const TensorView& q, const TensorView& k, const TensorView& v,
                        const BlockTableView& blocks, const BlockMaskView& mask, double scale,
                        std::vector<double>* out, std::vector<double>* lse,
                        ThreadPool* pool = nullptr);

}  // namespace rainserve::attention

namespace rainserve::attention {

// The same masked attention computed the naive way (scores, softmax, P V) in
// float32 arithmetic, with scores, probabilities and the output rounded to
// `precision` (bf16/fp16) when it is not float32: what a plain same-precision
// implementation gets. Tests bound a kernel's error by a multiple of this
// run's error against ReferenceAttention. out: [B, N, H, D]; lse: [B, H, N].
void NaiveAttention(const TensorView& q, const TensorView& k, const TensorView& v,
                    const BlockTableView& blocks, const BlockMaskView& mask, float scale,
                    DType precision, std::vector<float>* out, std::vector<float>* lse,
                    ThreadPool* pool = nullptr);

}  // namespace rainserve::attention
