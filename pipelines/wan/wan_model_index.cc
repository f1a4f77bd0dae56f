#include "pipelines/wan/wan_model_index.h"

#include <nlohmann/json.hpp>

#include "common/files.h"
#include "pipelines/core/json_config.h"

namespace rainserve {
namespace {

using nlohmann::json;

// A component entry is ["library", "Class"]; [null, null] or absent means none.
bool HasComponent(const json& j, const char* key) {
  if (!j.contains(key)) return false;
  const json& v = j[key];
  if (v.is_array()) return !v.empty() && !v[0].is_null();
  return !v.is_null();
}

}  // namespace

StatusOr<WanModelIndex> ParseWanModelIndex(const std::string& json_text,
                                           const std::string& source) {
  RAINSERVE_ASSIGN_OR_RETURN(const json j, config_json::ParseObject(json_text, source));
  WanModelIndex index;
  if (j.contains("_class_name")) {
    if (!j["_class_name"].is_string()) {
      return config_json::KeyError(source, "_class_name", "expected a string");
    }
    index.pipeline_class = j["_class_name"].get<std::string>();
  }
  if (index.pipeline_class != "WanPipeline" && index.pipeline_class != "WanImageToVideoPipeline") {
    return UnimplementedError(source + ": pipeline class '" + index.pipeline_class +
                              "' is not supported (WanPipeline, WanImageToVideoPipeline)");
  }
  index.has_transformer_2 = HasComponent(j, "transformer_2");
  index.has_image_encoder = HasComponent(j, "image_encoder");
  if (!HasComponent(j, "transformer")) {
    return config_json::KeyError(source, "transformer",
                                 "the high-noise transformer is required");
  }
  if (j.contains("boundary_ratio") && !j["boundary_ratio"].is_null()) {
    const json& v = j["boundary_ratio"];
    if (!v.is_number() || !(v.get<double>() > 0.0 && v.get<double>() < 1.0)) {
      return config_json::KeyError(source, "boundary_ratio",
                                   "expected a number in (0, 1) or null, got " + v.dump());
    }
    index.boundary_ratio = v.get<double>();
  }
  if (index.has_transformer_2 && !index.boundary_ratio) {
    return config_json::KeyError(source, "boundary_ratio",
                                 "transformer_2 is set, so the switch point is required");
  }
  if (j.contains("expand_timesteps") && !j["expand_timesteps"].is_null()) {
    if (!j["expand_timesteps"].is_boolean()) {
      return config_json::KeyError(source, "expand_timesteps", "expected true or false");
    }
    index.expand_timesteps = j["expand_timesteps"].get<bool>();
  }
  if (index.has_image_encoder != HasComponent(j, "image_processor")) {
    return config_json::KeyError(source, "image_processor",
                                 "image_encoder and image_processor come together");
  }
  if (index.has_image_encoder && !index.image_to_video()) {
    return config_json::KeyError(source, "image_encoder",
                                 "only WanImageToVideoPipeline uses an image encoder");
  }
  return index;
}

StatusOr<WanModelIndex> ReadWanModelIndex(const std::string& dir) {
  const std::string path = dir + "/model_index.json";
  std::string text;
  if (!ReadFile(path, &text).ok()) return WanModelIndex{};
  return ParseWanModelIndex(text, path);
}

}  // namespace rainserve
