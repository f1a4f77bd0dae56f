#include "common/yaml_reader.h"

#include <cmath>
#include <limits>
#include <sstream>

namespace rainserve {
namespace {

std::string Describe(const YAML::Node& node) {
  if (node.IsNull()) return "null";
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a mapping";
  return "'" + node.Scalar() + "'";
}

Status TypeError(const std::string& path, const std::string& expected, const YAML::Node& node) {
  return InvalidArgumentError(path + ": expected " + expected + ", got " + Describe(node));
}

std::string RangeText(int64_t min, int64_t max) {
  if (max == std::numeric_limits<int64_t>::max()) return ">= " + std::to_string(min);
  return "in [" + std::to_string(min) + ", " + std::to_string(max) + "]";
}

std::string FormatDouble(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

// Strict integer: "12" yes; "12.5", "1e3", "true", "0x10" no.
bool ParseInt(const std::string& text, int64_t* out) {
  if (text.empty()) return false;
  size_t i = (text[0] == '-' || text[0] == '+') ? 1 : 0;
  if (i == text.size()) return false;
  for (size_t j = i; j < text.size(); ++j) {
    if (text[j] < '0' || text[j] > '9') return false;
  }
  try {
    size_t used = 0;
    *out = std::stoll(text, &used);
    return used == text.size();
  } catch (...) {
    return false;
  }
}

bool ParseDouble(const std::string& text, double* out) {
  if (text.empty()) return false;
  try {
    size_t used = 0;
    *out = std::stod(text, &used);
    return used == text.size() && std::isfinite(*out);
  } catch (...) {
    return false;
  }
}

}  // namespace

StatusOr<YAML::Node> ParseYaml(const std::string& text, const std::string& source_name) {
  try {
    return YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(source_name + ":" + std::to_string(e.mark.line + 1) + ":" +
                                std::to_string(e.mark.column + 1) + ": " + e.msg);
  }
}

StatusOr<YamlMap> YamlMap::FromNode(const YAML::Node& node, std::string path) {
  if (!node || node.IsNull()) return YamlMap(YAML::Node(YAML::NodeType::Map), std::move(path));
  if (!node.IsMap()) return TypeError(path.empty() ? "(top level)" : path, "a mapping", node);
  return YamlMap(node, std::move(path));
}

std::string YamlMap::KeyPath(const std::string& key) const {
  return path_.empty() ? key : path_ + "." + key;
}

bool YamlMap::Has(const std::string& key) const {
  const YAML::Node n = node_[key];
  return n.IsDefined() && !n.IsNull();
}

YAML::Node YamlMap::Get(const std::string& key) {
  read_.insert(key);
  const YAML::Node n = node_[key];
  if (!n.IsDefined()) return YAML::Node();
  return n;
}

Status YamlMap::Int(const std::string& key, int64_t min, int64_t max, int64_t* out) {
  const YAML::Node n = Get(key);
  if (n.IsNull()) return OkStatus();
  int64_t v = 0;
  if (!n.IsScalar() || !ParseInt(n.Scalar(), &v) || v < min || v > max) {
    return TypeError(KeyPath(key), "integer " + RangeText(min, max), n);
  }
  *out = v;
  return OkStatus();
}

Status YamlMap::Int(const std::string& key, int64_t min, int64_t max, int* out) {
  int64_t v = *out;
  RAINSERVE_RETURN_IF_ERROR(Int(key, min, max, &v));
  *out = static_cast<int>(v);
  return OkStatus();
}

Status YamlMap::Double(const std::string& key, double min, double max, double* out,
                       bool max_exclusive) {
  const YAML::Node n = Get(key);
  if (n.IsNull()) return OkStatus();
  double v = 0;
  if (!n.IsScalar() || !ParseDouble(n.Scalar(), &v) || v < min ||
      (max_exclusive ? v >= max : v > max)) {
    std::string range = "number in [" + FormatDouble(min) + ", " + FormatDouble(max) +
                        (max_exclusive ? ")" : "]");
    if (max == std::numeric_limits<double>::max()) range = "number >= " + FormatDouble(min);
    return TypeError(KeyPath(key), range, n);
  }
  *out = v;
  return OkStatus();
}

Status YamlMap::Bool(const std::string& key, bool* out) {
  const YAML::Node n = Get(key);
  if (n.IsNull()) return OkStatus();
  if (n.IsScalar()) {
    const std::string& s = n.Scalar();
    if (s == "true") { *out = true; return OkStatus(); }
    if (s == "false") { *out = false; return OkStatus(); }
  }
  return TypeError(KeyPath(key), "true or false", n);
}

Status YamlMap::String(const std::string& key, std::string* out, bool allow_empty) {
  const YAML::Node n = Get(key);
  if (n.IsNull()) return OkStatus();
  if (!n.IsScalar() || (!allow_empty && n.Scalar().empty())) {
    return TypeError(KeyPath(key), allow_empty ? "a string" : "a non-empty string", n);
  }
  *out = n.Scalar();
  return OkStatus();
}

Status YamlMap::Enum(const std::string& key, const std::vector<std::string>& choices,
                     std::string* out) {
  const YAML::Node n = Get(key);
  if (n.IsNull()) return OkStatus();
  if (n.IsScalar()) {
    for (const auto& c : choices) {
      if (n.Scalar() == c) {
        *out = c;
        return OkStatus();
      }
    }
  }
  std::string expected = "one of";
  for (size_t i = 0; i < choices.size(); ++i) expected += (i ? ", " : " ") + choices[i];
  return TypeError(KeyPath(key), expected, n);
}

Status YamlMap::IntList(const std::string& key, int64_t min, int64_t max,
                        std::vector<int64_t>* out) {
  const YAML::Node n = Get(key);
  if (n.IsNull()) return OkStatus();
  if (!n.IsSequence()) return TypeError(KeyPath(key), "a list of integers", n);
  std::vector<int64_t> values;
  for (size_t i = 0; i < n.size(); ++i) {
    int64_t v = 0;
    if (!n[i].IsScalar() || !ParseInt(n[i].Scalar(), &v) || v < min || v > max) {
      return TypeError(KeyPath(key) + "[" + std::to_string(i) + "]",
                       "integer " + RangeText(min, max), n[i]);
    }
    values.push_back(v);
  }
  *out = std::move(values);
  return OkStatus();
}

Status YamlMap::DoubleList(const std::string& key, double min, double max, size_t max_count,
                          std::vector<double>* out) {
  const YAML::Node n = Get(key);
  if (n.IsNull()) return OkStatus();
  if (!n.IsSequence()) return TypeError(KeyPath(key), "a list of numbers", n);
  if (n.size() > max_count) {
    return InvalidArgumentError(KeyPath(key) + ": at most " + std::to_string(max_count) +
                                " values (got " + std::to_string(n.size()) + ")");
  }
  std::vector<double> values;
  for (size_t i = 0; i < n.size(); ++i) {
    double v = 0;
    if (!n[i].IsScalar() || !ParseDouble(n[i].Scalar(), &v) || v < min || v > max) {
      return TypeError(KeyPath(key) + "[" + std::to_string(i) + "]",
                       "number in [" + FormatDouble(min) + ", " + FormatDouble(max) + "]", n[i]);
    }
    values.push_back(v);
  }
  *out = std::move(values);
  return OkStatus();
}

Status YamlMap::StringList(const std::string& key, std::vector<std::string>* out) {
  const YAML::Node n = Get(key);
  if (n.IsNull()) return OkStatus();
  if (!n.IsSequence()) return TypeError(KeyPath(key), "a list of strings", n);
  std::vector<std::string> values;
  for (size_t i = 0; i < n.size(); ++i) {
    if (!n[i].IsScalar() || n[i].Scalar().empty()) {
      return TypeError(KeyPath(key) + "[" + std::to_string(i) + "]", "a non-empty string", n[i]);
    }
    values.push_back(n[i].Scalar());
  }
  *out = std::move(values);
  return OkStatus();
}

Status YamlMap::Map(const std::string& key, const std::function<Status(YamlMap&)>& fn) {
  const YAML::Node n = Get(key);
  RAINSERVE_ASSIGN_OR_RETURN(YamlMap child, FromNode(n, KeyPath(key)));
  RAINSERVE_RETURN_IF_ERROR(fn(child));
  return child.Finish();
}

Status YamlMap::MapList(const std::string& key,
                        const std::function<Status(size_t, YamlMap&)>& fn) {
  const YAML::Node n = Get(key);
  if (n.IsNull()) return OkStatus();
  if (!n.IsSequence()) return TypeError(KeyPath(key), "a list", n);
  for (size_t i = 0; i < n.size(); ++i) {
    RAINSERVE_ASSIGN_OR_RETURN(YamlMap child,
                               FromNode(n[i], KeyPath(key) + "[" + std::to_string(i) + "]"));
    RAINSERVE_RETURN_IF_ERROR(fn(i, child));
    RAINSERVE_RETURN_IF_ERROR(child.Finish());
  }
  return OkStatus();
}

Status YamlMap::Finish() const {
  for (const auto& kv : node_) {
    const std::string key = kv.first.IsScalar() ? kv.first.Scalar() : "?";
    if (read_.count(key) == 0) {
      return InvalidArgumentError(KeyPath(key) + ": unknown key");
    }
  }
  return OkStatus();
}

}  // namespace rainserve
