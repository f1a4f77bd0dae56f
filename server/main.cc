// rainserve-server: the RainServe gRPC service.
//
//   rainserve-server --config configs/server.yaml [--listen HOST:PORT]
//                    [--metrics-listen HOST:PORT] [--port-file PATH]
//                    [--log-level LEVEL] [--help] [--version]
//
// kUsage below (--help) explains every flag.
// Exits 0 after a graceful shutdown on SIGTERM/SIGINT; non-zero with a message
// on stderr when the configuration is invalid or a port cannot be bound. A
// second SIGTERM/SIGINT during the drain stops the process at once with exit
// code 128 + that signal's number (143 for SIGTERM, 130 for SIGINT).
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "server/config.h"
#include "common/logging.h"
#include "server/build_info.h"
#include "server/server_app.h"

namespace {

constexpr char kUsage[] =
    "usage: rainserve-server [--config FILE] [--listen HOST:PORT] [--metrics-listen HOST:PORT]\n"
    "                        [--port-file FILE] [--log-level LEVEL] [--help] [--version]\n"
    "\n"
    "Serves the RainServe gRPC API (rainserve.v1.Generation and Models, health,\n"
    "reflection) and Prometheus metrics, with the models of the config file.\n"
    "\n"
    "  --config FILE          server YAML: addresses, queue, security, models\n"
    "                         (default configs/server.yaml; docs/configuration.md)\n"
    "  --listen HOST:PORT     gRPC address; overrides server.listen_address\n"
    "                         (port 0 picks a free port)\n"
    "  --metrics-listen HOST:PORT\n"
    "                         Prometheus address (GET /metrics); overrides\n"
    "                         server.metrics_address (port 0 picks a free port)\n"
    "  --port-file FILE       once serving, write {\"grpc_port\": N, \"metrics_port\": M}\n"
    "                         there (atomically), for scripts that start on port 0\n"
    "  --log-level LEVEL      debug, info, warning or error; overrides server.log_level\n"
    "  --help                 print this and exit 0\n"
    "  --version              print the version and git commit and exit 0\n"
    "\n"
    "SIGTERM or SIGINT drains: health turns NOT_SERVING, new jobs are refused, running\n"
    "jobs get up to server.drain_timeout_seconds, then the server exits 0. Exit code 2:\n"
    "a bad flag, an invalid config or an address that cannot be bound (message on stderr).\n";

struct Flags {
  std::string config = "configs/server.yaml";
  std::string listen, metrics_listen, port_file, log_level;
};

bool ParseFlags(int argc, char** argv, Flags* flags) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= argc) return false;
      *out = argv[++i];
      return true;
    };
    bool ok = true;
    if (arg == "--config") ok = value(&flags->config);
    else if (arg == "--listen") ok = value(&flags->listen);
    else if (arg == "--metrics-listen") ok = value(&flags->metrics_listen);
    else if (arg == "--port-file") ok = value(&flags->port_file);
    else if (arg == "--log-level") ok = value(&flags->log_level);
    else if (arg == "--help" || arg == "-h") { std::fputs(kUsage, stdout); std::exit(0); }
    else if (arg == "--version") {
      std::printf("rainserve-server %s (%s, CUDA %s)\n", rainserve::kVersion, rainserve::kGitSha,
                  rainserve::kCudaVersion);
      std::exit(0);
    }
    else ok = false;
    if (!ok) {
      std::fprintf(stderr, "rainserve-server: bad argument '%s'\n%s", arg.c_str(), kUsage);
      return false;
    }
  }
  return true;
}

bool WritePortFile(const std::string& path, int grpc_port, int metrics_port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << "{\"grpc_port\": " << grpc_port << ", \"metrics_port\": " << metrics_port << "}\n";
    if (!out) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

int Fail(const rainserve::Status& s) {
  std::fprintf(stderr, "rainserve-server: %s\n", s.ToString().c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  if (!ParseFlags(argc, argv, &flags)) return 2;

  // Block the shutdown signals in every thread (gRPC's included); the main
  // thread takes them synchronously with sigwait below.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto config = rainserve::LoadServerConfig(flags.config);
  if (!config.ok()) return Fail(config.status());
  rainserve::ServerSection& server = config->server;
  if (!flags.listen.empty()) server.listen_address = flags.listen;
  if (!flags.metrics_listen.empty()) server.metrics_address = flags.metrics_listen;
  if (!flags.log_level.empty()) server.log_level = flags.log_level;
  if (auto s = rainserve::ValidateHostPort("--listen", server.listen_address); !s.ok()) return Fail(s);
  if (auto s = rainserve::ValidateHostPort("--metrics-listen", server.metrics_address); !s.ok()) {
    return Fail(s);
  }
  auto level = rainserve::ParseLogLevel(server.log_level);
  if (!level.ok()) return Fail(level.status());
  rainserve::SetLogLevel(*level);

  auto app = rainserve::ServerApp::Start(*config);
  if (!app.ok()) return Fail(app.status());
  if (!flags.port_file.empty() &&
      !WritePortFile(flags.port_file, (*app)->grpc_port(), (*app)->metrics_port())) {
    (*app)->Shutdown();
    return Fail(rainserve::UnavailableError("cannot write port file '" + flags.port_file + "'"));
  }

  int received = 0;
  sigwait(&signals, &received);
  RAINSERVE_LOG(INFO) << "received " << strsignal(received) << ", shutting down";
  // The drain runs on its own thread so that this one can take a second signal.
  std::atomic<bool> stopped{false};
  std::thread drain([&] {
    (*app)->Shutdown();
    stopped = true;
  });
  const timespec poll = {0, 50 * 1000 * 1000};
  while (!stopped) {
    const int again = sigtimedwait(&signals, nullptr, &poll);
    if (again > 0) {
      RAINSERVE_LOG(WARNING) << "received " << strsignal(again)
                             << " during the drain, stopping now without waiting for jobs";
      _exit(128 + again);
    }
  }
  drain.join();
  return 0;
}
