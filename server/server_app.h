// ServerApp: the whole running service (gRPC server, health, reflection,
// Prometheus exposer, models, metrics) behind Start() and Shutdown().
//
// main() calls Start once, then Shutdown once from the thread that received
// SIGTERM/SIGINT. Tests do the same in-process.
#pragma once

#include <memory>

#include "server/config.h"
#include "common/status.h"

namespace rainserve {

class ServerApp {
 public:
  // Binds both ports and starts serving. Errors (address in use, ...) are
  // UNAVAILABLE/INVALID_ARGUMENT; nothing is left running on failure.
  static StatusOr<std::unique_ptr<ServerApp>> Start(const ServerConfig& config);
  ~ServerApp();

  int grpc_port() const;
  int metrics_port() const;
  // Blocks until every model that is loading is READY or FAILED (tests and
  // --wait-for-models).
  void WaitForModels();

  // Health goes NOT_SERVING first, then the server stops accepting and gives
  // in-flight calls up to server.drain_timeout_seconds. Idempotent.
  void Shutdown();

 // Internal; public so that file-local helpers can name it.
  struct State;

 private:
  explicit ServerApp(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace rainserve
