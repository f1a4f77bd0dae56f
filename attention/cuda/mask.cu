// Fused RainFusion2.0 mask prediction on the GPU, nothing of size N x N:
//   1. PoolKernel: block means of q and k -> pooled [2, B, H, nb, D] fp32.
//      One CTA per (block, batch, q|k); threads stride over the H*D columns
//      (8 at a time with 16-byte loads), so each token row is read once.
//   2. SelectKernel: a warp per query block: scores against every key block
//      (fp32 dot products of pooled means, key blocks staged in shared memory
//      for the CTA's rows), a warp bitonic sort on (score desc, index asc),
//      the first top_k plus every forced block, written ascending.
//      Forced rows keep everything. The kept count is added to *kept.
// The rule and tie-breaking are those of the CPU implementation (mask.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "attention/cuda/kernels.h"

namespace rainserve::attention::cuda {
namespace {

constexpr int kPoolThreads = 256;
constexpr int kSelectThreads = 256;

// One CTA per (block, batch, q|k). With 16-byte aligned rows each thread
// sums 8 consecutive columns with vector loads; otherwise one column.
template <typename T>
__global__ void PoolKernel(const MaskParams p) {
  const int blk = blockIdx.x, b = blockIdx.y, which = blockIdx.z;
  const TensorView& x = which == 0 ? p.q : p.k;
  const int H = static_cast<int>(x.heads), D = static_cast<int>(x.head_dim);
  const int nb = p.num_blocks;
  const int begin = p.block_starts[blk], end = p.block_starts[blk + 1];
  const float inv = 1.0f / static_cast<float>(end - begin);
  float* out = p.pooled + static_cast<int64_t>(which) * x.batch * H * nb * D;
  const T* data = static_cast<const T*>(x.data);
  const bool vec = D % 8 == 0 && x.stride_token % 8 == 0 && x.stride_head % 8 == 0 &&
                   x.stride_batch % 8 == 0 && reinterpret_cast<uintptr_t>(data) % 16 == 0;
  const int width = vec ? 8 : 1;
  for (int c = threadIdx.x * width; c < H * D; c += kPoolThreads * width) {
    const int h = c / D, d = c % D;
    float sum[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int n = begin; n < end; ++n) {
      const T* src = data + x.Offset(b, n, h) + d;
      if (vec) {
        const uint4 raw = *reinterpret_cast<const uint4*>(src);
        const T* e = reinterpret_cast<const T*>(&raw);
        for (int i = 0; i < 8; ++i) sum[i] += static_cast<float>(e[i]);
      } else {
        sum[0] += static_cast<float>(*src);
      }
    }
    float* dst = out + ((static_cast<int64_t>(b) * H + h) * nb + blk) * D + d;
    for (int i = 0; i < width; ++i) dst[i] = sum[i] * inv;
  }
}

// Orders floats as unsigned integers (larger float -> larger key).
__device__ __forceinline__ uint32_t OrderedBits(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

constexpr int kChunk = 64;  // key blocks staged in shared memory at a time

// One CTA per (group of `rows` query blocks, head, batch); warp w owns query
// block blockIdx.x * rows + w. Pooled key blocks are staged in shared memory
// (rows padded by one float: conflict-free column reads) and shared by the
// CTA's rows; each warp sorts its own row with a warp-synchronous bitonic
// sort and writes the kept indices with a warp scan over a bitmask.
//
// Shared memory: keys [rows][sort_size] u64 | kp [kChunk][D + 1] f32 |
//                qp [rows][D] f32 | bits [rows][sort_size / 32] u32
__global__ void __launch_bounds__(kSelectThreads) SelectKernel(const MaskParams p, int sort_size,
                                                              int rows) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int nb = p.num_blocks, H = static_cast<int>(p.q.heads), D = static_cast<int>(p.q.head_dim);
  auto* keys_all = reinterpret_cast<unsigned long long*>(smem_raw);
  float* kp_s = reinterpret_cast<float*>(keys_all + rows * sort_size);
  float* qp_s = kp_s + kChunk * (D + 1);
  uint32_t* bits_all = reinterpret_cast<uint32_t*>(qp_s + rows * D);

  const int h = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int qb = blockIdx.x * rows + warp;
  const bool active = warp < rows && qb < nb;
  const int64_t bh = static_cast<int64_t>(b) * H + h;
  const int64_t per = static_cast<int64_t>(p.q.batch) * H * nb * D;
  const float* kp = p.pooled + per + bh * nb * D;
  unsigned long long* keys = keys_all + warp * sort_size;
  uint32_t* bits = bits_all + warp * (sort_size / 32);
  const bool forced_row = active && p.block_forced[qb] != 0;

  for (int i = threadIdx.x; i < rows * D; i += kSelectThreads) {
    const int r = i / D, qrow = blockIdx.x * rows + r;
    qp_s[i] = qrow < nb ? p.pooled[(bh * nb + qrow) * D + i % D] : 0.0f;
  }
  // Scores, chunk by chunk of key blocks.
  for (int c0 = 0; c0 < nb; c0 += kChunk) {
    const int cn = min(kChunk, nb - c0);
    __syncthreads();
    for (int i = threadIdx.x; i < cn * D; i += kSelectThreads) {
      kp_s[(i / D) * (D + 1) + i % D] = kp[static_cast<int64_t>(c0) * D + i];
    }
    __syncthreads();
    if (active && !forced_row) {
      const float* q = qp_s + warp * D;
      for (int j = lane; j < cn; j += 32) {
        const float* kr = kp_s + j * (D + 1);
        float dot = 0.0f;
        for (int d = 0; d < D; ++d) dot += q[d] * kr[d];
        const uint32_t idx = static_cast<uint32_t>(c0 + j);
        keys[c0 + j] = (static_cast<unsigned long long>(OrderedBits(dot * p.scale)) << 32) |
                       static_cast<uint32_t>(~idx);
      }
    }
  }
  if (!active) return;  // no block-wide barriers below
  int32_t* out = p.indices + (bh * nb + qb) * nb;
  const int64_t row = bh * nb + qb;
  if (forced_row) {
    for (int j = lane; j < nb; j += 32) out[j] = j;
    if (lane == 0) {
      p.counts[row] = nb;
      atomicAdd(reinterpret_cast<unsigned long long*>(p.kept), static_cast<unsigned long long>(nb));
    }
    return;
  }
  for (int j = nb + lane; j < sort_size; j += 32) keys[j] = 0;  // padding sorts last
  __syncwarp();

  // Warp bitonic sort, descending (score desc, then index asc).
  for (int size = 2; size <= sort_size; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = lane; i < sort_size; i += 32) {
        const int partner = i ^ stride;
        if (partner > i) {
          const bool descending = (i & size) == 0;
          const unsigned long long a = keys[i], c = keys[partner];
          if ((a < c) == descending) {
            keys[i] = c;
            keys[partner] = a;
          }
        }
      }
      __syncwarp();
    }
  }

  // Kept set as a bitmask: forced blocks, then the top_k.
  const int words = (nb + 31) / 32;
  for (int w = lane; w < words; w += 32) {
    uint32_t m = 0;
    for (int i = 0; i < 32 && w * 32 + i < nb; ++i) m |= (p.block_forced[w * 32 + i] ? 1u : 0u) << i;
    bits[w] = m;
  }
  __syncwarp();
  for (int i = lane; i < p.top_k; i += 32) {
    const uint32_t j = ~static_cast<uint32_t>(keys[i] & 0xffffffffull);
    atomicOr(&bits[j / 32], 1u << (j % 32));
  }
  __syncwarp();

  // Ascending write-out: warp scan of the words' popcounts.
  int base = 0;
  for (int w0 = 0; w0 < words; w0 += 32) {
    const int w = w0 + lane;
    const uint32_t m = w < words ? bits[w] : 0u;
    int incl = __popc(m);
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffff, incl, o);
      if (lane >= o) incl += y;
    }
    int pos = base + incl - __popc(m);
    for (uint32_t r = m; r != 0; r &= r - 1) out[pos++] = w * 32 + __ffs(r) - 1;
    base += __shfl_sync(0xffffffff, incl, 31);
  }
  if (lane == 0) {
    p.counts[row] = base;
    atomicAdd(reinterpret_cast<unsigned long long*>(p.kept), static_cast<unsigned long long>(base));
  }
}

Status Check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return OkStatus();
  return InternalError(std::string(what) + ": " + cudaGetErrorString(err));
}

}  // namespace

Status LaunchMaskPrediction(const MaskParams& p, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (p.num_blocks > kMaxMaskBlocks) {
    return UnimplementedError("cuda mask prediction: at most " + std::to_string(kMaxMaskBlocks) +
                              " blocks, got " + std::to_string(p.num_blocks));
  }
  if (p.q.head_dim > 256) return UnimplementedError("cuda mask prediction: head_dim > 256");
  const int B = static_cast<int>(p.q.batch), H = static_cast<int>(p.q.heads);
  const dim3 pool_grid(p.num_blocks, B, 2);
  if (p.q.dtype == DType::kBFloat16) {
    PoolKernel<__nv_bfloat16><<<pool_grid, kPoolThreads, 0, s>>>(p);
  } else if (p.q.dtype == DType::kFloat16) {
    PoolKernel<__half><<<pool_grid, kPoolThreads, 0, s>>>(p);
  } else {
    PoolKernel<float><<<pool_grid, kPoolThreads, 0, s>>>(p);
  }
  RAINSERVE_RETURN_IF_ERROR(Check(cudaGetLastError(), "mask pooling launch"));

  int sort_size = 32;
  while (sort_size < p.num_blocks) sort_size <<= 1;
  // Rows per CTA: up to one per warp, within ~160 KiB of sort keys.
  int rows = static_cast<int>((160 << 10) / (sort_size * sizeof(unsigned long long)));
  rows = rows < 1 ? 1 : (rows > kSelectThreads / 32 ? kSelectThreads / 32 : rows);
  const int D = static_cast<int>(p.q.head_dim);
  const size_t smem = rows * sort_size * sizeof(unsigned long long) +
                      (kChunk * (D + 1) + rows * D) * sizeof(float) +
                      rows * (sort_size / 32) * sizeof(uint32_t);
  RAINSERVE_RETURN_IF_ERROR(Check(
      cudaFuncSetAttribute(SelectKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem)),
      "mask select attribute"));
  const dim3 grid((p.num_blocks + rows - 1) / rows, H, B);
  SelectKernel<<<grid, kSelectThreads, smem, s>>>(p, sort_size, rows);
  return Check(cudaGetLastError(), "mask select launch");
}

}  // namespace rainserve::attention::cuda
