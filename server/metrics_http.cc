#include "server/metrics_http.h"

#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <prometheus/text_serializer.h>
#include <sstream>

#include "common/logging.h"

namespace rainserve {
namespace {

bool WriteAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
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
    std::function<void()> before_scrape) {
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
    const int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 16) == 0) {
      sockaddr_storage bound{};
      socklen_t len = sizeof(bound);
      getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
      const int bound_port = bound.ss_family == AF_INET6
                                 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                 : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
      freeaddrinfo(found);
      return std::unique_ptr<MetricsHttpServer>(
          new MetricsHttpServer(fd, bound_port, std::move(registry), std::move(before_scrape)));
    }
    last_error = std::strerror(errno);
    close(fd);
  }
  freeaddrinfo(found);
  return UnavailableError("cannot listen on " + address + ": " + last_error);
}

MetricsHttpServer::MetricsHttpServer(int fd, int port, std::shared_ptr<prometheus::Registry> registry,
                                     std::function<void()> before_scrape)
    : listen_fd_(fd), port_(port), registry_(std::move(registry)),
      before_scrape_(std::move(before_scrape)) {
  thread_ = std::thread([this] { Loop(); });
}

MetricsHttpServer::~MetricsHttpServer() {
  stop_.store(true);
  thread_.join();
  close(listen_fd_);
}

void MetricsHttpServer::Loop() {
  while (!stop_.load()) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) continue;  // wake up regularly to notice stop_
    const int client = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    timeval timeout{5, 0};
    setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    Serve(client);
    close(client);
  }
}

void MetricsHttpServer::Serve(int client) {
  // Read the request head (we ignore any body).
  std::string head;
  char buf[1024];
  while (head.find("\r\n\r\n") == std::string::npos && head.size() < 16384) {
    const ssize_t n = recv(client, buf, sizeof(buf), 0);
    if (n <= 0) return;
    head.append(buf, static_cast<size_t>(n));
    if (head.find("\n\n") != std::string::npos) break;
  }
  std::istringstream line(head.substr(0, head.find('\n')));
  std::string method, target;
  line >> method >> target;
  const std::string path = target.substr(0, target.find('?'));
  if (method != "GET" && method != "HEAD") {
    WriteAll(client, Response(405, "Method Not Allowed", "text/plain", "use GET\n"));
    return;
  }
  if (path == "/metrics") {
    if (before_scrape_) before_scrape_();
    const std::string body = prometheus::TextSerializer().Serialize(registry_->Collect());
    WriteAll(client, Response(200, "OK", "text/plain; version=0.0.4; charset=utf-8",
                              method == "HEAD" ? std::string() : body));
  } else if (path == "/") {
    WriteAll(client, Response(200, "OK", "text/plain", "rainserve metrics: GET /metrics\n"));
  } else {
    WriteAll(client, Response(404, "Not Found", "text/plain", "not found\n"));
  }
}

}  // namespace rainserve
