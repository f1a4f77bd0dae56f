#include "tests/server/test_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>
#include <vector>

namespace rainserve::testing {
namespace {

std::string MakeTempDir() {
  char tmpl[] = "/tmp/rainserve-test-XXXXXX";
  const char* dir = mkdtemp(tmpl);
  return dir ? dir : "/tmp";
}

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

pid_t Spawn(const std::vector<std::string>& args, const std::string& stderr_path) {
  const pid_t pid = fork();
  if (pid != 0) return pid;
  const int fd = open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0) {
    dup2(fd, 2);
    dup2(fd, 1);
  }
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  execv(argv[0], argv.data());
  _exit(127);
}

int WaitFor(pid_t pid, double timeout_seconds) {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration<double>(timeout_seconds);
  for (;;) {
    int status = 0;
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0 || std::chrono::steady_clock::now() > deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace

ServerProcess::ServerProcess(const std::string& config_yaml) : dir_(MakeTempDir()) {
  WriteText(dir_ + "/server.yaml", config_yaml);
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

std::string ServerProcess::Stderr() const { return ReadText(dir_ + "/stderr.log"); }

bool ServerProcess::Start(double timeout_seconds) {
  const std::string port_file = dir_ + "/ports.json";
  pid_ = Spawn({RAINSERVE_SERVER_BINARY, "--config", dir_ + "/server.yaml", "--listen",
                "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--port-file", port_file},
               dir_ + "/stderr.log");
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration<double>(timeout_seconds);
  const std::regex ports(R"re("grpc_port": (\d+), "metrics_port": (\d+))re");
  while (std::chrono::steady_clock::now() < deadline) {
    std::smatch m;
    const std::string text = ReadText(port_file);
    if (std::regex_search(text, m, ports)) {
      grpc_port_ = std::stoi(m[1]);
      metrics_port_ = std::stoi(m[2]);
      return true;
    }
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      error_ = "server exited early (status " + std::to_string(status) + "): " + Stderr();
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  error_ = "no port file after " + std::to_string(timeout_seconds) + " s: " + Stderr();
  return false;
}

int ServerProcess::Stop(int signal, double timeout_seconds) {
  if (pid_ <= 0) return -1;
  kill(pid_, signal);
  return Wait(timeout_seconds);
}

int ServerProcess::Wait(double timeout_seconds) {
  if (pid_ <= 0) return -1;
  const int status = WaitFor(pid_, timeout_seconds);
  if (status != -1) pid_ = -1;
  return status;
}

int RunServerToExit(const std::string& config_yaml, const std::string& extra_args,
                    std::string* stderr_text) {
  const std::string dir = MakeTempDir();
  WriteText(dir + "/server.yaml", config_yaml);
  std::vector<std::string> args = {RAINSERVE_SERVER_BINARY, "--config", dir + "/server.yaml"};
  std::istringstream extra(extra_args);
  for (std::string a; extra >> a;) args.push_back(a);
  const pid_t pid = Spawn(args, dir + "/stderr.log");
  int status = WaitFor(pid, 30);
  if (status == -1) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  *stderr_text = ReadText(dir + "/stderr.log");
  return (status != -1 && WIFEXITED(status)) ? WEXITSTATUS(status) : -1;
}

std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[4096];
      ssize_t n;
      while ((n = read(fd, buf, sizeof(buf))) > 0) response.append(buf, static_cast<size_t>(n));
    }
  }
  close(fd);
  return response;
}

}  // namespace rainserve::testing
