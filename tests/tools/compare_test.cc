// rainserve-cli compare without a server: PSNR and SSIM against
// hand-computed values, the --settings parser and its errors, the label
// font, the grid's layout, the table, the JSON and the raw-artifact collector.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "media/image_decoder.h"
#include "tools/cli_compare.h"
#include "tools/cli_flags.h"
#include "tools/label_font.h"
#include "tools/quality_metrics.h"

namespace rainserve {
namespace {

using cli::Clip;
using cli::CompareRow;
using cli::CompareRun;

// A frames x height x width RGB clip of one grey value.
std::vector<uint8_t> Constant(int width, int height, int frames, uint8_t v) {
  return std::vector<uint8_t>(static_cast<size_t>(width) * height * frames * 3, v);
}

// A deterministic textured clip (so SSIM has structure to compare).
std::vector<uint8_t> Texture(int width, int height, int frames) {
  std::vector<uint8_t> p(static_cast<size_t>(width) * height * frames * 3);
  uint32_t s = 12345;
  for (uint8_t& v : p) {
    s = s * 1664525u + 1013904223u;
    v = static_cast<uint8_t>(s >> 24);
  }
  return p;
}

// ------------------------------------------------------------ PSNR and SSIM

TEST(QualityMetricsTest, IdenticalClipsHaveInfinitePsnrAndSsimOne) {
  const std::vector<uint8_t> a = Texture(32, 24, 3);
  const auto q = quality::CompareClips(a.data(), a.data(), 32, 24, 3);
  ASSERT_TRUE(q.ok()) << q.status().ToString();
  EXPECT_TRUE(std::isinf(q->psnr_db) && q->psnr_db > 0);
  EXPECT_EQ(q->ssim, 1.0);
  EXPECT_EQ(q->identical_frames, 3);
  EXPECT_EQ(cli::PsnrText(q->psnr_db), "inf");
}

TEST(QualityMetricsTest, AConstantOffsetGivesTwentyLog10OfPeakOverOffset) {
  for (const int offset : {1, 5, 16}) {
    const std::vector<uint8_t> a = Constant(16, 16, 2, 100);
    const std::vector<uint8_t> b = Constant(16, 16, 2, static_cast<uint8_t>(100 + offset));
    EXPECT_NEAR(quality::Psnr(a.data(), b.data(), a.size()), 20 * std::log10(255.0 / offset),
                1e-12);
    const auto q = quality::CompareClips(a.data(), b.data(), 16, 16, 2);
    ASSERT_TRUE(q.ok());
    EXPECT_NEAR(q->psnr_db, 20 * std::log10(255.0 / offset), 1e-12);
    EXPECT_EQ(q->identical_frames, 0);
  }
  // Offset 5 on a textured clip (no clipping: values kept under 250).
  std::vector<uint8_t> a = Texture(20, 20, 1);
  for (uint8_t& v : a) v = static_cast<uint8_t>(v % 250);
  std::vector<uint8_t> b = a;
  for (uint8_t& v : b) v = static_cast<uint8_t>(v + 5);
  EXPECT_NEAR(quality::Psnr(a.data(), b.data(), a.size()), 20 * std::log10(255.0 / 5), 1e-12);
}

TEST(QualityMetricsTest, ConstantImagesHaveTheLuminanceTermAsSsim) {
  // Flat images: both variances and the covariance are 0, so
  // SSIM = (2 a b + C1) / (a^2 + b^2 + C1) with C1 = (0.01 * 255)^2.
  const double c1 = 2.55 * 2.55;
  for (const auto& [a, b] : std::vector<std::pair<int, int>>{{100, 110}, {0, 255}, {50, 60}}) {
    const std::vector<uint8_t> x = Constant(16, 12, 1, static_cast<uint8_t>(a));
    const std::vector<uint8_t> y = Constant(16, 12, 1, static_cast<uint8_t>(b));
    const auto q = quality::CompareClips(x.data(), y.data(), 16, 12, 1);
    ASSERT_TRUE(q.ok());
    EXPECT_NEAR(q->ssim, (2.0 * a * b + c1) / (1.0 * a * a + 1.0 * b * b + c1), 1e-5) << a << " " << b;
  }
}

TEST(QualityMetricsTest, SsimOfAnImageAgainstItsNegativeIsTheContrastTermOnly) {
  // y = 255 - x on an 11x11 luma plane (one window): the window's means are m
  // and 255 - m, its variances both v and the covariance -v, so
  // SSIM = (2 m (255 - m) + C1)(C2 - 2v) / ((m^2 + (255 - m)^2 + C1)(2v + C2)).
  const int n = quality::kSsimWindow;
  std::vector<float> x(n * n), y(n * n);
  for (int i = 0; i < n * n; ++i) {
    x[i] = static_cast<float>((i * 37) % 200 + 20);
    y[i] = 255.0f - x[i];
  }
  double w[11], wsum = 0;
  for (int i = 0; i < n; ++i) wsum += w[i] = std::exp(-(i - 5) * (i - 5) / 4.5);
  double m = 0, m2 = 0;
  for (int r = 0; r < n; ++r) {
    for (int c = 0; c < n; ++c) {
      const double k = w[r] * w[c] / (wsum * wsum);
      m += k * x[r * n + c];
      m2 += k * x[r * n + c] * x[r * n + c];
    }
  }
  const double v = m2 - m * m, c1 = 2.55 * 2.55, c2 = 7.65 * 7.65;
  const double expected =
      (2 * m * (255 - m) + c1) * (c2 - 2 * v) / ((m * m + (255 - m) * (255 - m) + c1) * (2 * v + c2));
  EXPECT_NEAR(quality::SsimLuma(x.data(), y.data(), n, n), expected, 1e-9);
  EXPECT_LT(expected, 0);  // anti-correlated structure scores below zero
}

TEST(QualityMetricsTest, SsimEqualsTheMeanOfTheFormulaOverEveryWholeWindow) {
  // Straight from the definition: for each 11x11 window inside a 19x14
  // plane, Gaussian-weighted means, variances and covariance, then the
  // SSIM formula; the mean over the 9 x 4 windows.
  const int w = 19, h = 14;
  std::vector<float> x(w * h), y(w * h);
  uint32_t s = 7;
  for (int i = 0; i < w * h; ++i) {
    s = s * 1664525u + 1013904223u;
    x[i] = static_cast<float>(s >> 24);
    y[i] = std::min(255.0f, x[i] * 0.7f + static_cast<float>((s >> 8) % 60));
  }
  double g[11][11], gsum = 0;
  for (int r = 0; r < 11; ++r) {
    for (int c = 0; c < 11; ++c) {
      gsum += g[r][c] = std::exp(-((r - 5) * (r - 5) + (c - 5) * (c - 5)) / 4.5);
    }
  }
  const double c1 = 2.55 * 2.55, c2 = 7.65 * 7.65;
  double total = 0;
  for (int oy = 0; oy + 11 <= h; ++oy) {
    for (int ox = 0; ox + 11 <= w; ++ox) {
      double mx = 0, my = 0, sxx = 0, syy = 0, sxy = 0;
      for (int r = 0; r < 11; ++r) {
        for (int c = 0; c < 11; ++c) {
          const double k = g[r][c] / gsum, a = x[(oy + r) * w + ox + c], b = y[(oy + r) * w + ox + c];
          mx += k * a;
          my += k * b;
          sxx += k * a * a;
          syy += k * b * b;
          sxy += k * a * b;
        }
      }
      const double vx = sxx - mx * mx, vy = syy - my * my, cov = sxy - mx * my;
      total += (2 * mx * my + c1) * (2 * cov + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2));
    }
  }
  const double expected = total / (9 * 4);
  EXPECT_NEAR(quality::SsimLuma(x.data(), y.data(), w, h), expected, 1e-9);
  EXPECT_LT(expected, 0.99);
  EXPECT_GT(expected, 0.0);
}

TEST(QualityMetricsTest, LumaIsBt601) {
  const uint8_t rgb[6] = {255, 0, 0, 10, 20, 30};
  const std::vector<float> y = quality::Luma(rgb, 2, 1);
  EXPECT_NEAR(y[0], 0.299 * 255, 1e-4);
  EXPECT_NEAR(y[1], 0.299 * 10 + 0.587 * 20 + 0.114 * 30, 1e-4);
}

TEST(QualityMetricsTest, FramesUnderTheWindowAreRejectedNamingTheSide) {
  const std::vector<uint8_t> a = Constant(10, 20, 1, 0);
  EXPECT_EQ(quality::CompareClips(a.data(), a.data(), 10, 20, 1).status().message(),
            "width must be at least 11 for SSIM, got 10");
  EXPECT_EQ(quality::CompareClips(a.data(), a.data(), 20, 10, 1).status().message(),
            "height must be at least 11 for SSIM, got 10");
}

TEST(QualityMetricsTest, ClipPsnrIsTheMeanOverDifferingFrames) {
  // Frame 0 identical, frame 1 off by 1, frame 2 off by 4.
  std::vector<uint8_t> a = Constant(12, 12, 3, 50), b = a;
  const size_t fb = 12 * 12 * 3;
  for (size_t i = fb; i < 2 * fb; ++i) b[i] = 51;
  for (size_t i = 2 * fb; i < 3 * fb; ++i) b[i] = 54;
  const auto q = quality::CompareClips(a.data(), b.data(), 12, 12, 3);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->identical_frames, 1);
  EXPECT_NEAR(q->psnr_db, (20 * std::log10(255.0) + 20 * std::log10(255.0 / 4)) / 2, 1e-12);
}

// ------------------------------------------------------------ --settings

TEST(CompareSettingsTest, ParsesEveryKeyAndDefaultsTheModeToRainFusion) {
  const auto s = cli::ParseSettings(
      "sparsity=0.8,sink=1; sparsity=0.9 ;sparsity=0.8,warmup=5;mode=dense;"
      "window=2x4x8,mask_refresh=per_step");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  ASSERT_EQ(s->size(), 5u);
  EXPECT_EQ((*s)[0].label, "sparsity=0.8,sink=1");
  EXPECT_EQ((*s)[0].sparse_attention.mode(), v1::ATTENTION_MODE_RAINFUSION);
  EXPECT_DOUBLE_EQ((*s)[0].sparse_attention.sparsity(), 0.8);
  EXPECT_EQ((*s)[0].sparse_attention.sink_frames(), 1u);
  EXPECT_EQ((*s)[1].label, "sparsity=0.9");
  EXPECT_FALSE((*s)[1].sparse_attention.has_sink_frames());
  EXPECT_EQ((*s)[2].sparse_attention.dense_warmup_steps(), 5u);
  EXPECT_EQ((*s)[3].sparse_attention.mode(), v1::ATTENTION_MODE_DENSE);
  EXPECT_EQ((*s)[4].sparse_attention.window().t(), 2u);
  EXPECT_EQ((*s)[4].sparse_attention.window().h(), 4u);
  EXPECT_EQ((*s)[4].sparse_attention.window().w(), 8u);
  EXPECT_EQ((*s)[4].sparse_attention.mask_refresh(), v1::MASK_REFRESH_PER_STEP);
}

TEST(CompareSettingsTest, MassModeAndKeptMassMapToTheirProtoFields) {
  const auto s = cli::ParseSettings("mode=rainfusion_mass,kept_mass=0.9;mode=rainfusion");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  ASSERT_EQ(s->size(), 2u);
  EXPECT_EQ((*s)[0].sparse_attention.mode(), v1::ATTENTION_MODE_RAINFUSION_MASS);
  EXPECT_DOUBLE_EQ((*s)[0].sparse_attention.kept_mass(), 0.9);
  EXPECT_EQ((*s)[1].sparse_attention.mode(), v1::ATTENTION_MODE_RAINFUSION);
  EXPECT_FALSE((*s)[1].sparse_attention.has_kept_mass());
}

TEST(CompareSettingsTest, ErrorsNameTheSettingAndTheKey) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"sparsity=0.8;sparsity=lots",
       "--settings: setting 2 'sparsity=lots': sparsity expects a number, got 'lots'"},
      {"spars=0.8", "--settings: setting 1 'spars=0.8': unknown key 'spars' (keys: mode, "
                    "sparsity, kept_mass, sink, warmup, window, mask_refresh)"},
      {"sink=-1", "--settings: setting 1 'sink=-1': sink expects an integer in [0, 4294967295], "
                  "got '-1'"},
      {"warmup=x", "--settings: setting 1 'warmup=x': warmup expects an integer"},
      {"window=2,8,8", "--settings: setting 1 'window=2,8,8': window expects TxHxW"},
      {"window=2x8", "--settings: setting 1 'window=2x8': window expects TxHxW"},
      {"mode=sparse", "--settings: setting 1 'mode=sparse': mode"},
      {"mask_refresh=never", "--settings: setting 1 'mask_refresh=never': mask_refresh"},
      {"sparsity=0.8,sparsity=0.9", "setting 1 'sparsity=0.8,sparsity=0.9': sparsity given twice"},
      {"sparsity=0.8;;", "--settings: setting 2 '': empty (expected key=value pairs)"},
      {"", "--settings is empty"},
      {"sparsity=0.1;sparsity=0.2;sparsity=0.3;sparsity=0.4;sparsity=0.5;sparsity=0.6;"
       "sparsity=0.7;sparsity=0.8;sparsity=0.9",
       "--settings lists 9 settings, at most 8"},
  };
  for (const auto& [text, message] : cases) {
    const auto s = cli::ParseSettings(text);
    ASSERT_FALSE(s.ok()) << text;
    EXPECT_NE(s.status().message().find(message), std::string::npos)
        << text << " -> " << s.status().message();
  }
}

TEST(CompareSettingsTest, CompareTakesSettingsInsteadOfTheAttentionFlags) {
  const std::string help = cli::CommandHelp(*cli::FindCommand("compare"));
  EXPECT_NE(help.find("--settings LIST"), std::string::npos) << help;
  EXPECT_NE(help.find("--seed N"), std::string::npos) << help;
  EXPECT_NE(help.find("--width N"), std::string::npos) << help;
  for (const char* flag : {"--sparsity", "--sink-frames", "--attention", "--format",
                           "--request-id", "--dense-warmup-steps"}) {
    EXPECT_EQ(help.find(std::string(flag) + " "), std::string::npos) << flag;
  }
  EXPECT_NE(cli::MainHelp().find("  compare "), std::string::npos);
}

// ------------------------------------------------------------ font and grid

TEST(LabelFontTest, GlyphsAreDistinctAndLowerCaseDrawsAsUpper) {
  const std::string chars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.,:;=_-+/()%";
  std::vector<std::string> bitmaps;
  for (const char c : chars) {
    std::string bits;
    for (int y = 0; y < quality::kGlyphHeight; ++y) {
      for (int x = 0; x < quality::kGlyphWidth; ++x) bits += quality::GlyphPixel(c, x, y) ? '#' : '.';
    }
    for (const std::string& other : bitmaps) EXPECT_NE(bits, other) << c;
    bitmaps.push_back(bits);
  }
  for (int y = 0; y < quality::kGlyphHeight; ++y) {
    for (int x = 0; x < quality::kGlyphWidth; ++x) {
      EXPECT_EQ(quality::GlyphPixel('s', x, y), quality::GlyphPixel('S', x, y));
      EXPECT_FALSE(quality::GlyphPixel(' ', x, y));
    }
  }
  EXPECT_EQ(quality::TextWidth(3, 1), 17);
  EXPECT_EQ(quality::TextWidth(3, 2), 34);
}

TEST(LabelFontTest, DrawTextSetsExactlyTheGlyphsPixelsAndClips) {
  std::vector<uint8_t> img(8 * 9 * 3, 0);
  const uint8_t red[3] = {255, 0, 0};
  quality::DrawText(img.data(), 8, 9, 1, 1, "1", 1, red);
  for (int y = 0; y < 9; ++y) {
    for (int x = 0; x < 8; ++x) {
      const bool inside = x >= 1 && x < 6 && y >= 1 && y < 8;
      const bool set = inside && quality::GlyphPixel('1', x - 1, y - 1);
      EXPECT_EQ(img[(y * 8 + x) * 3], set ? 255 : 0) << x << "," << y;
      EXPECT_EQ(img[(y * 8 + x) * 3 + 1], 0);
    }
  }
  quality::DrawText(img.data(), 8, 9, 6, 5, "888", 2, red);  // mostly outside: no crash
}

TEST(CompareGridTest, WrapsLabelsAtCommasToTheTileWidth) {
  // 64 px at scale 1 hold 10 characters.
  EXPECT_EQ(cli::WrapLabel("sparsity=0.8,sink=1", 64, 1),
            (std::vector<std::string>{"sparsity=0", ".8,sink=1"}));
  EXPECT_EQ(cli::WrapLabel("mode=dense,sink=0", 64, 1),
            (std::vector<std::string>{"mode=dense", ",sink=0"}));
  EXPECT_EQ(cli::WrapLabel("dense", 64, 1), (std::vector<std::string>{"dense"}));
  EXPECT_EQ(cli::WrapLabel("a,b,c,d,e,f,g", 64, 1),
            (std::vector<std::string>{"a,b,c,d,e,", "f,g"}));
  EXPECT_EQ(cli::LabelScale(256), 1);
  EXPECT_EQ(cli::LabelScale(832), 2);
}

TEST(CompareGridTest, TilesSideBySideUnderAnEvenLabelStrip) {
  Clip a{16, 12, 2, std::string(16 * 12 * 2 * 3, '\x10')};
  Clip b{16, 12, 2, std::string(16 * 12 * 2 * 3, '\x20')};
  b.rgb[16 * 12 * 3] = '\x21';  // frame 1, pixel (0, 0)
  const cli::Grid g = cli::ComposeGrid({"dense", "s=0.8"}, {&a, &b});
  // One line per label at 16 px (2 characters a line): "s=0.8" takes 3 lines.
  EXPECT_EQ(g.strip_height, 3 * 9 + 2 + 1);
  EXPECT_EQ(g.width, 32);
  EXPECT_EQ(g.height, 12 + g.strip_height);
  EXPECT_EQ(g.frames, 2);
  ASSERT_EQ(g.rgb.size(), static_cast<size_t>(32) * g.height * 2 * 3);
  const auto px = [&](int f, int x, int y) {
    return g.rgb[((static_cast<size_t>(f) * g.height + y) * g.width + x) * 3];
  };
  EXPECT_EQ(px(0, 0, g.strip_height), 0x10);
  EXPECT_EQ(px(0, 15, g.height - 1), 0x10);
  EXPECT_EQ(px(0, 16, g.strip_height), 0x20);
  EXPECT_EQ(px(1, 16, g.strip_height), 0x21);
  // Each tile's strip is its wrapped label in white on black, drawn at
  // (1, 1) one line every 9 rows, the same on every frame.
  const std::vector<std::string> labels = {"dense", "s=0.8"};
  for (int tile = 0; tile < 2; ++tile) {
    std::vector<uint8_t> expected(16 * g.strip_height * 3, 0);
    const std::vector<std::string> lines = cli::WrapLabel(labels[tile], 16, 1);
    const uint8_t white[3] = {255, 255, 255};
    for (size_t i = 0; i < lines.size(); ++i) {
      quality::DrawText(expected.data(), 16, g.strip_height, 1, 1 + 9 * static_cast<int>(i),
                        lines[i], 1, white);
    }
    for (int y = 0; y < g.strip_height; ++y) {
      for (int x = 0; x < 16; ++x) {
        EXPECT_EQ(px(0, tile * 16 + x, y), expected[(y * 16 + x) * 3]) << tile << " " << x << "," << y;
      }
    }
  }
  EXPECT_EQ(px(0, 1, 1), 255);  // the top of the 'D'
  for (int y = 0; y < g.strip_height; ++y) {
    for (int x = 0; x < g.width; ++x) EXPECT_EQ(px(0, x, y), px(1, x, y));
  }
}

TEST(CompareGridTest, OneFrameEncodesAsAPngOfTheGridsSize) {
  Clip a{16, 12, 1, std::string(16 * 12 * 3, '\x40')};
  const cli::Grid g = cli::ComposeGrid({"dense", "x", "y"}, {&a, &a, &a});
  std::string extension;
  const auto png = cli::EncodeGrid(g, 16, &extension);
  ASSERT_TRUE(png.ok()) << png.status().ToString();
  EXPECT_EQ(extension, ".png");
  const auto image = media::DecodeImage(*png, {});
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  EXPECT_EQ(image->width, 48);
  EXPECT_EQ(image->height, 12 + g.strip_height);
  EXPECT_EQ(std::vector<uint8_t>(image->rgb.begin(), image->rgb.end()), g.rgb);
}

// ------------------------------------------------------------ rows, table, JSON

v1::GenerateResult Result(double requested, double realized, double denoise, double total) {
  v1::GenerateResult r;
  r.set_requested_sparsity(requested);
  r.set_realized_sparsity(realized);
  r.mutable_timings()->mutable_denoise()->set_seconds(static_cast<int64_t>(denoise));
  r.mutable_timings()->mutable_denoise()->set_nanos(
      static_cast<int32_t>((denoise - std::floor(denoise)) * 1e9));
  r.mutable_timings()->mutable_total()->set_seconds(static_cast<int64_t>(total));
  return r;
}

TEST(CompareRowsTest, RowsCompareEveryRunWithTheFirst) {
  const std::vector<uint8_t> base = Constant(12, 12, 2, 100), off = Constant(12, 12, 2, 105);
  std::vector<CompareRun> runs = {
      {"dense", Clip{12, 12, 2, std::string(base.begin(), base.end())}, Result(0, 0, 1.5, 3)},
      {"sparsity=0.8", Clip{12, 12, 2, std::string(off.begin(), off.end())},
       Result(0.8, 0.6, 0.5, 2)},
  };
  const auto rows = cli::CompareRuns(runs);
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  ASSERT_EQ(rows->size(), 2u);
  EXPECT_TRUE(std::isinf((*rows)[0].quality.psnr_db));
  EXPECT_EQ((*rows)[0].quality.ssim, 1.0);
  EXPECT_NEAR((*rows)[1].quality.psnr_db, 20 * std::log10(255.0 / 5), 1e-12);
  EXPECT_DOUBLE_EQ((*rows)[1].realized_sparsity, 0.6);
  EXPECT_DOUBLE_EQ((*rows)[0].denoise_seconds, 1.5);
  EXPECT_DOUBLE_EQ((*rows)[1].total_seconds, 2);

  const std::string table = cli::CompareTable(*rows);
  // SSIM of flat 100 against flat 105: (2*100*105 + C1) / (100^2 + 105^2 + C1) = 0.99881.
  EXPECT_EQ(table,
            "SETTING       PSNR_DB    SSIM  SPARSITY  REALIZED  DENOISE  TOTAL\n"
            "dense             inf  1.0000     0.000     0.000    1.50s  3.00s\n"
            "sparsity=0.8    34.15  0.9988     0.800     0.600    0.50s  2.00s\n");

  cli::CompareInfo info{"wan-tiny", "a \"boat\"", 7, 12, 12, 2, 3, "compare.mp4"};
  const std::string json = cli::CompareJson(info, *rows);
  EXPECT_NE(json.find("\"prompt\": \"a \\\"boat\\\"\""), std::string::npos) << json;
  EXPECT_NE(json.find("{\"setting\": \"dense\", \"psnr_db\": \"inf\", \"ssim\": 1, "
                      "\"identical_frames\": 2"),
            std::string::npos)
      << json;
  EXPECT_NE(json.find("\"setting\": \"sparsity=0.8\", \"psnr_db\": 34.15"), std::string::npos)
      << json;
  EXPECT_NE(json.find("\"grid\": \"compare.mp4\""), std::string::npos) << json;
  // Numbers in their shortest round-trip form.
  EXPECT_NE(json.find("\"requested_sparsity\": 0.8, \"realized_sparsity\": 0.6, "
                      "\"denoise_seconds\": 0.5,"),
            std::string::npos)
      << json;

  runs[1].clip.height = 11;
  runs[1].clip.rgb.resize(12 * 11 * 2 * 3);
  EXPECT_EQ(cli::CompareRuns(runs).status().message(),
            "'sparsity=0.8' returned 12x11x2, the dense run 12x12x2");
}

// ------------------------------------------------------------ the raw artifact

TEST(RawCollectorTest, ReassemblesTheRawClipAndKeepsTheResultAndSeed) {
  cli::RawCollector c;
  v1::GenerateEvent e;
  e.mutable_accepted()->set_seed(42);
  c.On(e);
  e.Clear();
  v1::ArtifactInfo* info = e.mutable_artifact_header()->mutable_info();
  info->set_mime_type("application/octet-stream");
  info->set_width(2);
  info->set_height(1);
  info->set_frames(1);
  info->set_size_bytes(6);
  c.On(e);
  for (const std::string part : {"abc", "def"}) {
    e.Clear();
    e.mutable_artifact_chunk()->set_offset(part == "abc" ? 0 : 3);
    e.mutable_artifact_chunk()->set_data(part);
    c.On(e);
  }
  e.Clear();
  e.mutable_completed()->mutable_result()->set_realized_sparsity(0.25);
  c.On(e);
  const auto clip = c.TakeClip();
  ASSERT_TRUE(clip.ok()) << clip.status().ToString();
  EXPECT_EQ(clip->rgb, "abcdef");
  EXPECT_EQ(clip->width, 2);
  EXPECT_EQ(c.seed(), 42u);
  EXPECT_DOUBLE_EQ(c.result().realized_sparsity(), 0.25);
}

TEST(RawCollectorTest, AFailedJobOrAnMp4ArtifactIsAnError) {
  cli::RawCollector failed;
  v1::GenerateEvent e;
  e.mutable_failed()->set_code(3);
  e.mutable_failed()->set_message("sparse_attention.sparsity must be in [0, 1), got 2");
  failed.On(e);
  EXPECT_EQ(failed.TakeClip().status().ToString(),
            "INVALID_ARGUMENT: sparse_attention.sparsity must be in [0, 1), got 2");

  cli::RawCollector mp4;
  e.Clear();
  e.mutable_artifact_header()->mutable_info()->set_mime_type("video/mp4");
  e.mutable_artifact_header()->mutable_info()->set_size_bytes(0);
  mp4.On(e);
  e.Clear();
  e.mutable_completed();
  mp4.On(e);
  EXPECT_NE(mp4.TakeClip().status().message().find("is not 0 bytes of raw RGB (video/mp4"),
            std::string::npos);
}

}  // namespace
}  // namespace rainserve
