// Block-sparse flash attention forward for Hopper (sm_90a): TMA loads, a
// producer warp and two consumer warpgroups, wgmma with the softmax of one key
// tile overlapping the matrix products of its neighbours.
//
// One CTA = one (query block of <= 128 rows, head, batch element), in the
// order of FlashTileOf (kernels.h): the rows that keep every key block
// first, then head by head, so that a head's K/V stay in L2. 384 threads, three warpgroups:
//   0, 1  consumers, 64 query rows each, 240 registers a thread (setmaxnreg)
//   2     producer, 24 registers: one thread issues every TMA copy
// The producer fills a ring of kStages (K, V) stages, each completing on its
// own "full" mbarrier (K and V apart, so S = Q K^T starts before V lands);
// consumers release a stage through its "empty" mbarrier after P V read it.
//
// Per consumer warpgroup and kept key block i (FlashAttention-3's in-warpgroup
// pipelining):
//   issue S(i) = Q K(i)^T               wgmma m64n128k16, A = Q (registers), B = K (smem)
//   issue O += P(i-1) V(i-1)            wgmma m64n{D}k16, A = P (registers)
//   wait S(i); online softmax of S(i) -> P(i) while P V still runs
//   wait P V; release stage i-1; rescale O if a row's max moved (kMaxSlack)
// Registers: S 64 + P 2 x 32 (packed) + Q D/4 (packed, loaded once with
// ldmatrix) + O D/2 floats per thread.
//
// Shared memory, every tile stored as D/64 panels of [rows][64] elements with
// the 128-byte swizzle that TMA writes and wgmma reads (16-byte chunk c of row
// r at c ^ (r % 8)):
//   Q [128][D], K [kStages][128][D], V [kStages][128][D]; then the mbarriers.
//   D = 128: 32 + 3 x 64 KiB = 224 KiB; D = 64: 16 + 3 x 32 KiB = 112 KiB.
// Rows past a block's end are loaded (TMA fills rows past N with zeros) and
// masked: keys by -inf scores, query rows by not being stored.
//
// Measured on an H200 (bf16, D = 128, bench/results/attention_gpu.json):
// 620-632 TFLOP/s dense at W1/W2, 1.11-1.13x LibTorch SDPA. Ordering the two
// consumer warpgroups' issues (ping-pong through named barriers) gains
// nothing (within +-1%, docs/benchmarks.md).
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <cmath>
#include <string>

#include "attention/cuda/flash_launch.cuh"
#include "attention/cuda/kernels.h"
#include "attention/cuda/wgmma_ops.h"

namespace rainserve::attention::cuda {
namespace {

constexpr int kBlockM = 128;  // query rows per CTA
constexpr int kBlockN = 128;  // keys per tile (one key block)
constexpr int kStages = 3;    // (K, V) stages in the ring
// A row's running max moves only when a key tile's max beats it by more than
// this many exp2 units (FlashAttention-4's conditional rescaling): P stays
// <= 2^8, the result is the same after normalisation, and O is rescaled only
// on a move, in practice on the first tiles of a row.
constexpr float kMaxSlack = 8.0f;
constexpr int kConsumerThreads = 256;
constexpr int kThreads = kConsumerThreads + 128;

// ---- PTX wrappers ---------------------------------------------------------

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void MbarInit(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
// The producer's arrival, announcing `bytes` of TMA traffic on the barrier.
__device__ __forceinline__ void MbarExpectTx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void MbarArrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void MbarWait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}

// One [rows][64] panel of a [D, tokens, heads, batch] tensor map into shared
// memory, completing on `bar`.
__device__ __forceinline__ void TmaLoad(uint32_t dst, const CUtensorMap* map, int dim, int token,
                                        int head, int batch, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(dim), "r"(token), "r"(head), "r"(batch), "r"(bar)
      : "memory");
}

__device__ __forceinline__ void WgmmaFence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void WgmmaCommit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void WgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Pins accumulator / fragment registers at this point of the program, so the
// compiler neither sinks their writes past a wgmma fence nor hoists their
// reads above a wgmma wait (either would make ptxas serialise the wgmmas).
template <int N>
__device__ __forceinline__ void PinRegs(float (&r)[N]) {
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
__device__ __forceinline__ void PinRegs(uint32_t (&r)[8][4]) {
  for (int i = 0; i < 8; ++i) {
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
  }
}

__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
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
  __device__ static void QK(float (&s)[64], const uint32_t (&a)[4], uint64_t b, int acc) {
    sm90::WgmmaRS_N128_bf16<0>(s, a, b, acc);
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
  __device__ static void QK(float (&s)[64], const uint32_t (&a)[4], uint64_t b, int acc) {
    sm90::WgmmaRS_N128_f16<0>(s, a, b, acc);
  }
  __device__ static void PV(float (&o)[64], const uint32_t (&p)[4], uint64_t b) {
    sm90::WgmmaRS_N128_f16<1>(o, p, b, 1);
  }
  __device__ static void PV(float (&o)[32], const uint32_t (&p)[4], uint64_t b) {
    sm90::WgmmaRS_N64_f16<1>(o, p, b, 1);
  }
};

// ---- consumer pieces --------------------------------------------------------

// Issues S = Q K^T over D / 16 k-steps (not waited for), A = Q from this
// thread's fragments, B = K from shared memory. Within a 64-element panel a
// k-step advances K's start address by 32 bytes; panels are 128 rows * 128
// bytes apart.
template <int D, typename T>
__device__ __forceinline__ void IssueQK(float (&s)[64], const uint32_t (&qf)[D / 16][4],
                                        uint32_t k_base) {
  for (int ks = 0; ks < D / 16; ++ks) {
    const uint32_t panel = ks / 4, within = (ks % 4) * 32;
    const uint64_t db = Descriptor(k_base + panel * kBlockN * 128 + within, 16, 1024);
    Ops<T>::QK(s, qf[ks], db, ks > 0);
  }
}

// This warp's 16 query rows of Q as wgmma A fragments for every k-step
// (ldmatrix.x4 from the swizzled panels): lane L addresses row L % 8 of
// 8 x 8 matrix L / 8 = (rows +8 if odd, dims +8 if >= 2), so register j
// holds rows g / g + 8 and dims 2t / 8 + 2t as the A layout wants.
template <int D>
__device__ __forceinline__ void LoadQFragments(uint32_t (&qf)[D / 16][4], uint32_t q_tile,
                                               int first_row, int lane) {
  const int mi = lane / 8, row = first_row + (mi % 2) * 8 + lane % 8;
  for (int ks = 0; ks < D / 16; ++ks) {
    const int chunk = (ks % 4) * 2 + mi / 2;
    const uint32_t addr = q_tile + (ks / 4) * kBlockM * 128 + row * 128 + ((chunk ^ (row % 8)) * 16);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(qf[ks][0]), "=r"(qf[ks][1]), "=r"(qf[ks][2]), "=r"(qf[ks][3])
                 : "r"(addr));
  }
}

// Issues O += P V (not waited for). V is [keys][D], MN-major as B with
// k = keys: 16 keys = two 8-key groups (SBO = 1024 bytes); D panels are
// kBlockN * 128 bytes apart (LBO).
template <int D, typename T>
__device__ __forceinline__ void IssuePV(float (&o)[D / 2], const uint32_t (&pf)[8][4],
                                        uint32_t v_base) {
  for (int kk = 0; kk < kBlockN / 16; ++kk) {
    Ops<T>::PV(o, pf[kk], Descriptor(v_base + kk * 16 * 128, kBlockN * 128, 1024));
  }
}

// Online softmax of one tile. s[4j + e] holds row g (e < 2) or g + 8 of this
// warp, key 8j + 2t + (e & 1) of the tile; `valid` keys are real (the rest
// are masked). m is the max of the raw scores the exponents are taken
// against (the running row max, moved lazily: kMaxSlack), l this thread's
// share of the running row sum; alpha the factor O must be rescaled by (1
// when m did not move).
template <typename T>
__device__ __forceinline__ void Softmax(float (&s)[64], int valid, int t, float scale_log2,
                                        float (&m)[2], float (&l)[2], float (&alpha)[2],
                                        uint32_t (&pf)[8][4]) {
  if (valid < kBlockN) {
    for (int j = 0; j < 16; ++j) {
      for (int e = 0; e < 4; ++e) {
        if (8 * j + 2 * t + (e & 1) >= valid) s[4 * j + e] = -INFINITY;
      }
    }
  }
  float row_max[2] = {m[0], m[1]};
  for (int j = 0; j < 16; ++j) {
    row_max[0] = fmaxf(row_max[0], fmaxf(s[4 * j], s[4 * j + 1]));
    row_max[1] = fmaxf(row_max[1], fmaxf(s[4 * j + 2], s[4 * j + 3]));
  }
  float neg_max_scaled[2];
  for (int r = 0; r < 2; ++r) {
    row_max[r] = fmaxf(row_max[r], __shfl_xor_sync(0xffffffff, row_max[r], 1));
    row_max[r] = fmaxf(row_max[r], __shfl_xor_sync(0xffffffff, row_max[r], 2));
    const bool move = row_max[r] * scale_log2 > m[r] * scale_log2 + kMaxSlack;  // m = -inf: moves
    alpha[r] = move ? Exp2((m[r] - row_max[r]) * scale_log2) : 1.0f;  // 0 on the first tile
    if (move) m[r] = row_max[r];
    neg_max_scaled[r] = -m[r] * scale_log2;
    l[r] *= alpha[r];
  }
  for (int j = 0; j < 16; ++j) {
    const float p0 = Exp2(fmaf(s[4 * j], scale_log2, neg_max_scaled[0]));
    const float p1 = Exp2(fmaf(s[4 * j + 1], scale_log2, neg_max_scaled[0]));
    const float p2 = Exp2(fmaf(s[4 * j + 2], scale_log2, neg_max_scaled[1]));
    const float p3 = Exp2(fmaf(s[4 * j + 3], scale_log2, neg_max_scaled[1]));
    l[0] += p0 + p1;
    l[1] += p2 + p3;
    pf[j / 2][(j % 2) * 2 + 0] = Pack<T>(p0, p1);
    pf[j / 2][(j % 2) * 2 + 1] = Pack<T>(p2, p3);
  }
}

template <int D, typename T>
__global__ void __launch_bounds__(kThreads, 1)
    FlashForwardSm90Kernel(const FlashParams p, const __grid_constant__ CUtensorMap map_q,
                              const __grid_constant__ CUtensorMap map_k,
                              const __grid_constant__ CUtensorMap map_v) {
  extern __shared__ __align__(1024) unsigned char smem[];
  constexpr int kTileBytes = kBlockN * D * 2;
  constexpr int kPanels = D / 64;
  unsigned char* sQ = smem;
  unsigned char* sK = smem + kBlockM * D * 2;
  unsigned char* sV = sK + kStages * kTileBytes;
  uint64_t* bars = reinterpret_cast<uint64_t*>(sV + kStages * kTileBytes);
  // bars: [0] Q full, [1, 1 + S) K full, [1 + S, 1 + 2S) V full, [1 + 2S, 1 + 3S) empty
  const uint32_t bar_q = SmemAddr(bars);
  auto bar_k = [&](int s) { return SmemAddr(bars + 1 + s); };
  auto bar_v = [&](int s) { return SmemAddr(bars + 1 + kStages + s); };
  auto bar_empty = [&](int s) { return SmemAddr(bars + 1 + 2 * kStages + s); };

  // Sink and text rows (every key block) first, over all heads (TileOf).
  const FlashTile tile = TileOf(p);
  const int qb = tile.qb, h = tile.h, b = tile.b;
  const int lane = threadIdx.x % 32;
  const int q_start = p.block_starts[qb], q_end = p.block_starts[qb + 1];
  const int64_t mask_row = (static_cast<int64_t>(b) * p.heads + h) * p.num_blocks + qb;
  const int count = p.mask_counts[mask_row];
  const int32_t* kept = p.mask_indices + mask_row * p.num_blocks;

  if (threadIdx.x == 0) {
    MbarInit(bar_q, 1);
    for (int s = 0; s < kStages; ++s) {
      MbarInit(bar_k(s), 1);
      MbarInit(bar_v(s), 1);
      MbarInit(bar_empty(s), kConsumerThreads);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (threadIdx.x >= kConsumerThreads) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
    if (threadIdx.x == kConsumerThreads) {
      MbarExpectTx(bar_q, kBlockM * D * 2);
      for (int pn = 0; pn < kPanels; ++pn) {
        TmaLoad(SmemAddr(sQ + pn * kBlockM * 128), &map_q, pn * 64, q_start, h, b, bar_q);
      }
      for (int i = 0; i < count; ++i) {
        const int s = i % kStages;
        if (i >= kStages) MbarWait(bar_empty(s), (i / kStages - 1) & 1);
        const int first = p.block_starts[kept[i]];
        MbarExpectTx(bar_k(s), kTileBytes);
        for (int pn = 0; pn < kPanels; ++pn) {
          TmaLoad(SmemAddr(sK + s * kTileBytes + pn * kBlockN * 128), &map_k, pn * 64, first, h,
                  b, bar_k(s));
        }
        MbarExpectTx(bar_v(s), kTileBytes);
        for (int pn = 0; pn < kPanels; ++pn) {
          TmaLoad(SmemAddr(sV + s * kTileBytes + pn * kBlockN * 128), &map_v, pn * 64, first, h,
                  b, bar_v(s));
        }
      }
    }
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n" ::: "memory");

  // Consumers. Warpgroup wg owns query rows [64 wg, 64 wg + 64); warp w of it
  // rows 16 w + g and 16 w + g + 8.
  const int wg = threadIdx.x / 128;
  const int g = lane / 4, t = lane % 4;
  constexpr int kORegs = D / 2;  // accumulator floats per thread for n = D
  float o[kORegs];
  for (int i = 0; i < kORegs; ++i) o[i] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, alpha[2];
  auto valid_keys = [&](int i) {
    const int kb = kept[i];
    return p.block_starts[kb + 1] - p.block_starts[kb];
  };

  MbarWait(bar_q, 0);
  uint32_t qf[D / 16][4];  // Q as A fragments, read by every S = Q K^T
  LoadQFragments<D>(qf, SmemAddr(sQ), wg * 64 + ((threadIdx.x % 128) / 32) * 16, lane);
  if (count > 0) {
    float s[64];
    // P of the previous tile (read by the P V in flight) and of this one: two
    // arrays used alternately, never copied, so the registers P V reads are
    // not rewritten while it runs.
    uint32_t pf_a[8][4], pf_b[8][4];
    MbarWait(bar_k(0), 0);
    WgmmaFence();
    IssueQK<D, T>(s, qf, SmemAddr(sK));
    WgmmaCommit();
    WgmmaWait<0>();
    PinRegs(s);
    Softmax<T>(s, valid_keys(0), t, p.scale_log2, m, l, alpha, pf_a);
    // Tile i: S(i) and P(i-1) V(i-1) in flight together, then softmax of S(i).
    auto step = [&](int i, uint32_t(&pf_prev)[8][4], uint32_t(&pf_cur)[8][4]) {
      const int s_cur = i % kStages, s_prev = (i - 1) % kStages;
      const int valid = valid_keys(i);  // loaded before the waits below
      MbarWait(bar_k(s_cur), (i / kStages) & 1);
      MbarWait(bar_v(s_prev), ((i - 1) / kStages) & 1);
      PinRegs(s);
      PinRegs(o);
      PinRegs(pf_prev);
      WgmmaFence();
      IssueQK<D, T>(s, qf, SmemAddr(sK + s_cur * kTileBytes));
      WgmmaCommit();
      IssuePV<D, T>(o, pf_prev, SmemAddr(sV + s_prev * kTileBytes));
      WgmmaCommit();
      WgmmaWait<1>();
      PinRegs(s);
      Softmax<T>(s, valid, t, p.scale_log2, m, l, alpha, pf_cur);
      WgmmaWait<0>();
      PinRegs(o);
      PinRegs(pf_prev);
      MbarArrive(bar_empty(s_prev));
      if (__any_sync(0xffffffff, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
        for (int j = 0; j < kORegs / 4; ++j) {
          o[4 * j] *= alpha[0];
          o[4 * j + 1] *= alpha[0];
          o[4 * j + 2] *= alpha[1];
          o[4 * j + 3] *= alpha[1];
        }
      }
    };
    // The last tile's P V.
    auto finish = [&](uint32_t(&pf_last)[8][4]) {
      const int s_last = (count - 1) % kStages;
      MbarWait(bar_v(s_last), ((count - 1) / kStages) & 1);
      PinRegs(o);
      PinRegs(pf_last);
      WgmmaFence();
      IssuePV<D, T>(o, pf_last, SmemAddr(sV + s_last * kTileBytes));
      WgmmaCommit();
      WgmmaWait<0>();
      PinRegs(o);
      MbarArrive(bar_empty(s_last));
    };
    int i = 1;
    for (; i + 1 < count; i += 2) {
      step(i, pf_a, pf_b);
      step(i + 1, pf_b, pf_a);
    }
    if (i < count) {
      step(i, pf_a, pf_b);
      finish(pf_b);
    } else {
      finish(pf_a);
    }
  }

  // Normalise and store rows g and g + 8 of this warp.
  const int warp_in_wg = (threadIdx.x % 128) / 32;
  const FlashTile again = TileOf(p);  // recomputed, not kept live through the loop
  T* out = static_cast<T*>(p.out) + again.b * p.o_stride[0] + again.h * p.o_stride[2];
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffff, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffff, l[r], 2);
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
    const int row = q_start + wg * 64 + warp_in_wg * 16 + g + 8 * r;
    if (row >= q_end) continue;
    T* dst = out + static_cast<int64_t>(row) * p.o_stride[1];
    for (int j = 0; j < kORegs / 4; ++j) {
      *reinterpret_cast<uint32_t*>(dst + 8 * j + 2 * t) =
          Pack<T>(o[4 * j + 2 * r] * inv, o[4 * j + 2 * r + 1] * inv);
    }
    if (p.lse != nullptr && t == 0) {
      p.lse[(static_cast<int64_t>(again.b) * p.heads + again.h) * p.tokens + row] =
          m[r] * p.scale_log2 * 0.69314718055994531f + logf(l[r]);
    }
  }
}

// ---- host side ------------------------------------------------------------

// cuTensorMapEncodeTiled from the driver, looked up once through the runtime
// (no link-time dependency on libcuda).
PFN_cuTensorMapEncodeTiled_v12000 EncodeTiled() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      return static_cast<PFN_cuTensorMapEncodeTiled_v12000>(nullptr);
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

// A [D, tokens, heads, batch] map of a [B, N, H, D] tensor (strides in
// elements: batch, token, head) read in [128 tokens][64 dims] boxes with the
// 128-byte swizzle; rows past N read as zeros.
Status EncodeMap(CUtensorMap* map, const void* base, const int64_t (&stride)[3],
                 const FlashParams& p, const char* name) {
  PFN_cuTensorMapEncodeTiled_v12000 encode = EncodeTiled();
  if (encode == nullptr) return InternalError("sm90 flash: cuTensorMapEncodeTiled unavailable");
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(p.head_dim), static_cast<cuuint64_t>(p.tokens),
                              static_cast<cuuint64_t>(p.heads), static_cast<cuuint64_t>(p.batch)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(stride[1]) * 2,
                                 static_cast<cuuint64_t>(stride[2]) * 2,
                                 static_cast<cuuint64_t>(stride[0]) * 2};
  const cuuint32_t box[4] = {64, kBlockN, 1, 1};
  const cuuint32_t unit[4] = {1, 1, 1, 1};
  const CUresult r = encode(
      map, p.dtype == DType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
      4, const_cast<void*>(base), dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
      CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    return InternalError(std::string("sm90 flash: tensor map for ") + name + " rejected (" +
                         std::to_string(static_cast<int>(r)) + ")");
  }
  return OkStatus();
}

}  // namespace

Status LaunchFlashForwardSm90(const FlashParams& p, void* stream) {
  CUtensorMap maps[3];
  RAINSERVE_RETURN_IF_ERROR(EncodeMap(&maps[0], p.q, p.q_stride, p, "q"));
  RAINSERVE_RETURN_IF_ERROR(EncodeMap(&maps[1], p.k, p.k_stride, p, "k"));
  RAINSERVE_RETURN_IF_ERROR(EncodeMap(&maps[2], p.v, p.v_stride, p, "v"));
  return DispatchFlash(p, "sm90 flash forward", [&](auto head_dim, auto type) {
    constexpr int D = decltype(head_dim)::value;
    using T = typename decltype(type)::type;
    constexpr int kSmem = (kBlockM + 2 * kStages * kBlockN) * D * 2 + (1 + 3 * kStages) * 8;
    return LaunchFlash(FlashForwardSm90Kernel<D, T>, kThreads, kSmem, p,
                       static_cast<cudaStream_t>(stream), "sm90 flash forward", maps[0],
                       maps[1], maps[2]);
  });
}

}  // namespace rainserve::attention::cuda
