// Helpers for reading diffusers/transformers config.json files (internal to
// pipelines/): every error names the file and the key.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "common/status.h"

namespace rainserve::config_json {

// `text` parsed as a JSON object; INVALID_ARGUMENT naming `source` otherwise.
inline StatusOr<nlohmann::json> ParseObject(const std::string& text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgumentError(source + ": bad JSON: " + e.what());
  }
  if (!j.is_object()) return InvalidArgumentError(source + ": expected a JSON object");
  return j;
}

inline Status KeyError(const std::string& source, const std::string& key, const std::string& what) {
  return InvalidArgumentError(source + ": " + key + ": " + what);
}

// Leaves *out unchanged when `key` is absent.
inline Status ReadInt(const nlohmann::json& j, const std::string& source, const char* key,
                      int64_t min, int64_t max, int64_t* out) {
  if (!j.contains(key)) return OkStatus();
  const nlohmann::json& v = j[key];
  if (!v.is_number_integer() || v.get<int64_t>() < min || v.get<int64_t>() > max) {
    return KeyError(source, key,
                    "expected integer in [" + std::to_string(min) + ", " + std::to_string(max) +
                        "], got " + v.dump());
  }
  *out = v.get<int64_t>();
  return OkStatus();
}

}  // namespace rainserve::config_json
