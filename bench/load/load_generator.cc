// load_generator: a closed-loop load test for rainserve-server. N client
// threads send M requests in total and check how every one of them ends.
//
//   load_generator (--target HOST:PORT | --spawn SERVER_BINARY --config FILE)
//       [--requests 2000] [--concurrency 24] [--model wan-tiny]
//       [--video-rate 0.4] [--cancel-rate 0.05] [--detached-rate 0.1]
//       [--invalid-rate 0.02] [--sizes 64,96,128] [--max-steps 3]
//       [--deadline 120] [--reject-backoff 1.0] [--warmup 0.1] [--seed 1]
//       [--out bench/results/load_cpu.json]
//
// The request mix, drawn per request from --seed: images (1 frame) and videos
// (5 or 9 frames, --video-rate) at the --sizes, 1..--max-steps steps, random
// sparsity in [0, 0.9) and sink 0/1; of these, --cancel-rate are cancelled by
// the client after their first Progress event, --detached-rate go through
// Submit + Watch, and --invalid-rate are invalid (expect INVALID_ARGUMENT).
// A client that gets RESOURCE_EXHAUSTED (queue full) waits --reject-backoff
// seconds (times 0.5..1.5) before its next request, as the retry hint asks.
//
// Every request has a --deadline; a request ends "defined" when its final
// code is one its kind may end with and its event stream is consistent
// (Accepted first, seq increasing, artifacts complete, the final event
// matching the status). A deadline that passes is a hang. A cancelled job
// must reach a final state on the server (polled with GetJob).
//
// --spawn starts the server with --port-file on ephemeral ports, waits for
// the model, samples its RSS (/proc/<pid>/status) after the first --warmup
// fraction of requests and at the end, then stops it with SIGTERM and
// expects exit code 0.
//
// Exit code: 0 when every request ended defined and the server (if spawned)
// exited 0; 1 otherwise; 2 for bad usage or a server that does not start.
//
// Why one channel per client thread: each thread stands for an independent
// client with its own TCP connection (GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, or
// gRPC would share one subchannel between channels of equal arguments), so
// the server sees N connections as in production, and HTTP/2 flow control or
// a slow reader on one connection cannot stall the other clients.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.h"
#include "rainserve/v1/generation.grpc.pb.h"
#include "rainserve/v1/models.grpc.pb.h"

namespace {

namespace v1 = rainserve::v1;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string target, spawn, config, model = "wan-tiny", out;
  int requests = 2000;
  int concurrency = 24;
  double video_rate = 0.4, cancel_rate = 0.05, detached_rate = 0.1, invalid_rate = 0.02;
  std::vector<int> sizes = {64, 80, 96, 112, 128};
  int max_steps = 3;
  double deadline_seconds = 120;
  double reject_backoff_seconds = 1.0;
  double warmup = 0.1;
  uint64_t seed = 1;
};

[[noreturn]] void Usage(const std::string& why) {
  std::cerr << "load_generator: " << why
            << "\n(see the header of bench/load/load_generator.cc for the flags)\n";
  std::exit(2);
}

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) Usage(flag + " needs a value");
    const std::string value = argv[++i];
    try {
      if (flag == "--target") o.target = value;
      else if (flag == "--spawn") o.spawn = value;
      else if (flag == "--config") o.config = value;
      else if (flag == "--model") o.model = value;
      else if (flag == "--out") o.out = value;
      else if (flag == "--requests") o.requests = std::stoi(value);
      else if (flag == "--concurrency") o.concurrency = std::stoi(value);
      else if (flag == "--video-rate") o.video_rate = std::stod(value);
      else if (flag == "--cancel-rate") o.cancel_rate = std::stod(value);
      else if (flag == "--detached-rate") o.detached_rate = std::stod(value);
      else if (flag == "--invalid-rate") o.invalid_rate = std::stod(value);
      else if (flag == "--max-steps") o.max_steps = std::stoi(value);
      else if (flag == "--deadline") o.deadline_seconds = std::stod(value);
      else if (flag == "--reject-backoff") o.reject_backoff_seconds = std::stod(value);
      else if (flag == "--warmup") o.warmup = std::stod(value);
      else if (flag == "--seed") o.seed = std::stoull(value);
      else if (flag == "--sizes") {
        o.sizes.clear();
        for (const std::string& s : rainserve::bench::Split(value)) o.sizes.push_back(std::stoi(s));
      } else {
        Usage("unknown flag " + flag);
      }
    } catch (const std::logic_error&) {
      Usage(flag + ": bad value '" + value + "'");
    }
  }
  if (o.target.empty() == o.spawn.empty()) Usage("give exactly one of --target and --spawn");
  if (!o.spawn.empty() && o.config.empty()) Usage("--spawn needs --config");
  if (o.requests < 1 || o.concurrency < 1 || o.max_steps < 1 || o.sizes.empty()) {
    Usage("--requests, --concurrency, --max-steps and --sizes must be positive");
  }
  if (o.cancel_rate + o.detached_rate + o.invalid_rate > 1) Usage("the kind rates add up over 1");
  return o;
}

// ---------------------------------------------------------------- server

// Reads a "VmRSS:"-style line of /proc/<pid>/status, in KiB (0 if absent).
int64_t ProcStatusKib(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key + ":", 0) == 0) return std::stoll(line.substr(key.size() + 1));
  }
  return 0;
}

// The server as a child process on ephemeral ports. Who calls: main, once.
class SpawnedServer {
 public:
  // Starts `binary --config config` and waits for its port file; false (with
  // the server's log in error()) if it exits or writes none in 60 s.
  bool Start(const std::string& binary, const std::string& config) {
    char tmpl[] = "/tmp/rainserve-load-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) return Fail("cannot create a temporary folder");
    dir_ = tmpl;
    const std::string port_file = dir_ + "/ports.json", log = dir_ + "/server.log";
    const std::vector<std::string> args = {binary, "--config", config, "--listen", "127.0.0.1:0",
                                           "--metrics-listen", "127.0.0.1:0", "--port-file",
                                           port_file};
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the load generator
      if (FILE* f = std::freopen(log.c_str(), "w", stderr)) dup2(fileno(f), 1);
      std::vector<char*> argv;
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    while (Clock::now() < deadline) {
      std::ifstream in(port_file);
      if (in) {
        grpc_port_ = nlohmann::json::parse(in).at("grpc_port").get<int>();
        return true;
      }
      if (std::optional<int> status = Reap(0)) {
        return Fail("the server exited early (status " + std::to_string(*status) + ")");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return Fail("the server wrote no port file in 60 s");
  }

  // SIGTERM, then waits up to `timeout_seconds`; the exit code, or -1 if it
  // had to be killed or died from a signal.
  int Stop(double timeout_seconds) {
    if (exited_) return exit_code_;
    kill(pid_, SIGTERM);
    if (Reap(timeout_seconds)) return exit_code_;
    kill(pid_, SIGKILL);
    Reap(10);
    error_ = "the server did not exit within " + std::to_string(timeout_seconds) + " s of SIGTERM";
    return -1;
  }

  bool Running() { return !exited_ && !Reap(0); }
  pid_t pid() const { return pid_; }
  int grpc_port() const { return grpc_port_; }
  const std::string& error() const { return error_; }
  std::string LogTail() const {
    std::ifstream in(dir_ + "/server.log");
    std::stringstream s;
    s << in.rdbuf();
    const std::string text = s.str();
    return text.size() > 4000 ? text.substr(text.size() - 4000) : text;
  }

 private:
  bool Fail(const std::string& why) {
    error_ = why;
    return false;
  }

  // Waits up to `timeout_seconds` for the child; its raw status once it exited.
  std::optional<int> Reap(double timeout_seconds) {
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_seconds);
    for (;;) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        return status;
      }
      if (Clock::now() >= deadline) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  std::string dir_, error_;
  pid_t pid_ = -1;
  int grpc_port_ = 0;
  bool exited_ = false;
  int exit_code_ = -1;
};

// Polls Models.List until `model` is READY; false after `timeout_seconds`.
bool WaitForModel(const std::shared_ptr<grpc::Channel>& channel, const std::string& model,
                  double timeout_seconds) {
  auto stub = v1::Models::NewStub(channel);
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_seconds);
  while (Clock::now() < deadline) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::ListModelsRequest req;
    v1::ListModelsResponse resp;
    if (stub->List(&ctx, req, &resp).ok()) {
      for (const v1::ModelInfo& m : resp.models()) {
        if (m.name() == model && m.state() == v1::MODEL_STATE_READY) return true;
        if (m.name() == model && m.state() == v1::MODEL_STATE_FAILED) return false;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

// ---------------------------------------------------------------- requests

enum class Kind { kGenerate, kDetached, kCancel, kInvalid };

const char* KindName(Kind k) {
  switch (k) {
    case Kind::kGenerate: return "generate";
    case Kind::kDetached: return "detached";
    case Kind::kCancel: return "cancel";
    case Kind::kInvalid: return "invalid";
  }
  return "?";
}

// The codes a request of each kind may end with.
bool Allowed(Kind kind, grpc::StatusCode code) {
  using C = grpc::StatusCode;
  switch (kind) {
    case Kind::kGenerate:
    case Kind::kDetached: return code == C::OK || code == C::RESOURCE_EXHAUSTED;
    case Kind::kCancel:
      return code == C::CANCELLED || code == C::OK || code == C::RESOURCE_EXHAUSTED;
    case Kind::kInvalid: return code == C::INVALID_ARGUMENT;
  }
  return false;
}

struct Plan {
  Kind kind = Kind::kGenerate;
  bool video = false;
  v1::GenerateRequest request;
};

// Request `index` of the run: the same for the same --seed.
Plan MakePlan(const Options& o, int index) {
  static const char* kPrompts[] = {
      "a paper boat drifts down a rainy street", "a lighthouse at dusk", "waves on a pebble beach",
      "a fox in the snow", "neon signs reflected in puddles", "a kite over green hills"};
  std::mt19937_64 rng(o.seed * 1000003 + static_cast<uint64_t>(index));
  std::uniform_real_distribution<double> unit(0, 1);
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<uint64_t>(n)); };
  Plan p;
  const double k = unit(rng);
  p.kind = k < o.invalid_rate                   ? Kind::kInvalid
           : k < o.invalid_rate + o.cancel_rate ? Kind::kCancel
           : k < o.invalid_rate + o.cancel_rate + o.detached_rate ? Kind::kDetached
                                                                   : Kind::kGenerate;
  p.video = unit(rng) < o.video_rate;
  v1::GenerateRequest& r = p.request;
  r.set_model(o.model);
  r.set_prompt(kPrompts[pick(6)]);
  r.set_seed(rng() >> 11);
  r.set_width(static_cast<uint32_t>(o.sizes[pick(static_cast<int>(o.sizes.size()))]));
  r.set_height(static_cast<uint32_t>(o.sizes[pick(static_cast<int>(o.sizes.size()))]));
  r.set_num_frames(p.video ? (pick(2) == 0 ? 5 : 9) : 1);
  r.set_steps(static_cast<uint32_t>(1 + pick(o.max_steps)));
  r.mutable_sparse_attention()->set_sparsity(0.9 * unit(rng));
  r.mutable_sparse_attention()->set_sink_frames(static_cast<uint32_t>(pick(2)));
  r.set_detached(p.kind == Kind::kDetached);
  if (p.kind == Kind::kInvalid) {
    switch (pick(5)) {
      case 0: r.set_width(72); break;                                    // not a multiple of 16
      case 1: r.set_num_frames(4); break;                                // not 4k + 1
      case 2: r.mutable_sparse_attention()->set_sparsity(1.0); break;    // outside [0, 1)
      case 3: r.set_prompt(""); break;                                   // empty
      default: r.set_scheduler(static_cast<v1::Scheduler>(99)); break;   // unknown enum
    }
  }
  return p;
}

// How one request ended.
struct Outcome {
  Kind kind = Kind::kGenerate;
  bool video = false;
  grpc::StatusCode code = grpc::StatusCode::UNKNOWN;
  double seconds = 0;
  bool hung = false;  // our deadline passed
  std::string undefined;  // why the ending is not a defined one; empty if it is
};

// Checks one job's event stream (Generate or Watch from seq 0) as it arrives.
class StreamCheck {
 public:
  void On(const v1::GenerateEvent& e) {
    if (!error_.empty()) return;
    if (events_ == 0 && !(e.seq() == 1 && e.has_accepted())) {
      return Error("first event is not Accepted");
    }
    if (events_ > 0 && e.seq() <= last_seq_) return Error("seq does not increase");
    if (events_ > 0 && e.job_id() != job_id_) return Error("job_id changes within a stream");
    if (terminal_) return Error("an event after the final one");
    ++events_;
    last_seq_ = e.seq();
    job_id_ = e.job_id();
    if (e.has_progress()) ++progress_;
    if (e.has_artifact_header()) {
      const v1::ArtifactInfo& info = e.artifact_header().info();
      artifacts_[info.index()] = {info.size_bytes(), 0};
    }
    if (e.has_artifact_chunk()) {
      const v1::ArtifactChunk& c = e.artifact_chunk();
      auto it = artifacts_.find(c.index());
      if (it == artifacts_.end()) return Error("a chunk without a header");
      if (c.offset() != it->second.second) return Error("a chunk out of order");
      it->second.second += c.data().size();
    }
    if (e.has_completed()) {
      terminal_ = true;
      completed_ = true;
      if (static_cast<size_t>(e.completed().result().artifacts_size()) != artifacts_.size()) {
        return Error("Completed lists other artifacts than were sent");
      }
      for (const auto& [index, sizes] : artifacts_) {
        if (sizes.first != sizes.second || sizes.first == 0) return Error("an incomplete artifact");
      }
    }
    if (e.has_failed()) {
      terminal_ = true;
      failed_code_ = e.failed().code();
    }
  }

  // Why a stream that ended with `status` is not a defined ending ("" if it
  // is). `client_cancelled`: we cancelled the call, so it may stop anywhere.
  std::string Verdict(const grpc::Status& status, bool client_cancelled) const {
    if (!error_.empty()) return error_;
    if (status.ok()) return completed_ ? "" : "OK without a Completed event";
    if (client_cancelled && status.error_code() == grpc::StatusCode::CANCELLED) return "";
    if (events_ == 0) return "";  // refused before it was queued
    if (completed_) return "Completed, then status " + std::to_string(status.error_code());
    if (!terminal_) return "stream ended without a final event (status " +
                           std::to_string(status.error_code()) + ")";
    if (failed_code_ != status.error_code()) {
      return "Failed code " + std::to_string(failed_code_) + " but status " +
             std::to_string(status.error_code());
    }
    return "";
  }

  int progress() const { return progress_; }
  const std::string& job_id() const { return job_id_; }

 private:
  void Error(const std::string& why) { error_ = why; }

  int events_ = 0, progress_ = 0;
  uint64_t last_seq_ = 0;
  std::string job_id_, error_;
  bool terminal_ = false, completed_ = false;
  int failed_code_ = 0;
  std::map<uint32_t, std::pair<uint64_t, uint64_t>> artifacts_;  // index -> size, received
};

// One client: its own channel, runs requests one after another. Called from
// its own thread only.
class Client {
 public:
  Client(const std::shared_ptr<grpc::Channel>& channel, const Options& o)
      : stub_(v1::Generation::NewStub(channel)), o_(o) {}

  Outcome Run(const Plan& plan) {
    Outcome out;
    out.kind = plan.kind;
    out.video = plan.video;
    deadline_ = std::chrono::system_clock::now() +
                std::chrono::duration_cast<std::chrono::system_clock::duration>(
                    std::chrono::duration<double>(o_.deadline_seconds));
    const auto start = Clock::now();
    grpc::Status status = plan.kind == Kind::kDetached ? SubmitAndWatch(plan.request, &out)
                                                       : Generate(plan, &out);
    out.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    out.code = status.error_code();
    if (out.code == grpc::StatusCode::DEADLINE_EXCEEDED) {
      out.hung = true;
      if (out.undefined.empty()) {
        out.undefined = "no ending within the deadline: " + status.error_message();
      }
    }
    if (out.undefined.empty() && !Allowed(plan.kind, out.code)) {
      out.undefined = std::string("a ") + KindName(plan.kind) + " request ended with code " +
                      std::to_string(out.code) + ": " + status.error_message();
    }
    return out;
  }

 private:
  void Prepare(grpc::ClientContext* ctx) const { ctx->set_deadline(deadline_); }

  grpc::Status Generate(const Plan& plan, Outcome* out) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    StreamCheck check;
    bool cancelled = false;
    auto reader = stub_->Generate(&ctx, plan.request);
    v1::GenerateEvent e;
    while (reader->Read(&e)) {
      check.On(e);
      if (plan.kind == Kind::kCancel && !cancelled && e.has_progress()) {
        ctx.TryCancel();
        cancelled = true;
      }
    }
    const grpc::Status status = reader->Finish();
    out->undefined = check.Verdict(status, cancelled);
    if (out->undefined.empty() && cancelled) out->undefined = JobEnds(check.job_id());
    return status;
  }

  grpc::Status SubmitAndWatch(const v1::GenerateRequest& request, Outcome* out) {
    v1::SubmitResponse submitted;
    {
      grpc::ClientContext ctx;
      Prepare(&ctx);
      const grpc::Status s = stub_->Submit(&ctx, request, &submitted);
      if (!s.ok()) return s;
    }
    grpc::ClientContext ctx;
    Prepare(&ctx);
    v1::WatchRequest watch;
    watch.set_job_id(submitted.job().job_id());
    StreamCheck check;
    auto reader = stub_->Watch(&ctx, watch);
    v1::GenerateEvent e;
    while (reader->Read(&e)) check.On(e);
    const grpc::Status status = reader->Finish();
    out->undefined = check.Verdict(status, false);
    if (out->undefined.empty() && check.job_id() != submitted.job().job_id()) {
      out->undefined = "Watch streamed another job";
    }
    return status;
  }

  // After a client cancel: the job must reach a final state on the server
  // before the deadline (NOT_FOUND: finished and already evicted).
  std::string JobEnds(const std::string& job_id) {
    if (job_id.empty()) return "";
    for (;;) {
      grpc::ClientContext ctx;
      Prepare(&ctx);
      v1::GetJobRequest req;
      req.set_job_id(job_id);
      v1::Job job;
      const grpc::Status s = stub_->GetJob(&ctx, req, &job);
      if (s.error_code() == grpc::StatusCode::NOT_FOUND) return "";
      if (!s.ok()) return "GetJob after cancel: code " + std::to_string(s.error_code());
      if (job.state() != v1::JOB_STATE_QUEUED && job.state() != v1::JOB_STATE_RUNNING) return "";
      if (std::chrono::system_clock::now() >= deadline_) return "the cancelled job never ended";
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  std::unique_ptr<v1::Generation::Stub> stub_;
  const Options& o_;
  std::chrono::system_clock::time_point deadline_;
};

std::shared_ptr<grpc::Channel> Connect(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a connection of its own
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

// ---------------------------------------------------------------- report

// Nearest-rank percentile of sorted `v` (0 if empty).
double Percentile(const std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  const size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  return v[std::min(v.size() - 1, rank == 0 ? 0 : rank - 1)];
}

const char* CodeLabel(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    default: return "other";
  }
}

// Latency of the successful requests in `outcomes` that `select` picks, and
// the count of every final code among all it picks.
template <typename Select>
nlohmann::json Row(const std::string& name, const std::vector<Outcome>& outcomes, Select select) {
  std::vector<double> ok;
  std::map<std::string, int> codes = {{"OK", 0}, {"CANCELLED", 0}, {"RESOURCE_EXHAUSTED", 0},
                                      {"INVALID_ARGUMENT", 0}, {"DEADLINE_EXCEEDED", 0},
                                      {"other", 0}};
  int n = 0, undefined = 0;
  for (const Outcome& r : outcomes) {
    if (!select(r)) continue;
    ++n;
    ++codes[CodeLabel(r.code)];
    if (!r.undefined.empty()) ++undefined;
    if (r.code == grpc::StatusCode::OK && r.undefined.empty()) ok.push_back(r.seconds);
  }
  std::sort(ok.begin(), ok.end());
  return {{"requests", name}, {"count", n}, {"codes", codes}, {"undefined", undefined},
          {"ok_latency_p50_s", Percentile(ok, 50)}, {"ok_latency_p95_s", Percentile(ok, 95)},
          {"ok_latency_p99_s", Percentile(ok, 99)},
          {"ok_latency_max_s", ok.empty() ? 0.0 : ok.back()}};
}

void PrintRow(const nlohmann::json& row) {
  std::printf("%-9s %5d  p50 %6.2f s  p95 %6.2f s  p99 %6.2f s  ",
              row["requests"].get<std::string>().c_str(), row["count"].get<int>(),
              row["ok_latency_p50_s"].get<double>(), row["ok_latency_p95_s"].get<double>(),
              row["ok_latency_p99_s"].get<double>());
  for (const auto& [code, n] : row["codes"].items()) {
    if (n.get<int>() > 0) std::printf(" %s %d", code.c_str(), n.get<int>());
  }
  std::printf("\n");
}

// ---------------------------------------------------------------- run

// Starts the server if --spawn asks for one, then waits until the model is
// READY; the target to load, or nothing (after printing why).
std::optional<std::string> StartAndWaitForModel(const Options& o, SpawnedServer* server) {
  std::string target = o.target;
  if (!o.spawn.empty()) {
    if (!server->Start(o.spawn, o.config)) {
      std::cerr << "load_generator: " << server->error() << "\n" << server->LogTail();
      return std::nullopt;
    }
    target = "127.0.0.1:" + std::to_string(server->grpc_port());
  }
  if (!WaitForModel(Connect(target), o.model, 120)) {
    std::cerr << "load_generator: model '" << o.model << "' is not READY on " << target << "\n";
    if (!o.spawn.empty()) std::cerr << server->LogTail();
    return std::nullopt;
  }
  return target;
}

// What the client threads record.
struct LoadRun {
  std::vector<Outcome> outcomes;  // per request
  double seconds = 0;             // wall time of the whole load
  int64_t rss_warmup_kib = 0;     // the spawned server's RSS after the warm-up requests
};

// The load: o.concurrency client threads take the o.requests requests in
// turn; progress and undefined endings go to stderr as they happen.
LoadRun RunClients(const Options& o, const std::string& target, const SpawnedServer& server,
                   int warmup_count) {
  std::atomic<int> next{0}, done{0};
  std::atomic<int64_t> rss_warmup_kib{0};
  std::mutex mu;
  std::vector<Outcome> outcomes(static_cast<size_t>(o.requests));
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < o.concurrency; ++t) {
    threads.emplace_back([&, t] {
      Client client(Connect(target), o);
      std::mt19937_64 rng(o.seed + 7919 * static_cast<uint64_t>(t));
      std::uniform_real_distribution<double> jitter(0.5, 1.5);
      for (int i; (i = next.fetch_add(1)) < o.requests;) {
        const Outcome r = client.Run(MakePlan(o, i));
        outcomes[static_cast<size_t>(i)] = r;
        const int n = done.fetch_add(1) + 1;
        if (n == warmup_count && server.pid() > 0) {
          rss_warmup_kib = ProcStatusKib(server.pid(), "VmRSS");
        }
        if (n % std::max(1, o.requests / 10) == 0 || !r.undefined.empty()) {
          std::lock_guard<std::mutex> lock(mu);
          std::cerr << "[" << n << "/" << o.requests << "] "
                    << std::chrono::duration<double>(Clock::now() - start).count() << " s";
          if (!r.undefined.empty()) std::cerr << "  request " << i << " UNDEFINED: " << r.undefined;
          std::cerr << "\n";
        }
        if (r.code == grpc::StatusCode::RESOURCE_EXHAUSTED) {
          std::this_thread::sleep_for(
              std::chrono::duration<double>(o.reject_backoff_seconds * jitter(rng)));
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return {std::move(outcomes), seconds, rss_warmup_kib.load()};
}

struct Totals {
  int undefined = 0, hung = 0, ok = 0;
};

Totals Count(const std::vector<Outcome>& outcomes) {
  Totals n;
  for (const Outcome& r : outcomes) {
    n.undefined += r.undefined.empty() ? 0 : 1;
    n.hung += r.hung ? 1 : 0;
    n.ok += r.code == grpc::StatusCode::OK ? 1 : 0;
  }
  return n;
}

// Reads the spawned server's memory, stops it and adds both to *summary;
// false (after printing why) if it died during the run or did not exit 0.
bool StopServer(SpawnedServer* server, int64_t rss_warmup_kib, nlohmann::json* summary) {
  const int64_t rss_end = ProcStatusKib(server->pid(), "VmRSS");
  const int64_t rss_peak = ProcStatusKib(server->pid(), "VmHWM");
  const bool alive = server->Running();
  const int exit_code = server->Stop(60);
  const bool server_ok = alive && exit_code == 0;
  if (!server_ok) {
    std::cerr << "load_generator: server " << (alive ? "exit code " + std::to_string(exit_code)
                                                     : std::string("died during the run"))
              << " " << server->error() << "\n" << server->LogTail();
  }
  const double warm = static_cast<double>(rss_warmup_kib);
  (*summary)["server_rss_after_warmup_kib"] = rss_warmup_kib;
  (*summary)["server_rss_end_kib"] = rss_end;
  (*summary)["server_rss_peak_kib"] = rss_peak;
  (*summary)["server_rss_growth_percent"] = warm > 0 ? 100.0 * (rss_end - warm) / warm : 0.0;
  (*summary)["server_exit_code"] = exit_code;
  return server_ok;
}

// The result rows: all requests, images and videos, then each kind.
std::vector<nlohmann::json> RowsByGroup(const std::vector<Outcome>& outcomes) {
  return {Row("all", outcomes, [](const Outcome&) { return true; }),
          Row("images", outcomes,
              [](const Outcome& r) { return r.kind != Kind::kInvalid && !r.video; }),
          Row("videos", outcomes,
              [](const Outcome& r) { return r.kind != Kind::kInvalid && r.video; }),
          Row("generate", outcomes, [](const Outcome& r) { return r.kind == Kind::kGenerate; }),
          Row("detached", outcomes, [](const Outcome& r) { return r.kind == Kind::kDetached; }),
          Row("cancel", outcomes, [](const Outcome& r) { return r.kind == Kind::kCancel; }),
          Row("invalid", outcomes, [](const Outcome& r) { return r.kind == Kind::kInvalid; })};
}

void PrintReport(const Options& o, double seconds, const Totals& n,
                 const std::vector<nlohmann::json>& rows, const nlohmann::json& summary,
                 int warmup_count) {
  std::printf("%d requests, concurrency %d, %.1f s: %.2f requests/s, %.2f OK/s; "
              "undefined %d (hung %d)\n",
              o.requests, o.concurrency, seconds, o.requests / seconds, n.ok / seconds, n.undefined,
              n.hung);
  std::printf("latency of OK requests, and final codes:\n");
  for (const auto& row : rows) PrintRow(row);
  if (summary.contains("server_rss_end_kib")) {
    std::printf("server RSS: %.1f MiB after warm-up (%d requests), %.1f MiB at the end (%+.1f%%), "
                "peak %.1f MiB; exit code %d\n",
                summary["server_rss_after_warmup_kib"].get<double>() / 1024, warmup_count,
                summary["server_rss_end_kib"].get<double>() / 1024,
                summary["server_rss_growth_percent"].get<double>(),
                summary["server_rss_peak_kib"].get<double>() / 1024,
                summary["server_exit_code"].get<int>());
  }
}

void WriteResult(const Options& o, const std::string& command, const nlohmann::json& summary,
                 const std::vector<nlohmann::json>& rows) {
  const nlohmann::json result = {
      {"benchmark", "load"},
      {"date", rainserve::bench::Today()},
      {"machine", rainserve::bench::CpuModel() + ", " +
                      std::to_string(std::thread::hardware_concurrency()) + " cores"},
      {"command", command},
      {"mix", {{"concurrency", o.concurrency}, {"sizes", o.sizes}, {"max_steps", o.max_steps},
               {"video_rate", o.video_rate}, {"cancel_rate", o.cancel_rate},
               {"detached_rate", o.detached_rate}, {"invalid_rate", o.invalid_rate},
               {"deadline_seconds", o.deadline_seconds},
               {"reject_backoff_seconds", o.reject_backoff_seconds}, {"seed", o.seed}}},
      {"summary", summary},
      {"rows", rows}};
  std::ofstream(o.out) << result.dump(2) << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = Parse(argc, argv);
  // As typed: relative paths when run from the repository root.
  const std::string command = rainserve::bench::CommandLine(argv[0], argc, argv);

  SpawnedServer server;
  const std::optional<std::string> target = StartAndWaitForModel(o, &server);
  if (!target) return 2;

  const int warmup_count = std::max(1, static_cast<int>(o.warmup * o.requests));
  const LoadRun run = RunClients(o, *target, server, warmup_count);
  const double seconds = run.seconds;
  const Totals n = Count(run.outcomes);
  nlohmann::json summary = {{"requests", o.requests},
                            {"seconds", seconds},
                            {"requests_per_second", o.requests / seconds},
                            {"ok_per_second", n.ok / seconds},
                            {"undefined", n.undefined},
                            {"hung", n.hung}};
  bool server_ok = true;
  if (!o.spawn.empty()) server_ok = StopServer(&server, run.rss_warmup_kib, &summary);

  const std::vector<nlohmann::json> rows = RowsByGroup(run.outcomes);
  PrintReport(o, seconds, n, rows, summary, warmup_count);
  if (!o.out.empty()) WriteResult(o, command, summary, rows);
  return n.undefined == 0 && server_ok ? 0 : 1;
}
