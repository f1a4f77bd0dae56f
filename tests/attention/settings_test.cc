// The sparse-attention settings' one validator and the one table of names.
#include "attention/settings.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

namespace rainserve::attention {
namespace {

std::string ErrorOf(const SparseSettings& s, const SettingsBounds& b,
                    const std::string& prefix = "sparse_attention.") {
  const Status st = ValidateSettings(s, b, prefix);
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  return st.message();
}

TEST(SettingsTest, DefaultsAreValidAndEachBadFieldIsNamedWithItsRange) {
  const SettingsBounds bounds{3, 10};
  EXPECT_TRUE(ValidateSettings(SparseSettings{}, bounds).ok());

  SparseSettings s;
  s.sparsity = 1.0;
  EXPECT_EQ(ErrorOf(s, bounds), "sparse_attention.sparsity must be in [0, 1) (got 1)");
  s.sparsity = std::nan("");
  EXPECT_NE(ErrorOf(s, bounds).find("sparse_attention.sparsity"), std::string::npos);
  s = {};
  s.sink_frames = 4;
  EXPECT_EQ(ErrorOf(s, bounds), "sparse_attention.sink_frames must be in [0, 3] (got 4)");
  s = {};
  s.window = {2, 65, 8};
  EXPECT_EQ(ErrorOf(s, bounds), "sparse_attention.window.h must be in [0, 64] (got 65)");
  s = {};
  s.dense_warmup_steps = 11;
  EXPECT_EQ(ErrorOf(s, bounds), "sparse_attention.dense_warmup_steps must be in [0, 10] (got 11)");
  // A YAML default names its own key path.
  EXPECT_EQ(ErrorOf(s, bounds, "models.m.defaults.sparse_attention."),
            "models.m.defaults.sparse_attention.dense_warmup_steps must be in [0, 10] (got 11)");
}

TEST(SettingsTest, QualityProbeRateAboveTheServerCapOrNegativeIsRefusedNamingTheField) {
  SettingsBounds bounds{3, 10, 0.25};
  SparseSettings s;
  s.quality_probe_rate = 0.25;
  EXPECT_TRUE(ValidateSettings(s, bounds).ok());
  s.quality_probe_rate = 0.5;
  EXPECT_EQ(ErrorOf(s, bounds), "sparse_attention.quality_probe.rate must be in [0, 0.25] (got 0.5)");
  s.quality_probe_rate = -0.1;
  EXPECT_NE(ErrorOf(s, bounds).find("sparse_attention.quality_probe.rate"), std::string::npos);
  s.quality_probe_rate = std::nan("");
  EXPECT_NE(ErrorOf(s, bounds).find("sparse_attention.quality_probe.rate"), std::string::npos);
  bounds.max_quality_probe_rate = 1.0;  // the default cap takes every rate
  s.quality_probe_rate = 1.0;
  EXPECT_TRUE(ValidateSettings(s, bounds).ok());
}

TEST(SettingsTest, ModeAndRefreshNamesRoundTripAndUnknownNamesAreErrors) {
  for (AttentionMode m : {AttentionMode::kDense, AttentionMode::kRainFusion,
                          AttentionMode::kRainFusionMass}) {
    auto parsed = ParseMode(ModeName(m), "mode");
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, m);
  }
  for (MaskRefresh r : {MaskRefresh::kEveryLayer, MaskRefresh::kPerStep}) {
    auto parsed = ParseMaskRefresh(MaskRefreshName(r), "mask_refresh");
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, r);
  }
  EXPECT_EQ(ModeNames(), "dense|rainfusion|rainfusion_mass");
  EXPECT_EQ(std::string(ModeName(AttentionMode::kRainFusionMass)), "rainfusion_mass");
  EXPECT_EQ(MaskRefreshNames(), "every_layer|per_step");
  auto bad = ParseMode("sparse", "sparse_attention.mode");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(),
            "sparse_attention.mode must be one of dense|rainfusion|rainfusion_mass (got "
            "\"sparse\")");
  EXPECT_FALSE(ParseMaskRefresh("every_step", "mask_refresh").ok());
}

TEST(SettingsTest, RequestedSparsityIsZeroInDenseMode) {
  SparseSettings s;
  s.sparsity = 0.7;
  EXPECT_EQ(RequestedSparsity(s), 0.7);
  s.mode = AttentionMode::kDense;
  EXPECT_EQ(RequestedSparsity(s), 0.0);
}

TEST(SettingsTest, MassModeRunsSparseWithNoRequestedSparsity) {
  SparseSettings s;
  s.mode = AttentionMode::kRainFusionMass;
  s.sparsity = 0.0;
  EXPECT_EQ(RequestedSparsity(s), 0.0);
  EXPECT_TRUE(SparseMode(s));
  s.mode = AttentionMode::kRainFusion;
  EXPECT_FALSE(SparseMode(s));
  s.mode = AttentionMode::kDense;
  s.sparsity = 0.5;
  EXPECT_FALSE(SparseMode(s));
}

TEST(SettingsTest, KeptMassAndBlockBoundsAreCheckedNamingTheField) {
  const SettingsBounds bounds{4, 10, 1.0};
  SparseSettings s;
  s.mode = AttentionMode::kRainFusionMass;
  s.kept_mass = 1.0;
  EXPECT_TRUE(ValidateSettings(s, bounds).ok());
  for (double bad : {0.0, -0.5, 1.0001, std::nan("")}) {
    s.kept_mass = bad;
    EXPECT_NE(ErrorOf(s, bounds).find("sparse_attention.kept_mass must be in (0, 1]"),
              std::string::npos)
        << bad;
  }
  s.kept_mass = 0.5;
  s.min_kept_blocks = 0;
  EXPECT_NE(ErrorOf(s, bounds).find("sparse_attention.min_kept_blocks must be in [1, "),
            std::string::npos);
  s.min_kept_blocks = kMaxKeptBlocks + 1;
  EXPECT_NE(ErrorOf(s, bounds).find("sparse_attention.min_kept_blocks"), std::string::npos);
  s.min_kept_blocks = 3;
  s.max_kept_blocks = 2;  // below the floor
  EXPECT_NE(ErrorOf(s, bounds).find("sparse_attention.max_kept_blocks must be in [3, "),
            std::string::npos);
  s.max_kept_blocks = 0;  // no cap
  EXPECT_TRUE(ValidateSettings(s, bounds).ok());
  s.max_kept_blocks = 3;
  EXPECT_TRUE(ValidateSettings(s, bounds).ok());
}

}  // namespace
}  // namespace rainserve::attention
