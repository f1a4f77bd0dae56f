#include "pipelines/wan/wan_config.h"
#include "pipelines/core/json_config.h"

#include <cmath>
#include <nlohmann/json.hpp>

namespace rainserve {
namespace {

using nlohmann::json;

using config_json::KeyError;
using config_json::ReadInt;

// An integer key that may be null (diffusers' None): absent or null leaves
// *out unchanged.
Status ReadNullableInt(const json& j, const std::string& source, const char* key, int64_t min,
                       int64_t max, int64_t* out) {
  if (j.contains(key) && j[key].is_null()) return OkStatus();
  return ReadInt(j, source, key, min, max, out);
}

// image_dim, added_kv_proj_dim, pos_embed_seq_len: read and checked together.
Status ReadImageKeys(const json& j, const std::string& source, WanTransformerConfig* c) {
  const int64_t kBig = int64_t{1} << 20;
  RAINSERVE_RETURN_IF_ERROR(ReadNullableInt(j, source, "image_dim", 1, kBig, &c->image_dim));
  RAINSERVE_RETURN_IF_ERROR(
      ReadNullableInt(j, source, "added_kv_proj_dim", 1, kBig, &c->added_kv_proj_dim));
  RAINSERVE_RETURN_IF_ERROR(
      ReadNullableInt(j, source, "pos_embed_seq_len", 1, 4096, &c->pos_embed_seq_len));
  if (c->image_dim > 0 && c->added_kv_proj_dim == 0) {
    return KeyError(source, "added_kv_proj_dim",
                    "is null while image_dim is set: image tokens need their own key/value "
                    "projections (added_kv_proj_dim = num_attention_heads * attention_head_dim)");
  }
  if (c->added_kv_proj_dim > 0 && c->image_dim == 0) {
    return KeyError(source, "added_kv_proj_dim", "is set while image_dim is null");
  }
  if (c->added_kv_proj_dim > 0 && c->added_kv_proj_dim != c->inner_dim()) {
    return KeyError(
        source, "added_kv_proj_dim",
        "must equal num_attention_heads * attention_head_dim = " + std::to_string(c->inner_dim()) +
            " (the image embedder's output), got " + std::to_string(c->added_kv_proj_dim));
  }
  if (c->pos_embed_seq_len > 0 && c->image_dim == 0) {
    return KeyError(source, "pos_embed_seq_len", "is set while image_dim is null");
  }
  return OkStatus();
}

}  // namespace

StatusOr<WanTransformerConfig> ParseWanTransformerConfig(const std::string& json_text,
                                                         const std::string& source) {
  RAINSERVE_ASSIGN_OR_RETURN(json j, config_json::ParseObject(json_text, source));
  WanTransformerConfig c;
  if (j.contains("_class_name") && j["_class_name"] != "WanTransformer3DModel") {
    return KeyError(source, "_class_name", "expected WanTransformer3DModel, got " + j["_class_name"].dump());
  }
  if (j.contains("patch_size")) {
    const json& p = j["patch_size"];
    if (!p.is_array() || p.size() != 3) return KeyError(source, "patch_size", "expected [t, h, w]");
    for (int i = 0; i < 3; ++i) {
      if (!p[i].is_number_integer() || p[i].get<int64_t>() < 1 || p[i].get<int64_t>() > 16) {
        return KeyError(source, "patch_size", "entries must be integers in [1, 16]");
      }
      c.patch_size[static_cast<size_t>(i)] = p[i].get<int64_t>();
    }
  }
  const int64_t kBig = int64_t{1} << 20;
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, source, "num_attention_heads", 1, 1024, &c.num_attention_heads));
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, source, "attention_head_dim", 2, 512, &c.attention_head_dim));
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, source, "in_channels", 1, 4096, &c.in_channels));
  RAINSERVE_RETURN_IF_ERROR(ReadNullableInt(j, source, "out_channels", 1, 4096, &c.out_channels));
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, source, "text_dim", 1, kBig, &c.text_dim));
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, source, "freq_dim", 2, kBig, &c.freq_dim));
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, source, "ffn_dim", 1, kBig, &c.ffn_dim));
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, source, "num_layers", 1, 1024, &c.num_layers));
  RAINSERVE_RETURN_IF_ERROR(ReadInt(j, source, "rope_max_seq_len", 1, kBig, &c.rope_max_seq_len));
  if (j.contains("out_channels") && j["out_channels"].is_null()) c.out_channels = c.in_channels;
  if (j.contains("cross_attn_norm")) {
    if (!j["cross_attn_norm"].is_boolean()) return KeyError(source, "cross_attn_norm", "expected true or false");
    c.cross_attn_norm = j["cross_attn_norm"].get<bool>();
  }
  if (j.contains("qk_norm")) {
    if (j["qk_norm"] != "rms_norm_across_heads") {
      return KeyError(source, "qk_norm", "only \"rms_norm_across_heads\" is supported, got " +
                                             j["qk_norm"].dump());
    }
  }
  if (j.contains("eps")) {
    if (!j["eps"].is_number() || !(j["eps"].get<double>() > 0) || !std::isfinite(j["eps"].get<double>())) {
      return KeyError(source, "eps", "expected a positive number");
    }
    c.eps = j["eps"].get<double>();
  }
  if (c.attention_head_dim % 2 != 0) {
    return KeyError(source, "attention_head_dim", "must be even (rotary embedding pairs)");
  }
  if (c.freq_dim % 2 != 0) return KeyError(source, "freq_dim", "must be even");
  RAINSERVE_RETURN_IF_ERROR(ReadImageKeys(j, source, &c));
  return c;
}

StatusOr<WanLatentInput> WanLatentInputOf(const WanTransformerConfig& c,
                                          const std::string& source) {
  if (c.in_channels == c.out_channels) return WanLatentInput::kLatents;
  if (c.in_channels == 2 * c.out_channels + 4) return WanLatentInput::kMaskAndCondition;
  return KeyError(source, "in_channels",
                  std::to_string(c.in_channels) + " with out_channels " +
                      std::to_string(c.out_channels) +
                      ": a pipeline drives in_channels == out_channels (latents) or "
                      "2 * out_channels + 4 (latents, frame mask, conditioning latents)");
}

std::string WanTransformerConfigJson(const WanTransformerConfig& c) {
  json j = {{"_class_name", "WanTransformer3DModel"},
            {"patch_size", c.patch_size},
            {"num_attention_heads", c.num_attention_heads},
            {"attention_head_dim", c.attention_head_dim},
            {"in_channels", c.in_channels},
            {"out_channels", c.out_channels},
            {"text_dim", c.text_dim},
            {"freq_dim", c.freq_dim},
            {"ffn_dim", c.ffn_dim},
            {"num_layers", c.num_layers},
            {"cross_attn_norm", c.cross_attn_norm},
            {"qk_norm", c.qk_norm},
            {"eps", c.eps},
            {"rope_max_seq_len", c.rope_max_seq_len}};
  auto nullable = [](int64_t v) { return v > 0 ? json(v) : json(nullptr); };
  j["image_dim"] = nullable(c.image_dim);
  j["added_kv_proj_dim"] = nullable(c.added_kv_proj_dim);
  // Written when set only: diffusers reads an absent key as null, and the
  // text-to-video configs stay as they were.
  if (c.pos_embed_seq_len > 0) j["pos_embed_seq_len"] = c.pos_embed_seq_len;
  return j.dump(2);
}

}  // namespace rainserve
