// The seam between RainFusion2.0 and the hardware: one small interface that
// every backend (cpu/, cuda/) implements, plus the argument structs it takes.
//
// All pointers in the args live where the backend computes (host memory for
// the CPU backend, device memory for CUDA). Inputs are already permuted
// (layout.h) and already validated by the caller (torch_adapter.cc): backends
// trust them.
#pragma once

#include <cstdint>

#include "attention/types.h"
#include "common/status.h"

namespace rainserve::attention {

struct MaskArgs {
  TensorView q, k;             // [B, N, H, D], permuted
  BlockTableView blocks;       // nb blocks over N
  float scale = 1.0f;          // softmax scale, usually 1/sqrt(D)
  double sparsity = 0.0;       // in (0, 1); dense masks are built without prediction
  int32_t* counts = nullptr;   // out: [B, H, nb]
  int32_t* indices = nullptr;  // out: [B, H, nb, nb]
  int64_t* kept = nullptr;     // out: total kept block pairs (one value; CUDA adds to it)
  void* stream = nullptr;      // cudaStream_t for CUDA backends
  double kept_mass = 0.0;      // > 0: mass-targeted selection (mask.h), sparsity unused
  int64_t min_kept_blocks = 1;
  int64_t max_kept_blocks = 0; // 0 = no cap
  // Optional out [B * H * nb] (CUDA): the rows (b * H + h) * nb + qb in
  // Forward's launch order (mask.order): rows keeping every block first, then
  // head by head, longest first within a head.
  int32_t* order = nullptr;
};

struct ForwardArgs {
  TensorView q, k, v;          // [B, N, H, D], permuted, same dtype
  TensorView out;              // [B, N, H, D], dtype of q
  float* lse = nullptr;        // optional out: [B, H, N] fp32, natural log
  BlockTableView blocks;
  BlockMaskView mask;          // [B, H, nb] counts + [B, H, nb, nb] indices
  float scale = 1.0f;
  void* stream = nullptr;      // cudaStream_t for CUDA backends
};

class AttentionBackend {
 public:
  virtual ~AttentionBackend() = default;

  // "cpu-avx512", "cuda-sm90", ... Any thread.
  virtual const char* Name() const = 0;

  // OK when Forward/PredictMask can run these inputs (dtype, head dim, block
  // size, strides); otherwise UNIMPLEMENTED/INVALID_ARGUMENT with the reason.
  // Called by the adapter before every call, from the calling thread.
  virtual Status Supports(const ForwardArgs& args, int64_t block_size) const = 0;

  // Predicts the block mask (mask.h describes the rule). Called from the
  // request's worker thread; a failure fails only that call.
  virtual Status PredictMask(const MaskArgs& args) = 0;

  // Block-sparse attention: for each (b, h, query block) visits only the kept
  // key blocks with an online softmax in fp32. Dense = every block kept.
  virtual Status Forward(const ForwardArgs& args) = 0;

  // Token permutation: dst[o][i] = src[o][index[i]] for `outer` groups of
  // `rows` rows of `row_bytes` bytes (index: `rows` int64 on the backend's
  // device). Used with the plan's gather index to permute and its scatter
  // index to un-permute.
  virtual Status GatherRows(const void* src, void* dst, const int64_t* index, int64_t outer,
                            int64_t rows, int64_t row_bytes, void* stream) = 0;
};

}  // namespace rainserve::attention
