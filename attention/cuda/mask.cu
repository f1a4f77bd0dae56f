// Fused RainFusion2.0 mask prediction on the GPU, nothing of size N x N:
//   1. PoolKernel: block means of q and k -> pooled [2, B, H, nb, D] fp32.
//      One CTA per (block, q|k, head, batch element), 16-byte loads.
//   2. ScoreKernel: the pooled scores qp . kp * scale of every (query block,
//      key block) pair, a register-tiled fp32 product (64 x 64 pairs per CTA,
//      4 x 4 per thread), written as order-preserving u32 keys into the
//      indices output, which has exactly the [B, H, nb, nb] shape they need.
//   3. SelectKernel: a warp per query block reads its row of keys, finds the
//      top_k by radix select on (score desc, index asc), adds every forced
//      block and overwrites the row with the kept indices, ascending. Forced
//      rows keep everything. The kept count is added to *kept.
//      Mass-targeted rows (kept_mass > 0) first count how many unforced
//      blocks reach the mass (MassCount), then select that many by the same
//      radix select with the forced blocks ranked last.
//   4. With an order output, OrderOffsetsKernel and OrderScatterKernel give
//      the flash kernels' launch order (OrderSlot): the rows that keep every
//      block first, then head by head, longest first within a head (a
//      counting sort over the slots SelectKernel histogrammed). Head by head
//      keeps a head's K/V in L2 while its rows run: sorting all heads' rows
//      together by count alone ran W2 (40 heads, 75,600 tokens) 1.4x slower.
//      (A warp bitonic sort of the whole row costs ~10x more at W2, 592
//      blocks; scoring inside the selection kernel, each CTA staging every
//      pooled key for its rows, takes twice as long as the two kernels.)
// The rule and tie-breaking are those of the CPU implementation (mask.h);
// each score is one sequence of fp32 multiply-adds over d = 0..D-1.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cub/block/block_scan.cuh>

#include <string>

#include "attention/cuda/kernels.h"

namespace rainserve::attention::cuda {
namespace {

constexpr int kPoolThreads = 256;
constexpr int kSelectThreads = 256;

// One CTA per (block, q|k, head, batch element): the block's rows of one
// head, D contiguous elements each. Thread t reads column group t % groups
// (16 bytes: 8 bf16/fp16 or 4 fp32; one element where rows are not 16-byte
// aligned) of rows t / groups, t / groups + phases, ...: a warp reads whole
// rows, every thread keeps several loads in flight, and the phases' partial
// sums meet in shared memory. (One CTA per (block, q|k) over all heads, each
// thread summing its columns over every row, reaches only half the bandwidth.)
template <typename T>
__global__ void __launch_bounds__(kPoolThreads) PoolKernel(const MaskParams p) {
  constexpr int kVec = 16 / sizeof(T);
  __shared__ float partial[kPoolThreads * kVec];
  const int blk = blockIdx.x / 2, which = blockIdx.x % 2, h = blockIdx.y, b = blockIdx.z;
  const TensorView& x = which == 0 ? p.q : p.k;
  const int H = static_cast<int>(x.heads), D = static_cast<int>(x.head_dim);
  const int nb = p.num_blocks;
  const int begin = p.block_starts[blk], end = p.block_starts[blk + 1];
  const T* base = static_cast<const T*>(x.data) + x.Offset(b, 0, h);
  const bool vec = D % kVec == 0 && x.stride_token % kVec == 0 &&
                   reinterpret_cast<uintptr_t>(base) % 16 == 0;
  const int width = vec ? kVec : 1, groups = D / width;
  const int phases = kPoolThreads / groups;  // >= 1: D <= 256 (LaunchMaskPrediction)
  const int g = threadIdx.x % groups, phase = threadIdx.x / groups;
  if (phase < phases) {
    float sum[kVec] = {};
    const T* src = base + static_cast<int64_t>(begin + phase) * x.stride_token + g * width;
    const int64_t step = static_cast<int64_t>(phases) * x.stride_token;
    if (vec) {
#pragma unroll 4
      for (int n = begin + phase; n < end; n += phases, src += step) {
        const uint4 raw = *reinterpret_cast<const uint4*>(src);
        const T* e = reinterpret_cast<const T*>(&raw);
        for (int i = 0; i < kVec; ++i) sum[i] += static_cast<float>(e[i]);
      }
    } else {
      for (int n = begin + phase; n < end; n += phases, src += step) sum[0] += static_cast<float>(*src);
    }
    float* dst = partial + phase * D + g * width;
    if (vec) {
      for (int i = 0; i < kVec; ++i) dst[i] = sum[i];
    } else {
      dst[0] = sum[0];
    }
  }
  __syncthreads();
  const float inv = 1.0f / static_cast<float>(end - begin);
  float* out = p.pooled + static_cast<int64_t>(which) * x.batch * H * nb * D +
               ((static_cast<int64_t>(b) * H + h) * nb + blk) * D;
  for (int d = threadIdx.x; d < D; d += kPoolThreads) {
    float total = 0.0f;
    for (int r = 0; r < phases; ++r) total += partial[r * D + d];
    out[d] = total * inv;
  }
}

// The launch-order slot of a row of head bh = b * H + h that keeps `count`
// of nb blocks: rows keeping every block first (of every head, as
// FlashTileOf's heavy rows), then head by head, longest first within a head.
__device__ __forceinline__ int OrderSlot(int bh, int count, int nb) {
  return count == nb ? 0 : 1 + bh * nb + (nb - 1 - count);
}

// Orders floats as unsigned integers (larger float -> larger key).
__device__ __forceinline__ uint32_t OrderedBits(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

constexpr int kScoreTile = 64;   // query blocks x key blocks per CTA
constexpr int kScoreDepth = 32;  // dimensions staged per round
constexpr int kScoreThreads = 256;
constexpr int kRadixBins = 256;  // 8-bit digits, four passes over 32-bit keys

// One CTA per (64 x 64 tile of block pairs, head, batch element). Each round
// stages 32 dimensions of the tile's 64 pooled query and 64 pooled key blocks
// in shared memory, transposed ([d][block], padded by 4 floats: conflict-free
// stores, 16-byte reads); thread (ty, tx) accumulates query blocks 4 ty..+3 x
// key blocks 4 tx..+3, reading 8 floats per 16 multiply-adds, and skips the
// products when all its query blocks or all its key blocks are past nb (edge
// tiles). (Scoring one key per lane against a row held in shared memory read
// 8 floats per 4.)
// keys: [B, H, nb, nb] u32, the indices output reused (SelectKernel reads
// each row before it writes it).
__global__ void __launch_bounds__(kScoreThreads) ScoreKernel(const MaskParams p, int col_tiles) {
  __shared__ __align__(16) float qs[kScoreDepth][kScoreTile + 4];
  __shared__ __align__(16) float ks[kScoreDepth][kScoreTile + 4];
  const int nb = p.num_blocks, H = static_cast<int>(p.q.heads), D = static_cast<int>(p.q.head_dim);
  const int row0 = blockIdx.x / col_tiles * kScoreTile, col0 = blockIdx.x % col_tiles * kScoreTile;
  const int64_t bh = static_cast<int64_t>(blockIdx.z) * H + blockIdx.y;
  const int64_t per = static_cast<int64_t>(p.q.batch) * H * nb * D;
  const float* qp = p.pooled + bh * nb * D;
  const float* kp = p.pooled + per + bh * nb * D;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const bool idle = row0 + 4 * ty >= nb || col0 + 4 * tx >= nb;
  float acc[4][4] = {};
  for (int d0 = 0; d0 < D; d0 += kScoreDepth) {
    const int dn = min(kScoreDepth, D - d0);  // a multiple of 4 (D is)
    // Thread i stages float4 column group i / 64 of block i % 64: a warp
    // stores 32 consecutive blocks of one dimension.
    for (int i = threadIdx.x; i < kScoreTile * kScoreDepth / 4; i += kScoreThreads) {
      const int r = i % kScoreTile, d = 4 * (i / kScoreTile);
      const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
      const float4 a = row0 + r < nb && d < dn
                           ? *reinterpret_cast<const float4*>(qp + int64_t(row0 + r) * D + d0 + d)
                           : zero;
      const float4 c = col0 + r < nb && d < dn
                           ? *reinterpret_cast<const float4*>(kp + int64_t(col0 + r) * D + d0 + d)
                           : zero;
      qs[d][r] = a.x, qs[d + 1][r] = a.y, qs[d + 2][r] = a.z, qs[d + 3][r] = a.w;
      ks[d][r] = c.x, ks[d + 1][r] = c.y, ks[d + 2][r] = c.z, ks[d + 3][r] = c.w;
    }
    __syncthreads();
    if (!idle) {
#pragma unroll 8
      for (int d = 0; d < dn; ++d) {
        const float4 a = *reinterpret_cast<const float4*>(&qs[d][4 * ty]);
        const float4 c = *reinterpret_cast<const float4*>(&ks[d][4 * tx]);
        const float av[4] = {a.x, a.y, a.z, a.w}, cv[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], cv[j], acc[i][j]);
        }
      }
    }
    __syncthreads();
  }
  if (idle) return;
  uint32_t* keys = reinterpret_cast<uint32_t*>(p.indices) + bh * nb * nb;
  for (int i = 0; i < 4; ++i) {
    const int row = row0 + 4 * ty + i;
    if (row >= nb) break;
    for (int j = 0; j < 4; ++j) {
      const int col = col0 + 4 * tx + j;
      if (col < nb) keys[int64_t(row) * nb + col] = OrderedBits(acc[i][j] * p.scale);
    }
  }
}

// The top_k-th largest of a warp's nb keys by radix select (four 8-bit
// passes, a shared histogram per pass). Returns the threshold key T; *above
// gets how many keys are larger than T (< top_k <= those >= T). 1 <= top_k <= nb.
__device__ uint32_t RadixSelect(const uint32_t* keys, int nb, int top_k, uint32_t* hist, int lane,
                                int* above) {
  uint32_t prefix = 0, prefix_mask = 0;
  int remaining = top_k, larger = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = lane; i < kRadixBins; i += 32) hist[i] = 0;
    __syncwarp();
    for (int j = lane; j < nb; j += 32) {
      const uint32_t u = keys[j];
      if ((u & prefix_mask) == prefix) atomicAdd(&hist[(u >> shift) & 0xff], 1u);
    }
    __syncwarp();
    // Lane l holds digits 255 - 8l down to 248 - 8l: a scan over lanes counts
    // the candidates above each digit, largest digits first.
    int local[8], sum = 0;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      local[e] = static_cast<int>(hist[kRadixBins - 1 - 8 * lane - e]);
      sum += local[e];
    }
    int incl = sum;
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffff, incl, o);
      if (lane >= o) incl += y;
    }
    const int excl = incl - sum;
    const uint32_t holder = __ballot_sync(0xffffffff, excl < remaining && remaining <= incl);
    int digit = -1, count_above = excl;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      if (digit < 0) {
        if (count_above + local[e] >= remaining) {
          digit = kRadixBins - 1 - 8 * lane - e;
        } else {
          count_above += local[e];
        }
      }
    }
    const int src = holder != 0 ? __ffs(holder) - 1 : 0;
    digit = __shfl_sync(0xffffffff, digit, src);
    count_above = __shfl_sync(0xffffffff, count_above, src);
    remaining -= count_above;
    larger += count_above;
    prefix |= static_cast<uint32_t>(max(digit, 0)) << shift;
    prefix_mask |= 0xffu << shift;
    __syncwarp();
  }
  *above = larger;
  return prefix;
}

// The float whose OrderedBits are `key`.
__device__ __forceinline__ float ScoreOf(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// Butterfly reductions: every lane ends with the same, bitwise identical value
// (each pairwise sum is commutative), the same on every run.
__device__ __forceinline__ double WarpSum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}
__device__ __forceinline__ int WarpSum(int v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  return v;
}

// A kept mass within this of kept_mass reaches it (mask.cc's tolerance).
constexpr double kMassTolerance = 1e-6;

__device__ __forceinline__ bool Forced(const uint32_t* bits, int j) {
  return (bits[j >> 5] >> (j & 31)) & 1u;
}

// Rows of at most this many key blocks per lane keep their softmax weights
// in registers for MassCount's search; longer rows recompute them per pass.
constexpr int kMassCachedPerLane = 20;  // 640 blocks: W1 (257) and W2 (591)

// How many unforced key blocks a mass-targeted row keeps (mask.h's rule):
// the fewest, in ranking order, whose softmax mass with the forced blocks'
// reaches kept_mass, then clamped by the floor and the cap. The unnormalised
// masses exp(s - max) are summed in double; the last needed key T is found
// bit by bit (the largest T whose keys >= T reach the target), and keys
// equal to T are added one at a time, lowest index first, as on the CPU.
// Lane l owns keys l, l + 32, ...; with kPerLane > 0 (nb <= 32 * kPerLane)
// each lane holds its keys' weights in registers, computed once, and the
// bit search only compares and adds: the same sums in the same order as
// kPerLane == 0, which computes each weight again in every pass.
// bits: the forced blocks' bitmask.
template <int kPerLane>
__device__ int MassCount(const uint32_t* keys, const uint32_t* bits, int nb, const MaskParams& p,
                         int lane) {
  float top = -INFINITY;
  for (int j = lane; j < nb; j += 32) top = fmaxf(top, ScoreOf(keys[j]));
  top = WarpMax(top);
  auto weight = [&](uint32_t key) { return exp(static_cast<double>(ScoreOf(key)) - top); };
  const int per_lane = kPerLane > 0 ? kPerLane : (nb + 31) / 32;
  double cached[kPerLane > 0 ? kPerLane : 1];
  double sum = 0.0, forced_sum = 0.0;
  int forced = 0;
#pragma unroll
  for (int e = 0; e < per_lane; ++e) {
    const int j = lane + 32 * e;
    double w = 0.0;  // unforced weight; 0 for forced blocks and past the row
    if (j < nb) {
      w = weight(keys[j]);
      sum += w;
      if (Forced(bits, j)) forced_sum += w, ++forced, w = 0.0;
    }
    if constexpr (kPerLane > 0) cached[e] = w;
  }
  // Adding a forced block's 0.0 leaves a sum bitwise unchanged.
  auto unforced_weight = [&](int e, int j) {
    if constexpr (kPerLane > 0) return cached[e];
    return Forced(bits, j) ? 0.0 : weight(keys[j]);
  };
  sum = WarpSum(sum);
  forced_sum = WarpSum(forced_sum);
  forced = WarpSum(forced);
  const int unforced = nb - forced;
  const int floor = min(p.min_kept_blocks, nb);
  const int cap = p.max_kept_blocks > 0 ? min(p.max_kept_blocks, nb) : nb;
  int needed = unforced;
  const double target = (p.kept_mass - kMassTolerance) * sum;
  if (p.kept_mass < 1.0 && forced_sum >= target) {
    needed = 0;
  } else if (p.kept_mass < 1.0) {
    uint32_t last = 0;
    for (int bit = 31; bit >= 0; --bit) {
      const uint32_t candidate = last | (1u << bit);
      double mass = 0.0;
#pragma unroll
      for (int e = 0; e < per_lane; ++e) {
        const int j = lane + 32 * e;
        if (j < nb && keys[j] >= candidate) mass += unforced_weight(e, j);
      }
      if (forced_sum + WarpSum(mass) >= target) last = candidate;
    }
    double above = 0.0;
    int n_above = 0, n_ties = 0;
#pragma unroll
    for (int e = 0; e < per_lane; ++e) {
      const int j = lane + 32 * e;
      if (j >= nb || Forced(bits, j)) continue;
      if (keys[j] > last) above += unforced_weight(e, j), ++n_above;
      if (keys[j] == last) ++n_ties;
    }
    double mass = forced_sum + WarpSum(above);
    needed = WarpSum(n_above);
    n_ties = WarpSum(n_ties);
    const double tie_weight = weight(last);
    for (int t = 0; t < n_ties && mass < target; ++t) mass += tie_weight, ++needed;
  }
  if (forced >= cap) return 0;
  return max(0, min(min(max(needed, floor - forced), cap - forced), unforced));
}

// A selected row's bookkeeping: its kept count, the call's kept total and,
// with an order output, its launch-order slot in the histogram.
__device__ void RecordRow(const MaskParams& p, int64_t row, int count) {
  const int nb = p.num_blocks;
  p.counts[row] = count;
  atomicAdd(reinterpret_cast<unsigned long long*>(p.kept), static_cast<unsigned long long>(count));
  if (p.order != nullptr) {
    atomicAdd(&p.order_workspace[OrderSlot(static_cast<int>(row / nb), count, nb)], 1);
  }
}

// One CTA of 8 warps per (8 query blocks, head, batch); warp w owns query
// block blockIdx.x * 8 + w. The warp copies its row of keys (ScoreKernel) to
// shared memory, finds the top_k threshold by radix select, keeps every key
// above it and the lowest-indexed keys equal to it (the CPU's order: score
// descending, then index ascending), and overwrites the row with the kept
// indices, written with a warp scan over a bitmask.
//
// Shared memory per warp: keys [nb32] u32 | bits [nb32 / 32] u32 | hist [256] u32
__global__ void __launch_bounds__(kSelectThreads) SelectKernel(const MaskParams p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int nb = p.num_blocks, H = static_cast<int>(p.q.heads);
  const int nb32 = (nb + 31) / 32 * 32, words = nb32 / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int qb = blockIdx.x * (kSelectThreads / 32) + warp;
  if (qb >= nb) return;  // no block-wide barriers in this kernel
  uint32_t* keys = reinterpret_cast<uint32_t*>(smem_raw) + warp * (nb32 + words + kRadixBins);
  uint32_t* bits = keys + nb32;
  uint32_t* hist = bits + words;
  const int64_t row = (static_cast<int64_t>(blockIdx.z) * H + blockIdx.y) * nb + qb;
  int32_t* out = p.indices + row * nb;
  if (p.block_forced[qb] != 0) {
    for (int j = lane; j < nb; j += 32) out[j] = j;
    if (lane == 0) RecordRow(p, row, nb);
    return;
  }
  for (int j = lane; j < nb; j += 32) keys[j] = static_cast<uint32_t>(out[j]);
  // Kept set as a bitmask: forced blocks, then the top_k.
  for (int w = lane; w < words; w += 32) {
    uint32_t m = 0;
    for (int i = 0; i < 32 && w * 32 + i < nb; ++i) m |= (p.block_forced[w * 32 + i] ? 1u : 0u) << i;
    bits[w] = m;
  }
  __syncwarp();
  int top_k = min(p.top_k, nb);
  if (p.kept_mass > 0.0) {
    top_k = nb <= 32 * kMassCachedPerLane
                ? MassCount<kMassCachedPerLane>(keys, bits, nb, p, lane)
                : MassCount<0>(keys, bits, nb, p, lane);
    // Forced blocks rank last (key 0 is below every score's key), so that
    // the top_k come from the others; they are kept through the bitmask.
    for (int j = lane; j < nb; j += 32) {
      if (Forced(bits, j)) keys[j] = 0u;
    }
    __syncwarp();
  }
  if (top_k > 0) {
    int above = 0;
    const uint32_t threshold = RadixSelect(keys, nb, top_k, hist, lane, &above);
    int ties_left = top_k - above;  // keys equal to the threshold still to keep, lowest index first
    for (int j0 = 0; j0 < nb; j0 += 32) {
      const int j = j0 + lane;
      const uint32_t u = j < nb ? keys[j] : 0u;
      const bool tie = j < nb && u == threshold;
      const uint32_t ties = __ballot_sync(0xffffffff, tie);
      const int rank = __popc(ties & ((1u << lane) - 1u));
      const bool keep = (j < nb && u > threshold) || (tie && rank < ties_left);
      const uint32_t kept = __ballot_sync(0xffffffff, keep);
      ties_left -= __popc(ties);
      if (lane == 0) bits[j0 / 32] |= kept;
    }
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
  if (lane == 0) RecordRow(p, row, base);
}

constexpr int kOrderThreads = 1024;

// One CTA: offsets[s] = the number of rows in slots before s, an exclusive
// scan of the slot histogram. order_workspace: histogram | offsets, each
// MaskOrderSlots long.
__global__ void __launch_bounds__(kOrderThreads) OrderOffsetsKernel(const MaskParams p,
                                                                    int slots) {
  using Scan = cub::BlockScan<int, kOrderThreads>;
  __shared__ typename Scan::TempStorage scan;
  const int per = (slots + kOrderThreads - 1) / kOrderThreads;
  const int first = threadIdx.x * per;
  int local = 0;
  for (int s = first; s < min(first + per, slots); ++s) local += p.order_workspace[s];
  int before = 0;
  Scan(scan).ExclusiveSum(local, before);
  int32_t* offsets = p.order_workspace + slots;
  for (int s = first; s < min(first + per, slots); ++s) {
    offsets[s] = before;
    before += p.order_workspace[s];
  }
}

// Each row takes the next place of its slot's range (the order within one
// slot varies from run to run; the attention result does not depend on it).
__global__ void OrderScatterKernel(const MaskParams p, int rows, int slots) {
  const int row = blockIdx.x * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  const int nb = p.num_blocks;
  int32_t* offsets = p.order_workspace + slots;
  p.order[atomicAdd(&offsets[OrderSlot(row / nb, p.counts[row], nb)], 1)] = row;
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
  if (p.q.head_dim > 256 || p.q.head_dim % 4 != 0) {
    return UnimplementedError("cuda mask prediction: head_dim must be a multiple of 4, at most 256");
  }
  const int B = static_cast<int>(p.q.batch), H = static_cast<int>(p.q.heads);
  const dim3 pool_grid(2 * p.num_blocks, H, B);
  if (p.q.dtype == DType::kBFloat16) {
    PoolKernel<__nv_bfloat16><<<pool_grid, kPoolThreads, 0, s>>>(p);
  } else if (p.q.dtype == DType::kFloat16) {
    PoolKernel<__half><<<pool_grid, kPoolThreads, 0, s>>>(p);
  } else {
    PoolKernel<float><<<pool_grid, kPoolThreads, 0, s>>>(p);
  }
  RAINSERVE_RETURN_IF_ERROR(Check(cudaGetLastError(), "mask pooling launch"));

  const int col_tiles = (p.num_blocks + kScoreTile - 1) / kScoreTile;
  ScoreKernel<<<dim3(col_tiles * col_tiles, H, B), kScoreThreads, 0, s>>>(p, col_tiles);
  RAINSERVE_RETURN_IF_ERROR(Check(cudaGetLastError(), "mask score launch"));

  // One query block per warp; past 48 KiB (more than ~1,200 blocks) the
  // kernel must be allowed more shared memory (at most 140 KiB: 4,096 blocks).
  const int nb32 = (p.num_blocks + 31) / 32 * 32;
  const int rows = kSelectThreads / 32;
  const size_t smem = rows * (nb32 + nb32 / 32 + kRadixBins) * sizeof(uint32_t);
  if (smem > (48 << 10)) {
    RAINSERVE_RETURN_IF_ERROR(Check(
        cudaFuncSetAttribute(SelectKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(smem)),
        "mask select attribute"));
  }
  const int slots = static_cast<int>(MaskOrderSlots(B, H, p.num_blocks));
  if (p.order != nullptr) {
    RAINSERVE_RETURN_IF_ERROR(
        Check(cudaMemsetAsync(p.order_workspace, 0, sizeof(int32_t) * slots, s),
              "mask order histogram"));
  }
  const dim3 grid((p.num_blocks + rows - 1) / rows, H, B);
  SelectKernel<<<grid, kSelectThreads, smem, s>>>(p);
  RAINSERVE_RETURN_IF_ERROR(Check(cudaGetLastError(), "mask select launch"));
  if (p.order == nullptr) return OkStatus();
  OrderOffsetsKernel<<<1, kOrderThreads, 0, s>>>(p, slots);
  RAINSERVE_RETURN_IF_ERROR(Check(cudaGetLastError(), "mask order offsets launch"));
  const int all_rows = B * H * p.num_blocks;
  OrderScatterKernel<<<(all_rows + 255) / 256, 256, 0, s>>>(p, all_rows, slots);
  return Check(cudaGetLastError(), "mask order scatter launch");
}

}  // namespace rainserve::attention::cuda
