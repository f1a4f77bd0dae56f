// Runs rainserve-server as a child process for tests: writes a config to a
// temporary folder, starts the binary on ephemeral ports, reads the port file,
// and stops it with a signal.
#pragma once

#include <sys/types.h>

#include <string>

#include "tests/test_files.h"  // SourceDir(): models/wan-tiny, configs/

namespace rainserve::testing {

class ServerProcess {
 public:
  // `config_yaml` is written to <tmp>/server.yaml. Extra flags are appended.
  explicit ServerProcess(const std::string& config_yaml);
  ~ServerProcess();  // SIGKILLs the child if still running

  // Starts the binary; false (with a message in error()) if it exits early or
  // writes no port file within `timeout_seconds`.
  bool Start(double timeout_seconds = 30);
  // Sends `signal` and waits; returns the exit status as from waitpid (or -1 on timeout).
  int Stop(int signal, double timeout_seconds = 30);
  // Waits for the child to exit by itself; the raw waitpid status or -1 on timeout.
  int Wait(double timeout_seconds);

  pid_t pid() const { return pid_; }  // -1 when not running
  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }
  std::string grpc_target() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  const std::string& dir() const { return dir_; }
  const std::string& error() const { return error_; }
  // Everything the child wrote to stderr so far.
  std::string Stderr() const;

 private:
  std::string dir_;
  pid_t pid_ = -1;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
  std::string error_;
};

// Runs the server binary with `args` and `config_yaml` (written to
// <tmp>/server.yaml, passed as --config) to completion; returns the exit code
// and collects stderr. For start-up failures.
int RunServerToExit(const std::string& config_yaml, const std::string& extra_args,
                    std::string* stderr_text);

// Minimal HTTP/1.0 GET on 127.0.0.1:port; returns the whole response (headers
// and body), or "" on connection failure.
std::string HttpGet(int port, const std::string& path);

}  // namespace rainserve::testing
