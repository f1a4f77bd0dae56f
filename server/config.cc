#include "server/config.h"

#include <algorithm>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "attention/settings.h"
#include "common/files.h"
#include "common/yaml_reader.h"
#include "pipelines/core/parallel_plan.h"
#include "pipelines/core/pipeline.h"

namespace rainserve {
namespace {

constexpr int64_t kIntMax = std::numeric_limits<int64_t>::max();
constexpr double kDoubleMax = std::numeric_limits<double>::max();

Status ValidateDevice(const std::string& key_path, const std::string& device) {
  if (device == "cpu" || CudaDeviceIndex(device) >= 0) return OkStatus();
  return InvalidArgumentError(key_path + ": expected \"cpu\" or \"cuda:N\", got '" + device + "'");
}

// models[].devices: distinct CUDA devices, at most kMaxModelDevices; with
// `device` also given, it must be the first of them.
Status ReadDevices(YamlMap& m, ModelEntry* e) {
  if (!m.Has("devices")) return OkStatus();
  const std::string key = m.KeyPath("devices");
  RAINSERVE_RETURN_IF_ERROR(m.StringList("devices", &e->devices));
  const int64_t n = static_cast<int64_t>(e->devices.size());
  if (n < 1 || n > kMaxModelDevices) {
    return InvalidArgumentError(key + ": expected 1 to " + std::to_string(kMaxModelDevices) +
                                " devices, got " + std::to_string(n));
  }
  std::set<std::string> seen;
  for (size_t i = 0; i < e->devices.size(); ++i) {
    const std::string& d = e->devices[i];
    const std::string item = key + "[" + std::to_string(i) + "]";
    RAINSERVE_RETURN_IF_ERROR(ValidateDevice(item, d));
    if (d == "cpu") {
      return InvalidArgumentError(item +
                                  ": expected \"cuda:N\" (several devices are GPUs), got 'cpu'");
    }
    if (!seen.insert(d).second) {
      return InvalidArgumentError(item + ": '" + d + "' is listed twice");
    }
  }
  if (m.Has("device") && e->device != e->devices[0]) {
    return InvalidArgumentError(m.KeyPath("device") + ": must be devices[0] ('" + e->devices[0] +
                                "') when both are given, got '" + e->device + "'");
  }
  e->device = e->devices[0];
  return OkStatus();
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
  RAINSERVE_RETURN_IF_ERROR(
      m.Int("max_concurrent_streams", 1, 1000000, &s->max_concurrent_streams));
  RAINSERVE_RETURN_IF_ERROR(m.Map("queue", [&](YamlMap& q) {
    RAINSERVE_RETURN_IF_ERROR(q.Int("max_pending", 1, kIntMax, &s->queue.max_pending));
    return q.Double("timeout_seconds", 0.001, kDoubleMax, &s->queue.timeout_seconds);
  }));
  RAINSERVE_RETURN_IF_ERROR(m.Map("jobs", [&](YamlMap& j) {
    RAINSERVE_RETURN_IF_ERROR(
        j.Double("retention_seconds", 0, 7 * 86400, &s->jobs.retention_seconds));
    return j.Int("max_retained", 1, 1000000, &s->jobs.max_retained);
  }));
  return m.Map("retention", [&](YamlMap& r) {
    return r.Int("max_bytes", 0, int64_t{1} << 50, &s->retention.max_bytes);
  });
}

template <typename T, typename Reader>
Status Optional(YamlMap& m, const std::string& key, std::optional<T>* out, Reader read) {
  if (!m.Has(key)) return OkStatus();
  T value{};
  RAINSERVE_RETURN_IF_ERROR(read(&value));
  *out = value;
  return OkStatus();
}

Status OptionalInt(YamlMap& m, const std::string& key, int64_t min, int64_t max,
                   std::optional<int64_t>* out) {
  return Optional(m, key, out, [&](int64_t* v) { return m.Int(key, min, max, v); });
}

Status OptionalDouble(YamlMap& m, const std::string& key, double min, double max,
                      std::optional<double>* out, bool max_exclusive = false) {
  return Optional(m, key, out, [&](double* v) { return m.Double(key, min, max, v, max_exclusive); });
}

Status OptionalEnum(YamlMap& m, const std::string& key, const std::vector<std::string>& choices,
                    std::optional<std::string>* out) {
  return Optional(m, key, out, [&](std::string* v) { return m.Enum(key, choices, v); });
}

// A name from one of attention/'s tables (mode, mask refresh), parsed by it.
template <typename T, typename Parse>
Status OptionalName(YamlMap& m, const std::string& key, Parse parse, std::optional<T>* out) {
  return Optional(m, key, out, [&](T* v) -> Status {
    std::string name;
    RAINSERVE_RETURN_IF_ERROR(m.String(key, &name));
    RAINSERVE_ASSIGN_OR_RETURN(*v, parse(name, m.KeyPath(key)));
    return OkStatus();
  });
}

// models[].defaults.timesteps: an explicit schedule (the pipeline checks its
// order and range at load, as it checks a request's); steps, when also set,
// must agree.
Status ReadTimesteps(YamlMap& d, ModelDefaultsOverride* o) {
  if (!d.Has("timesteps")) return OkStatus();
  std::vector<double> t;
  RAINSERVE_RETURN_IF_ERROR(d.DoubleList("timesteps", 0, 1e6, 1000, &t));
  if (t.empty()) return InvalidArgumentError(d.KeyPath("timesteps") + ": must not be empty");
  if (o->steps && *o->steps != static_cast<int64_t>(t.size())) {
    return InvalidArgumentError(d.KeyPath("steps") + ": " + std::to_string(*o->steps) +
                                " but timesteps has " + std::to_string(t.size()) +
                                " values (leave steps out)");
  }
  o->timesteps = std::move(t);
  return OkStatus();
}

// models[].defaults; ranges here are sanity bounds, the model's limits apply
// again when a request is resolved.
Status ReadModelDefaults(YamlMap& d, ModelDefaultsOverride* o) {
  RAINSERVE_RETURN_IF_ERROR(OptionalInt(d, "width", 16, 16384, &o->width));
  RAINSERVE_RETURN_IF_ERROR(OptionalInt(d, "height", 16, 16384, &o->height));
  RAINSERVE_RETURN_IF_ERROR(OptionalInt(d, "num_frames", 1, 1025, &o->num_frames));
  RAINSERVE_RETURN_IF_ERROR(OptionalInt(d, "fps", 1, 240, &o->fps));
  RAINSERVE_RETURN_IF_ERROR(OptionalInt(d, "steps", 1, 1000, &o->steps));
  RAINSERVE_RETURN_IF_ERROR(ReadTimesteps(d, o));
  RAINSERVE_RETURN_IF_ERROR(OptionalDouble(d, "guidance_scale", 0, 50, &o->guidance_scale));
  RAINSERVE_RETURN_IF_ERROR(OptionalDouble(d, "guidance_scale_2", 0, 50, &o->guidance_scale_2));
  RAINSERVE_RETURN_IF_ERROR(OptionalDouble(d, "flow_shift", 0.001, 100, &o->flow_shift));
  RAINSERVE_RETURN_IF_ERROR(OptionalEnum(d, "scheduler", {"unipc", "euler"}, &o->scheduler));
  RAINSERVE_RETURN_IF_ERROR(d.Map("step_cache", [&](YamlMap& s) {
    RAINSERVE_RETURN_IF_ERROR(OptionalName(s, "mode", ParseStepCacheMode, &o->step_cache_mode));
    RAINSERVE_RETURN_IF_ERROR(
        OptionalDouble(s, "threshold", 0, kMaxStepCacheThreshold, &o->step_cache_threshold));
    return OptionalInt(s, "warmup_steps", 0, 1000, &o->step_cache_warmup_steps);
  }));
  return d.Map("sparse_attention", [&](YamlMap& s) {
    RAINSERVE_RETURN_IF_ERROR(OptionalName(s, "mode", attention::ParseMode, &o->attention_mode));
    RAINSERVE_RETURN_IF_ERROR(OptionalDouble(s, "sparsity", 0, 1, &o->sparsity, true));
    RAINSERVE_RETURN_IF_ERROR(OptionalDouble(s, "kept_mass", 0, 1, &o->kept_mass));
    RAINSERVE_RETURN_IF_ERROR(OptionalInt(s, "sink_frames", 0, 1024, &o->sink_frames));
    RAINSERVE_RETURN_IF_ERROR(OptionalInt(s, "dense_warmup_steps", 0, 1000, &o->dense_warmup_steps));
    RAINSERVE_RETURN_IF_ERROR(
        OptionalName(s, "mask_refresh", attention::ParseMaskRefresh, &o->mask_refresh));
    RAINSERVE_RETURN_IF_ERROR(s.Map("quality_probe", [&](YamlMap& p) {
      return OptionalDouble(p, "rate", 0, 1, &o->quality_probe_rate);
    }));
    if (s.Has("window")) {
      std::vector<int64_t> w;
      RAINSERVE_RETURN_IF_ERROR(s.IntList("window", 1, 64, &w));
      if (w.size() != 3) {
        return InvalidArgumentError(s.KeyPath("window") + ": expected [t, h, w]");
      }
      o->window = w;
    }
    return OkStatus();
  });
}

Status ReadPath(YamlMap& m, const std::string& key, const std::string& base_dir,
                std::string* out) {
  if (!m.Has(key)) return OkStatus();
  RAINSERVE_RETURN_IF_ERROR(m.String(key, out));
  if (!base_dir.empty() && (*out)[0] != '/') *out = base_dir + "/" + *out;
  return OkStatus();
}

Status ReadSecurity(YamlMap& m, const std::string& base_dir, SecurityConfig* s) {
  RAINSERVE_RETURN_IF_ERROR(m.Map("tls", [&](YamlMap& t) {
    RAINSERVE_RETURN_IF_ERROR(ReadPath(t, "cert_file", base_dir, &s->tls_cert_file));
    RAINSERVE_RETURN_IF_ERROR(ReadPath(t, "key_file", base_dir, &s->tls_key_file));
    RAINSERVE_RETURN_IF_ERROR(ReadPath(t, "client_ca_file", base_dir, &s->tls_client_ca_file));
    if (s->tls_cert_file.empty() != s->tls_key_file.empty()) {
      return InvalidArgumentError(t.KeyPath("cert_file") + ": cert_file and key_file go together");
    }
    if (!s->tls_client_ca_file.empty() && s->tls_cert_file.empty()) {
      return InvalidArgumentError(t.KeyPath("client_ca_file") +
                                  ": mutual TLS needs cert_file and key_file");
    }
    return OkStatus();
  }));
  RAINSERVE_RETURN_IF_ERROR(m.Map("auth", [&](YamlMap& a) {
    RAINSERVE_RETURN_IF_ERROR(ReadPath(a, "tokens_file", base_dir, &s->tokens_file));
    return ReadPath(a, "admin_tokens_file", base_dir, &s->admin_tokens_file);
  }));
  return m.Bool("model_management", &s->model_management);
}

Status ReadModelEntry(YamlMap& m, const std::string& base_dir, ModelEntry* e) {
  if (!m.Has("name")) return InvalidArgumentError(m.KeyPath("name") + ": required");
  RAINSERVE_RETURN_IF_ERROR(m.String("name", &e->name));
  if (e->name.empty() || e->name.size() > kMaxModelNameBytes) {
    return InvalidArgumentError(m.KeyPath("name") + ": expected 1 to " +
                                std::to_string(kMaxModelNameBytes) + " bytes, got " +
                                std::to_string(e->name.size()));
  }
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
  RAINSERVE_RETURN_IF_ERROR(ReadDevices(m, e));
  RAINSERVE_RETURN_IF_ERROR(m.Enum("dtype", {"fp32", "bf16", "fp16"}, &e->dtype));
  RAINSERVE_RETURN_IF_ERROR(m.Enum("linear_precision", {"bf16", "fp8"}, &e->linear_precision));
  RAINSERVE_RETURN_IF_ERROR(m.Int("threads", 0, 1024, &e->threads));
  RAINSERVE_RETURN_IF_ERROR(m.Bool("load_at_startup", &e->load_at_startup));
  RAINSERVE_RETURN_IF_ERROR(m.Bool("offload_idle_expert", &e->offload_idle_expert));
  RAINSERVE_RETURN_IF_ERROR(
      m.Enum("dense_attention", {"auto", "ours", "sdpa"}, &e->dense_attention));
  RAINSERVE_RETURN_IF_ERROR(m.MapList("loras", [&](size_t i, YamlMap& l) {
    if (i >= kMaxLoraFiles) {
      return InvalidArgumentError(m.KeyPath("loras") + ": at most " +
                                  std::to_string(kMaxLoraFiles) + " files");
    }
    LoraFile f;
    if (!l.Has("path")) return InvalidArgumentError(l.KeyPath("path") + ": required");
    RAINSERVE_RETURN_IF_ERROR(ReadPath(l, "path", base_dir, &f.path));
    RAINSERVE_RETURN_IF_ERROR(l.Double("strength", -kMaxLoraStrength, kMaxLoraStrength, &f.strength));
    e->loras.push_back(std::move(f));
    return OkStatus();
  }));
  RAINSERVE_RETURN_IF_ERROR(m.Map("defaults", [&](YamlMap& d) {
    return ReadModelDefaults(d, &e->defaults);
  }));
  return m.Map("limits", [&](YamlMap& l) {
    ModelLimitsOverride* o = &e->limits;
    RAINSERVE_RETURN_IF_ERROR(OptionalInt(l, "max_width", 16, 16384, &o->max_width));
    RAINSERVE_RETURN_IF_ERROR(OptionalInt(l, "max_height", 16, 16384, &o->max_height));
    RAINSERVE_RETURN_IF_ERROR(OptionalInt(l, "max_pixels", 256, int64_t{1} << 28, &o->max_pixels));
    RAINSERVE_RETURN_IF_ERROR(OptionalInt(l, "max_frames", 1, 1025, &o->max_frames));
    RAINSERVE_RETURN_IF_ERROR(OptionalInt(l, "max_steps", 1, 1000, &o->max_steps));
    RAINSERVE_RETURN_IF_ERROR(OptionalInt(l, "max_prompt_tokens", 1, 4096, &o->max_prompt_tokens));
    RAINSERVE_RETURN_IF_ERROR(
        OptionalInt(l, "max_image_bytes", 1024, kMaxImageBytesLimit, &o->max_image_bytes));
    RAINSERVE_RETURN_IF_ERROR(
        OptionalInt(l, "max_image_pixels", 1, kMaxImagePixelsLimit, &o->max_image_pixels));
    RAINSERVE_RETURN_IF_ERROR(
        OptionalDouble(l, "max_quality_probe_rate", 0, 1, &o->max_quality_probe_rate));
    return OptionalDouble(l, "max_memory_gb", 0, 1e6, &o->max_memory_gb);
  });
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

StatusOr<ServerConfig> ParseServerConfig(const std::string& yaml_text, const std::string& source,
                                         const std::string& base_dir) {
  RAINSERVE_ASSIGN_OR_RETURN(YAML::Node doc, ParseYaml(yaml_text, source));
  ServerConfig cfg;
  cfg.source = source;
  RAINSERVE_ASSIGN_OR_RETURN(YamlMap root, YamlMap::FromNode(doc, ""));
  RAINSERVE_RETURN_IF_ERROR(root.Map("server", [&](YamlMap& m) {
    return ReadServerSection(m, &cfg.server);
  }));
  RAINSERVE_RETURN_IF_ERROR(root.Map("security", [&](YamlMap& m) {
    return ReadSecurity(m, base_dir, &cfg.security);
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

int64_t ReceiveMessageBytes(const ServerConfig& config) {
  int64_t bytes = config.server.max_message_bytes;
  for (const ModelEntry& model : config.models) {
    const int64_t image = model.limits.max_image_bytes.value_or(PipelineLimits().max_image_bytes);
    bytes = std::max(bytes, image + kRequestBytesBesideImage);
  }
  return bytes;
}

StatusOr<ServerConfig> LoadServerConfig(const std::string& path) {
  std::string text;
  RAINSERVE_RETURN_IF_ERROR(ReadFile(path, &text));
  const auto slash = path.find_last_of('/');
  const std::string base_dir = slash == std::string::npos ? "." : path.substr(0, slash);
  return ParseServerConfig(text, path, base_dir);
}

}  // namespace rainserve
