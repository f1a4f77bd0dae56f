#include "common/config.h"

#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "common/yaml_reader.h"

namespace rainserve {
namespace {

constexpr int64_t kIntMax = std::numeric_limits<int64_t>::max();
constexpr double kDoubleMax = std::numeric_limits<double>::max();

Status ValidateDevice(const std::string& key_path, const std::string& device) {
  if (device == "cpu") return OkStatus();
  if (device.rfind("cuda:", 0) == 0 && device.size() > 5) {
    for (size_t i = 5; i < device.size(); ++i) {
      if (device[i] < '0' || device[i] > '9') break;
      if (i + 1 == device.size()) return OkStatus();
    }
  }
  return InvalidArgumentError(key_path + ": expected \"cpu\" or \"cuda:N\", got '" + device + "'");
}

Status ReadServerSection(YamlMap& m, ServerSection* s) {
  RAINSERVE_RETURN_IF_ERROR(m.String("listen_address", &s->listen_address));
  RAINSERVE_RETURN_IF_ERROR(ValidateHostPort(m.KeyPath("listen_address"), s->listen_address));
  RAINSERVE_RETURN_IF_ERROR(m.String("metrics_address", &s->metrics_address));
  RAINSERVE_RETURN_IF_ERROR(ValidateHostPort(m.KeyPath("metrics_address"), s->metrics_address));
  RAINSERVE_RETURN_IF_ERROR(
      m.Enum("log_level", {"debug", "info", "warning", "error"}, &s->log_level));
  RAINSERVE_RETURN_IF_ERROR(
      m.Double("drain_timeout_seconds", 0, 86400, &s->drain_timeout_seconds));
  RAINSERVE_RETURN_IF_ERROR(
      m.Int("max_message_bytes", 1024, int64_t{1} << 30, &s->max_message_bytes));
  return m.Map("queue", [&](YamlMap& q) {
    RAINSERVE_RETURN_IF_ERROR(q.Int("max_pending", 1, kIntMax, &s->queue.max_pending));
    return q.Double("timeout_seconds", 0.001, kDoubleMax, &s->queue.timeout_seconds);
  });
}

Status ReadModelEntry(YamlMap& m, const std::string& base_dir, ModelEntry* e) {
  if (!m.Has("name")) return InvalidArgumentError(m.KeyPath("name") + ": required");
  RAINSERVE_RETURN_IF_ERROR(m.String("name", &e->name));
  for (char c : e->name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_' || c == '.';
    if (!ok) {
      return InvalidArgumentError(m.KeyPath("name") +
                                  ": expected letters, digits, '-', '_' or '.', got '" + e->name +
                                  "'");
    }
  }
  RAINSERVE_RETURN_IF_ERROR(m.Enum("pipeline", {"wan"}, &e->pipeline));
  if (!m.Has("path")) return InvalidArgumentError(m.KeyPath("path") + ": required");
  RAINSERVE_RETURN_IF_ERROR(m.String("path", &e->path));
  if (!base_dir.empty() && !e->path.empty() && e->path[0] != '/') {
    e->path = base_dir + "/" + e->path;
  }
  RAINSERVE_RETURN_IF_ERROR(m.String("device", &e->device));
  RAINSERVE_RETURN_IF_ERROR(ValidateDevice(m.KeyPath("device"), e->device));
  RAINSERVE_RETURN_IF_ERROR(m.Enum("dtype", {"fp32", "bf16", "fp16"}, &e->dtype));
  RAINSERVE_RETURN_IF_ERROR(m.Int("threads", 0, 1024, &e->threads));
  return m.Bool("load_at_startup", &e->load_at_startup);
}

}  // namespace

Status ValidateHostPort(const std::string& key_path, const std::string& address) {
  const auto colon = address.rfind(':');
  auto bad = [&]() {
    return InvalidArgumentError(key_path + ": expected \"host:port\" with port in [0, 65535], got '" +
                                address + "'");
  };
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) return bad();
  const std::string host = address.substr(0, colon);
  if (host.front() == '[' && host.back() != ']') return bad();
  const std::string port = address.substr(colon + 1);
  if (port.size() > 5) return bad();
  for (char c : port) {
    if (c < '0' || c > '9') return bad();
  }
  if (std::stoi(port) > 65535) return bad();
  return OkStatus();
}

Status ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError("cannot open '" + path + "'");
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad()) return DataLossError("error reading '" + path + "'");
  *out = buf.str();
  return OkStatus();
}

StatusOr<ServerConfig> ParseServerConfig(const std::string& yaml_text, const std::string& source,
                                         const std::string& base_dir) {
  RAINSERVE_ASSIGN_OR_RETURN(YAML::Node doc, ParseYaml(yaml_text, source));
  ServerConfig cfg;
  cfg.source = source;
  RAINSERVE_ASSIGN_OR_RETURN(YamlMap root, YamlMap::FromNode(doc, ""));
  RAINSERVE_RETURN_IF_ERROR(root.Map("server", [&](YamlMap& m) {
    return ReadServerSection(m, &cfg.server);
  }));
  std::set<std::string> names;
  RAINSERVE_RETURN_IF_ERROR(root.MapList("models", [&](size_t, YamlMap& m) {
    ModelEntry e;
    RAINSERVE_RETURN_IF_ERROR(ReadModelEntry(m, base_dir, &e));
    if (!names.insert(e.name).second) {
      return InvalidArgumentError(m.KeyPath("name") + ": duplicate model name '" + e.name + "'");
    }
    cfg.models.push_back(std::move(e));
    return OkStatus();
  }));
  RAINSERVE_RETURN_IF_ERROR(root.Finish());
  return cfg;
}

StatusOr<ServerConfig> LoadServerConfig(const std::string& path) {
  std::string text;
  RAINSERVE_RETURN_IF_ERROR(ReadFile(path, &text));
  const auto slash = path.find_last_of('/');
  const std::string base_dir = slash == std::string::npos ? "." : path.substr(0, slash);
  return ParseServerConfig(text, path, base_dir);
}

}  // namespace rainserve
