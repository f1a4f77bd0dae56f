// MetricsHttpServer: serves a prometheus-cpp Registry in the Prometheus text
// format at GET /metrics over plain HTTP/1.1, on its own port and thread.
//
// Why not prometheus-cpp's Exposer: it runs civetweb, whose threads get a
// fixed 100 KiB stack; with LibTorch in the process (large static TLS) glibc
// refuses to create them (pthread_create: EINVAL) and the exposer fails to
// start. This server uses std::thread's default stack.
//
// One connection is served at a time (scrapes are small and rare); each
// connection gets a 5 s I/O timeout, so a stuck client cannot block scrapes
// for long. Requests other than GET /metrics and GET / get 404/405.
#pragma once

#include <prometheus/registry.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "common/status.h"

namespace rainserve {

class MetricsHttpServer {
 public:
  // Binds `address` ("host:port", port 0 = any free) and starts serving.
  // `before_scrape` (optional) runs on the server's thread before every
  // /metrics response, for gauges read on demand (device memory).
  static StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& address, std::shared_ptr<prometheus::Registry> registry,
      std::function<void()> before_scrape = nullptr);
  ~MetricsHttpServer();  // stops and joins

  int port() const { return port_; }

 private:
  MetricsHttpServer(int fd, int port, std::shared_ptr<prometheus::Registry> registry,
                    std::function<void()> before_scrape);
  void Loop();
  void Serve(int client);

  int listen_fd_;
  int port_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::function<void()> before_scrape_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace rainserve
