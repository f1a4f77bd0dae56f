#include "pipelines/wan/wan_weights.h"

#include <map>

namespace rainserve {

std::string WanOriginalModuleName(const std::string& module) {
  // Inside blocks.<i>.: diffusers name -> original name.
  static const std::map<std::string, std::string> kBlock = {
      {"attn1.to_q", "self_attn.q"},         {"attn1.to_k", "self_attn.k"},
      {"attn1.to_v", "self_attn.v"},         {"attn1.to_out.0", "self_attn.o"},
      {"attn1.norm_q", "self_attn.norm_q"},  {"attn1.norm_k", "self_attn.norm_k"},
      {"attn2.to_q", "cross_attn.q"},        {"attn2.to_k", "cross_attn.k"},
      {"attn2.to_v", "cross_attn.v"},        {"attn2.to_out.0", "cross_attn.o"},
      {"attn2.norm_q", "cross_attn.norm_q"}, {"attn2.norm_k", "cross_attn.norm_k"},
      {"attn2.add_k_proj", "cross_attn.k_img"}, {"attn2.add_v_proj", "cross_attn.v_img"},
      {"attn2.norm_added_k", "cross_attn.norm_k_img"},
      {"ffn.net.0.proj", "ffn.0"},           {"ffn.net.2", "ffn.2"},
      {"norm2", "norm3"},  // the cross-attention norm
  };
  static const std::map<std::string, std::string> kTop = {
      {"condition_embedder.text_embedder.linear_1", "text_embedding.0"},
      {"condition_embedder.text_embedder.linear_2", "text_embedding.2"},
      {"condition_embedder.time_embedder.linear_1", "time_embedding.0"},
      {"condition_embedder.time_embedder.linear_2", "time_embedding.2"},
      {"condition_embedder.time_proj", "time_projection.1"},
      {"condition_embedder.image_embedder.norm1", "img_emb.proj.0"},
      {"condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"},
      {"condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"},
      {"condition_embedder.image_embedder.norm2", "img_emb.proj.4"},
      {"proj_out", "head.head"},
  };
  if (module.rfind("blocks.", 0) == 0) {
    const size_t dot = module.find('.', 7);
    if (dot == std::string::npos) return "";
    auto it = kBlock.find(module.substr(dot + 1));
    return it == kBlock.end() ? "" : module.substr(0, dot + 1) + it->second;
  }
  auto it = kTop.find(module);
  return it == kTop.end() ? "" : it->second;
}

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
  if (c.has_image_attention()) {
    const std::string e = "condition_embedder.image_embedder.";
    p.push_back({e + "norm1.weight", {c.image_dim}});
    p.push_back({e + "norm1.bias", {c.image_dim}});
    linear(e + "ff.net.0.proj", c.image_dim, c.image_dim);
    linear(e + "ff.net.2", inner, c.image_dim);
    p.push_back({e + "norm2.weight", {inner}});
    p.push_back({e + "norm2.bias", {inner}});
    if (c.pos_embed_seq_len > 0)
      p.push_back({e + "pos_embed", {1, c.pos_embed_seq_len, c.image_dim}});
  }
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
    if (c.has_image_attention()) {
      linear(b + "attn2.add_k_proj", inner, c.added_kv_proj_dim);
      linear(b + "attn2.add_v_proj", inner, c.added_kv_proj_dim);
      p.push_back({b + "attn2.norm_added_k.weight", {inner}});
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
  // An FP8 layer also has "<name>.weight_scale" (pipelines/wan/wan_fp8.h).
  WanLinear Linear(const std::string& name) {
    const auto scale = by_name_.find(name + ".weight_scale");
    return {Get(name + ".weight"), Get(name + ".bias"),
            scale == by_name_.end() ? at::Tensor() : scale->second};
  }
  // to_q, to_k, to_v, to_out, norm_q, norm_k (the image projections are the caller's).
  WanAttentionWeights Attention(const std::string& name) {
    WanAttentionWeights a;
    a.to_q = Linear(name + ".to_q");
    a.to_k = Linear(name + ".to_k");
    a.to_v = Linear(name + ".to_v");
    a.to_out = Linear(name + ".to_out.0");
    a.norm_q = Get(name + ".norm_q.weight");
    a.norm_k = Get(name + ".norm_k.weight");
    return a;
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
  if (c.has_image_attention()) {
    const std::string e = "condition_embedder.image_embedder.";
    WanImageEmbedderWeights& img = w.image_embedder;
    img.norm1_weight = r.Get(e + "norm1.weight");
    img.norm1_bias = r.Get(e + "norm1.bias");
    img.ff_in = r.Linear(e + "ff.net.0.proj");
    img.ff_out = r.Linear(e + "ff.net.2");
    img.norm2_weight = r.Get(e + "norm2.weight");
    img.norm2_bias = r.Get(e + "norm2.bias");
    if (c.pos_embed_seq_len > 0) img.pos_embed = r.Get(e + "pos_embed");
  }
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string b = "blocks." + std::to_string(i) + ".";
    WanBlockWeights block;
    block.scale_shift_table = r.Get(b + "scale_shift_table");
    block.attn1 = r.Attention(b + "attn1");
    block.attn2 = r.Attention(b + "attn2");
    if (c.has_image_attention()) {
      block.attn2.add_k_proj = r.Linear(b + "attn2.add_k_proj");
      block.attn2.add_v_proj = r.Linear(b + "attn2.add_v_proj");
      block.attn2.norm_added_k = r.Get(b + "attn2.norm_added_k.weight");
    }
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

uint64_t ParameterBytes(const NamedTensors& params) {
  uint64_t bytes = 0;
  for (const auto& p : params) bytes += p.second.numel() * p.second.element_size();
  return bytes;
}

}  // namespace rainserve
