#include "attention/layout.h"

#include <algorithm>
#include <cstring>

namespace rainserve::attention {
namespace {

Status Positive(const char* name, int64_t v) {
  if (v >= 1) return OkStatus();
  return InvalidArgumentError(std::string(name) + " must be >= 1, got " + std::to_string(v));
}

}  // namespace

WindowShape DefaultWindow(const TokenLayout& layout) {
  if (layout.frames == 1) return WindowShape{1, 8, 16};
  return WindowShape{2, 8, 8};
}

Status ValidateLayout(const TokenLayout& layout) {
  RAINSERVE_RETURN_IF_ERROR(Positive("layout.frames", layout.frames));
  RAINSERVE_RETURN_IF_ERROR(Positive("layout.height", layout.height));
  RAINSERVE_RETURN_IF_ERROR(Positive("layout.width", layout.width));
  if (layout.sink_frames < 0 || layout.sink_frames > layout.frames) {
    return InvalidArgumentError("sink_frames must be in [0, frames = " +
                                std::to_string(layout.frames) + "], got " +
                                std::to_string(layout.sink_frames));
  }
  if (layout.text_tokens < 0) {
    return InvalidArgumentError("layout.text_tokens must be >= 0, got " +
                                std::to_string(layout.text_tokens));
  }
  if ((layout.text_tokens > 0) != (layout.text_placement != TextPlacement::kNone)) {
    return InvalidArgumentError(
        "layout.text_placement must be before/after exactly when text_tokens > 0");
  }
  if (layout.total_tokens() > (int64_t{1} << 30)) {
    return InvalidArgumentError("layout has " + std::to_string(layout.total_tokens()) +
                                " tokens; at most 2^30 are supported");
  }
  return OkStatus();
}

Status ValidateWindow(const WindowShape& window) {
  RAINSERVE_RETURN_IF_ERROR(Positive("window.t", window.t));
  RAINSERVE_RETURN_IF_ERROR(Positive("window.h", window.h));
  return Positive("window.w", window.w);
}

StatusOr<TokenPermutation> BuildPermutation(const TokenLayout& layout, const WindowShape& window) {
  RAINSERVE_RETURN_IF_ERROR(ValidateLayout(layout));
  RAINSERVE_RETURN_IF_ERROR(ValidateWindow(window));
  const int64_t T = layout.frames, H = layout.height, W = layout.width;
  const int64_t text_offset = layout.text_placement == TextPlacement::kBefore ? layout.text_tokens : 0;
  const int64_t video_offset = text_offset;  // where video tokens start in the original order
  auto video_index = [&](int64_t t, int64_t y, int64_t x) {
    return video_offset + (t * H + y) * W + x;
  };

  TokenPermutation perm;
  perm.gather.reserve(static_cast<size_t>(layout.total_tokens()));
  // 1. Windowed frames [sink, T): windows in raster order, raster inside.
  for (int64_t t0 = layout.sink_frames; t0 < T; t0 += window.t) {
    for (int64_t y0 = 0; y0 < H; y0 += window.h) {
      for (int64_t x0 = 0; x0 < W; x0 += window.w) {
        const int64_t t1 = std::min(T, t0 + window.t);
        const int64_t y1 = std::min(H, y0 + window.h);
        const int64_t x1 = std::min(W, x0 + window.w);
        for (int64_t t = t0; t < t1; ++t)
          for (int64_t y = y0; y < y1; ++y)
            for (int64_t x = x0; x < x1; ++x) perm.gather.push_back(video_index(t, y, x));
      }
    }
  }
  // 2. Sink frames, raster order.
  for (int64_t t = 0; t < layout.sink_frames; ++t)
    for (int64_t y = 0; y < H; ++y)
      for (int64_t x = 0; x < W; ++x) perm.gather.push_back(video_index(t, y, x));
  // 3. Text tokens, original order.
  const int64_t text_start =
      layout.text_placement == TextPlacement::kBefore ? 0 : layout.video_tokens();
  for (int64_t i = 0; i < layout.text_tokens; ++i) perm.gather.push_back(text_start + i);

  perm.scatter.assign(perm.gather.size(), 0);
  for (size_t i = 0; i < perm.gather.size(); ++i) {
    perm.scatter[static_cast<size_t>(perm.gather[i])] = static_cast<int64_t>(i);
  }
  return perm;
}

int64_t BlockTable::num_forced() const {
  int64_t n = 0;
  for (uint8_t f : forced) n += f;
  return n;
}

int64_t BlockTable::num_trailing_forced() const {
  int64_t n = 0;
  while (n < num_blocks() && forced[static_cast<size_t>(num_blocks() - 1 - n)]) ++n;
  return n;
}

StatusOr<BlockTable> BuildBlockTable(const TokenLayout& layout, int64_t block_size) {
  RAINSERVE_RETURN_IF_ERROR(ValidateLayout(layout));
  if (block_size < 1 || block_size > 1024) {
    return InvalidArgumentError("block_size must be in [1, 1024], got " + std::to_string(block_size));
  }
  BlockTable table;
  table.block_size = block_size;
  table.starts.push_back(0);
  int64_t pos = 0;
  auto add_segment = [&](int64_t length, BlockKind kind) {
    for (int64_t done = 0; done < length; done += block_size) {
      pos += std::min(block_size, length - done);
      table.starts.push_back(static_cast<int32_t>(pos));
      table.kinds.push_back(kind);
      table.forced.push_back(kind == BlockKind::kVideo ? 0 : 1);
    }
  };
  add_segment(layout.windowed_tokens(), BlockKind::kVideo);
  add_segment(layout.sink_tokens(), BlockKind::kSink);
  add_segment(layout.text_tokens, BlockKind::kText);
  return table;
}

void GatherRows(const int64_t* index, int64_t rows, const void* src, void* dst, int64_t outer,
                int64_t row_bytes, ThreadPool* pool) {
  const int64_t n = rows;
  const auto* s = static_cast<const char*>(src);
  auto* d = static_cast<char*>(dst);
  // Chunks of rows so that a task moves at least ~256 KiB.
  const int64_t rows_per_task = std::max<int64_t>(1, (int64_t{256} << 10) / std::max<int64_t>(1, row_bytes));
  const int64_t tasks_per_outer = (n + rows_per_task - 1) / rows_per_task;
  auto run = [&](int64_t task, int) {
    const int64_t o = task / tasks_per_outer;
    const int64_t begin = (task % tasks_per_outer) * rows_per_task;
    const int64_t end = std::min(n, begin + rows_per_task);
    const char* so = s + o * n * row_bytes;
    char* dO = d + o * n * row_bytes;
    for (int64_t i = begin; i < end; ++i) {
      std::memcpy(dO + i * row_bytes, so + index[i] * row_bytes, static_cast<size_t>(row_bytes));
    }
  };
  const int64_t tasks = outer * tasks_per_outer;
  if (pool != nullptr) {
    pool->ParallelFor(tasks, run);
  } else {
    for (int64_t t = 0; t < tasks; ++t) run(t, 0);
  }
}

void ApplyPermutation(const TokenPermutation& perm, const void* src, void* dst, int64_t outer,
                      int64_t row_bytes, ThreadPool* pool) {
  GatherRows(perm.gather.data(), perm.size(), src, dst, outer, row_bytes, pool);
}

void InvertPermutation(const TokenPermutation& perm, const void* src, void* dst, int64_t outer,
                       int64_t row_bytes, ThreadPool* pool) {
  GatherRows(perm.scatter.data(), perm.size(), src, dst, outer, row_bytes, pool);
}

}  // namespace rainserve::attention
