// The server's YAML schema: typed configuration, loaded once and validated.
//
// configs/server.yaml is the reference file; docs/configuration.md lists every
// key. Nothing past LoadServerConfig sees YAML.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "pipelines/core/model_options.h"

namespace rainserve {

struct QueueConfig {
  int64_t max_pending = 64;       // jobs waiting (not running) before RESOURCE_EXHAUSTED
  double timeout_seconds = 600;   // a job waiting longer than this fails with DEADLINE_EXCEEDED
};

struct JobsConfig {
  double retention_seconds = 600;  // finished jobs stay visible (GetJob, Watch) this long
  int64_t max_retained = 1000;     // and at most this many finished jobs are kept
};

struct RetentionConfig {
  // Finished jobs (their events and artifacts) kept in memory for GetJob and
  // Watch, in bytes; past it the oldest finished jobs are evicted first.
  int64_t max_bytes = int64_t{1} << 30;
};

// Longest model name (configuration and requests).
constexpr size_t kMaxModelNameBytes = 128;

// Bounds of models[].limits.max_image_bytes and max_image_pixels.
constexpr int64_t kMaxImageBytesLimit = int64_t{1} << 30;
constexpr int64_t kMaxImagePixelsLimit = int64_t{1} << 28;
// What a request needs beside its image: prompts (PipelineLimits::
// max_prompt_bytes each) and every other field, with room to spare.
constexpr int64_t kRequestBytesBesideImage = 1 << 20;

struct ServerSection {
  std::string listen_address = "127.0.0.1:50051";   // gRPC, "host:port" (port 0 = any free)
  std::string metrics_address = "127.0.0.1:9464";   // Prometheus exposer, "host:port"
  std::string log_level = "info";
  double drain_timeout_seconds = 30;                // SIGTERM: time running jobs get to finish
  // Largest request accepted, raised where a model's input images need more
  // (ReceiveMessageBytes); also the bound of each ListJobs response.
  int64_t max_message_bytes = 4 << 20;
  int64_t max_concurrent_streams = 100;             // open calls per client connection
  QueueConfig queue;
  JobsConfig jobs;
  RetentionConfig retention;
};

// One servable model: what its pipeline is loaded with (ModelOptions,
// pipelines/core/model_options.h) and when. Relative paths are resolved
// against the config file's folder.
struct ModelEntry : ModelOptions {
  bool load_at_startup = true;
};

// security: transport and authentication. Paths are resolved like model paths.
struct SecurityConfig {
  // TLS when cert_file and key_file are set; mutual TLS (clients must present
  // a certificate signed by this CA) when client_ca_file is set too.
  std::string tls_cert_file, tls_key_file, tls_client_ca_file;
  // Bearer tokens, one per line ('#' comments). When tokens_file is set every
  // rainserve.v1 RPC needs "authorization: Bearer <token>"; health and
  // reflection stay open for probes.
  std::string tokens_file;
  // Tokens allowed to call Models.Load/Unload. With auth on and no admin
  // tokens, model management is refused.
  std::string admin_tokens_file;
  bool model_management = true;  // false: Load/Unload are PERMISSION_DENIED
};

struct ServerConfig {
  ServerSection server;
  SecurityConfig security;
  std::vector<ModelEntry> models;
  std::string source;  // file it was loaded from (for messages)
};

// Parses and validates YAML text. Unknown keys, wrong types and out-of-range
// values are INVALID_ARGUMENT errors naming the key path.
// `base_dir` resolves relative model paths ("" leaves them as written).
StatusOr<ServerConfig> ParseServerConfig(const std::string& yaml_text, const std::string& source,
                                         const std::string& base_dir);

// The gRPC server's receive limit: server.max_message_bytes, or each model's
// limits.max_image_bytes (the pipeline default when unset) plus
// kRequestBytesBesideImage where that is more, so that an image request
// within a model's limits always arrives and gets the model's own answer.
int64_t ReceiveMessageBytes(const ServerConfig& config);

// Reads and parses a file; NOT_FOUND when it cannot be read.
StatusOr<ServerConfig> LoadServerConfig(const std::string& path);

// Checks "host:port" (IPv4, [IPv6] or name; port 0..65535).
Status ValidateHostPort(const std::string& key_path, const std::string& address);

}  // namespace rainserve
