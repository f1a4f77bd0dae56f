// rainserve-cli: command-line client for a RainServe server.
//
//   rainserve-cli [--target host:port] [--token T] [--tls-ca ca.pem
//                 [--tls-cert client.pem --tls-key client.key]] COMMAND [flags]
//
// Commands:
//   generate  --prompt TEXT [request flags] [--out FILE]   run and wait, with a progress bar
//   submit    --prompt TEXT [request flags]                queue detached, print the job id
//   watch     JOB_ID [--from-seq N] [--out FILE]           follow (or replay) a job
//   cancel    JOB_ID
//   jobs      [--all]                                      queued and running jobs (--all: finished too)
//   models    [NAME]                                       list models, or describe one
//   load NAME / unload NAME                                model management (admin)
//
// Request flags: --model --prompt --negative-prompt --seed --steps --guidance
//   --flow-shift --scheduler unipc|euler --width --height --frames --fps
//   --format png|mp4|raw|latents --priority --request-id
//   --attention dense|rainfusion --sparsity X --sink-frames N --window T,H,W
//   --dense-warmup-steps N --mask-refresh every_layer|per_step
//
// Artifacts go to --out (default "output"; the extension follows the MIME
// type; several artifacts get "-<index>" before it). `--json` prints the
// result of generate/watch as one JSON object instead of the summary:
// {"result": GenerateResult, "client_seconds": wall time of the call}.
// Exit codes: 0 success, 1 the RPC failed (the gRPC status is printed), 2 bad usage.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "rainserve/v1/generation.grpc.pb.h"
#include "rainserve/v1/models.grpc.pb.h"

namespace {

namespace v1 = rainserve::v1;

struct Args {
  std::string command;
  std::vector<std::string> positional;
  std::map<std::string, std::string> flags;
  bool Has(const std::string& k) const { return flags.count(k) != 0; }
  std::string Get(const std::string& k, const std::string& def = "") const {
    auto it = flags.find(k);
    return it == flags.end() ? def : it->second;
  }
};

[[noreturn]] void Usage(const std::string& why) {
  std::cerr << "rainserve-cli: " << why << "\n(see the header of tools/rainserve_cli.cc or "
            << "README.md for commands and flags)\n";
  std::exit(2);
}

// Flags without a value.
bool IsSwitch(const std::string& name) {
  return name == "all" || name == "detached" || name == "json";
}

Args Parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    if (s.rfind("--", 0) == 0) {
      std::string name = s.substr(2), value;
      const auto eq = name.find('=');
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      } else if (IsSwitch(name)) {
        value = "1";
      } else {
        if (i + 1 >= argc) Usage("--" + name + " needs a value");
        value = argv[++i];
      }
      a.flags[name] = value;
    } else if (a.command.empty()) {
      a.command = s;
    } else {
      a.positional.push_back(s);
    }
  }
  if (a.command.empty()) Usage("no command");
  return a;
}

double ToDouble(const Args& a, const std::string& k) {
  try {
    return std::stod(a.Get(k));
  } catch (...) {
    Usage("--" + k + " expects a number, got '" + a.Get(k) + "'");
  }
}

uint64_t ToUint(const Args& a, const std::string& k) {
  try {
    const std::string v = a.Get(k);
    if (v.empty() || v[0] == '-') throw 0;
    return std::stoull(v);
  } catch (...) {
    Usage("--" + k + " expects a non-negative integer, got '" + a.Get(k) + "'");
  }
}

template <typename Enum>
Enum Choice(const Args& a, const std::string& k, const std::map<std::string, Enum>& choices) {
  auto it = choices.find(a.Get(k));
  if (it == choices.end()) {
    std::string list;
    for (const auto& c : choices) list += (list.empty() ? "" : "|") + c.first;
    Usage("--" + k + " expects " + list + ", got '" + a.Get(k) + "'");
  }
  return it->second;
}

v1::GenerateRequest BuildRequest(const Args& a) {
  v1::GenerateRequest r;
  r.set_model(a.Get("model", "wan-tiny"));
  r.set_prompt(a.Get("prompt"));
  r.set_negative_prompt(a.Get("negative-prompt"));
  if (a.Has("seed")) r.set_seed(ToUint(a, "seed"));
  if (a.Has("steps")) r.set_steps(static_cast<uint32_t>(ToUint(a, "steps")));
  if (a.Has("guidance")) r.set_guidance_scale(ToDouble(a, "guidance"));
  if (a.Has("flow-shift")) r.set_flow_shift(ToDouble(a, "flow-shift"));
  if (a.Has("scheduler")) {
    r.set_scheduler(Choice<v1::Scheduler>(
        a, "scheduler", {{"unipc", v1::SCHEDULER_UNIPC}, {"euler", v1::SCHEDULER_EULER}}));
  }
  if (a.Has("width")) r.set_width(static_cast<uint32_t>(ToUint(a, "width")));
  if (a.Has("height")) r.set_height(static_cast<uint32_t>(ToUint(a, "height")));
  if (a.Has("frames")) r.set_num_frames(static_cast<uint32_t>(ToUint(a, "frames")));
  if (a.Has("fps")) r.set_fps(static_cast<uint32_t>(ToUint(a, "fps")));
  if (a.Has("format")) {
    r.set_output_format(Choice<v1::OutputFormat>(a, "format",
                                                 {{"png", v1::OUTPUT_FORMAT_PNG},
                                                  {"mp4", v1::OUTPUT_FORMAT_MP4},
                                                  {"raw", v1::OUTPUT_FORMAT_RAW_RGB},
                                                  {"latents", v1::OUTPUT_FORMAT_LATENTS}}));
  }
  if (a.Has("priority")) r.set_priority(static_cast<int32_t>(ToDouble(a, "priority")));
  r.set_client_request_id(a.Get("request-id"));
  v1::SparseAttention* sa = r.mutable_sparse_attention();
  if (a.Has("attention")) {
    sa->set_mode(Choice<v1::AttentionMode>(
        a, "attention",
        {{"dense", v1::ATTENTION_MODE_DENSE}, {"rainfusion", v1::ATTENTION_MODE_RAINFUSION}}));
  }
  if (a.Has("sparsity")) sa->set_sparsity(ToDouble(a, "sparsity"));
  if (a.Has("sink-frames")) sa->set_sink_frames(static_cast<uint32_t>(ToUint(a, "sink-frames")));
  if (a.Has("dense-warmup-steps")) {
    sa->set_dense_warmup_steps(static_cast<uint32_t>(ToUint(a, "dense-warmup-steps")));
  }
  if (a.Has("mask-refresh")) {
    sa->set_mask_refresh(Choice<v1::MaskRefresh>(a, "mask-refresh",
                                                 {{"every_layer", v1::MASK_REFRESH_EVERY_LAYER},
                                                  {"per_step", v1::MASK_REFRESH_PER_STEP}}));
  }
  if (a.Has("window")) {
    unsigned t = 0, h = 0, w = 0;
    if (std::sscanf(a.Get("window").c_str(), "%u,%u,%u", &t, &h, &w) != 3) {
      Usage("--window expects T,H,W");
    }
    sa->mutable_window()->set_t(t);
    sa->mutable_window()->set_h(h);
    sa->mutable_window()->set_w(w);
  }
  r.set_detached(a.Has("detached"));
  return r;
}

std::shared_ptr<grpc::Channel> Connect(const Args& a) {
  const std::string target = a.Get("target", "127.0.0.1:50051");
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (a.Has("tls-ca")) {
    auto read = [](const std::string& path) {
      std::ifstream in(path, std::ios::binary);
      if (!in) Usage("cannot read " + path);
      std::stringstream s;
      s << in.rdbuf();
      return s.str();
    };
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = read(a.Get("tls-ca"));
    if (a.Has("tls-cert")) ssl.pem_cert_chain = read(a.Get("tls-cert"));
    if (a.Has("tls-key")) ssl.pem_private_key = read(a.Get("tls-key"));
    creds = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(target, creds, args);
}

void Prepare(const Args& a, grpc::ClientContext* ctx) {
  if (a.Has("token")) ctx->AddMetadata("authorization", "Bearer " + a.Get("token"));
  if (a.Has("timeout")) {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(static_cast<int64_t>(ToDouble(a, "timeout") * 1000)));
  }
}

int Fail(const grpc::Status& s) {
  std::cerr << "error: " << s.error_code() << " " << s.error_message() << "\n";
  return 1;
}

std::string Seconds(const google::protobuf::Duration& d) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2fs", static_cast<double>(d.seconds()) + d.nanos() * 1e-9);
  return buf;
}

const char* Extension(const v1::ArtifactInfo& info) {
  if (info.mime_type() == "image/png") return ".png";
  if (info.mime_type() == "video/mp4") return ".mp4";
  return info.dtype() == "float32" ? ".f32" : ".rgb";
}

// Reassembles artifacts from a stream of events, draws progress, prints the result.
class EventPrinter {
 public:
  EventPrinter(std::string out, bool json)
      : out_(std::move(out)), json_(json), tty_(isatty(2) != 0),
        start_(std::chrono::steady_clock::now()) {}

  void On(const v1::GenerateEvent& e) {
    switch (e.event_case()) {
      case v1::GenerateEvent::kAccepted:
        std::cerr << "job " << e.job_id() << " accepted (seed " << e.accepted().seed() << ")\n";
        break;
      case v1::GenerateEvent::kQueued:
        std::cerr << "queued at position " << e.queued().position() << " of "
                  << e.queued().depth() << "\n";
        break;
      case v1::GenerateEvent::kStarted:
        std::cerr << "started on " << e.started().device() << "\n";
        break;
      case v1::GenerateEvent::kProgress: {
        const v1::Progress& p = e.progress();
        if (p.stage() != "denoise" || p.total_steps() == 0) {
          std::cerr << (tty_ ? "\r\033[K" : "") << p.stage() << "..." << (tty_ ? "" : "\n");
          break;
        }
        const int width = 30;
        const int done = static_cast<int>(width * p.step() / p.total_steps());
        std::cerr << (tty_ ? "\r\033[K" : "") << "denoise [" << std::string(done, '#')
                  << std::string(width - done, '.') << "] " << p.step() << "/" << p.total_steps()
                  << " " << Seconds(p.elapsed()) << " eta " << Seconds(p.eta())
                  << (tty_ ? "" : "\n");
        break;
      }
      case v1::GenerateEvent::kArtifactHeader: {
        const v1::ArtifactInfo& info = e.artifact_header().info();
        headers_[info.index()] = info;
        data_[info.index()].reserve(info.size_bytes());
        break;
      }
      case v1::GenerateEvent::kArtifactChunk: {
        const v1::ArtifactChunk& c = e.artifact_chunk();
        std::string& d = data_[c.index()];
        if (c.offset() != d.size()) d.resize(c.offset());
        d += c.data();
        break;
      }
      case v1::GenerateEvent::kCompleted:
        if (tty_) std::cerr << "\n";
        Completed(e.completed().result());
        done_ = true;
        break;
      case v1::GenerateEvent::kFailed:
        if (tty_) std::cerr << "\n";
        std::cerr << "job failed: code " << e.failed().code() << ": " << e.failed().message()
                  << (e.failed().retryable() ? " (retryable)" : "") << "\n";
        failed_ = true;
        break;
      default:
        break;
    }
  }

  bool succeeded() const { return done_ && !failed_; }

 private:
  void Completed(const v1::GenerateResult& r) {
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    for (const auto& [index, info] : headers_) {
      std::string path = out_;
      if (headers_.size() > 1) path += "-" + std::to_string(index);
      path += Extension(info);
      std::ofstream(path, std::ios::binary) << data_[index];
      if (json_) continue;
      std::cout << path << "  " << info.mime_type() << "  " << info.width() << "x"
                << info.height() << "x" << info.frames() << "  " << data_[index].size()
                << " bytes  sha256 " << info.sha256() << "\n";
    }
    if (json_) {
      std::string text;
      google::protobuf::util::JsonPrintOptions options;
      options.preserve_proto_field_names = true;
      (void)google::protobuf::util::MessageToJsonString(r, &text, options);
      std::cout << "{\"result\": " << text << ", \"client_seconds\": " << seconds << "}\n";
      return;
    }
    const auto& t = r.timings();
    std::cout << "model " << r.applied().model() << " on " << r.device() << ": seed "
              << r.applied().seed() << ", " << r.applied().steps() << " steps, sparsity requested "
              << r.requested_sparsity() << " realized " << r.realized_sparsity() << "\n"
              << "timings: queue " << Seconds(t.queue()) << ", text " << Seconds(t.text_encode())
              << ", denoise " << Seconds(t.denoise()) << ", decode " << Seconds(t.decode())
              << ", encode " << Seconds(t.encode()) << ", total " << Seconds(t.total())
              << "; peak memory " << r.peak_memory_bytes() / (1 << 20) << " MiB\n";
  }

  std::string out_;
  bool json_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
  bool done_ = false, failed_ = false;
  std::map<uint32_t, v1::ArtifactInfo> headers_;
  std::map<uint32_t, std::string> data_;
};

int Stream(grpc::ClientReader<v1::GenerateEvent>* reader, const std::string& out, bool json) {
  EventPrinter printer(out, json);
  v1::GenerateEvent e;
  while (reader->Read(&e)) printer.On(e);
  const grpc::Status s = reader->Finish();
  if (!s.ok()) return Fail(s);
  return printer.succeeded() ? 0 : 1;
}

void PrintJob(const v1::Job& j) {
  static const char* kStates[] = {"?", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"};
  const int s = j.state();
  std::cout << j.job_id() << "  " << (s >= 0 && s <= 5 ? kStates[s] : "?") << "  "
            << j.request().model();
  if (j.state() == v1::JOB_STATE_QUEUED) std::cout << "  position " << j.queue_position();
  if (j.state() == v1::JOB_STATE_RUNNING) std::cout << "  step " << j.step() << "/" << j.total_steps();
  if (!j.failure().message().empty()) std::cout << "  " << j.failure().message();
  std::cout << "\n";
}

void PrintModel(const v1::ModelInfo& m) {
  static const char* kStates[] = {"?", "NOT_LOADED", "LOADING", "READY", "FAILED"};
  const int s = m.state();
  std::cout << m.name() << "  " << (s >= 0 && s <= 4 ? kStates[s] : "?") << "  " << m.pipeline()
            << "/" << m.task() << "  " << m.device() << " " << m.dtype();
  if (!m.state_reason().empty()) std::cout << "  (" << m.state_reason() << ")";
  std::cout << "\n";
  if (m.state() != v1::MODEL_STATE_READY) return;
  const auto& d = m.defaults();
  const auto& l = m.limits();
  std::cout << "  defaults: " << d.width() << "x" << d.height() << "x" << d.num_frames() << " @"
            << d.fps() << "fps, " << d.steps() << " steps, guidance " << d.guidance_scale()
            << ", shift " << d.flow_shift() << ", " << d.scheduler() << ", sparsity "
            << d.sparse_attention().sparsity() << ", sink " << d.sparse_attention().sink_frames()
            << "\n  limits: sizes multiple of " << l.size_multiple() << " up to " << l.max_width()
            << "x" << l.max_height() << ", frames " << l.frame_multiple() << "k+1 up to "
            << l.max_frames() << ", steps up to " << l.max_steps() << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = Parse(argc, argv);
  auto channel = Connect(a);
  auto gen = v1::Generation::NewStub(channel);
  auto models = v1::Models::NewStub(channel);
  grpc::ClientContext ctx;
  Prepare(a, &ctx);
  const std::string out = a.Get("out", "output");
  const std::string& cmd = a.command;

  if (cmd == "generate") {
    if (!a.Has("prompt")) Usage("generate needs --prompt");
    const v1::GenerateRequest req = BuildRequest(a);
    auto reader = gen->Generate(&ctx, req);
    return Stream(reader.get(), out, a.Has("json"));
  }
  if (cmd == "submit") {
    if (!a.Has("prompt")) Usage("submit needs --prompt");
    v1::GenerateRequest req = BuildRequest(a);
    req.set_detached(true);
    v1::SubmitResponse resp;
    const grpc::Status s = gen->Submit(&ctx, req, &resp);
    if (!s.ok()) return Fail(s);
    std::cout << resp.job().job_id() << "\n";
    return 0;
  }
  if (cmd == "watch") {
    if (a.positional.size() != 1) Usage("watch JOB_ID");
    v1::WatchRequest req;
    req.set_job_id(a.positional[0]);
    if (a.Has("from-seq")) req.set_from_seq(ToUint(a, "from-seq"));
    auto reader = gen->Watch(&ctx, req);
    return Stream(reader.get(), out, a.Has("json"));
  }
  if (cmd == "cancel") {
    if (a.positional.size() != 1) Usage("cancel JOB_ID");
    v1::CancelRequest req;
    req.set_job_id(a.positional[0]);
    v1::CancelResponse resp;
    const grpc::Status s = gen->Cancel(&ctx, req, &resp);
    if (!s.ok()) return Fail(s);
    PrintJob(resp.job());
    return 0;
  }
  if (cmd == "jobs") {
    v1::ListJobsRequest req;
    req.set_include_finished(a.Has("all"));
    v1::ListJobsResponse resp;
    const grpc::Status s = gen->ListJobs(&ctx, req, &resp);
    if (!s.ok()) return Fail(s);
    for (const v1::Job& j : resp.jobs()) PrintJob(j);
    return 0;
  }
  if (cmd == "models") {
    if (a.positional.empty()) {
      v1::ListModelsResponse resp;
      const grpc::Status s = models->List(&ctx, v1::ListModelsRequest(), &resp);
      if (!s.ok()) return Fail(s);
      for (const v1::ModelInfo& m : resp.models()) PrintModel(m);
      return 0;
    }
    v1::DescribeModelRequest req;
    req.set_name(a.positional[0]);
    v1::ModelInfo info;
    const grpc::Status s = models->Describe(&ctx, req, &info);
    if (!s.ok()) return Fail(s);
    PrintModel(info);
    return 0;
  }
  if (cmd == "load" || cmd == "unload") {
    if (a.positional.size() != 1) Usage(cmd + " NAME");
    v1::ModelInfo info;
    grpc::Status s;
    if (cmd == "load") {
      v1::LoadModelRequest req;
      req.set_name(a.positional[0]);
      s = models->Load(&ctx, req, &info);
    } else {
      v1::UnloadModelRequest req;
      req.set_name(a.positional[0]);
      s = models->Unload(&ctx, req, &info);
    }
    if (!s.ok()) return Fail(s);
    PrintModel(info);
    return 0;
  }
  Usage("unknown command '" + cmd + "'");
}
