// Token layout and the RainFusion2.0 spatiotemporal permutation.
//
// A DiT sequence is a latent grid T x H x W of video tokens (after patchify),
// optionally with text tokens before or after it (joint-attention models).
// The permutation reorders it as:
//   [windowed video tokens | sink frames | text tokens]
// - windowed: frames sink_frames..T-1 tiled into (wt, wh, ww) windows, windows
//   in raster order (t, then y, then x), raster order inside a window; edge
//   windows are partial, so any T, H, W >= 1 works;
// - sink: the first sink_frames frames, raster order;
// - text: in their original order.
// Blocks of block_size consecutive permuted tokens are then cut per segment, so
// video, sink and text tokens never share a block.
//
// Permutation convention: permuted[i] = original[gather[i]] and
// original[j] = permuted[scatter[j]] (scatter is the inverse of gather).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attention/types.h"
#include "common/status.h"
#include "common/thread_pool.h"

namespace rainserve::attention {

enum class TextPlacement : int { kNone = 0, kBefore = 1, kAfter = 2 };

struct TokenLayout {
  int64_t frames = 1, height = 1, width = 1;  // latent grid (after patchify)
  int64_t sink_frames = 0;                    // leading frames kept dense
  int64_t text_tokens = 0;
  TextPlacement text_placement = TextPlacement::kNone;

  int64_t video_tokens() const { return frames * height * width; }
  int64_t sink_tokens() const { return sink_frames * height * width; }
  int64_t windowed_tokens() const { return video_tokens() - sink_tokens(); }
  int64_t total_tokens() const { return video_tokens() + text_tokens; }
};

struct WindowShape {
  int64_t t = 2, h = 8, w = 8;
};

// The default windows of DESIGN.md: 2x8x8 for video, 1x8x16 for images (T = 1).
WindowShape DefaultWindow(const TokenLayout& layout);

// INVALID_ARGUMENT naming the field when the layout or window is unusable.
Status ValidateLayout(const TokenLayout& layout);
Status ValidateWindow(const WindowShape& window);

struct TokenPermutation {
  std::vector<int64_t> gather;   // [N]: permuted position -> original position
  std::vector<int64_t> scatter;  // [N]: original position -> permuted position
  int64_t size() const { return static_cast<int64_t>(gather.size()); }
};

StatusOr<TokenPermutation> BuildPermutation(const TokenLayout& layout, const WindowShape& window);

enum class BlockKind : uint8_t { kVideo = 0, kSink = 1, kText = 2 };

struct BlockTable {
  int64_t block_size = 128;
  std::vector<int32_t> starts;  // [num_blocks + 1]
  std::vector<BlockKind> kinds;  // [num_blocks]
  std::vector<uint8_t> forced;   // [num_blocks]; 1 for sink and text blocks

  int64_t num_blocks() const { return static_cast<int64_t>(kinds.size()); }
  int64_t num_forced() const;
  int64_t num_trailing_forced() const;  // forced blocks at the end of the table
  BlockTableView view() const {
    return BlockTableView{num_blocks(), starts.data(), forced.data(), num_trailing_forced()};
  }
};

// Blocks over the permuted sequence of `layout`. block_size in [1, 1024].
StatusOr<BlockTable> BuildBlockTable(const TokenLayout& layout, int64_t block_size);

// Reorders rows. `src` and `dst` hold `outer` groups of `tokens` rows of
// `row_bytes` each (row r of group o at (o * tokens + r) * row_bytes):
//   ApplyPermutation:  dst[o][i] = src[o][gather[i]]   (original -> permuted)
//   InvertPermutation: dst[o][j] = src[o][scatter[j]]  (permuted -> original)
// Works for [B, N, H, D] (outer = B, row = H*D elements) and per-token tables
// such as RoPE (outer = 1, row = table width). src and dst must not overlap.
// With a pool, rows are copied in parallel.
// The row gather behind both: dst[o][i] = src[o][index[i]], i < rows.
void GatherRows(const int64_t* index, int64_t rows, const void* src, void* dst, int64_t outer,
                int64_t row_bytes, ThreadPool* pool = nullptr);

void ApplyPermutation(const TokenPermutation& perm, const void* src, void* dst, int64_t outer,
                      int64_t row_bytes, ThreadPool* pool = nullptr);
void InvertPermutation(const TokenPermutation& perm, const void* src, void* dst, int64_t outer,
                       int64_t row_bytes, ThreadPool* pool = nullptr);

}  // namespace rainserve::attention
