#include "server/metrics_http.h"

#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <prometheus/text_serializer.h>
#include <sstream>

#include "common/logging.h"

namespace rainserve {
namespace {

using Clock = std::chrono::steady_clock;

// Sends what the socket takes now: the bytes sent (maybe 0), or -1 when the
// peer is gone.
ssize_t WriteSome(int fd, const char* data, size_t size) {
  if (size == 0) return 0;
  const ssize_t n = send(fd, data, size, MSG_NOSIGNAL | MSG_DONTWAIT);
  if (n >= 0) return n;
  return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -1;
}

std::string Response(int code, const char* reason, const std::string& type,
                     const std::string& body) {
  std::ostringstream s;
  s << "HTTP/1.1 " << code << ' ' << reason << "\r\n"
    << "Content-Type: " << type << "\r\n"
    << "Content-Length: " << body.size() << "\r\n"
    << "Connection: close\r\n\r\n"
    << body;
  return s.str();
}

}  // namespace

StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& address, std::shared_ptr<prometheus::Registry> registry,
    std::function<void()> before_scrape, MetricsHttpOptions options) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos) return InvalidArgumentError("bad metrics address '" + address + "'");
  std::string host = address.substr(0, colon);
  const std::string port = address.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  if (const int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found);
      rc != 0) {
    return UnavailableError("cannot resolve metrics address '" + address + "': " + gai_strerror(rc));
  }
  std::string last_error = "no usable address";
  for (addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
    const int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 64) == 0) {
      sockaddr_storage bound{};
      socklen_t len = sizeof(bound);
      getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
      const int bound_port = bound.ss_family == AF_INET6
                                 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                 : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
      freeaddrinfo(found);
      return std::unique_ptr<MetricsHttpServer>(
          new MetricsHttpServer(fd, bound_port, std::move(registry), std::move(before_scrape),
                                options));
    }
    last_error = std::strerror(errno);
    close(fd);
  }
  freeaddrinfo(found);
  return UnavailableError("cannot listen on " + address + ": " + last_error);
}

MetricsHttpServer::MetricsHttpServer(int fd, int port, std::shared_ptr<prometheus::Registry> registry,
                                     std::function<void()> before_scrape,
                                     MetricsHttpOptions options)
    : listen_fd_(fd), port_(port), registry_(std::move(registry)),
      before_scrape_(std::move(before_scrape)), options_(options) {
  if (options_.max_connections < 1) options_.max_connections = 1;
  thread_ = std::thread([this] { Loop(); });
}

MetricsHttpServer::~MetricsHttpServer() {
  stop_.store(true);
  thread_.join();
  close(listen_fd_);
}

// One client connection: the request head as it arrives, then the response
// as it leaves.
struct MetricsHttpServer::Connection {
  int fd = -1;
  Clock::time_point deadline;
  std::string in;
  std::string out;   // non-empty once the request is answered
  size_t sent = 0;
};

void MetricsHttpServer::Loop() {
  std::vector<Connection> connections;  // in accept order: oldest first
  std::vector<pollfd> fds;
  while (!stop_.load()) {
    fds.assign(1, pollfd{listen_fd_, POLLIN, 0});
    // Wake up regularly to notice stop_, and at the first deadline.
    auto wait = std::chrono::milliseconds(200);
    const Clock::time_point now = Clock::now();
    for (const Connection& c : connections) {
      fds.push_back(pollfd{c.fd, static_cast<short>(c.out.empty() ? POLLIN : POLLOUT), 0});
      wait = std::min(wait, std::chrono::duration_cast<std::chrono::milliseconds>(
                                c.deadline - now + std::chrono::milliseconds(1)));
    }
    if (poll(fds.data(), fds.size(), static_cast<int>(std::max<int64_t>(0, wait.count()))) < 0 &&
        errno != EINTR) {
      RAINSERVE_LOG(ERROR) << "metrics: poll failed: " << std::strerror(errno);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    // fds[i + 1] belongs to connections[i]; connections accepted below come after.
    const Clock::time_point after = Clock::now();
    std::vector<Connection> open;
    for (size_t i = 0; i < connections.size(); ++i) {
      Connection& c = connections[i];
      bool keep = true;
      if (fds[i + 1].revents != 0) keep = Advance(&c);
      if (keep && after >= c.deadline) {
        if (c.out.empty()) {
          const std::string timeout = Response(408, "Request Timeout", "text/plain", "timeout\n");
          WriteSome(c.fd, timeout.data(), timeout.size());
        }
        keep = false;
      }
      if (keep) {
        open.push_back(std::move(c));
      } else {
        close(c.fd);
      }
    }
    connections = std::move(open);
    if (fds[0].revents & POLLIN) AcceptPending(&connections);
  }
  for (const Connection& c : connections) close(c.fd);
}

void MetricsHttpServer::AcceptPending(std::vector<Connection>* connections) {
  // Bounded, so that a flood of connections cannot starve the ones open.
  for (int i = 0; i < options_.max_connections; ++i) {
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return;  // EAGAIN: none left (or a transient error; poll reports again)
    if (static_cast<int>(connections->size()) >= options_.max_connections) {
      // Make room: the oldest connection still sending its request, else the oldest.
      auto victim = std::find_if(connections->begin(), connections->end(),
                                 [](const Connection& c) { return c.out.empty(); });
      if (victim == connections->end()) victim = connections->begin();
      close(victim->fd);
      connections->erase(victim);
    }
    Connection c;
    c.fd = fd;
    c.deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                    std::chrono::duration<double>(options_.request_timeout_seconds));
    connections->push_back(std::move(c));
    // Most requests arrive with the connection: answer them now.
    if (!Advance(&connections->back())) {
      close(fd);
      connections->pop_back();
    }
  }
}

bool MetricsHttpServer::Advance(Connection* c) {
  constexpr size_t kMaxHead = 16384;
  if (c->out.empty()) {
    char buf[4096];
    for (;;) {
      const ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
      if (n == 0) return false;
      if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
      c->in.append(buf, static_cast<size_t>(n));
      const bool complete = c->in.find("\r\n\r\n") != std::string::npos ||
                            c->in.find("\n\n") != std::string::npos;
      if (complete) {
        c->out = Respond(c->in);
        break;
      }
      if (c->in.size() > kMaxHead) {
        c->out = Response(431, "Request Header Fields Too Large", "text/plain", "too large\n");
        break;
      }
    }
  }
  const ssize_t n = WriteSome(c->fd, c->out.data() + c->sent, c->out.size() - c->sent);
  if (n < 0) return false;
  c->sent += static_cast<size_t>(n);
  return c->sent < c->out.size();
}

std::string MetricsHttpServer::Respond(const std::string& head) {
  std::istringstream line(head.substr(0, head.find('\n')));
  std::string method, target;
  line >> method >> target;
  const std::string path = target.substr(0, target.find('?'));
  if (method != "GET" && method != "HEAD") {
    return Response(405, "Method Not Allowed", "text/plain", "use GET\n");
  }
  if (path == "/metrics") {
    if (before_scrape_) before_scrape_();
    const std::string body = prometheus::TextSerializer().Serialize(registry_->Collect());
    return Response(200, "OK", "text/plain; version=0.0.4; charset=utf-8",
                    method == "HEAD" ? std::string() : body);
  }
  if (path == "/") return Response(200, "OK", "text/plain", "rainserve metrics: GET /metrics\n");
  return Response(404, "Not Found", "text/plain", "not found\n");
}

}  // namespace rainserve
