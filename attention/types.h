// Plain data types shared by every attention backend: element types, strided
// views of [B, N, H, D] tensors, and views of block tables and block masks.
// Torch-free; views never own memory.
#pragma once

#include <cstdint>
#include <string>

// Lets the small inline helpers below run in CUDA kernels too.
#if defined(__CUDACC__)
#define RAINSERVE_HOST_DEVICE __host__ __device__
#else
#define RAINSERVE_HOST_DEVICE
#endif

namespace rainserve::attention {

enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

const char* DTypeName(DType dtype);
inline int64_t DTypeSize(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

// A [B, N, H, D] tensor with D contiguous; strides in elements.
// q/k/v of one call share B, H, D; N may differ between q and k/v only in the
// reference (the kernels run self-attention, N equal).
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  int64_t batch = 0, tokens = 0, heads = 0, head_dim = 0;
  int64_t stride_batch = 0, stride_token = 0, stride_head = 0;

  // Contiguous [B, N, H, D] view over `data`.
  static TensorView Contiguous(void* data, DType dtype, int64_t b, int64_t n, int64_t h,
                               int64_t d) {
    return TensorView{data, dtype, b, n, h, d, n * h * d, h * d, d};
  }
  RAINSERVE_HOST_DEVICE int64_t Offset(int64_t b, int64_t n, int64_t h) const {
    return b * stride_batch + n * stride_token + h * stride_head;
  }
};

// Block boundaries over the (permuted) token sequence: block i holds tokens
// [starts[i], starts[i+1]). Blocks are at most block_size tokens; video, sink
// and text tokens never share a block.
struct BlockTableView {
  int64_t num_blocks = 0;
  const int32_t* starts = nullptr;  // [num_blocks + 1]
  const uint8_t* forced = nullptr;  // [num_blocks]; 1 = sink/text block, always kept
  // How many of the last blocks are forced (a host-side count; the layout puts
  // sink and text blocks last). Their query rows keep every key block, so a
  // GPU backend starts them first.
  int64_t trailing_forced = 0;
};

// Compact block mask, the format every backend reads (the same as
// FlexAttention's kv_num_blocks / kv_indices):
//   counts[b, h, qb]          number of key blocks kept for query block qb
//   indices[b, h, qb, 0..c)   their indices, ascending; entries past c unused
struct BlockMaskView {
  int64_t batch = 0, heads = 0, q_blocks = 0, k_blocks = 0;
  const int32_t* counts = nullptr;   // [B, H, q_blocks]
  const int32_t* indices = nullptr;  // [B, H, q_blocks, k_blocks]
  // Optional [B * H * q_blocks]: the order in which a backend should start
  // the rows (MaskArgs::order); the result does not depend on it.
  const int32_t* order = nullptr;

  RAINSERVE_HOST_DEVICE int64_t Row(int64_t b, int64_t h, int64_t qb) const {
    return (b * heads + h) * q_blocks + qb;
  }
};

}  // namespace rainserve::attention
