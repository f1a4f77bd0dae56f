// MetricsHttpServer: serves a prometheus-cpp Registry in the Prometheus text
// format at GET /metrics over plain HTTP/1.1, on its own port and thread.
//
// Why not prometheus-cpp's Exposer: it runs civetweb, whose threads get a
// fixed 100 KiB stack; with LibTorch in the process (large static TLS) glibc
// refuses to create them (pthread_create: EINVAL) and the exposer fails to
// start. This server uses std::thread's default stack.
//
// One thread multiplexes every connection with poll() on non-blocking
// sockets, so a client that sends its request (or reads its response) slowly
// delays nobody else. Each connection has a whole-request deadline, from
// accept to the last byte of the response (a trickle of bytes does not extend
// it); past it the connection gets 408 and is closed. At most
// `max_connections` are open at once: a new connection past the cap closes
// the oldest one still sending its request (or, if none is, the oldest one),
// so idle connections cannot lock scrapes out. One request per connection
// (Connection: close). Requests other than GET/HEAD of /metrics and / get
// 404/405.
#pragma once

#include <prometheus/registry.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"

namespace rainserve {

struct MetricsHttpOptions {
  // From accept to the last byte of the response.
  double request_timeout_seconds = 5;
  // Connections open at once (idle, reading or writing).
  int max_connections = 64;
};

class MetricsHttpServer {
 public:
  // Binds `address` ("host:port", port 0 = any free) and starts serving.
  // `before_scrape` (optional) runs on the server's thread before every
  // /metrics response, for gauges read on demand (device memory).
  static StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& address, std::shared_ptr<prometheus::Registry> registry,
      std::function<void()> before_scrape = nullptr, MetricsHttpOptions options = {});
  ~MetricsHttpServer();  // stops, closes every connection and joins

  int port() const { return port_; }

 private:
  struct Connection;

  MetricsHttpServer(int fd, int port, std::shared_ptr<prometheus::Registry> registry,
                    std::function<void()> before_scrape, MetricsHttpOptions options);
  void Loop();
  void AcceptPending(std::vector<Connection>* connections);
  // Reads or writes what the socket allows; false once the connection is done.
  bool Advance(Connection* c);
  std::string Respond(const std::string& head);

  int listen_fd_;
  int port_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::function<void()> before_scrape_;
  MetricsHttpOptions options_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace rainserve
