// Fused RainFusion2.0 mask prediction on the GPU, nothing of size N x N:
//   1. PoolKernel: block means of q and k -> pooled [2, B, H, nb, D] fp32.
//      One CTA per (block, batch, q|k); threads stride over the H*D columns,
//      so each token row is read once, coalesced.
//   2. SelectKernel: one CTA per (query block, head, batch): scores of the
//      row against every key block (fp32 dot products of pooled means),
//      a bitonic sort in shared memory on (score desc, index asc), the first
//      top_k plus every forced block, written ascending with a block scan.
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

__device__ __forceinline__ float LoadF(const void* base, DType dtype, int64_t i) {
  if (dtype == DType::kBFloat16) return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
  if (dtype == DType::kFloat16) return __half2float(static_cast<const __half*>(base)[i]);
  return static_cast<const float*>(base)[i];
}

__global__ void PoolKernel(const MaskParams p) {
  const int blk = blockIdx.x, b = blockIdx.y, which = blockIdx.z;
  const TensorView& x = which == 0 ? p.q : p.k;
  const int H = static_cast<int>(x.heads), D = static_cast<int>(x.head_dim);
  const int nb = p.num_blocks;
  const int begin = p.block_starts[blk], end = p.block_starts[blk + 1];
  const float inv = 1.0f / static_cast<float>(end - begin);
  float* out = p.pooled + static_cast<int64_t>(which) * x.batch * H * nb * D;
  for (int c = threadIdx.x; c < H * D; c += kPoolThreads) {
    const int h = c / D, d = c % D;
    float sum = 0.0f;
    for (int n = begin; n < end; ++n) sum += LoadF(x.data, x.dtype, x.Offset(b, n, h) + d);
    out[((static_cast<int64_t>(b) * H + h) * nb + blk) * D + d] = sum * inv;
  }
}

// Orders floats as unsigned integers (larger float -> larger key).
__device__ __forceinline__ uint32_t OrderedBits(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__global__ void __launch_bounds__(kSelectThreads) SelectKernel(const MaskParams p, int sort_size) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // keys[sort_size] (uint64), then keep[nb] (int32), then scan scratch.
  auto* keys = reinterpret_cast<unsigned long long*>(smem_raw);
  auto* keep = reinterpret_cast<int*>(keys + sort_size);
  __shared__ int warp_sums[kSelectThreads / 32];
  __shared__ float qrow[256];

  const int qb = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int nb = p.num_blocks, H = static_cast<int>(p.q.heads), D = static_cast<int>(p.q.head_dim);
  const int64_t row = (static_cast<int64_t>(b) * H + h) * nb + qb;
  int32_t* out = p.indices + row * nb;
  const bool forced_row = p.block_forced[qb] != 0;

  if (forced_row) {
    for (int j = threadIdx.x; j < nb; j += kSelectThreads) out[j] = j;
    if (threadIdx.x == 0) {
      p.counts[row] = nb;
      atomicAdd(reinterpret_cast<unsigned long long*>(p.kept), static_cast<unsigned long long>(nb));
    }
    return;
  }

  const int64_t per = static_cast<int64_t>(p.q.batch) * H * nb * D;
  const float* qp = p.pooled + row * D;
  const float* kp = p.pooled + per + (static_cast<int64_t>(b) * H + h) * nb * D;
  for (int d = threadIdx.x; d < D; d += kSelectThreads) qrow[d] = qp[d];
  __syncthreads();

  // Scores -> sortable keys: high 32 bits the score, low 32 bits ~index so
  // that equal scores put the lower index first in a descending sort.
  for (int j = threadIdx.x; j < sort_size; j += kSelectThreads) {
    unsigned long long key = 0;  // padding sorts last
    if (j < nb) {
      const float* kr = kp + static_cast<int64_t>(j) * D;
      float dot = 0.0f;
      for (int d = 0; d < D; ++d) dot += qrow[d] * kr[d];
      key = (static_cast<unsigned long long>(OrderedBits(dot * p.scale)) << 32) |
            static_cast<uint32_t>(~static_cast<uint32_t>(j));
    }
    keys[j] = key;
  }
  __syncthreads();

  // Bitonic sort, descending.
  for (int size = 2; size <= sort_size; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < sort_size; i += kSelectThreads) {
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
      __syncthreads();
    }
  }

  for (int j = threadIdx.x; j < nb; j += kSelectThreads) keep[j] = p.block_forced[j];
  __syncthreads();
  for (int i = threadIdx.x; i < p.top_k; i += kSelectThreads) {
    keep[~static_cast<uint32_t>(keys[i] & 0xffffffffull)] = 1;
  }
  __syncthreads();

  // Write kept indices in ascending order: chunked block-wide exclusive scan.
  int base = 0;
  for (int start = 0; start < nb; start += kSelectThreads) {
    const int j = start + threadIdx.x;
    const int flag = j < nb ? keep[j] : 0;
    int incl = flag;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffff, incl, o);
      if (lane >= o) incl += y;
    }
    if (lane == 31) warp_sums[warp] = incl;
    __syncthreads();
    int warp_offset = 0, total = 0;
    for (int w = 0; w < kSelectThreads / 32; ++w) {
      if (w < warp) warp_offset += warp_sums[w];
      total += warp_sums[w];
    }
    if (flag) out[base + warp_offset + incl - 1] = j;
    base += total;
    __syncthreads();
  }
  if (threadIdx.x == 0) {
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
  PoolKernel<<<dim3(p.num_blocks, B, 2), kPoolThreads, 0, s>>>(p);
  RAINSERVE_RETURN_IF_ERROR(Check(cudaGetLastError(), "mask pooling launch"));
  int sort_size = 1;
  while (sort_size < p.num_blocks) sort_size <<= 1;
  const size_t smem = sort_size * sizeof(unsigned long long) + p.num_blocks * sizeof(int);
  RAINSERVE_RETURN_IF_ERROR(Check(
      cudaFuncSetAttribute(SelectKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem)),
      "mask select attribute"));
  SelectKernel<<<dim3(p.num_blocks, H, B), kSelectThreads, smem, s>>>(p, sort_size);
  return Check(cudaGetLastError(), "mask select launch");
}

}  // namespace rainserve::attention::cuda
