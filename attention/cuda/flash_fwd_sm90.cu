// Block-sparse flash attention forward on Hopper tensor cores (wgmma,
// sm_90a). One CTA = one (query block of <= 128 rows, head, batch element):
// two warpgroups x 64 query rows. Each kept key block is one 128-key tile:
//   S = Q K^T   wgmma m64n128k16, A = Q and B = K from shared memory
//   online softmax on the S accumulators (registers, exp2 domain)
//   O += P V    wgmma m64n{D}k16, A = P from registers, B = V (transposed)
// K/V tiles are double-buffered with cp.async by all 256 threads.
//
// Shared memory operands use the 128-byte swizzled layout wgmma reads: a
// [rows][D] tile is stored as D/64 panels of [rows][64] elements (128 bytes
// a row), 16-byte chunk c of row r at chunk c ^ (r % 8). K-major for Q and K
// (rows = M or N, contiguous = the head dim), MN-major for V (rows = keys).
//   Q [128][D], K [2][128][D], V [2][128][D]: 160 KiB (D = 128), 80 KiB (D = 64)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "attention/cuda/flash_launch.cuh"
#include "attention/cuda/kernels.h"
#include "attention/cuda/wgmma_ops.h"

namespace rainserve::attention::cuda {
namespace {

constexpr int kBlockM = 128;  // query rows per CTA
constexpr int kBlockN = 128;  // keys per tile (one key block)
constexpr int kThreads = 256;

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
// Makes this thread's generic-proxy shared-memory writes (cp.async included)
// visible to the async proxy that wgmma reads through.
__device__ __forceinline__ void FenceProxyAsync() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void WgmmaFence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void WgmmaCommit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void WgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}

// Byte offset of element (row, col) in a swizzled [rows][D] tile.
template <int D>
__device__ __forceinline__ int TileOffset(int rows, int row, int col) {
  const int panel = col / 64, chunk = (col % 64) / 8;
  return panel * rows * 128 + row * 128 + ((chunk ^ (row % 8)) * 16) + (col % 8) * 2;
}

// Shared-memory matrix descriptor, 128-byte swizzle.
__device__ __forceinline__ uint64_t Descriptor(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  uint64_t d = 0;
  d |= static_cast<uint64_t>((addr >> 4) & 0x3fff);
  d |= static_cast<uint64_t>((lbo >> 4) & 0x3fff) << 16;
  d |= static_cast<uint64_t>((sbo >> 4) & 0x3fff) << 32;
  d |= uint64_t{1} << 62;  // 128B swizzle
  return d;
}

template <int D, typename T>
__device__ __forceinline__ void LoadTile(unsigned char* smem, int rows, const T* base,
                                         int64_t token_stride, int first, int end) {
  constexpr int kChunks = D / 8;
  for (int c = threadIdx.x; c < rows * kChunks; c += kThreads) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    const int token = first + r;
    const bool valid = token < end;
    const T* src = base + (valid ? static_cast<int64_t>(token) * token_stride : 0) + col;
    CpAsync16(SmemAddr(smem + TileOffset<D>(rows, r, col)), src, valid);
  }
}

template <typename T>
__device__ __forceinline__ uint32_t Pack(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t Pack<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t Pack<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

template <typename T>
struct Ops;
template <>
struct Ops<__nv_bfloat16> {
  __device__ static void QK(float (&s)[64], uint64_t a, uint64_t b, int acc) {
    sm90::WgmmaSS_N128_bf16(s, a, b, acc);
  }
  __device__ static void PV(float (&o)[64], const uint32_t (&p)[4], uint64_t b) {
    sm90::WgmmaRS_N128_bf16<1>(o, p, b, 1);
  }
  __device__ static void PV(float (&o)[32], const uint32_t (&p)[4], uint64_t b) {
    sm90::WgmmaRS_N64_bf16<1>(o, p, b, 1);
  }
};
template <>
struct Ops<__half> {
  __device__ static void QK(float (&s)[64], uint64_t a, uint64_t b, int acc) {
    sm90::WgmmaSS_N128_f16(s, a, b, acc);
  }
  __device__ static void PV(float (&o)[64], const uint32_t (&p)[4], uint64_t b) {
    sm90::WgmmaRS_N128_f16<1>(o, p, b, 1);
  }
  __device__ static void PV(float (&o)[32], const uint32_t (&p)[4], uint64_t b) {
    sm90::WgmmaRS_N64_f16<1>(o, p, b, 1);
  }
};

template <int D, typename T>
__global__ void __launch_bounds__(kThreads, 1) FlashForwardSm90Kernel(const FlashParams p) {
  extern __shared__ __align__(1024) unsigned char smem[];
  constexpr int kTileBytes = kBlockN * D * 2;
  unsigned char* sQ = smem;
  unsigned char* sK = smem + kBlockM * D * 2;
  unsigned char* sV = sK + 2 * kTileBytes;

  const int qb = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int wg = threadIdx.x / 128;             // warpgroup: query rows [64 wg, 64 wg + 64)
  const int warp = (threadIdx.x % 128) / 32;    // warp in the warpgroup: 16 rows each
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;

  const int q_start = p.block_starts[qb], q_end = p.block_starts[qb + 1];
  const T* q = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[2];
  const T* k = static_cast<const T*>(p.k) + b * p.k_stride[0] + h * p.k_stride[2];
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride[0] + h * p.v_stride[2];
  const int64_t mask_row = (static_cast<int64_t>(b) * p.heads + h) * p.num_blocks + qb;
  const int count = p.mask_counts[mask_row];
  const int32_t* kept = p.mask_indices + mask_row * p.num_blocks;

  LoadTile<D>(sQ, kBlockM, q + static_cast<int64_t>(q_start) * p.q_stride[1], p.q_stride[1], 0,
              q_end - q_start);
  if (count > 0) {
    const int kb = kept[0];
    LoadTile<D>(sK, kBlockN, k, p.k_stride[1], p.block_starts[kb], p.block_starts[kb + 1]);
    LoadTile<D>(sV, kBlockN, v, p.v_stride[1], p.block_starts[kb], p.block_starts[kb + 1]);
  }
  CpAsyncCommit();

  constexpr int kORegs = D / 2;  // accumulator floats per thread for n = D
  float o[kORegs];
  for (int i = 0; i < kORegs; ++i) o[i] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // rows g and g + 8 of this warp
  // Q of this warpgroup: rows [64 wg, 64 wg + 64) of the tile; K-major, SBO = 8 rows.
  const uint32_t q_base = SmemAddr(sQ) + wg * 64 * 128;

  for (int i = 0; i < count; ++i) {
    const int buf = i & 1;
    const int kb = kept[i];
    const int first = p.block_starts[kb], end = p.block_starts[kb + 1];
    if (i + 1 < count) {
      const int nb = kept[i + 1];
      LoadTile<D>(sK + (buf ^ 1) * kTileBytes, kBlockN, k, p.k_stride[1], p.block_starts[nb],
                  p.block_starts[nb + 1]);
      LoadTile<D>(sV + (buf ^ 1) * kTileBytes, kBlockN, v, p.v_stride[1], p.block_starts[nb],
                  p.block_starts[nb + 1]);
      CpAsyncCommit();
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    FenceProxyAsync();
    __syncthreads();
    const uint32_t k_base = SmemAddr(sK + buf * kTileBytes);
    const uint32_t v_base = SmemAddr(sV + buf * kTileBytes);

    // S = Q K^T over D / 16 k-steps: within a 64-element panel the k-step
    // advances the start address by 32 bytes; panels are rows * 128 bytes apart.
    float s[64];
    for (int j = 0; j < 64; ++j) s[j] = 0.0f;
    WgmmaFence();
    for (int ks = 0; ks < D / 16; ++ks) {
      const uint32_t panel = ks / 4, within = (ks % 4) * 32;
      const uint64_t da = Descriptor(q_base + panel * kBlockM * 128 + within, 16, 1024);
      const uint64_t db = Descriptor(k_base + panel * kBlockN * 128 + within, 16, 1024);
      Ops<T>::QK(s, da, db, ks > 0);
    }
    WgmmaCommit();
    WgmmaWait();

    // Online softmax. s[4j + e]: row g (e < 2) or g + 8, key 8j + 2t + (e & 1).
    float row_max[2] = {-INFINITY, -INFINITY};
    for (int j = 0; j < 16; ++j) {
      for (int e = 0; e < 4; ++e) {
        const int key = first + 8 * j + 2 * t + (e & 1);
        s[4 * j + e] = key < end ? s[4 * j + e] * p.scale_log2 : -INFINITY;
        row_max[e / 2] = fmaxf(row_max[e / 2], s[4 * j + e]);
      }
    }
    float alpha[2];
    for (int r = 0; r < 2; ++r) {
      row_max[r] = fmaxf(row_max[r], __shfl_xor_sync(0xffffffff, row_max[r], 1));
      row_max[r] = fmaxf(row_max[r], __shfl_xor_sync(0xffffffff, row_max[r], 2));
      const float m_new = fmaxf(m[r], row_max[r]);
      alpha[r] = exp2f(m[r] - m_new);
      m[r] = m_new;
      l[r] *= alpha[r];
    }
    uint32_t pf[8][4];  // P as the A operand: 8 k-steps of 16 keys
    for (int j = 0; j < 16; ++j) {
      const float p0 = exp2f(s[4 * j] - m[0]), p1 = exp2f(s[4 * j + 1] - m[0]);
      const float p2 = exp2f(s[4 * j + 2] - m[1]), p3 = exp2f(s[4 * j + 3] - m[1]);
      l[0] += p0 + p1;
      l[1] += p2 + p3;
      pf[j / 2][(j % 2) * 2 + 0] = Pack<T>(p0, p1);
      pf[j / 2][(j % 2) * 2 + 1] = Pack<T>(p2, p3);
    }
    for (int j = 0; j < kORegs / 4; ++j) {
      o[4 * j] *= alpha[0];
      o[4 * j + 1] *= alpha[0];
      o[4 * j + 2] *= alpha[1];
      o[4 * j + 3] *= alpha[1];
    }

    // O += P V: V is [keys][D] (MN-major for B = V, k = keys): 16 keys = two
    // 8-key groups (SBO = 1024 bytes); D panels are kBlockN * 128 bytes apart (LBO).
    WgmmaFence();
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      const uint64_t dv = Descriptor(v_base + kk * 16 * 128, kBlockN * 128, 1024);
      Ops<T>::PV(o, pf[kk], dv);
    }
    WgmmaCommit();
    WgmmaWait();
    __syncthreads();  // both warpgroups are done with `buf` before it is refilled
  }
  CpAsyncWait<0>();

  // Normalise and store rows g and g + 8 of this warp.
  T* out = static_cast<T*>(p.out) + b * p.o_stride[0] + h * p.o_stride[2];
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffff, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffff, l[r], 2);
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
    const int row = q_start + wg * 64 + warp * 16 + g + 8 * r;
    if (row >= q_end) continue;
    T* dst = out + static_cast<int64_t>(row) * p.o_stride[1];
    for (int j = 0; j < kORegs / 4; ++j) {
      *reinterpret_cast<uint32_t*>(dst + 8 * j + 2 * t) =
          Pack<T>(o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv);
    }
    if (p.lse != nullptr && t == 0) {
      p.lse[(static_cast<int64_t>(b) * p.heads + h) * p.tokens + row] =
          (m[r] + log2f(l[r])) * 0.69314718055994531f;
    }
  }
}

}  // namespace

Status LaunchFlashForwardSm90(const FlashParams& p, void* stream) {
  return DispatchFlash(p, "sm90 flash forward", [&](auto head_dim, auto type) {
    constexpr int D = decltype(head_dim)::value;
    using T = typename decltype(type)::type;
    constexpr int kSmem = (kBlockM + 4 * kBlockN) * D * 2;
    return LaunchFlash(FlashForwardSm90Kernel<D, T>, kThreads, kSmem, p,
                       static_cast<cudaStream_t>(stream), "sm90 flash forward");
  });
}

}  // namespace rainserve::attention::cuda
