// The only bridge between RainFusion2.0 and at::Tensor.
//
// A pipeline builds an AttentionPlan once per transformer forward, permutes
// its hidden states (and RoPE tables) once with PermuteTokens, calls
// RainFusionAttention in every self-attention layer, and undoes the
// permutation once with UnpermuteTokens at the end.
//
// Inputs are checked here (shape, dtype, device, plan); errors are
// INVALID_ARGUMENT naming the tensor and what was expected. The backend is
// chosen by the tensors' device.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "attention/config.h"
#include "attention/engine.h"
#include "common/status.h"

namespace rainserve::attention {

struct AttentionStats {
  bool sparse = false;             // false when the call ran dense
  int64_t kept_blocks = 0;         // kept (query block, key block) pairs, over B and H;
                                   // -1 for a GPU mask whose count was not read
  int64_t total_blocks = 0;        // all pairs: B * H * nb * nb
  double realized_sparsity = 0.0;  // 1 - kept / total (NaN while kept_blocks is -1)
  double mask_seconds = 0.0;       // mask prediction (0 when dense)
  double attention_seconds = 0.0;  // the attention kernel
  std::string backend;             // e.g. "cpu-avx512"
};

// A predicted block mask, on the device of the q it was predicted from.
struct TorchBlockMask {
  at::Tensor counts;       // [B, H, nb] int32
  at::Tensor indices;      // [B, H, nb, nb] int32, ascending within counts
  at::Tensor order;        // optional [B * H * nb] int32: launch order (CUDA mass masks)
  at::Tensor kept_tensor;  // [1] int64 on the mask's device: kept block pairs
  int64_t kept = -1;       // the same on the host; -1 until read (GPU masks: reading syncs)
  bool dense = false;
  double mask_seconds = 0.0;  // host time (for GPU masks: enqueue time)
};

// Kept block pairs of `mask`, reading the device count if needed (syncs).
int64_t KeptBlocks(const TorchBlockMask& mask);

// "[d0, d1, ...]": a tensor's shape for error messages.
std::string ShapeOf(const at::Tensor& t);

struct AttentionResult {
  at::Tensor out;  // [B, N, H, D], dtype of q
  at::Tensor lse;  // [B, H, N] float32 when config.return_lse, else undefined
  AttentionStats stats;
};

// q, k, v: [B, N, H, D], N = plan.tokens(), permuted with plan.permutation.
// Predicts the mask (or uses the dense one) and runs block-sparse attention.
StatusOr<AttentionResult> RainFusionAttention(AttentionEngine& engine, const at::Tensor& q,
                                              const at::Tensor& k, const at::Tensor& v,
                                              const AttentionPlan& plan,
                                              const AttentionConfig& config);

// The two halves of RainFusionAttention, for sharing one mask across layers
// (mask_refresh = per step) and for benchmarks.
StatusOr<TorchBlockMask> PredictBlockMask(AttentionEngine& engine, const at::Tensor& q,
                                          const at::Tensor& k, const AttentionPlan& plan,
                                          const AttentionConfig& config);
StatusOr<AttentionResult> BlockSparseAttention(AttentionEngine& engine, const at::Tensor& q,
                                               const at::Tensor& k, const at::Tensor& v,
                                               const AttentionPlan& plan,
                                               const TorchBlockMask& mask, bool return_lse);

// OK when the backend of q's device runs block attention on q's dtype, head
// dim and strides for this plan (AttentionBackend::Supports), else why not.
Status SupportsBlockAttention(AttentionEngine& engine, const at::Tensor& q,
                              const AttentionPlan& plan);

// Dense attention with LibTorch (SDPA from PyTorch 2; matmul-softmax-matmul
// in fp32 before), in whatever token order q, k, v share.
// q: [B, Nq, H, D], k, v: [B, Nk, H, D] -> [B, Nq, H, D].
at::Tensor DenseTorchAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// x: [B, N, ...] (token dim = 1) or a per-token table [N, ...] (token dim = 0).
// Permute: original order -> plan order; Unpermute: back.
StatusOr<at::Tensor> PermuteTokens(AttentionEngine& engine, const at::Tensor& x,
                                   const AttentionPlan& plan, int64_t token_dim = 1);
StatusOr<at::Tensor> UnpermuteTokens(AttentionEngine& engine, const at::Tensor& x,
                                     const AttentionPlan& plan, int64_t token_dim = 1);

}  // namespace rainserve::attention
