// Block-sparse flash attention forward for sm_80+ tensor cores (mma.sync
// m16n8k16, bf16/fp16 in, fp32 accumulate), the first CUDA kernel of the
// backend. One CTA = one (query block of <= 128 rows, head, batch element);
// 4 warps x 32 rows (two m-tiles, so each K/V fragment loaded from shared
// memory feeds two MMAs). The CTA walks its kept key blocks in 64-key tiles,
// double-buffered with cp.async, with an online softmax in registers; Q
// fragments are re-read from shared memory per tile to save registers.
//
// Grid: x = query block (fastest), y = head, z = batch, so the query blocks
// of one head run together and that head's K/V stay in L2.
//
// Shared memory (bf16/fp16, rows of D elements, 16-byte chunks XOR-swizzled
// by row so ldmatrix is conflict-free):
//   Q [128][D], K [2][64][D], V [2][64][D]  -> 96 KiB for D = 128, 48 KiB for 64
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "attention/cuda/flash_launch.cuh"
#include "attention/cuda/kernels.h"

namespace rainserve::attention::cuda {
namespace {

constexpr int kBlockM = 128;  // query rows per CTA
constexpr int kBlockN = 64;   // keys per tile
// 4 warps x 32 rows (two m-tiles of 16), two CTAs per SM. Measured on an
// H200 against 8 warps x 16 rows (one m-tile, Q kept in registers, one CTA
// per SM): W1 dense 24.7 vs 29.7 ms, W2 dense 420 vs 505 ms (docs/attention.md).
constexpr int kMTiles = 2;
constexpr int kThreads = kBlockM / (16 * kMTiles) * 32;

// ---- PTX wrappers ---------------------------------------------------------

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;  // 0: fill with zeros
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void LdMatrixX4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                           uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t addr, uint32_t& r0, uint32_t& r1,
                                                uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

template <typename T>
struct Mma;

template <>
struct Mma<__nv_bfloat16> {
  __device__ __forceinline__ static void Run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ static uint32_t Pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};

template <>
struct Mma<__half> {
  __device__ __forceinline__ static void Run(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ static uint32_t Pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};

// Element offset of (row, col) in a swizzled [rows][D] tile.
template <int D>
__device__ __forceinline__ int Swizzle(int row, int col) {
  const int chunk = (col >> 3) ^ (row & 7);
  return row * D + (chunk << 3) + (col & 7);
}

// Copies `rows` rows of a [*, D] tile (16-byte chunks) starting at token
// `first`; rows at or past `end` are zero-filled.
template <int D, typename T>
__device__ __forceinline__ void LoadTile(T* smem, const T* base, int64_t token_stride, int first,
                                         int end, int rows) {
  constexpr int kChunks = D / 8;
  for (int c = threadIdx.x; c < rows * kChunks; c += kThreads) {
    const int r = c / kChunks, chunk = c % kChunks;
    const int token = first + r;
    const bool valid = token < end;
    const T* src = base + (valid ? static_cast<int64_t>(token) * token_stride : 0) + chunk * 8;
    CpAsync16(SmemAddr(smem + Swizzle<D>(r, chunk * 8)), src, valid);
  }
}

template <int D, typename T>
__global__ void __launch_bounds__(kThreads, 2) FlashForwardKernel(const FlashParams p) {
  constexpr int kRowsPerWarp = 16 * kMTiles;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + kBlockM * D;
  T* sV = sK + 2 * kBlockN * D;

  const FlashTile tile = TileOf(p);
  const int qb = tile.qb, h = tile.h, b = tile.b;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;  // mma fragment row group and column pair

  const int q_start = p.block_starts[qb], q_end = p.block_starts[qb + 1];
  const T* q = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[2];
  const T* k = static_cast<const T*>(p.k) + b * p.k_stride[0] + h * p.k_stride[2];
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride[0] + h * p.v_stride[2];
  const int64_t mask_row = (static_cast<int64_t>(b) * p.heads + h) * p.num_blocks + qb;
  const int count = p.mask_counts[mask_row];
  const int32_t* kept = p.mask_indices + mask_row * p.num_blocks;

  // Tiles: each kept key block gives one or two 64-key tiles.
  auto tile_of = [&](int block_i, int sub, int& first, int& end) {
    const int kb = kept[block_i];
    first = p.block_starts[kb] + sub * kBlockN;
    end = p.block_starts[kb + 1];
  };
  auto next_tile = [&](int& block_i, int& sub) {
    int first, end;
    tile_of(block_i, sub, first, end);
    if (sub == 0 && first + kBlockN < end) {
      sub = 1;
    } else {
      ++block_i;
      sub = 0;
    }
  };

  // Prologue: Q and the first K/V tile.
  LoadTile<D>(sQ, q + static_cast<int64_t>(q_start) * p.q_stride[1], p.q_stride[1], 0,
              q_end - q_start, kBlockM);
  int cur_block = 0, cur_sub = 0;
  if (count > 0) {
    int first, end;
    tile_of(0, 0, first, end);
    LoadTile<D>(sK, k, p.k_stride[1], first, end, kBlockN);
    LoadTile<D>(sV, v, p.v_stride[1], first, end, kBlockN);
  }
  CpAsyncCommit();

  constexpr int kSteps = D / 16;   // k-steps of Q K^T
  constexpr int kOTiles = D / 8;   // n-tiles of O
  // This warp's rows: kRowsPerWarp from warp * kRowsPerWarp, as m-tiles of 16.
  // Accumulator rows of m-tile mi: g + 16 mi (c0, c1) and g + 8 + 16 mi (c2, c3).
  float o[kMTiles][kOTiles][4];
  for (int mi = 0; mi < kMTiles; ++mi)
    for (int j = 0; j < kOTiles; ++j) o[mi][j][0] = o[mi][j][1] = o[mi][j][2] = o[mi][j][3] = 0.0f;
  float m[2 * kMTiles], l[2 * kMTiles];
  for (int r = 0; r < 2 * kMTiles; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
  }
  const int q_row = warp * kRowsPerWarp + (lane % 8) + ((lane / 8) % 2) * 8;  // m-tile 0

  int buf = 0;
  while (cur_block < count) {
    int first, end;
    tile_of(cur_block, cur_sub, first, end);
    int nxt_block = cur_block, nxt_sub = cur_sub;
    next_tile(nxt_block, nxt_sub);
    if (nxt_block < count) {
      int nfirst, nend;
      tile_of(nxt_block, nxt_sub, nfirst, nend);
      LoadTile<D>(sK + (buf ^ 1) * kBlockN * D, k, p.k_stride[1], nfirst, nend, kBlockN);
      LoadTile<D>(sV + (buf ^ 1) * kBlockN * D, v, p.v_stride[1], nfirst, nend, kBlockN);
      CpAsyncCommit();
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    const T* tk = sK + buf * kBlockN * D;
    const T* tv = sV + buf * kBlockN * D;

    // S = Q K^T: kRowsPerWarp rows x 64 keys per warp (m-tiles x 8 n-tiles).
    float s[kMTiles][8][4];
    for (int mi = 0; mi < kMTiles; ++mi)
      for (int j = 0; j < 8; ++j) s[mi][j][0] = s[mi][j][1] = s[mi][j][2] = s[mi][j][3] = 0.0f;
    for (int st = 0; st < kSteps; st += 2) {
      uint32_t qf[kMTiles][2][4];
      for (int mi = 0; mi < kMTiles; ++mi) {
        for (int e = 0; e < 2; ++e) {
          const int col = (st + e) * 16 + (lane / 16) * 8;
          LdMatrixX4(SmemAddr(sQ + Swizzle<D>(q_row + 16 * mi, col)), qf[mi][e][0], qf[mi][e][1],
                     qf[mi][e][2], qf[mi][e][3]);
        }
      }
      for (int j = 0; j < 8; ++j) {
        uint32_t b0, b1, b2, b3;
        const int key = j * 8 + (lane % 8);
        const int col = st * 16 + (lane / 8) * 8;
        LdMatrixX4(SmemAddr(tk + Swizzle<D>(key, col)), b0, b1, b2, b3);
        for (int mi = 0; mi < kMTiles; ++mi) {
          Mma<T>::Run(s[mi][j], qf[mi][0], b0, b1);
          Mma<T>::Run(s[mi][j], qf[mi][1], b2, b3);
        }
      }
    }

    // Online softmax (log2 domain); row r = 2 mi + (e / 2).
    float row_max[2 * kMTiles];
    for (int r = 0; r < 2 * kMTiles; ++r) row_max[r] = -INFINITY;
    for (int mi = 0; mi < kMTiles; ++mi) {
      for (int j = 0; j < 8; ++j) {
        for (int e = 0; e < 4; ++e) {
          const int key = first + j * 8 + 2 * t + (e & 1);
          s[mi][j][e] = key < end ? s[mi][j][e] * p.scale_log2 : -INFINITY;
          row_max[2 * mi + e / 2] = fmaxf(row_max[2 * mi + e / 2], s[mi][j][e]);
        }
      }
    }
    float alpha[2 * kMTiles];
    for (int r = 0; r < 2 * kMTiles; ++r) {
      row_max[r] = fmaxf(row_max[r], __shfl_xor_sync(0xffffffff, row_max[r], 1));
      row_max[r] = fmaxf(row_max[r], __shfl_xor_sync(0xffffffff, row_max[r], 2));
      const float m_new = fmaxf(m[r], row_max[r]);
      alpha[r] = exp2f(m[r] - m_new);
      m[r] = m_new;
      l[r] *= alpha[r];
    }
    for (int mi = 0; mi < kMTiles; ++mi) {
      for (int j = 0; j < 8; ++j) {
        for (int e = 0; e < 4; ++e) {
          const int r = 2 * mi + e / 2;
          s[mi][j][e] = exp2f(s[mi][j][e] - m[r]);
          l[r] += s[mi][j][e];
        }
      }
      for (int j = 0; j < kOTiles; ++j) {
        o[mi][j][0] *= alpha[2 * mi];
        o[mi][j][1] *= alpha[2 * mi];
        o[mi][j][2] *= alpha[2 * mi + 1];
        o[mi][j][3] *= alpha[2 * mi + 1];
      }
    }

    // O += P V: A = P (per m-tile 16 x 64), B = V tile via ldmatrix.trans.
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t pf[kMTiles][4];
      for (int mi = 0; mi < kMTiles; ++mi) {
        pf[mi][0] = Mma<T>::Pack(s[mi][2 * kk][0], s[mi][2 * kk][1]);
        pf[mi][1] = Mma<T>::Pack(s[mi][2 * kk][2], s[mi][2 * kk][3]);
        pf[mi][2] = Mma<T>::Pack(s[mi][2 * kk + 1][0], s[mi][2 * kk + 1][1]);
        pf[mi][3] = Mma<T>::Pack(s[mi][2 * kk + 1][2], s[mi][2 * kk + 1][3]);
      }
      const int key = kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
      for (int j = 0; j < kOTiles; j += 2) {
        uint32_t b0, b1, b2, b3;
        const int col = j * 8 + (lane / 16) * 8;
        LdMatrixX4Trans(SmemAddr(tv + Swizzle<D>(key, col)), b0, b1, b2, b3);
        for (int mi = 0; mi < kMTiles; ++mi) {
          Mma<T>::Run(o[mi][j], pf[mi], b0, b1);
          Mma<T>::Run(o[mi][j + 1], pf[mi], b2, b3);
        }
      }
    }
    __syncthreads();  // every warp is done with `buf` before it is refilled
    buf ^= 1;
    cur_block = nxt_block;
    cur_sub = nxt_sub;
  }
  CpAsyncWait<0>();  // Q's group when there were no tiles

  // Normalise and store.
  const FlashTile again = TileOf(p);  // recomputed, not kept live through the loop
  T* out = static_cast<T*>(p.out) + again.b * p.o_stride[0] + again.h * p.o_stride[2];
  for (int r = 0; r < 2 * kMTiles; ++r) {
    l[r] += __shfl_xor_sync(0xffffffff, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffff, l[r], 2);
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
    const int mi = r / 2, half = r % 2;
    const int row = q_start + warp * kRowsPerWarp + 16 * mi + 8 * half + g;
    if (row >= q_end) continue;
    T* dst = out + static_cast<int64_t>(row) * p.o_stride[1];
    for (int j = 0; j < kOTiles; ++j) {
      *reinterpret_cast<uint32_t*>(dst + j * 8 + 2 * t) =
          Mma<T>::Pack(o[mi][j][2 * half] * inv, o[mi][j][2 * half + 1] * inv);
    }
    if (p.lse != nullptr && t == 0) {
      p.lse[(static_cast<int64_t>(again.b) * p.heads + again.h) * p.tokens + row] =
          (m[r] + log2f(l[r])) * 0.69314718055994531f;
    }
  }
}

}  // namespace

Status LaunchFlashForward(const FlashParams& p, void* stream) {
  return DispatchFlash(p, "cuda flash forward", [&](auto head_dim, auto type) {
    constexpr int D = decltype(head_dim)::value;
    using T = typename decltype(type)::type;
    constexpr int kSmem = (kBlockM + 4 * kBlockN) * D * static_cast<int>(sizeof(T));
    return LaunchFlash(FlashForwardKernel<D, T>, kThreads, kSmem, p, static_cast<cudaStream_t>(stream),
                       "cuda flash forward");
  });
}

}  // namespace rainserve::attention::cuda
