// Wan2.1 VAE (AutoencoderKLWan; the Wan2.2 VAE is in wan_vae22_test.cc):
// config parsing, diffusers parameter names, the causal building blocks
// against straightforward loops, chunked decoding and encoding shapes,
// checkpoint round trips and frame conversion.
//
// The timing of the shipped tiny VAE is a disabled test:
//   wan_vae_test --gtest_also_run_disabled_tests --gtest_filter='*Timing*'
#include "pipelines/wan/wan_vae.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>

#include "pipelines/core/safetensors.h"
#include "pipelines/wan/wan_vae_layers.h"
#include "tests/pipelines/wan_vae_test_util.h"

namespace rainserve {
namespace {

using testing::Contains;
using testing::VaeTempDir;

using wan_vae::CacheCursor;
using wan_vae::CausalCache;
using wan_vae::Conv;

WanVAEConfig TinyConfig(int64_t base_dim = 4) {
  WanVAEConfig c;
  c.base_dim = base_dim;
  return c;
}


void WriteText(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
}

// The vae/config.json of Wan-AI/Wan2.1-T2V-1.3B-Diffusers.
const char kPublishedConfig[] = R"({
  "_class_name": "AutoencoderKLWan",
  "_diffusers_version": "0.33.0.dev0",
  "attn_scales": [],
  "base_dim": 96,
  "dim_mult": [1, 2, 4, 4],
  "dropout": 0.0,
  "latents_mean": [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                   0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
  "latents_std": [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                  3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916],
  "num_res_blocks": 2,
  "temperal_downsample": [false, true, true],
  "z_dim": 16
})";

// ----------------------------------------------------------------------------
// Config.

TEST(WanVAEConfigTest, ParsesPublishedConfig) {
  auto c = ParseWanVAEConfig(kPublishedConfig, "vae/config.json");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->base_dim, 96);
  EXPECT_EQ(c->decoder_dim(), 96);
  EXPECT_EQ(c->z_dim, 16);
  EXPECT_EQ(c->dim_mult, (std::vector<int64_t>{1, 2, 4, 4}));
  EXPECT_EQ(c->temperal_downsample, (std::vector<bool>{false, true, true}));
  EXPECT_EQ(c->spatial_scale(), 8);
  EXPECT_EQ(c->temporal_scale(), 4);
  EXPECT_DOUBLE_EQ(c->latents_mean[7], 1.5508);
  EXPECT_DOUBLE_EQ(c->latents_std[15], 1.916);
}

TEST(WanVAEConfigTest, OmittedStatisticsDefaultToPublishedWan21) {
  auto c = ParseWanVAEConfig(R"({"base_dim": 8})", "cfg");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->latents_mean, WanVAEDefaultLatentsMean());
  EXPECT_EQ(c->latents_std, WanVAEDefaultLatentsStd());
  ASSERT_EQ(c->latents_mean.size(), 16u);
  EXPECT_DOUBLE_EQ(c->latents_mean[0], -0.7571);
  EXPECT_DOUBLE_EQ(c->latents_std[0], 2.8184);
}

TEST(WanVAEConfigTest, ErrorsNameTheKeyAndFile) {
  struct Case {
    const char* json;
    const char* key;
  };
  const Case cases[] = {
      {R"({"base_dim": "big"})", "base_dim"},
      {R"({"z_dim": 0})", "z_dim"},
      {R"({"dim_mult": [1, 2, 0, 4]})", "dim_mult"},
      {R"({"temperal_downsample": [false, true]})", "temperal_downsample"},
      {R"({"temperal_downsample": [false, 1, true]})", "temperal_downsample"},
      {R"({"latents_mean": [0.0, 1.0]})", "latents_mean"},
      {R"({"latents_std": [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]})", "latents_std"},
      {R"({"z_dim": 4})", "latents_mean"},
      {R"({"dropout": 1.5})", "dropout"},
      {R"({"num_res_blocks": -1})", "num_res_blocks"},
      {R"({"base_dim": 5, "dim_mult": [1, 3, 4, 4]})", "base_dim"},
      {R"({"_class_name": "AutoencoderKL"})", "_class_name"},
  };
  for (const Case& c : cases) {
    auto r = ParseWanVAEConfig(c.json, "vae/config.json");
    ASSERT_FALSE(r.ok()) << c.json;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << c.json;
    EXPECT_TRUE(Contains(r.status().message(), c.key)) << r.status().message();
    EXPECT_TRUE(Contains(r.status().message(), "vae/config.json")) << r.status().message();
  }
  EXPECT_FALSE(ParseWanVAEConfig("{not json", "cfg").ok());
}

TEST(WanVAEConfigTest, AttentionInsideBlocksIsUnimplemented) {
  auto a = ParseWanVAEConfig(R"({"attn_scales": [0.5]})", "cfg");
  EXPECT_EQ(a.status().code(), StatusCode::kUnimplemented);
  EXPECT_TRUE(Contains(a.status().message(), "attn_scales")) << a.status().message();
}

TEST(WanVAEConfigTest, WrittenJsonParsesBackToTheSameConfig) {
  WanVAEConfig c = TinyConfig(6);
  c.decoder_base_dim = 8;
  c.latents_mean[3] = 0.125;
  const std::string text = WanVAEConfigJson(c);
  EXPECT_TRUE(Contains(text, "\"AutoencoderKLWan\""));
  auto back = ParseWanVAEConfig(text, "written");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->base_dim, 6);
  EXPECT_EQ(back->decoder_base_dim, 8);
  EXPECT_EQ(back->dim_mult, c.dim_mult);
  EXPECT_EQ(back->temperal_downsample, c.temperal_downsample);
  EXPECT_EQ(back->latents_mean, c.latents_mean);
  EXPECT_EQ(back->latents_std, c.latents_std);
}

// ----------------------------------------------------------------------------
// Parameter names and shapes, as in the published Wan2.1 VAE (base_dim 96).

TEST(WanVAEParamsTest, PublishedNamesAndShapes) {
  auto c = ParseWanVAEConfig(kPublishedConfig, "cfg");
  ASSERT_TRUE(c.ok());
  const auto params = WanVAE::ExpectedParameters(*c);
  std::map<std::string, std::vector<int64_t>> by_name(params.begin(), params.end());
  EXPECT_EQ(by_name.size(), params.size()) << "duplicate names";
  const std::map<std::string, std::vector<int64_t>> published = {
      {"encoder.conv_in.weight", {96, 3, 3, 3, 3}},
      {"encoder.down_blocks.0.norm1.gamma", {96, 1, 1, 1}},
      {"encoder.down_blocks.2.resample.1.weight", {96, 96, 3, 3}},
      {"encoder.down_blocks.3.conv_shortcut.weight", {192, 96, 1, 1, 1}},
      {"encoder.down_blocks.5.time_conv.weight", {192, 192, 3, 1, 1}},
      {"encoder.down_blocks.8.time_conv.bias", {384}},
      {"encoder.down_blocks.10.conv2.weight", {384, 384, 3, 3, 3}},
      {"encoder.mid_block.attentions.0.norm.gamma", {384, 1, 1}},
      {"encoder.mid_block.attentions.0.to_qkv.weight", {1152, 384, 1, 1}},
      {"encoder.norm_out.gamma", {384, 1, 1, 1}},
      {"encoder.conv_out.weight", {32, 384, 3, 3, 3}},
      {"quant_conv.weight", {32, 32, 1, 1, 1}},
      {"post_quant_conv.weight", {16, 16, 1, 1, 1}},
      {"decoder.conv_in.weight", {384, 16, 3, 3, 3}},
      {"decoder.mid_block.resnets.1.norm2.gamma", {384, 1, 1, 1}},
      {"decoder.mid_block.attentions.0.proj.weight", {384, 384, 1, 1}},
      {"decoder.up_blocks.0.resnets.2.conv1.weight", {384, 384, 3, 3, 3}},
      {"decoder.up_blocks.0.upsamplers.0.time_conv.weight", {768, 384, 3, 1, 1}},
      {"decoder.up_blocks.0.upsamplers.0.resample.1.weight", {192, 384, 3, 3}},
      {"decoder.up_blocks.1.resnets.0.conv_shortcut.weight", {384, 192, 1, 1, 1}},
      {"decoder.up_blocks.1.upsamplers.0.time_conv.weight", {768, 384, 3, 1, 1}},
      {"decoder.up_blocks.2.upsamplers.0.resample.1.bias", {96}},
      {"decoder.up_blocks.3.resnets.0.conv1.weight", {96, 96, 3, 3, 3}},
      {"decoder.norm_out.gamma", {96, 1, 1, 1}},
      {"decoder.conv_out.weight", {3, 96, 3, 3, 3}},
  };
  for (const auto& [name, shape] : published) {
    ASSERT_TRUE(by_name.count(name)) << name;
    EXPECT_EQ(by_name[name], shape) << name;
  }
  // No time_conv where diffusers has none; no upsampler on the last block.
  EXPECT_FALSE(by_name.count("encoder.down_blocks.2.time_conv.weight"));
  EXPECT_FALSE(by_name.count("decoder.up_blocks.2.upsamplers.0.time_conv.weight"));
  EXPECT_FALSE(by_name.count("decoder.up_blocks.3.upsamplers.0.resample.1.weight"));
  EXPECT_FALSE(by_name.count("decoder.up_blocks.0.resnets.0.conv_shortcut.weight"));
  // 11 encoder down layers (2 res + resample per level, 2 res at the last).
  EXPECT_TRUE(by_name.count("encoder.down_blocks.10.norm1.gamma"));
  EXPECT_FALSE(by_name.count("encoder.down_blocks.11.norm1.gamma"));
}

// ----------------------------------------------------------------------------
// Building blocks against straightforward computations.

// Causal 3D convolution over the whole sequence written out with loops in
// double: kt - 1 zero frames in front, spatial zero padding k/2.
at::Tensor NaiveCausalConv3d(const at::Tensor& x_in, const Conv& conv) {
  const at::Tensor x = x_in.to(at::kDouble), w = conv.weight.to(at::kDouble), b = conv.bias.to(at::kDouble);
  const int64_t B = x.size(0), Ci = x.size(1), T = x.size(2), H = x.size(3), W = x.size(4);
  const int64_t Co = w.size(0), kt = w.size(2), kh = w.size(3), kw = w.size(4);
  at::Tensor y = at::zeros({B, Co, T, H, W}, at::kDouble);
  auto xa = x.accessor<double, 5>();
  auto wa = w.accessor<double, 5>();
  auto ya = y.accessor<double, 5>();
  for (int64_t n = 0; n < B; ++n)
    for (int64_t o = 0; o < Co; ++o)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < H; ++i)
          for (int64_t j = 0; j < W; ++j) {
            double acc = b[o].item<double>();
            for (int64_t c = 0; c < Ci; ++c)
              for (int64_t dt = 0; dt < kt; ++dt)
                for (int64_t di = 0; di < kh; ++di)
                  for (int64_t dj = 0; dj < kw; ++dj) {
                    const int64_t st = t - (kt - 1) + dt, si = i - kh / 2 + di, sj = j - kw / 2 + dj;
                    if (st < 0 || si < 0 || si >= H || sj < 0 || sj >= W) continue;
                    acc += wa[o][c][dt][di][dj] * xa[n][c][st][si][sj];
                  }
            ya[n][o][t][i][j] = acc;
          }
  return y;
}

// F.normalize(x, dim=1) * sqrt(C) * gamma, one position at a time.
at::Tensor NaiveRmsNorm(const at::Tensor& x_in, const at::Tensor& gamma) {
  const at::Tensor x = x_in.to(at::kDouble).contiguous();
  const at::Tensor g = gamma.to(at::kDouble).reshape({-1});
  const int64_t C = x.size(1);
  const at::Tensor xf = x.transpose(0, 1).reshape({C, -1});  // [C, positions]
  at::Tensor yf = at::empty_like(xf);
  for (int64_t p = 0; p < xf.size(1); ++p) {
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += xf[c][p].item<double>() * xf[c][p].item<double>();
    const double norm = std::max(std::sqrt(ss), 1e-12);
    for (int64_t c = 0; c < C; ++c) {
      yf[c][p] = xf[c][p].item<double>() / norm * std::sqrt(double(C)) * g[c].item<double>();
    }
  }
  auto sizes = x.sizes().vec();
  std::swap(sizes[0], sizes[1]);
  return yf.reshape(sizes).transpose(0, 1).contiguous();
}

Conv RandomConv(int64_t out, int64_t in, std::vector<int64_t> kernel) {
  std::vector<int64_t> shape = {out, in};
  shape.insert(shape.end(), kernel.begin(), kernel.end());
  return Conv{at::randn(shape) * 0.3, at::randn({out}) * 0.1};
}

TEST(WanVAELayersTest, CausalConvMatchesNaiveLoops) {
  at::manual_seed(1);
  const at::Tensor x = at::randn({2, 3, 4, 5, 6});
  const Conv conv = RandomConv(4, 3, {3, 3, 3});
  const at::Tensor ours = wan_vae::CausalConv3d(x, conv, nullptr).to(at::kDouble);
  EXPECT_TRUE(at::allclose(ours, NaiveCausalConv3d(x, conv), 1e-4, 1e-4));
}

TEST(WanVAELayersTest, ChunkedCachedCausalConvEqualsWholeSequence) {
  at::manual_seed(2);
  const at::Tensor x = at::randn({1, 3, 8, 5, 6});
  for (const auto& kernel : {std::vector<int64_t>{3, 3, 3}, std::vector<int64_t>{3, 1, 1},
                             std::vector<int64_t>{1, 1, 1}}) {
    const Conv conv = RandomConv(4, 3, kernel);
    const at::Tensor whole = wan_vae::CausalConv3d(x, conv, nullptr);
    // Chunks as the decoder makes them (1 frame, then 1, 2 or 4 at a time) and odd ones.
    CausalCache cache;
    std::vector<at::Tensor> outs;
    int64_t t = 0;
    for (int64_t n : {1, 1, 2, 3, 1}) {
      outs.push_back(wan_vae::CausalConv3d(x.narrow(2, t, n), conv, &cache));
      t += n;
    }
    ASSERT_EQ(t, x.size(2));
    EXPECT_TRUE(at::allclose(at::cat(outs, 2), whole, 1e-5, 1e-5)) << kernel[0] << kernel[1];
    if (kernel[0] == 3) {
      EXPECT_EQ(cache.tail.size(2), 2);
    }
  }
}

TEST(WanVAELayersTest, RmsNormMatchesNaiveNormalize) {
  at::manual_seed(3);
  const at::Tensor x = at::randn({2, 5, 2, 3, 4});
  const at::Tensor gamma = at::rand({5, 1, 1, 1}) + 0.5;
  EXPECT_TRUE(at::allclose(wan_vae::RmsNorm(x, gamma).to(at::kDouble), NaiveRmsNorm(x, gamma), 1e-5, 1e-5));
  // Image form (attention): gamma [C, 1, 1] on [N, C, H, W]; bias added.
  const at::Tensor img = at::randn({3, 5, 4, 4});
  const at::Tensor g2 = at::rand({5, 1, 1}) + 0.5, bias = at::randn({5, 1, 1});
  EXPECT_TRUE(at::allclose(wan_vae::RmsNorm(img, g2, bias).to(at::kDouble),
                           NaiveRmsNorm(img, g2) + bias.to(at::kDouble), 1e-5, 1e-5));
  // An all-zero position stays zero (the 1e-12 floor), no NaN.
  EXPECT_EQ(wan_vae::RmsNorm(at::zeros({1, 5, 1, 1, 1}), gamma).abs().sum().item<float>(), 0.0f);
}

TEST(WanVAELayersTest, ResidualBlockMatchesNaiveComputation) {
  at::manual_seed(4);
  wan_vae::ResidualBlock block;
  block.norm1_gamma = at::rand({2, 1, 1, 1}) + 0.5;
  block.norm2_gamma = at::rand({3, 1, 1, 1}) + 0.5;
  block.conv1 = RandomConv(3, 2, {3, 3, 3});
  block.conv2 = RandomConv(3, 3, {3, 3, 3});
  block.shortcut = RandomConv(3, 2, {1, 1, 1});
  const at::Tensor x = at::randn({1, 2, 3, 4, 3});
  auto silu = [](const at::Tensor& v) { return v / (1 + at::exp(-v)); };
  at::Tensor h = NaiveCausalConv3d(silu(NaiveRmsNorm(x, block.norm1_gamma)), block.conv1);
  h = NaiveCausalConv3d(silu(NaiveRmsNorm(h, block.norm2_gamma)), block.conv2);
  const at::Tensor expected = h + NaiveCausalConv3d(x, block.shortcut);
  const at::Tensor ours = wan_vae::ApplyResidualBlock(x, block, nullptr);
  EXPECT_TRUE(at::allclose(ours.to(at::kDouble), expected, 1e-4, 1e-4));

  // Frame by frame with two cache slots: the same.
  std::vector<CausalCache> caches;
  std::vector<at::Tensor> outs;
  for (int64_t t = 0; t < x.size(2); ++t) {
    CacheCursor cursor(&caches);
    outs.push_back(wan_vae::ApplyResidualBlock(x.narrow(2, t, 1), block, &cursor));
  }
  EXPECT_EQ(caches.size(), 2u);
  EXPECT_TRUE(at::allclose(at::cat(outs, 2), ours, 1e-5, 1e-5));
}

TEST(WanVAELayersTest, Upsample3dKeepsFirstChunkThenDoublesFrames) {
  at::manual_seed(5);
  wan_vae::Resample up;
  up.mode = wan_vae::ResampleMode::kUpsample3d;
  up.resample = RandomConv(2, 4, {3, 3});
  up.time_conv = RandomConv(8, 4, {3, 1, 1});
  const at::Tensor x = at::randn({1, 4, 3, 2, 3});
  std::vector<CausalCache> caches;
  std::vector<at::Tensor> outs;
  for (int64_t t = 0; t < 3; ++t) {
    CacheCursor cursor(&caches);
    outs.push_back(wan_vae::ApplyResample(x.narrow(2, t, 1), up, &cursor));
  }
  EXPECT_EQ(outs[0].sizes(), (std::vector<int64_t>{1, 2, 1, 4, 6}));
  EXPECT_EQ(outs[1].sizes(), (std::vector<int64_t>{1, 2, 2, 4, 6}));
  // Whole-sequence reference: frame 0 as is; frames 1.. through a causal
  // time_conv whose channel halves interleave in time; then nearest 2x and the 2D conv.
  const at::Tensor tc = wan_vae::CausalConv3d(x.narrow(2, 1, 2), up.time_conv, nullptr);  // [1, 8, 2, 2, 3]
  const at::Tensor frames = at::stack({tc.narrow(1, 0, 4), tc.narrow(1, 4, 4)}, 3).reshape({1, 4, 4, 2, 3});
  const at::Tensor seq = at::cat({x.narrow(2, 0, 1), frames}, 2);  // [1, 4, 5, 2, 3]
  const at::Tensor big = seq.repeat_interleave(2, 3).repeat_interleave(2, 4);
  const at::Tensor expected = at::conv3d(big, up.resample.weight.unsqueeze(2), up.resample.bias, 1, {0, 1, 1});
  EXPECT_TRUE(at::allclose(at::cat(outs, 2), expected, 1e-5, 1e-5));
}

// ----------------------------------------------------------------------------
// The whole model.

class WanVAETest : public ::testing::Test {
 protected:
  std::unique_ptr<WanVAE> vae_ = WanVAE::Random(TinyConfig(), at::kFloat, at::kCPU, 11);
};

TEST_F(WanVAETest, DecodeShapesFramesAndRange) {
  EXPECT_EQ(vae_->FramesFor(1), 1);
  EXPECT_EQ(vae_->FramesFor(3), 9);
  EXPECT_EQ(vae_->FramesFor(21), 81);
  EXPECT_EQ(vae_->spatial_scale(), 8);
  EXPECT_EQ(vae_->temporal_scale(), 4);
  at::manual_seed(1);
  for (int64_t f : {1, 3}) {
    std::vector<std::pair<int64_t, int64_t>> seen;
    auto v = vae_->Decode(at::randn({2, 16, f, 3, 5}),
                          [&](int64_t done, int64_t total) { seen.emplace_back(done, total); });
    ASSERT_TRUE(v.ok()) << v.status().ToString();
    EXPECT_EQ(v->sizes(), (std::vector<int64_t>{2, 3, 1 + 4 * (f - 1), 24, 40}));
    EXPECT_EQ(v->scalar_type(), at::kFloat);
    EXPECT_LE(v->max().item<float>(), 1.0f);
    EXPECT_GE(v->min().item<float>(), -1.0f);
    EXPECT_FALSE(v->isnan().any().item<bool>());
    ASSERT_EQ(seen.size(), static_cast<size_t>(f));
    EXPECT_EQ(seen.back(), std::make_pair(f, f));
  }
}

TEST_F(WanVAETest, DecodeIsDeterministicAndCausal) {
  at::manual_seed(2);
  const at::Tensor lat = at::randn({1, 16, 3, 4, 4});
  auto a = vae_->Decode(lat);
  auto b = vae_->Decode(lat);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(at::equal(*a, *b));
  // The first 2 latent frames decode to the first 5 video frames, whatever follows.
  auto head = vae_->Decode(lat.narrow(2, 0, 2));
  ASSERT_TRUE(head.ok());
  EXPECT_TRUE(at::allclose(*head, a->narrow(2, 0, 5), 1e-5, 1e-5));
  // Changing the last latent frame changes only the last 4 video frames.
  at::Tensor changed = lat.clone();
  changed.narrow(2, 2, 1).normal_();
  auto c = vae_->Decode(changed);
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(at::equal(c->narrow(2, 0, 5), a->narrow(2, 0, 5)));
  EXPECT_FALSE(at::allclose(c->narrow(2, 5, 4), a->narrow(2, 5, 4)));
}

TEST_F(WanVAETest, DecodeDeNormalisesWithConfigStatistics) {
  // A VAE with identity statistics fed latents * std + mean must agree.
  WanVAEConfig plain_cfg = vae_->config();
  plain_cfg.latents_mean.assign(16, 0.0);
  plain_cfg.latents_std.assign(16, 1.0);
  auto plain = WanVAE::Random(plain_cfg, at::kFloat, at::kCPU, 11);  // same seed: same weights
  at::manual_seed(3);
  const at::Tensor lat = at::randn({1, 16, 2, 3, 3});
  const auto& c = vae_->config();
  const at::Tensor mean = at::tensor(c.latents_mean, at::kDouble).to(at::kFloat).view({1, 16, 1, 1, 1});
  const at::Tensor stdv = at::tensor(c.latents_std, at::kDouble).to(at::kFloat).view({1, 16, 1, 1, 1});
  auto a = vae_->Decode(lat);
  auto b = plain->Decode(lat * stdv + mean);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(at::allclose(*a, *b, 1e-5, 1e-5));
  EXPECT_FALSE(at::allclose(*a, *plain->Decode(lat)));
}

TEST_F(WanVAETest, DecodeRejectsBadLatents) {
  for (const at::Tensor& bad : {at::randn({1, 8, 2, 4, 4}), at::randn({16, 2, 4, 4}),
                                at::zeros({1, 16, 2, 4, 4}, at::kLong), at::randn({1, 16, 0, 4, 4}),
                                at::Tensor()}) {
    auto r = vae_->Decode(bad);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  }
}

TEST_F(WanVAETest, DecodeToFramesIsRoundedUint8OfDecode) {
  at::manual_seed(4);
  const at::Tensor lat = at::randn({1, 16, 2, 2, 3}) * 3;
  auto video = vae_->Decode(lat);
  auto frames = vae_->DecodeToFrames(lat);
  ASSERT_TRUE(video.ok() && frames.ok()) << frames.status().ToString();
  EXPECT_EQ(frames->scalar_type(), at::kByte);
  EXPECT_TRUE(frames->device().is_cpu());
  EXPECT_TRUE(frames->is_contiguous());
  EXPECT_EQ(frames->sizes(), (std::vector<int64_t>{1, 5, 16, 24, 3}));
  const at::Tensor expected = ((*video + 1) / 2 * 255).round().clamp(0, 255).permute({0, 2, 3, 4, 1});
  EXPECT_TRUE(at::equal(frames->to(at::kFloat), expected));
}

TEST_F(WanVAETest, SaveLoadRoundTripDecodesIdentically) {
  const std::string dir = VaeTempDir();
  ASSERT_TRUE(vae_->Save(dir, 64 * 1024).ok());  // sharded
  std::ifstream index(dir + "/diffusion_pytorch_model.safetensors.index.json");
  EXPECT_TRUE(index.good());
  auto loaded = WanVAE::Load(dir, at::kFloat, at::kCPU);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ((*loaded)->config().base_dim, 4);
  at::manual_seed(5);
  const at::Tensor lat = at::randn({1, 16, 2, 3, 4});
  auto a = vae_->Decode(lat);
  auto b = (*loaded)->Decode(lat);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(at::equal(*a, *b));
  const std::string dir2 = VaeTempDir();
  ASSERT_TRUE(vae_->Save(dir2, int64_t{1} << 40).ok());  // one file
  auto single = WanVAE::Load(dir2, at::kFloat, at::kCPU);
  ASSERT_TRUE(single.ok()) << single.status().ToString();
  EXPECT_TRUE(at::equal(*(*single)->Decode(lat), *a));
}

// Writes config.json and the given tensors as a one-file checkpoint.
void WriteCheckpointDir(const std::string& dir, const WanVAEConfig& config,
                        const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  WriteText(dir + "/config.json", WanVAEConfigJson(config));
  ASSERT_TRUE(WriteSafetensors(dir + "/diffusion_pytorch_model.safetensors", tensors).ok());
}

TEST_F(WanVAETest, LoadNamesMissingMisShapedAndUnexpectedParameters) {
  auto params = vae_->NamedParameters();
  {
    auto missing = params;
    missing.erase(std::remove_if(missing.begin(), missing.end(),
                                 [](const auto& p) { return p.first == "decoder.up_blocks.0.upsamplers.0.time_conv.weight"; }),
                  missing.end());
    ASSERT_EQ(missing.size() + 1, params.size());
    const std::string dir = VaeTempDir();
    WriteCheckpointDir(dir, vae_->config(), missing);
    auto r = WanVAE::Load(dir, at::kFloat, at::kCPU);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(Contains(r.status().message(), "1 missing")) << r.status().message();
    EXPECT_TRUE(Contains(r.status().message(), "decoder.up_blocks.0.upsamplers.0.time_conv.weight"));
  }
  {
    auto shaped = params;
    for (auto& [name, t] : shaped) {
      if (name == "decoder.conv_in.weight") t = at::zeros({8, 16, 3, 3, 3});
    }
    shaped.push_back({"decoder.extra.weight", at::zeros({2})});
    const std::string dir = VaeTempDir();
    WriteCheckpointDir(dir, vae_->config(), shaped);
    auto r = WanVAE::Load(dir, at::kFloat, at::kCPU);
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(Contains(r.status().message(), "decoder.conv_in.weight [8, 16, 3, 3, 3]")) << r.status().message();
    EXPECT_TRUE(Contains(r.status().message(), "decoder.extra.weight")) << r.status().message();
  }
  {
    const std::string dir = VaeTempDir();
    WriteText(dir + "/config.json", R"({"base_dim": "four"})");
    auto r = WanVAE::Load(dir, at::kFloat, at::kCPU);
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(Contains(r.status().message(), "base_dim")) << r.status().message();
  }
}

TEST_F(WanVAETest, EncodeShapesAndCausality) {
  at::manual_seed(6);
  const at::Tensor video = at::rand({1, 3, 9, 16, 24}) * 2 - 1;
  auto z = vae_->Encode(video);
  ASSERT_TRUE(z.ok()) << z.status().ToString();
  EXPECT_EQ(z->sizes(), (std::vector<int64_t>{1, 16, 3, 2, 3}));
  EXPECT_FALSE(z->isnan().any().item<bool>());
  // The first 5 frames encode to the first 2 latent frames.
  auto head = vae_->Encode(video.narrow(2, 0, 5));
  ASSERT_TRUE(head.ok());
  EXPECT_TRUE(at::allclose(*head, z->narrow(2, 0, 2), 1e-4, 1e-5));
  // Encode -> Decode gives back the video shape.
  auto back = vae_->Decode(*z);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->sizes(), video.sizes());
  EXPECT_EQ(vae_->Encode(at::rand({1, 3, 4, 16, 16})).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(vae_->Encode(at::rand({1, 3, 5, 12, 16})).status().code(), StatusCode::kInvalidArgument);
}

// The shipped tiny VAE's size: decode of [1, 16, 5, 32, 32] (17 frames of
// 256 x 256) on 2 threads, fp32. Budget about 10 s on a 2-core machine: base
// 16 fits (3.2 s idle, 6-8 s with a parallel build); 24 and 32 took 20 and
// 32 s (under load), so 16 it is.
TEST(WanVAETiming, DISABLED_DecodeTimingByBaseDim) {
  at::set_num_threads(2);
  for (int64_t base : {8, 16}) {
    const testing::DecodeTiming t = testing::TimeRandomDecode(TinyConfig(base), {1, 16, 5, 32, 32});
    ASSERT_EQ(t.frames, 17);
    std::printf("base_dim %3ld: %ld parameters, decode [1,16,5,32,32] -> 17x256x256: %.2f s\n",
                static_cast<long>(base), static_cast<long>(t.parameters), t.seconds);
  }
}

}  // namespace
}  // namespace rainserve
