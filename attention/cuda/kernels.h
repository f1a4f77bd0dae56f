// Launchers of the CUDA attention kernels. Torch-free: raw device pointers,
// strides in elements, a cudaStream_t passed as void*. Every launcher checks
// the launch and returns INTERNAL with CUDA's message on failure; inputs were
// validated by CudaBackend::Supports.
#pragma once

#include <cstdint>

#include "attention/types.h"
#include "common/status.h"

namespace rainserve::attention::cuda {

// Block-sparse flash attention forward (flash_fwd.cu).
struct FlashParams {
  const void* q = nullptr;  // [B, N, H, D] bf16/fp16, D contiguous, 16-byte aligned rows
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;      // [B, N, H, D], dtype of q
  float* lse = nullptr;     // optional [B, H, N] fp32, natural log
  int64_t q_stride[3], k_stride[3], v_stride[3], o_stride[3];  // batch, token, head
  int batch = 0, tokens = 0, heads = 0, head_dim = 0;
  int num_blocks = 0;
  int heavy_rows = 0;  // scheduled first (FlashTileOf); at most num_blocks
  const int32_t* block_starts = nullptr;  // device [nb + 1]
  const int32_t* mask_counts = nullptr;   // device [B, H, nb]
  const int32_t* mask_indices = nullptr;  // device [B, H, nb, nb]
  // Optional device [B * H * nb]: the rows (b * H + h) * nb + qb in launch
  // order (mass-targeted masks, whose rows keep uneven counts: MaskParams::
  // order); replaces FlashTileOf's order when set.
  const int32_t* row_order = nullptr;
  float scale_log2 = 0.0f;                // softmax scale * log2(e)
  DType dtype = DType::kBFloat16;
};
// The (query block, head, batch element) of the flash kernels' CTA number
// `linear` (launch order; CTAs start roughly in it), longest first: the heavy
// rows (the last heavy_rows query blocks, which keep every key block) of every
// head, then each head's other rows, head by head, last block first, so that
// a head's K/V stay in L2 while its rows run. Heavy rows first only within
// each head would leave the last head's heavy rows running alone at the end.
// Every order gives the same result; this is a bijection of
// [0, num_blocks * heads * batch).
struct FlashTile {
  int qb = 0, h = 0, b = 0;
};
RAINSERVE_HOST_DEVICE inline FlashTile FlashTileOf(int linear, int num_blocks, int heavy_rows,
                                                   int heads, int batch) {
  const int heavy_ctas = heavy_rows * heads * batch;  // < 2^31: CudaBackend::Supports
  int bh = 0, qb = 0;
  if (linear < heavy_ctas) {
    bh = linear / heavy_rows;
    qb = num_blocks - 1 - linear % heavy_rows;
  } else {
    const int light = num_blocks - heavy_rows, rest = linear - heavy_ctas;
    bh = rest / light;
    qb = light - 1 - rest % light;
  }
  return FlashTile{qb, bh % heads, bh / heads};
}

// mma.sync kernel (flash_fwd.cu): any sm_80+ GPU.
Status LaunchFlashForward(const FlashParams& p, void* stream);
// TMA + warp-specialised wgmma kernel (flash_fwd_sm90.cu): Hopper (compute
// capability 9.0) only.
Status LaunchFlashForwardSm90(const FlashParams& p, void* stream);

// The tile of row (b * heads + h) * num_blocks + qb.
RAINSERVE_HOST_DEVICE inline FlashTile FlashTileOfRow(int row, int num_blocks, int heads) {
  const int bh = row / num_blocks;
  return FlashTile{row % num_blocks, bh % heads, bh / heads};
}

// Mask prediction (mask.cu): pooled means, then the pooled scores, then per
// row the top-k (or, with kept_mass > 0, the mass-targeted count) and forced
// blocks, writing the compact mask and the kept total.
struct MaskParams {
  TensorView q, k;                        // device, [B, N, H, D]
  int num_blocks = 0;
  const int32_t* block_starts = nullptr;  // device [nb + 1]
  const uint8_t* block_forced = nullptr;  // device [nb]
  float scale = 1.0f;
  int top_k = 1;
  float* pooled = nullptr;                // device workspace [2, B, H, nb, D] fp32
  int32_t* counts = nullptr;              // device out [B, H, nb]
  int32_t* indices = nullptr;             // device out [B, H, nb, nb]; also the scores' scratch
  int64_t* kept = nullptr;                // device out, incremented (zero it first)
  double kept_mass = 0.0;                 // > 0: mass-targeted selection (mask.h)
  int min_kept_blocks = 1;
  int max_kept_blocks = 0;                // 0 = no cap
  // Optional device out [B * H * nb]: the flash kernels' launch order
  // (FlashParams::row_order): rows keeping every block first, then head by
  // head, longest first within a head. Needs `order_workspace`, device
  // [2 * MaskOrderSlots(B, H, nb)] int32.
  int32_t* order = nullptr;
  int32_t* order_workspace = nullptr;
};
// Slots of the launch-order counting sort: one for the rows keeping every
// block, then one per (head, count below nb).
inline int64_t MaskOrderSlots(int64_t batch, int64_t heads, int64_t num_blocks) {
  return 1 + batch * heads * num_blocks;
}
Status LaunchMaskPrediction(const MaskParams& p, void* stream);
// Largest number of blocks the top-k kernel sorts in shared memory.
constexpr int kMaxMaskBlocks = 4096;

// Row gather (permute.cu): dst[o][i] = src[o][index[i]] for `outer` groups of
// `rows` rows of `row_bytes` bytes. `index` is a device array of `rows` int64.
Status LaunchGatherRows(const void* src, void* dst, const int64_t* index, int64_t outer,
                        int64_t rows, int64_t row_bytes, void* stream);

}  // namespace rainserve::attention::cuda
