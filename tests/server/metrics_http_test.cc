// MetricsHttpServer against slow and idle clients: a client trickling its
// request one byte at a time delays no scrape, the whole-request deadline
// closes it however steadily it trickles, and the connection cap closes the
// oldest idle connection so that a scrape still gets in.
#include "server/metrics_http.h"

#include <prometheus/gauge.h>

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <prometheus/gauge.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace rainserve {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A client socket connected to the server, with a 5 s receive timeout so that
// a server that never answers fails the test instead of hanging it.
int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  return fd;
}

// Waits up to `seconds` for the server to close `fd` (EOF or reset after any
// response bytes); true if it did.
bool ClosedWithin(int fd, double seconds) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
  while (Clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 20) <= 0) continue;
    char buf[512];
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) return true;
  }
  return false;
}

// GET `path` (HTTP/1.0); the whole response.
std::string HttpGet(int port, const std::string& path) {
  const int fd = Connect(port);
  const std::string request = "GET " + path + " HTTP/1.0\r\nHost: x\r\n\r\n";
  std::string response;
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
      static_cast<ssize_t>(request.size())) {
    char buf[4096];
    for (ssize_t n; (n = recv(fd, buf, sizeof(buf), 0)) > 0;) {
      response.append(buf, static_cast<size_t>(n));
    }
  }
  close(fd);
  return response;
}

// Sends the request one byte every `interval` until the server closes the
// connection or `stop` is set; returns the seconds from the first byte until
// the server closed it (or -1 if it never did).
double Trickle(int port, std::chrono::milliseconds interval, const std::atomic<bool>& stop) {
  const int fd = Connect(port);
  const std::string request = "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Padding: " +
                              std::string(4096, 'a') + "\r\n\r\n";
  const Clock::time_point start = Clock::now();
  double closed_after = -1;
  for (size_t i = 0; i < request.size() && !stop.load(); ++i) {
    if (send(fd, &request[i], 1, MSG_NOSIGNAL) != 1 ||
        ClosedWithin(fd, std::chrono::duration<double>(interval).count())) {
      closed_after = SecondsSince(start);
      break;
    }
  }
  close(fd);
  return closed_after;
}

class MetricsHttpTest : public ::testing::Test {
 protected:
  void Start(MetricsHttpOptions options) {
    auto registry = std::make_shared<prometheus::Registry>();
    prometheus::BuildGauge().Name("rainserve_test_gauge").Help("test").Register(*registry).Add({})
        .Set(1);
    auto server = MetricsHttpServer::Start("127.0.0.1:0", registry, nullptr, options);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
  }

  // A scrape and how long it took.
  std::string Scrape(double* seconds) {
    const Clock::time_point start = Clock::now();
    const std::string response = HttpGet(server_->port(), "/metrics");
    *seconds = SecondsSince(start);
    return response;
  }

  std::unique_ptr<MetricsHttpServer> server_;
};

TEST_F(MetricsHttpTest, ScrapeAnswersWithinOneSecondWhileAClientTrickles) {
  Start({});
  std::atomic<bool> stop{false};
  std::thread trickler([&] { Trickle(server_->port(), std::chrono::milliseconds(300), stop); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the trickle has begun
  for (int i = 0; i < 3; ++i) {
    double seconds = 0;
    const std::string response = Scrape(&seconds);
    EXPECT_NE(response.find("200 OK"), std::string::npos) << response;
    EXPECT_NE(response.find("rainserve_test_gauge 1"), std::string::npos) << response;
    EXPECT_LT(seconds, 1.0) << "scrape " << i;
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  stop.store(true);
  trickler.join();
}

TEST_F(MetricsHttpTest, WholeRequestDeadlineClosesASteadyTrickle) {
  MetricsHttpOptions options;
  options.request_timeout_seconds = 1;
  Start(options);
  std::atomic<bool> stop{false};
  // A byte every 100 ms never leaves a read idle for long: only a deadline
  // over the whole request ends it.
  const double closed_after = Trickle(server_->port(), std::chrono::milliseconds(100), stop);
  EXPECT_GE(closed_after, 0.9);
  EXPECT_LT(closed_after, 2.5);
}

TEST_F(MetricsHttpTest, ConnectionCapClosesTheOldestIdleConnectionAndAScrapeGetsIn) {
  MetricsHttpOptions options;
  options.max_connections = 2;
  options.request_timeout_seconds = 30;
  Start(options);
  const int first = Connect(server_->port());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const int second = Connect(server_->port());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const int third = Connect(server_->port());  // over the cap: `first` goes
  EXPECT_TRUE(ClosedWithin(first, 1.0));
  EXPECT_FALSE(ClosedWithin(second, 0.2));
  EXPECT_FALSE(ClosedWithin(third, 0.2));

  double seconds = 0;
  const std::string response = Scrape(&seconds);  // over the cap again: `second` goes
  EXPECT_NE(response.find("200 OK"), std::string::npos) << response;
  EXPECT_LT(seconds, 1.0);
  EXPECT_TRUE(ClosedWithin(second, 1.0));
  EXPECT_FALSE(ClosedWithin(third, 0.2));
  for (int fd : {first, second, third}) close(fd);
}

TEST_F(MetricsHttpTest, UnknownPathIs404AndPostIs405) {
  Start({});
  EXPECT_NE(HttpGet(server_->port(), "/nope").find("404 Not Found"), std::string::npos);
  const int fd = Connect(server_->port());
  const std::string post = "POST /metrics HTTP/1.0\r\n\r\n";
  ASSERT_EQ(send(fd, post.data(), post.size(), MSG_NOSIGNAL), static_cast<ssize_t>(post.size()));
  char buf[256] = {};
  ASSERT_GT(recv(fd, buf, sizeof(buf) - 1, 0), 0);
  EXPECT_NE(std::string(buf).find("405"), std::string::npos) << buf;
  close(fd);
}

}  // namespace
}  // namespace rainserve
