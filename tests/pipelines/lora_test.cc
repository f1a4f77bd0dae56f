// LoRA files merged into the Wan transformer at load (pipelines/core/lora.h):
// the three published key formats against weights merged by hand, alpha
// scaling, several files, the dtype cast, the errors, and a whole-pipeline
// load of models/wan-tiny with `loras`.
#include "pipelines/core/lora.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "attention/engine.h"
#include "pipelines/core/pipeline.h"
#include "pipelines/core/safetensors.h"
#include "pipelines/wan/wan_pipeline.h"
#include "pipelines/wan/wan_transformer.h"
#include "tests/pipelines/wan_test_config.h"
#include "tests/test_files.h"

namespace rainserve {
namespace {

using Tensors = std::vector<std::pair<std::string, at::Tensor>>;

// A rank-r pair for a weight of shape `w`: down [r, in...], up [out, r, 1...].
struct Pair {
  at::Tensor down, up;
};
Pair RandomPair(at::IntArrayRef w, int64_t r) {
  std::vector<int64_t> down_shape = w.vec();
  down_shape[0] = r;
  std::vector<int64_t> up_shape(w.size(), 1);
  up_shape[0] = w[0];
  up_shape[1] = r;
  return {at::randn(down_shape) * 0.1, at::randn(up_shape) * 0.1};
}

// The hand merge, in fp32: w + factor * (up @ down).
at::Tensor HandMerge(const at::Tensor& w, const Pair& p, double factor) {
  const at::Tensor delta = at::matmul(p.up.flatten(1), p.down.flatten(1)).view(w.sizes());
  return w.to(at::kFloat) + factor * delta;
}

class LoraTest : public ::testing::Test {
 protected:
  void Make(at::ScalarType dtype) {
    at::manual_seed(3);
    model_ = WanTransformer::Random(testing::TinyWanTransformerConfig(), dtype, at::kCPU, 7);
    for (const auto& [name, t] : model_->NamedParameters()) before_[name] = t.clone();
  }
  const at::Tensor& Before(const std::string& name) { return before_.at(name); }
  std::string Write(const std::string& name, const Tensors& tensors) {
    const std::string path = dir_ + "/" + name + ".safetensors";
    EXPECT_TRUE(WriteSafetensors(path, tensors).ok());
    return path;
  }
  // Every parameter named in `expected` is close to it (and of the model's
  // dtype for it); every other one is bit-identical to before the merge.
  void ExpectParams(const std::map<std::string, at::Tensor>& expected, double rtol = 0,
                    double atol = 1e-6) {
    size_t seen = 0;
    for (const auto& [name, t] : model_->NamedParameters()) {
      auto it = expected.find(name);
      if (it == expected.end()) {
        EXPECT_TRUE(at::equal(t, Before(name))) << name << " changed";
        continue;
      }
      ++seen;
      EXPECT_EQ(t.scalar_type(), Before(name).scalar_type()) << name;
      EXPECT_TRUE(
          at::allclose(t.to(at::kFloat), it->second.to(t.scalar_type()).to(at::kFloat), rtol, atol))
          << name << " max diff "
          << (t.to(at::kFloat) - it->second.to(at::kFloat)).abs().max().item<double>();
      EXPECT_FALSE(at::equal(t, Before(name))) << name << " unchanged";
    }
    EXPECT_EQ(seen, expected.size());
  }
  // Expects INVALID_ARGUMENT naming `key`, and no weight changed.
  void ExpectRejected(const Tensors& tensors, const std::string& key) {
    const std::string path = Write("bad", tensors);
    const Status s = model_->MergeLoras({{path, 1.0}});
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << key << ": " << s.ToString();
    EXPECT_NE(s.message().find("'" + key + "'"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find(path), std::string::npos) << s.message();
    ExpectParams({});
  }

  std::string dir_ = testing::MakeTempDir("rainserve-lora");
  std::unique_ptr<WanTransformer> model_;
  std::map<std::string, at::Tensor> before_;
};

TEST_F(LoraTest, DiffusersPeftKeysFromTwoFilesMergeAsByHand) {
  Make(at::kFloat);
  const at::Tensor& q = Before("blocks.0.attn1.to_q.weight");
  const at::Tensor& ffn = Before("blocks.1.ffn.net.0.proj.weight");
  const at::Tensor& conv = Before("patch_embedding.weight");  // [inner, 4, 1, 2, 2]
  const Pair a = RandomPair(q.sizes(), 4), b = RandomPair(ffn.sizes(), 2),
             c = RandomPair(conv.sizes(), 3), d = RandomPair(q.sizes(), 2);
  const at::Tensor bias = at::randn({ffn.size(0)});
  const std::string first =
      Write("first", {{"transformer.blocks.0.attn1.to_q.lora_A.weight", a.down},
                      {"transformer.blocks.0.attn1.to_q.lora_B.weight", a.up},
                      {"transformer.blocks.1.ffn.net.0.proj.lora_A.weight", b.down},
                      {"transformer.blocks.1.ffn.net.0.proj.lora_B.weight", b.up},
                      {"transformer.blocks.1.ffn.net.0.proj.lora_B.bias", bias},
                      {"transformer.patch_embedding.lora_A.weight", c.down},
                      {"transformer.patch_embedding.lora_B.weight", c.up}});
  const std::string second =
      Write("second", {// PEFT's own prefix
                       {"base_model.model.blocks.0.attn1.to_q.lora_A.weight", d.down},
                       {"base_model.model.blocks.0.attn1.to_q.lora_B.weight", d.up}});
  ASSERT_TRUE(model_->MergeLoras({{first, 0.7}, {second, -1.5}}).ok());
  ExpectParams(
      {{"blocks.0.attn1.to_q.weight", HandMerge(HandMerge(q, a, 0.7), d, -1.5)},
       {"blocks.1.ffn.net.0.proj.weight", HandMerge(ffn, b, 0.7)},
       {"blocks.1.ffn.net.0.proj.bias", Before("blocks.1.ffn.net.0.proj.bias") + 0.7 * bias},
       {"patch_embedding.weight", HandMerge(conv, c, 0.7)}});
}

TEST_F(LoraTest, KohyaAlphaScalesByAlphaOverRankAndBf16WeightsAreCastBack) {
  Make(at::kBFloat16);
  const at::Tensor& k = Before("blocks.0.attn2.to_k.weight");
  const at::Tensor& out = Before("proj_out.weight");
  const Pair a = RandomPair(k.sizes(), 4), b = RandomPair(out.sizes(), 8);
  const std::string path =
      Write("kohya", {{"blocks.0.attn2.to_k.lora_down.weight", a.down},
                      {"blocks.0.attn2.to_k.lora_up.weight", a.up},
                      {"blocks.0.attn2.to_k.alpha", at::tensor(2.0f)},  // scale 2 / 4
                      {"proj_out.lora_down.weight", b.down.to(at::kBFloat16)},
                      {"proj_out.lora_up.weight", b.up.to(at::kBFloat16)}});  // no alpha: scale 1
  ASSERT_TRUE(model_->MergeLoras({{path, 0.8}}).ok());
  const Pair b16 = {b.down.to(at::kBFloat16).to(at::kFloat), b.up.to(at::kBFloat16).to(at::kFloat)};
  // The fp32 sums cast once to bf16: within one bf16 rounding of the hand
  // merge's cast (fp32 sums may round differently, by an ulp of fp32).
  ExpectParams({{"blocks.0.attn2.to_k.weight", HandMerge(k, a, 0.8 * 0.5)},
                {"proj_out.weight", HandMerge(out, b16, 0.8)}},
               /*rtol=*/1.0 / 128, /*atol=*/0);
}

TEST_F(LoraTest, OriginalWanAndMusubiNamesMapToTheDiffusersParameters) {
  Make(at::kFloat);
  const at::Tensor& o = Before("blocks.1.attn1.to_out.0.weight");
  const at::Tensor& v = Before("blocks.0.attn2.to_v.weight");
  const at::Tensor& ffn2 = Before("blocks.0.ffn.net.2.weight");
  const at::Tensor& text = Before("condition_embedder.text_embedder.linear_1.weight");
  const at::Tensor& head = Before("proj_out.weight");
  const Pair a = RandomPair(o.sizes(), 4), b = RandomPair(v.sizes(), 2),
             c = RandomPair(ffn2.sizes(), 4), d = RandomPair(text.sizes(), 2),
             e = RandomPair(head.sizes(), 2);
  const at::Tensor q_bias = at::randn({Before("blocks.0.attn1.to_q.bias").size(0)});
  const at::Tensor norm = at::randn({Before("blocks.1.norm2.weight").size(0)});
  const std::string path = Write(
      "original", {{"diffusion_model.blocks.1.self_attn.o.lora_A.weight", a.down},
                   {"diffusion_model.blocks.1.self_attn.o.lora_B.weight", a.up},
                   {"lora_unet_blocks_0_cross_attn_v.lora_down.weight", b.down},
                   {"lora_unet_blocks_0_cross_attn_v.lora_up.weight", b.up},
                   {"lora_unet_blocks_0_cross_attn_v.alpha", at::tensor(8.0f)},  // scale 8 / 2
                   {"diffusion_model.blocks.0.ffn.2.lora_down.weight", c.down},
                   {"diffusion_model.blocks.0.ffn.2.lora_up.weight", c.up},
                   {"diffusion_model.text_embedding.0.lora_A.weight", d.down},
                   {"diffusion_model.text_embedding.0.lora_B.weight", d.up},
                   {"diffusion_model.head.head.lora_A.weight", e.down},
                   {"diffusion_model.head.head.lora_B.weight", e.up},
                   {"diffusion_model.blocks.0.self_attn.q.diff_b", q_bias},
                   {"diffusion_model.blocks.1.norm3.diff", norm}});
  ASSERT_TRUE(model_->MergeLoras({{path, 1.0}}).ok());
  ExpectParams({{"blocks.1.attn1.to_out.0.weight", HandMerge(o, a, 1.0)},
                {"blocks.0.attn2.to_v.weight", HandMerge(v, b, 4.0)},
                {"blocks.0.ffn.net.2.weight", HandMerge(ffn2, c, 1.0)},
                {"condition_embedder.text_embedder.linear_1.weight", HandMerge(text, d, 1.0)},
                {"proj_out.weight", HandMerge(head, e, 1.0)},
                {"blocks.0.attn1.to_q.bias", Before("blocks.0.attn1.to_q.bias") + q_bias},
                {"blocks.1.norm2.weight", Before("blocks.1.norm2.weight") + norm}});
}

TEST(WanOriginalNamesTest, EveryLinearLayerHasOneOriginalNameAndNoTwoShareIt) {
  std::set<std::string> originals;
  for (const auto& [name, shape] :
       WanTransformer::ExpectedParameters(testing::TinyWanTransformerConfig())) {
    if (shape.size() < 2 || name.find("scale_shift_table") != std::string::npos) continue;
    const std::string module = name.substr(0, name.rfind('.'));
    const std::string original = WanOriginalModuleName(module);
    if (module == "patch_embedding") {
      EXPECT_EQ(original, "");  // the same name in both
      continue;
    }
    EXPECT_NE(original, "") << module;
    EXPECT_TRUE(originals.insert(original).second) << original << " twice";
  }
  EXPECT_EQ(WanOriginalModuleName("blocks.12.attn1.to_q"), "blocks.12.self_attn.q");
  EXPECT_EQ(WanOriginalModuleName("blocks.3.attn2.to_out.0"), "blocks.3.cross_attn.o");
  EXPECT_EQ(WanOriginalModuleName("blocks.3.ffn.net.0.proj"), "blocks.3.ffn.0");
  EXPECT_EQ(WanOriginalModuleName("condition_embedder.time_proj"), "time_projection.1");
}

TEST_F(LoraTest, MergedWeightsReachTheForward) {
  Make(at::kFloat);
  attention::AttentionEngine engine(2);
  WanForwardOptions o;
  o.engine = &engine;
  at::manual_seed(5);
  const at::Tensor lat = at::randn({1, 4, 2, 8, 8}), t = at::tensor({500.0f}),
                   text = at::randn({1, 5, 8});
  auto plain = model_->Forward(lat, t, text, o);
  const Pair a = RandomPair(Before("blocks.0.attn1.to_v.weight").sizes(), 4);
  const std::string path = Write("v", {{"blocks.0.attn1.to_v.lora_A.weight", a.down},
                                       {"blocks.0.attn1.to_v.lora_B.weight", a.up}});
  ASSERT_TRUE(model_->MergeLoras({{path, 1.0}}).ok());
  auto merged = model_->Forward(lat, t, text, o);
  // The same weights saved and loaded: the merged model computes with them.
  ASSERT_TRUE(model_->Save(dir_ + "/saved", int64_t{1} << 30).ok());
  auto loaded = WanTransformer::Load(dir_ + "/saved", at::kFloat, at::kCPU);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  auto reloaded = (*loaded)->Forward(lat, t, text, o);
  ASSERT_TRUE(plain.ok() && merged.ok() && reloaded.ok());
  EXPECT_TRUE(at::equal(*merged, *reloaded));
  EXPECT_FALSE(at::allclose(*merged, *plain, 1e-4, 1e-4));
}

TEST_F(LoraTest, StrengthZeroLeavesWeightsBitIdentical) {
  Make(at::kBFloat16);
  const Pair a = RandomPair(Before("blocks.0.attn1.to_q.weight").sizes(), 4);
  const std::string path = Write("zero", {{"blocks.0.attn1.to_q.lora_down.weight", a.down},
                                          {"blocks.0.attn1.to_q.lora_up.weight", a.up},
                                          {"blocks.0.attn1.to_q.alpha", at::tensor(4.0f)}});
  ASSERT_TRUE(model_->MergeLoras({{path, 0.0}}).ok());
  ExpectParams({});
}

TEST_F(LoraTest, KeysThatMatchNothingOrDoNotFitAreRejectedByName) {
  Make(at::kFloat);
  const Pair q = RandomPair(Before("blocks.0.attn1.to_q.weight").sizes(), 4);
  const Pair text =
      RandomPair(Before("condition_embedder.text_embedder.linear_1.weight").sizes(), 4);
  // A block the model lacks (after a valid pair: nothing is merged).
  ExpectRejected({{"transformer.blocks.0.attn1.to_q.lora_A.weight", q.down},
                  {"transformer.blocks.0.attn1.to_q.lora_B.weight", q.up},
                  {"transformer.blocks.7.attn1.to_q.lora_A.weight", q.down},
                  {"transformer.blocks.7.attn1.to_q.lora_B.weight", q.up}},
                 "transformer.blocks.7.attn1.to_q.lora_A.weight");
  ExpectRejected({{"blocks.0.attn1.to_q.lora_C.weight", q.down}},
                 "blocks.0.attn1.to_q.lora_C.weight");
  ExpectRejected({{"text_encoder.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight", q.down}},
                 "text_encoder.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight");
  ExpectRejected({{"lora_te_text_model_encoder_layers_0_q_proj.lora_down.weight", q.down}},
                 "lora_te_text_model_encoder_layers_0_q_proj.lora_down.weight");
  // Shape mismatch: the text embedder's pair ([32, 8]) on the attention's q ([32, 32]).
  ExpectRejected({{"blocks.0.attn1.to_q.lora_A.weight", text.down},
                  {"blocks.0.attn1.to_q.lora_B.weight", text.up}},
                 "blocks.0.attn1.to_q.lora_B.weight");
  ExpectRejected({{"blocks.0.attn1.to_q.lora_A.weight", q.down},
                  {"blocks.0.attn1.to_q.lora_B.weight", q.up.narrow(1, 0, 3).contiguous()}},
                 "blocks.0.attn1.to_q.lora_B.weight");
  ExpectRejected({{"blocks.0.attn1.to_q.diff_b", at::randn({5})}}, "blocks.0.attn1.to_q.diff_b");
  // Half a pair, an alpha alone, an alpha that is not a scalar.
  ExpectRejected({{"blocks.0.attn1.to_q.lora_A.weight", q.down}},
                 "blocks.0.attn1.to_q.lora_A.weight");
  ExpectRejected({{"blocks.0.attn1.to_q.alpha", at::tensor(1.0f)}}, "blocks.0.attn1.to_q.alpha");
  ExpectRejected({{"blocks.0.attn1.to_q.lora_down.weight", q.down},
                  {"blocks.0.attn1.to_q.lora_up.weight", q.up},
                  {"blocks.0.attn1.to_q.alpha", at::ones({2})}},
                 "blocks.0.attn1.to_q.alpha");
  ExpectRejected({{"blocks.0.attn1.to_q.lora_down.weight", q.down},
                  {"blocks.0.attn1.to_q.lora_up.weight", q.up},
                  {"blocks.0.attn1.to_q.alpha", at::tensor(INFINITY)}},
                 "blocks.0.attn1.to_q.alpha");
  // Rank 0 (alpha / r would divide by zero) and a pair for a 1-D parameter.
  ExpectRejected({{"blocks.0.attn1.to_q.lora_down.weight", q.down.narrow(0, 0, 0).contiguous()},
                  {"blocks.0.attn1.to_q.lora_up.weight", q.up.narrow(1, 0, 0).contiguous()},
                  {"blocks.0.attn1.to_q.alpha", at::tensor(1.0f)}},
                 "blocks.0.attn1.to_q.lora_up.weight");
  ExpectRejected({{"blocks.0.attn1.norm_q.lora_A.weight", at::randn({32})},
                  {"blocks.0.attn1.norm_q.lora_B.weight", at::randn({32, 32})}},
                 "blocks.0.attn1.norm_q.lora_B.weight");
  const Status missing = model_->MergeLoras({{dir_ + "/none.safetensors", 1.0}});
  EXPECT_FALSE(missing.ok());
  EXPECT_NE(missing.message().find("none.safetensors"), std::string::npos) << missing.message();
}

// wan-tiny: inner 2 heads x 64 = 128, ffn 256.
class LoraPipelineTest : public ::testing::Test {
 protected:
  static ModelOptions Entry(std::vector<LoraFile> loras) {
    ModelOptions e;
    e.name = "wan-tiny";
    e.path = testing::SourceDir() + "/models/wan-tiny";
    e.threads = 2;
    e.loras = std::move(loras);
    return e;
  }
  static StatusOr<std::vector<uint8_t>> Generate(const ModelOptions& entry) {
    RAINSERVE_ASSIGN_OR_RETURN(std::unique_ptr<Pipeline> p, LoadWanPipeline(entry));
    GenerationRequest r;
    r.prompt = "a red fox runs through fresh snow";
    r.seed = 7;
    r.steps = 2;
    r.width = 64;
    r.height = 64;
    r.num_frames = 5;
    CancelToken cancel;
    RAINSERVE_ASSIGN_OR_RETURN(GenerationOutput out, p->Generate(r, nullptr, cancel));
    return out.rgb;
  }
  std::string dir_ = testing::MakeTempDir("rainserve-lora-pipeline");
};

TEST_F(LoraPipelineTest, LorasInTheEntryChangeTheVideoAndStrengthZeroDoesNot) {
  at::manual_seed(11);
  const Pair q = RandomPair({128, 128}, 8), ffn = RandomPair({256, 128}, 8);
  const std::string path = dir_ + "/lora.safetensors";
  ASSERT_TRUE(
      WriteSafetensors(path, {{"diffusion_model.blocks.0.self_attn.q.lora_down.weight", q.down},
                              {"diffusion_model.blocks.0.self_attn.q.lora_up.weight", q.up * 20},
                              {"diffusion_model.blocks.1.ffn.0.lora_down.weight", ffn.down},
                              {"diffusion_model.blocks.1.ffn.0.lora_up.weight", ffn.up * 20}})
          .ok());
  auto plain = Generate(Entry({}));
  auto merged = Generate(Entry({{path, 1.0}}));
  auto zero = Generate(Entry({{path, 0.0}}));
  ASSERT_TRUE(plain.ok() && merged.ok() && zero.ok())
      << plain.status().ToString() << merged.status().ToString() << zero.status().ToString();
  EXPECT_NE(*plain, *merged);
  EXPECT_EQ(*plain, *zero);

  const std::string bad = dir_ + "/bad.safetensors";
  ASSERT_TRUE(
      WriteSafetensors(bad, {{"diffusion_model.blocks.5.self_attn.q.lora_down.weight", q.down},
                             {"diffusion_model.blocks.5.self_attn.q.lora_up.weight", q.up}})
          .ok());
  auto rejected = LoadWanPipeline(Entry({{path, 1.0}, {bad, 1.0}}));
  ASSERT_FALSE(rejected.ok());
  EXPECT_EQ(rejected.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(
      rejected.status().message().find("diffusion_model.blocks.5.self_attn.q.lora_down.weight"),
      std::string::npos)
      << rejected.status().message();
}

}  // namespace
}  // namespace rainserve
