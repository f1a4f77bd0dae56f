#include "pipelines/wan/wan_weights.h"

#include <map>

namespace rainserve {

bool WanKeptInFp32(const std::string& name) {
  return name.find("time_embedder") != std::string::npos ||
         name.find("scale_shift_table") != std::string::npos ||
         name.find(".norm1.") != std::string::npos || name.find(".norm2.") != std::string::npos ||
         name.find(".norm3.") != std::string::npos;
}

ParameterShapes WanExpectedParameters(const WanTransformerConfig& c) {
  const int64_t inner = c.inner_dim();
  ParameterShapes p;
  auto linear = [&](const std::string& name, int64_t out, int64_t in) {
    p.push_back({name + ".weight", {out, in}});
    p.push_back({name + ".bias", {out}});
  };
  p.push_back({"patch_embedding.weight",
               {inner, c.in_channels, c.patch_size[0], c.patch_size[1], c.patch_size[2]}});
  p.push_back({"patch_embedding.bias", {inner}});
  linear("condition_embedder.time_embedder.linear_1", inner, c.freq_dim);
  linear("condition_embedder.time_embedder.linear_2", inner, inner);
  linear("condition_embedder.time_proj", 6 * inner, inner);
  linear("condition_embedder.text_embedder.linear_1", inner, c.text_dim);
  linear("condition_embedder.text_embedder.linear_2", inner, inner);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    p.push_back({b + "scale_shift_table", {1, 6, inner}});
    for (const char* attn : {"attn1", "attn2"}) {
      for (const char* proj : {"to_q", "to_k", "to_v", "to_out.0"}) {
        linear(b + attn + "." + proj, inner, inner);
      }
      p.push_back({b + attn + ".norm_q.weight", {inner}});
      p.push_back({b + attn + ".norm_k.weight", {inner}});
    }
    if (c.cross_attn_norm) {
      p.push_back({b + "norm2.weight", {inner}});
      p.push_back({b + "norm2.bias", {inner}});
    }
    linear(b + "ffn.net.0.proj", c.ffn_dim, inner);
    linear(b + "ffn.net.2", inner, c.ffn_dim);
  }
  p.push_back({"scale_shift_table", {1, 2, inner}});
  const int64_t patch = c.patch_size[0] * c.patch_size[1] * c.patch_size[2];
  linear("proj_out", c.out_channels * patch, inner);
  return p;
}

namespace {

// Looks parameters up by name, remembering the first one that is missing.
class Resolver {
 public:
  explicit Resolver(const NamedTensors& params) {
    for (const auto& [name, t] : params) by_name_[name] = t;
  }
  at::Tensor Get(const std::string& name) {
    auto it = by_name_.find(name);
    if (it != by_name_.end()) return it->second;
    if (missing_.empty()) missing_ = name;
    return {};
  }
  WanLinear Linear(const std::string& name) { return {Get(name + ".weight"), Get(name + ".bias")}; }
  WanAttentionWeights Attention(const std::string& name) {
    return {Linear(name + ".to_q"),         Linear(name + ".to_k"),
            Linear(name + ".to_v"),         Linear(name + ".to_out.0"),
            Get(name + ".norm_q.weight"), Get(name + ".norm_k.weight")};
  }
  const std::string& missing() const { return missing_; }

 private:
  std::map<std::string, at::Tensor> by_name_;
  std::string missing_;
};

}  // namespace

StatusOr<WanWeights> ResolveWanWeights(const WanTransformerConfig& c, const NamedTensors& params) {
  Resolver r(params);
  WanWeights w;
  w.patch_embedding = r.Linear("patch_embedding");
  w.time_linear_1 = r.Linear("condition_embedder.time_embedder.linear_1");
  w.time_linear_2 = r.Linear("condition_embedder.time_embedder.linear_2");
  w.time_proj = r.Linear("condition_embedder.time_proj");
  w.text_linear_1 = r.Linear("condition_embedder.text_embedder.linear_1");
  w.text_linear_2 = r.Linear("condition_embedder.text_embedder.linear_2");
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    WanBlockWeights block;
    block.scale_shift_table = r.Get(b + "scale_shift_table");
    block.attn1 = r.Attention(b + "attn1");
    block.attn2 = r.Attention(b + "attn2");
    if (c.cross_attn_norm) {
      block.norm2_weight = r.Get(b + "norm2.weight");
      block.norm2_bias = r.Get(b + "norm2.bias");
    }
    block.ffn_in = r.Linear(b + "ffn.net.0.proj");
    block.ffn_out = r.Linear(b + "ffn.net.2");
    w.blocks.push_back(std::move(block));
  }
  w.scale_shift_table = r.Get("scale_shift_table");
  w.proj_out = r.Linear("proj_out");
  if (!r.missing().empty()) return InternalError("transformer parameter missing: " + r.missing());
  return w;
}

}  // namespace rainserve
