// rainserve-cli: command-line client for a RainServe server.
//
//   rainserve-cli [--target host:port] [--token T] [--tls-ca ca.pem
//                 [--tls-cert client.pem --tls-key client.key]] COMMAND [flags]
//
// `rainserve-cli --help` lists the commands, `rainserve-cli help COMMAND` a
// command's flags (the table is in cli_flags.cc). Exit codes: 0 success; 1 the
// call or the job failed (printed as "CODE: message"); 2 bad usage.
//
// Files: cli_flags.* (command line), cli_request.* (the request and --out),
// cli_output.* (what is printed), cli_compare.* (compare's settings, grid and
// table; PSNR/SSIM in quality_metrics.*, the label font in label_font.*);
// this file connects and runs the commands.
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "rainserve/v1/generation.grpc.pb.h"
#include "rainserve/v1/models.grpc.pb.h"
#include "server/build_info.h"
#include "tools/cli_compare.h"
#include "tools/cli_flags.h"
#include "tools/cli_output.h"
#include "tools/cli_request.h"

namespace rainserve::cli {
namespace {

constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;

int UsageError(const Status& s) {
  std::cerr << "rainserve-cli: " << s.message() << "\n";
  return kExitUsage;
}

int Fail(const grpc::Status& s) {
  std::cerr << StatusText(s.error_code(), s.error_message()) << "\n";
  return kExitFailed;
}

StatusOr<std::string> ReadPem(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return InvalidArgumentError("--" + flag + ": cannot read '" + path + "'");
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

StatusOr<std::shared_ptr<grpc::Channel>> Connect(const Args& a) {
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (a.Has("tls-ca")) {
    grpc::SslCredentialsOptions ssl;
    RAINSERVE_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPem("tls-ca", a.Get("tls-ca")));
    if (a.Has("tls-cert")) {
      RAINSERVE_ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadPem("tls-cert", a.Get("tls-cert")));
    }
    if (a.Has("tls-key")) {
      RAINSERVE_ASSIGN_OR_RETURN(ssl.pem_private_key, ReadPem("tls-key", a.Get("tls-key")));
    }
    creds = grpc::SslCredentials(ssl);
  } else if (a.Has("tls-cert") || a.Has("tls-key")) {
    return InvalidArgumentError("--tls-cert and --tls-key need --tls-ca");
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(a.Get("target", "127.0.0.1:50051"), creds, args);
}

// Token and deadline on a call's context.
class Calls {
 public:
  static StatusOr<Calls> Make(const Args& a) {
    Calls c;
    c.token_ = a.Get("token");
    if (a.Has("timeout")) {
      RAINSERVE_ASSIGN_OR_RETURN(c.timeout_, ParseDouble("timeout", a.Get("timeout")));
      if (c.timeout_ <= 0) {
        return InvalidArgumentError("--timeout expects a number of seconds > 0, got '" +
                                    a.Get("timeout") + "'");
      }
      c.deadline_ = std::chrono::system_clock::now() +
                    std::chrono::milliseconds(static_cast<int64_t>(c.timeout_ * 1000));
    }
    return c;
  }
  std::unique_ptr<grpc::ClientContext> Context() const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (!token_.empty()) ctx->AddMetadata("authorization", "Bearer " + token_);
    if (timeout_ > 0) ctx->set_deadline(deadline_);
    return ctx;
  }

 private:
  std::string token_;
  double timeout_ = 0;
  std::chrono::system_clock::time_point deadline_;
};

int Stream(grpc::ClientReader<v1::GenerateEvent>* reader, const Args& a) {
  EventPrinter printer(a.Get("out", "output"), a.Has("json"), isatty(2) != 0, std::cout,
                       std::cerr);
  v1::GenerateEvent e;
  while (reader->Read(&e)) printer.On(e);
  const grpc::Status s = reader->Finish();
  if (!s.ok()) return Fail(s);
  return printer.succeeded() ? 0 : kExitFailed;
}

int Generate(const Args& a, v1::Generation::Stub* gen, const Calls& calls) {
  if (!a.Has("prompt")) return UsageError(InvalidArgumentError("generate needs --prompt"));
  auto request = BuildRequest(a);
  if (!request.ok()) return UsageError(request.status());
  auto ctx = calls.Context();
  auto reader = gen->Generate(ctx.get(), *request);
  return Stream(reader.get(), a);
}

// Runs one job of `compare` to completion and returns its clip and result.
StatusOr<CompareRun> RunRaw(const v1::GenerateRequest& request, const std::string& label,
                            v1::Generation::Stub* gen, const Calls& calls) {
  std::cerr << label << ": running...\n";
  auto ctx = calls.Context();
  auto reader = gen->Generate(ctx.get(), request);
  RawCollector collector;
  v1::GenerateEvent e;
  while (reader->Read(&e)) collector.On(e);
  const grpc::Status s = reader->Finish();
  if (!s.ok()) return Status(static_cast<StatusCode>(s.error_code()), s.error_message());
  CompareRun run;
  run.label = label;
  RAINSERVE_ASSIGN_OR_RETURN(run.clip, collector.TakeClip());
  run.result = collector.result();
  return run;
}

Status WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f << bytes;
  f.close();
  return f ? OkStatus() : InternalError("cannot write " + path);
}

// compare.json, the grid and the table, once every run is in.
Status WriteComparison(const std::string& dir, const std::vector<CompareRun>& runs,
                       const v1::GenerateRequest& base) {
  RAINSERVE_ASSIGN_OR_RETURN(const std::vector<CompareRow> rows, CompareRuns(runs));
  std::vector<std::string> labels;
  std::vector<const Clip*> clips;
  for (const CompareRun& r : runs) {
    labels.push_back(r.label);
    clips.push_back(&r.clip);
  }
  const v1::GenerateRequest& applied = runs[0].result.applied();
  std::string extension;
  RAINSERVE_ASSIGN_OR_RETURN(
      const std::string grid,
      EncodeGrid(ComposeGrid(labels, clips), static_cast<int>(applied.fps()), &extension));
  CompareInfo info{base.model(), base.prompt(), applied.seed(), runs[0].clip.width,
                   runs[0].clip.height, runs[0].clip.frames, applied.steps(),
                   "compare" + extension};
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return InternalError("cannot create " + dir + ": " + ec.message());
  RAINSERVE_RETURN_IF_ERROR(WriteBytes(dir + "/" + info.grid_file, grid));
  RAINSERVE_RETURN_IF_ERROR(WriteBytes(dir + "/compare.json", CompareJson(info, rows)));
  std::cout << CompareTable(rows) << "wrote " << dir << "/compare.json and " << dir << "/"
            << info.grid_file << "\n";
  return OkStatus();
}

int Compare(const Args& a, v1::Generation::Stub* gen, const Calls& calls) {
  if (!a.Has("prompt")) return UsageError(InvalidArgumentError("compare needs --prompt"));
  if (!a.Has("settings")) return UsageError(InvalidArgumentError("compare needs --settings"));
  auto settings = ParseSettings(a.Get("settings"));
  if (!settings.ok()) return UsageError(settings.status());
  auto base = BuildRequest(a);
  if (!base.ok()) return UsageError(base.status());
  base->set_output_format(v1::OUTPUT_FORMAT_RAW_RGB);
  std::vector<CompareRun> runs;
  v1::GenerateRequest request = *base;
  request.mutable_sparse_attention()->set_mode(v1::ATTENTION_MODE_DENSE);
  for (size_t i = 0; i <= settings->size(); ++i) {
    if (i > 0) {
      request = *base;
      // Every setting runs with the dense run's seed.
      request.set_seed(runs[0].result.applied().seed());
      *request.mutable_sparse_attention() = (*settings)[i - 1].sparse_attention;
    }
    auto run = RunRaw(request, i == 0 ? "dense" : (*settings)[i - 1].label, gen, calls);
    if (!run.ok()) {
      std::cerr << StatusText(static_cast<int>(run.status().code()), run.status().message())
                << "\n";
      return kExitFailed;
    }
    runs.push_back(*std::move(run));
  }
  if (Status s = WriteComparison(a.Get("out", "compare"), runs, *base); !s.ok()) {
    std::cerr << StatusText(static_cast<int>(s.code()), s.message()) << "\n";
    return kExitFailed;
  }
  return 0;
}

int Submit(const Args& a, v1::Generation::Stub* gen, const Calls& calls) {
  if (!a.Has("prompt")) return UsageError(InvalidArgumentError("submit needs --prompt"));
  auto request = BuildRequest(a);
  if (!request.ok()) return UsageError(request.status());
  request->set_detached(true);
  v1::SubmitResponse resp;
  const grpc::Status s = gen->Submit(calls.Context().get(), *request, &resp);
  if (!s.ok()) return Fail(s);
  std::cout << resp.job().job_id() << "\n";
  return 0;
}

int Watch(const Args& a, v1::Generation::Stub* gen, const Calls& calls) {
  v1::WatchRequest req;
  req.set_job_id(a.positional[0]);
  if (a.Has("from-seq")) {
    auto seq = ParseUint("from-seq", a.Get("from-seq"), UINT64_MAX);
    if (!seq.ok()) return UsageError(seq.status());
    req.set_from_seq(*seq);
  }
  auto ctx = calls.Context();
  auto reader = gen->Watch(ctx.get(), req);
  return Stream(reader.get(), a);
}

int Cancel(const Args& a, v1::Generation::Stub* gen, const Calls& calls) {
  v1::CancelRequest req;
  req.set_job_id(a.positional[0]);
  v1::CancelResponse resp;
  const grpc::Status s = gen->Cancel(calls.Context().get(), req, &resp);
  if (!s.ok()) return Fail(s);
  std::cout << JobLine(resp.job()) << "\n";
  return 0;
}

// Pages through ListJobs until the server returns an empty token.
int Jobs(const Args& a, v1::Generation::Stub* gen, const Calls& calls) {
  std::vector<v1::Job> jobs;
  std::set<std::string> tokens_seen;
  v1::ListJobsRequest req;
  req.set_include_finished(a.Has("all"));
  for (;;) {
    v1::ListJobsResponse resp;
    const grpc::Status s = gen->ListJobs(calls.Context().get(), req, &resp);
    if (!s.ok()) return Fail(s);
    jobs.insert(jobs.end(), resp.jobs().begin(), resp.jobs().end());
    if (resp.next_page_token().empty()) break;
    if (!tokens_seen.insert(resp.next_page_token()).second) {
      std::cerr << "the server returned the page token '" << resp.next_page_token()
                << "' twice: stopping after " << jobs.size() << " jobs\n";
      return kExitFailed;
    }
    req.set_page_token(resp.next_page_token());
  }
  std::cout << JobTable(jobs, a.Has("all"));
  return 0;
}

int Models(const Args& a, v1::Models::Stub* models, const Calls& calls) {
  if (a.positional.empty()) {
    v1::ListModelsResponse resp;
    const grpc::Status s = models->List(calls.Context().get(), v1::ListModelsRequest(), &resp);
    if (!s.ok()) return Fail(s);
    if (resp.models().empty()) std::cout << "no models configured\n";
    for (const v1::ModelInfo& m : resp.models()) std::cout << ModelText(m);
    return 0;
  }
  v1::DescribeModelRequest req;
  req.set_name(a.positional[0]);
  v1::ModelInfo info;
  const grpc::Status s = models->Describe(calls.Context().get(), req, &info);
  if (!s.ok()) return Fail(s);
  std::cout << ModelText(info);
  return 0;
}

int LoadOrUnload(const Args& a, v1::Models::Stub* models, const Calls& calls) {
  v1::ModelInfo info;
  grpc::Status s;
  if (a.command == "load") {
    v1::LoadModelRequest req;
    req.set_name(a.positional[0]);
    s = models->Load(calls.Context().get(), req, &info);
  } else {
    v1::UnloadModelRequest req;
    req.set_name(a.positional[0]);
    s = models->Unload(calls.Context().get(), req, &info);
  }
  if (!s.ok()) return Fail(s);
  std::cout << ModelText(info);
  return 0;
}

int Run(const Args& a) {
  auto channel = Connect(a);
  if (!channel.ok()) return UsageError(channel.status());
  auto calls = Calls::Make(a);
  if (!calls.ok()) return UsageError(calls.status());
  auto gen = v1::Generation::NewStub(*channel);
  auto models = v1::Models::NewStub(*channel);
  const std::string& cmd = a.command;
  if (cmd == "generate") return Generate(a, gen.get(), *calls);
  if (cmd == "compare") return Compare(a, gen.get(), *calls);
  if (cmd == "submit") return Submit(a, gen.get(), *calls);
  if (cmd == "watch") return Watch(a, gen.get(), *calls);
  if (cmd == "cancel") return Cancel(a, gen.get(), *calls);
  if (cmd == "jobs") return Jobs(a, gen.get(), *calls);
  if (cmd == "models") return Models(a, models.get(), *calls);
  return LoadOrUnload(a, models.get(), *calls);
}

}  // namespace
}  // namespace rainserve::cli

int main(int argc, char** argv) {
  namespace cli = rainserve::cli;
  auto args = cli::Parse(argc, argv);
  if (!args.ok()) return cli::UsageError(args.status());
  const cli::Args& a = *args;
  if (a.Has("version")) {
    std::cout << "rainserve-cli " << rainserve::kVersion << " (" << rainserve::kGitSha << ")\n";
    return 0;
  }
  if (a.command.empty() || (a.command == "help" && a.positional.empty())) {
    std::cout << cli::MainHelp();
    return 0;
  }
  if (a.command == "help") {
    std::cout << cli::CommandHelp(*cli::FindCommand(a.positional[0]));
    return 0;
  }
  if (a.Has("help")) {
    std::cout << cli::CommandHelp(*cli::FindCommand(a.command));
    return 0;
  }
  return cli::Run(a);
}
