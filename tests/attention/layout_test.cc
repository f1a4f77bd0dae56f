// Token layout, permutation and block table: the properties every backend
// and pipeline relies on.
#include "attention/layout.h"

#include <gtest/gtest.h>

#include "attention/testing/inputs.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <tuple>

#include "attention/config.h"
#include "attention/cuda/kernels.h"

namespace rainserve::attention {
namespace {

using testing::VideoLayout;

// (t, y, x) of an original video token index (no text before).
std::tuple<int64_t, int64_t, int64_t> Coord(const TokenLayout& l, int64_t idx) {
  return {idx / (l.height * l.width), (idx / l.width) % l.height, idx % l.width};
}

TEST(PermutationTest, ApplyThenInvertIsIdentityForManyOddShapes) {
  const WindowShape windows[] = {{2, 8, 8}, {1, 8, 16}, {3, 5, 7}, {1, 1, 1}, {16, 64, 64}};
  for (int64_t t : {1, 2, 5, 21}) {
    for (int64_t h : {1, 3, 8, 30}) {
      for (int64_t w : {1, 7, 16, 52}) {
        for (const auto& win : windows) {
          for (int64_t sink : {int64_t{0}, int64_t{1}, t}) {
            const TokenLayout l = VideoLayout(t, h, w, sink, 5, TextPlacement::kAfter);
            auto perm = BuildPermutation(l, win);
            ASSERT_TRUE(perm.ok()) << perm.status().ToString();
            const int64_t n = l.total_tokens();
            ASSERT_EQ(perm->size(), n);
            std::vector<int64_t> data(static_cast<size_t>(n)), permuted(data.size()),
                back(data.size());
            std::iota(data.begin(), data.end(), 1000);
            ApplyPermutation(*perm, data.data(), permuted.data(), 1, sizeof(int64_t));
            InvertPermutation(*perm, permuted.data(), back.data(), 1, sizeof(int64_t));
            ASSERT_EQ(back, data) << t << "x" << h << "x" << w;
            // gather is a bijection
            std::vector<int64_t> sorted = perm->gather;
            std::sort(sorted.begin(), sorted.end());
            for (int64_t i = 0; i < n; ++i) ASSERT_EQ(sorted[static_cast<size_t>(i)], i);
          }
        }
      }
    }
  }
}

TEST(PermutationTest, TokensOfOneWindowAreContiguousInRasterOrder) {
  const TokenLayout l = VideoLayout(5, 11, 19);  // partial windows in every dimension
  const WindowShape win{2, 8, 8};
  auto perm = BuildPermutation(l, win);
  ASSERT_TRUE(perm.ok());
  // Window id of each permuted position must be non-decreasing, windows in
  // raster order, and inside a window tokens in raster order.
  auto window_id = [&](int64_t idx) {
    auto [t, y, x] = Coord(l, idx);
    const int64_t nwh = (l.height + win.h - 1) / win.h, nww = (l.width + win.w - 1) / win.w;
    return ((t / win.t) * nwh + y / win.h) * nww + x / win.w;
  };
  for (int64_t i = 1; i < perm->size(); ++i) {
    const int64_t a = perm->gather[static_cast<size_t>(i - 1)], b = perm->gather[static_cast<size_t>(i)];
    ASSERT_LE(window_id(a), window_id(b)) << "position " << i;
    if (window_id(a) == window_id(b)) {
      ASSERT_LT(a, b) << "raster order inside a window";
    }
  }
  // The first window is full: 2 * 8 * 8 tokens.
  std::set<int64_t> first(perm->gather.begin(), perm->gather.begin() + 128);
  for (int64_t idx : first) {
    auto [t, y, x] = Coord(l, idx);
    EXPECT_LT(t, 2);
    EXPECT_LT(y, 8);
    EXPECT_LT(x, 8);
  }
  EXPECT_EQ(first.size(), 128u);
}

TEST(PermutationTest, SinkFramesFollowWindowsAndTextComesLast) {
  for (TextPlacement where : {TextPlacement::kBefore, TextPlacement::kAfter}) {
    const TokenLayout l = VideoLayout(4, 6, 10, /*sink=*/2, /*text=*/7, where);
    auto perm = BuildPermutation(l, WindowShape{2, 4, 4});
    ASSERT_TRUE(perm.ok());
    const int64_t text_start = where == TextPlacement::kBefore ? 0 : l.video_tokens();
    const int64_t video_start = where == TextPlacement::kBefore ? l.text_tokens : 0;
    const int64_t windowed = l.windowed_tokens(), sink = l.sink_tokens();
    EXPECT_EQ(windowed, 2 * 6 * 10);
    for (int64_t i = 0; i < perm->size(); ++i) {
      const int64_t src = perm->gather[static_cast<size_t>(i)];
      if (i < windowed) {
        // windowed tokens come from frames >= sink_frames
        ASSERT_GE(src - video_start, 2 * 60) << i;
        ASSERT_LT(src - video_start, l.video_tokens());
      } else if (i < windowed + sink) {
        // sink tokens: frames 0..1 in raster order
        ASSERT_EQ(src, video_start + (i - windowed)) << i;
      } else {
        ASSERT_EQ(src, text_start + (i - windowed - sink)) << i;
      }
    }
  }
}

TEST(PermutationTest, ImageWithWindowLargerThanGridKeepsRasterOrder) {
  const TokenLayout l = VideoLayout(1, 3, 5);
  auto perm = BuildPermutation(l, WindowShape{4, 16, 16});
  ASSERT_TRUE(perm.ok());
  for (int64_t i = 0; i < perm->size(); ++i) EXPECT_EQ(perm->gather[static_cast<size_t>(i)], i);
  EXPECT_EQ(DefaultWindow(l).t, 1);
  EXPECT_EQ(DefaultWindow(l).w, 16);
  EXPECT_EQ(DefaultWindow(VideoLayout(3, 8, 8)).t, 2);
}

TEST(PermutationTest, WorksOnRowsOfBatchedTensorsAndTables) {
  const TokenLayout l = VideoLayout(3, 4, 5, 1);
  auto perm = BuildPermutation(l, WindowShape{2, 2, 2});
  ASSERT_TRUE(perm.ok());
  const int64_t n = l.total_tokens(), B = 2, row = 3;  // [B, N, 3] floats
  std::vector<float> x(static_cast<size_t>(B * n * row)), y(x.size()), z(x.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i);
  ThreadPool pool(2);
  ApplyPermutation(*perm, x.data(), y.data(), B, row * sizeof(float), &pool);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t c = 0; c < row; ++c) {
        ASSERT_EQ(y[static_cast<size_t>((b * n + i) * row + c)],
                  x[static_cast<size_t>((b * n + perm->gather[static_cast<size_t>(i)]) * row + c)]);
      }
    }
  }
  InvertPermutation(*perm, y.data(), z.data(), B, row * sizeof(float), &pool);
  EXPECT_EQ(z, x);
}

TEST(BlockTableTest, SegmentsNeverShareABlockAndPartialBlocksAreKept) {
  const TokenLayout l = VideoLayout(3, 10, 10, /*sink=*/1, /*text=*/70, TextPlacement::kAfter);
  auto table = BuildBlockTable(l, 64);
  ASSERT_TRUE(table.ok());
  // windowed 200 -> 64,64,64,8; sink 100 -> 64,36; text 70 -> 64,6
  const std::vector<int32_t> starts = {0, 64, 128, 192, 200, 264, 300, 364, 370};
  EXPECT_EQ(table->starts, starts);
  const std::vector<uint8_t> forced = {0, 0, 0, 0, 1, 1, 1, 1};
  EXPECT_EQ(table->forced, forced);
  EXPECT_EQ(table->kinds[4], BlockKind::kSink);
  EXPECT_EQ(table->kinds[7], BlockKind::kText);
  EXPECT_EQ(table->num_forced(), 4);
  EXPECT_EQ(table->num_trailing_forced(), 4);
  EXPECT_EQ(table->view().trailing_forced, 4);
}

TEST(BlockTableTest, TrailingForcedCountsOnlyTheForcedTail) {
  BlockTable table;
  table.kinds.assign(5, BlockKind::kVideo);
  table.forced = {1, 0, 0, 1, 1};
  EXPECT_EQ(table.num_forced(), 3);
  EXPECT_EQ(table.num_trailing_forced(), 2);
  table.forced = {1, 1, 1, 1, 1};
  EXPECT_EQ(table.num_trailing_forced(), 5);
  table.forced = {1, 1, 1, 1, 0};
  EXPECT_EQ(table.num_trailing_forced(), 0);
}

// The flash kernels' CTA order: every (query block, head, batch) exactly
// once, the heavy rows of every head before any other row, then head by head.
TEST(FlashScheduleTest, HeavyRowsOfAllHeadsFirstAndEveryTileOnce) {
  for (const auto& [nb, heavy, heads, batch] :
       std::vector<std::tuple<int, int, int, int>>{
           {257, 13, 12, 2}, {7, 0, 3, 2}, {5, 5, 2, 3}, {1, 1, 1, 1}, {9, 1, 1, 1}}) {
    const int total = nb * heads * batch;
    std::set<std::tuple<int, int, int>> seen;
    int last_light_bh = -1;
    for (int i = 0; i < total; ++i) {
      const cuda::FlashTile t = cuda::FlashTileOf(i, nb, heavy, heads, batch);
      ASSERT_TRUE(t.qb >= 0 && t.qb < nb && t.h >= 0 && t.h < heads && t.b >= 0 && t.b < batch)
          << i;
      EXPECT_TRUE(seen.emplace(t.qb, t.h, t.b).second) << "tile visited twice at " << i;
      const bool heavy_row = t.qb >= nb - heavy;
      EXPECT_EQ(heavy_row, i < heavy * heads * batch) << i;
      if (!heavy_row) {
        const int bh = t.b * heads + t.h;
        EXPECT_GE(bh, last_light_bh) << "heads interleaved at " << i;
        last_light_bh = bh;
      }
    }
    EXPECT_EQ(static_cast<int>(seen.size()), total);
  }
}

TEST(BlockTableTest, CanonicalW1ShapeHas257BlocksWith13Forced) {
  const TokenLayout l = VideoLayout(21, 30, 52, 1);
  auto plan = AttentionPlan::Build(l, WindowShape{2, 8, 8}, 128);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->tokens(), 32760);
  EXPECT_EQ(plan->num_blocks(), 244 + 13);  // ceil(31200/128) + ceil(1560/128)
  EXPECT_EQ(plan->blocks.num_forced(), 13);
}

TEST(LayoutValidationTest, BadLayoutsAndWindowsAreErrors) {
  EXPECT_EQ(BuildPermutation(VideoLayout(0, 4, 4), {}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(BuildPermutation(VideoLayout(2, 4, 4, 3), {}).status().message().find("sink_frames"),
            std::string::npos);
  EXPECT_NE(BuildPermutation(VideoLayout(2, 4, 4), WindowShape{0, 8, 8}).status().message().find("window.t"),
            std::string::npos);
  TokenLayout text_without_place = VideoLayout(1, 2, 2);
  text_without_place.text_tokens = 3;
  EXPECT_FALSE(BuildPermutation(text_without_place, {}).ok());
  EXPECT_FALSE(BuildBlockTable(VideoLayout(1, 2, 2), 0).ok());
  EXPECT_NE(AttentionPlan::Build(VideoLayout(1, 2, 2), {}, 100).status().message().find("block_size"),
            std::string::npos);
}

TEST(ConfigTest, SparsityAndCountsAreValidated) {
  AttentionConfig c;
  EXPECT_TRUE(ValidateConfig(c).ok());
  for (double bad : {-0.1, 1.0, 1.5, std::nan("")}) {
    c.sparsity = bad;
    EXPECT_NE(ValidateConfig(c).message().find("sparsity must be in [0, 1)"), std::string::npos);
  }
  c.sparsity = 0.5;
  c.min_sparse_blocks = 0;
  EXPECT_FALSE(ValidateConfig(c).ok());
  EXPECT_EQ(TopKCount(10, 0.8), 2);    // 10 * 0.2 = 2.0000000000000004 must not become 3
  EXPECT_EQ(TopKCount(257, 0.8), 52);  // ceil(51.4)
  EXPECT_EQ(TopKCount(7, 0.0), 7);
  EXPECT_EQ(TopKCount(7, 0.99), 1);
  c.min_sparse_blocks = 4;
  EXPECT_TRUE(RunsDense(c, 3));
  EXPECT_FALSE(RunsDense(c, 4));
}

}  // namespace
}  // namespace rainserve::attention

namespace rainserve::attention {
namespace {

// The grids of the Wan2.2 / image-to-video models with the default window:
// TI2V-5B at 1280 x 704, 121 frames (31 x 22 x 40 after its 16x VAE and 2x2
// patches), 14B at 720p (21 x 45 x 80, 45 not a multiple of the window) and
// I2V-480P (21 x 30 x 52): each plan is a permutation of every token, the
// sink frame is forced and every block holds tokens.
TEST(BlockTableTest, Wan22AndImageToVideoGridsPlanWithTheDefaultWindow) {
  struct Grid {
    int64_t f, h, w;
  } grids[] = {{31, 22, 40}, {21, 45, 80}, {21, 30, 52}, {31, 45, 80}};
  for (const Grid& g : grids) {
    const TokenLayout l = VideoLayout(g.f, g.h, g.w, 1);
    auto plan = AttentionPlan::Build(l, WindowShape{}, 128);
    ASSERT_TRUE(plan.ok()) << g.f << "x" << g.h << "x" << g.w << ": " << plan.status().ToString();
    const int64_t n = g.f * g.h * g.w;
    ASSERT_EQ(plan->tokens(), n);
    std::vector<int> seen(n, 0);
    for (int64_t p = 0; p < n; ++p) {
      const int64_t o = plan->permutation.gather[p];
      ASSERT_TRUE(o >= 0 && o < n);
      ++seen[o];
      ASSERT_EQ(plan->permutation.scatter[o], p);
    }
    EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), n);
    const int64_t frame = g.h * g.w;
    EXPECT_EQ(plan->blocks.num_forced(), (frame + 127) / 128);  // the sink frame
    for (int64_t b = 0; b < plan->num_blocks(); ++b) {
      EXPECT_GT(plan->blocks.starts[b + 1], plan->blocks.starts[b]);
    }
  }
}

}  // namespace
}  // namespace rainserve::attention
