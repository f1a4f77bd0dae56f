// Typed, path-aware reading of YAML mappings for config loading.
//
// Only config .cc files in common/ include this (it exposes yaml-cpp); the rest
// of the program sees the typed structs of config.h. Every error names the key
// path, e.g. "server.queue.max_pending: expected integer >= 1, got 0".
//
//   RAINSERVE_ASSIGN_OR_RETURN(YamlMap root, YamlMap::FromNode(doc, ""));
//   RAINSERVE_RETURN_IF_ERROR(root.Int("threads", 1, 256, &cfg.threads));
//   RAINSERVE_RETURN_IF_ERROR(root.Finish());  // unknown keys are errors
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "common/status.h"

namespace rainserve {

class YamlMap {
 public:
  // `node` must be a mapping (or null/absent, read as an empty mapping).
  static StatusOr<YamlMap> FromNode(const YAML::Node& node, std::string path);

  // Optional scalar keys: when absent, *out keeps its value (the default).
  Status Int(const std::string& key, int64_t min, int64_t max, int64_t* out);
  Status Int(const std::string& key, int64_t min, int64_t max, int* out);
  Status Double(const std::string& key, double min, double max, double* out,
                bool max_exclusive = false);
  Status Bool(const std::string& key, bool* out);
  Status String(const std::string& key, std::string* out, bool allow_empty = false);
  // A string from a fixed set of choices.
  Status Enum(const std::string& key, const std::vector<std::string>& choices, std::string* out);
  Status IntList(const std::string& key, int64_t min, int64_t max, std::vector<int64_t>* out);
  // Numbers in [min, max], at most max_count of them.
  Status DoubleList(const std::string& key, double min, double max, size_t max_count,
                    std::vector<double>* out);
  Status StringList(const std::string& key, std::vector<std::string>* out);

  // Nested mapping; `fn` reads it (Finish is called for it afterwards).
  Status Map(const std::string& key, const std::function<Status(YamlMap&)>& fn);
  // Sequence of mappings; `fn(i, item)` reads element i.
  Status MapList(const std::string& key, const std::function<Status(size_t, YamlMap&)>& fn);

  bool Has(const std::string& key) const;
  // Rejects every key that no reader above asked for.
  Status Finish() const;

  const std::string& path() const { return path_; }
  std::string KeyPath(const std::string& key) const;

 private:
  YamlMap(YAML::Node node, std::string path) : node_(std::move(node)), path_(std::move(path)) {}
  // Looks up `key`, marks it read; null node when absent.
  YAML::Node Get(const std::string& key);

  YAML::Node node_;
  std::string path_;
  std::set<std::string> read_;
};

// Parses YAML text; syntax errors carry the source name, line and column.
StatusOr<YAML::Node> ParseYaml(const std::string& text, const std::string& source_name);

}  // namespace rainserve
