// Starts the real rainserve-server binary on ephemeral ports and talks to it
// the way clients and orchestrators do: gRPC health, reflection, the API,
// the metrics endpoint, and signals; with the embedded wan-tiny model, a
// SIGTERM while jobs run and wait, and a reader too slow for its stream
// (the server's memory read from /proc).
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <future>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "rainserve/v1/generation.grpc.pb.h"
#include "rainserve/v1/models.grpc.pb.h"
#include "tests/server/raw_call.h"
#include "tests/server/test_server.h"

namespace rainserve {
namespace {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;
using testing::ServerProcess;

// One configured model whose folder does not exist: it fails to load and
// the server serves on without it.
constexpr char kNoModels[] = R"(
server:
  drain_timeout_seconds: 2
models:
  - name: broken
    path: no-such-checkpoint
)";

class ServerProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<ServerProcess>(kNoModels);
    ASSERT_TRUE(server_->Start()) << server_->error();
    channel_ = grpc::CreateChannel(server_->grpc_target(), grpc::InsecureChannelCredentials());
    ASSERT_TRUE(channel_->WaitForConnected(std::chrono::system_clock::now() +
                                           std::chrono::seconds(10)));
  }

  HealthCheckResponse::ServingStatus Health(const std::string& service, grpc::Status* status) {
    auto stub = grpc::health::v1::Health::NewStub(channel_);
    grpc::ClientContext ctx;
    HealthCheckRequest req;
    req.set_service(service);
    HealthCheckResponse resp;
    *status = stub->Check(&ctx, req, &resp);
    return resp.status();
  }

  std::unique_ptr<ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(ServerProcessTest, HealthIsServingForServerAndNotServingForGenerationWithoutModels) {
  grpc::Status status;
  EXPECT_EQ(Health("", &status), HealthCheckResponse::SERVING);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(Health("rainserve.v1.Models", &status), HealthCheckResponse::SERVING);
  EXPECT_EQ(Health("rainserve.v1.Generation", &status), HealthCheckResponse::NOT_SERVING);
  EXPECT_TRUE(status.ok());
  Health("no.such.Service", &status);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServerProcessTest, ReflectionListsTheServices) {
  auto stub = grpc::reflection::v1alpha::ServerReflection::NewStub(channel_);
  grpc::ClientContext ctx;
  auto stream = stub->ServerReflectionInfo(&ctx);
  grpc::reflection::v1alpha::ServerReflectionRequest req;
  req.set_list_services("");
  ASSERT_TRUE(stream->Write(req));
  grpc::reflection::v1alpha::ServerReflectionResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  stream->WritesDone();
  std::set<std::string> names;
  for (const auto& s : resp.list_services_response().service()) names.insert(s.name());
  EXPECT_TRUE(names.count("rainserve.v1.Generation"));
  EXPECT_TRUE(names.count("rainserve.v1.Models"));
  EXPECT_TRUE(names.count("grpc.health.v1.Health"));
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(ServerProcessTest, MetricsEndpointPublishesBuildInfo) {
  const std::string body = testing::HttpGet(server_->metrics_port(), "/metrics");
  EXPECT_NE(body.find("200 OK"), std::string::npos) << body;
  EXPECT_NE(body.find("# TYPE rainserve_build_info gauge"), std::string::npos) << body;
  EXPECT_NE(body.find("rainserve_build_info{"), std::string::npos) << body;
  EXPECT_NE(body.find("version=\"0.1.0\""), std::string::npos) << body;
  EXPECT_NE(testing::HttpGet(server_->metrics_port(), "/nope").find("404 Not Found"),
            std::string::npos);
}

TEST_F(ServerProcessTest, GenerationWithoutAReadyModelFailsAndServerKeepsServing) {
  // Models load in the background: wait until the broken one has failed.
  auto models = v1::Models::NewStub(channel_);
  v1::ListModelsResponse list;
  for (int i = 0; i < 100; ++i) {
    grpc::ClientContext ctx;
    list.Clear();
    ASSERT_TRUE(models->List(&ctx, v1::ListModelsRequest(), &list).ok());
    if (list.models_size() == 1 && list.models(0).state() != v1::MODEL_STATE_LOADING) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  auto stub = v1::Generation::NewStub(channel_);
  // A model that failed to load is UNAVAILABLE; an unknown one NOT_FOUND.
  const std::pair<const char*, grpc::StatusCode> cases[] = {
      {"broken", grpc::StatusCode::UNAVAILABLE}, {"wan-tiny", grpc::StatusCode::NOT_FOUND}};
  for (int i = 0; i < 2; ++i) {
    for (const auto& [model, code] : cases) {
      grpc::ClientContext ctx;
      v1::GenerateRequest req;
      req.set_model(model);
      req.set_prompt("a cat");
      auto reader = stub->Generate(&ctx, req);
      v1::GenerateEvent ev;
      EXPECT_FALSE(reader->Read(&ev));
      const grpc::Status s = reader->Finish();
      EXPECT_EQ(s.error_code(), code) << model << ": " << s.error_message();
      EXPECT_NE(s.error_message().find(model), std::string::npos) << s.error_message();
    }
  }
  ASSERT_EQ(list.models_size(), 1);
  EXPECT_EQ(list.models(0).state(), v1::MODEL_STATE_FAILED);
  EXPECT_NE(list.models(0).state_reason().find("no-such-checkpoint"), std::string::npos)
      << list.models(0).state_reason();
  grpc::Status status;
  EXPECT_EQ(Health("", &status), HealthCheckResponse::SERVING);
  EXPECT_EQ(Health("rainserve.v1.Generation", &status), HealthCheckResponse::NOT_SERVING);
}

using testing::RawCall;

TEST_F(ServerProcessTest, MalformedRequestBytesAreInvalidArgumentWithRateLimitedLogLines) {
  v1::GenerateRequest valid;
  valid.set_model("broken");
  const std::string bad_utf8 = valid.SerializeAsString() + std::string("\x12\x02\xc3\x28", 4);
  const std::string garbage("\xff\xff\xff\xff\x0f\x00", 6);
  const auto start = std::chrono::steady_clock::now();
  constexpr int kCalls = 60;
  for (int i = 0; i < kCalls; ++i) {
    const grpc::Status s = RawCall(channel_, "/rainserve.v1.Generation/Generate", bad_utf8);
    ASSERT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_NE(s.error_message().find("not a valid rainserve.v1.GenerateRequest"),
              std::string::npos);
  }
  for (const char* method : {"/rainserve.v1.Generation/ListJobs", "/rainserve.v1.Models/List",
                             "/rainserve.v1.Models/Describe", "/rainserve.v1.Models/Load"}) {
    const grpc::Status s = RawCall(channel_, method, garbage);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
    EXPECT_EQ(s.error_message().rfind("request: not a valid rainserve.v1.", 0), 0u)
        << method << ": " << s.error_message();
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::string log = server_->Stderr();
  int lines = 0;
  for (size_t at = 0; (at = log.find("\nW ", at)) != std::string::npos; ++at) ++lines;
  EXPECT_GT(lines, 0) << log;
  // Two kinds of line (the refusal, protobuf's UTF-8 complaint), 5 a second each.
  EXPECT_LE(lines, 2 * 5 * (static_cast<int>(seconds) + 2)) << log;
  EXPECT_LT(lines, kCalls) << log;
}

TEST_F(ServerProcessTest, SigtermTurnsHealthNotServingThenExitsZero) {
  auto stub = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext ctx;
  HealthCheckRequest req;
  auto watch = stub->Watch(&ctx, req);
  HealthCheckResponse resp;
  ASSERT_TRUE(watch->Read(&resp));
  EXPECT_EQ(resp.status(), HealthCheckResponse::SERVING);

  std::thread stopper([&] {
    const int status = server_->Stop(SIGTERM);
    EXPECT_TRUE(WIFEXITED(status)) << "status " << status;
    EXPECT_EQ(WEXITSTATUS(status), 0);
  });
  bool saw_not_serving = false;
  while (watch->Read(&resp)) {
    if (resp.status() == HealthCheckResponse::NOT_SERVING) {
      saw_not_serving = true;
      break;
    }
  }
  EXPECT_TRUE(saw_not_serving);
  ctx.TryCancel();
  stopper.join();
  EXPECT_NE(server_->Stderr().find("shutting down"), std::string::npos);
}

TEST_F(ServerProcessTest, SigintAlsoExitsZero) {
  const int status = server_->Stop(SIGINT);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

// ---------------------------------------------------------------- with wan-tiny

// wan-tiny (random weights, CPU) with small defaults; a drain timeout long
// enough for any job these tests run, even in a sanitizer build.
std::string WanTinyConfig() {
  return R"(
server:
  drain_timeout_seconds: 300
models:
  - name: wan-tiny
    path: )" + testing::SourceDir() + R"(/models/wan-tiny
    threads: 2
    defaults: {width: 64, height: 64, num_frames: 5, steps: 2}
    limits: {max_width: 512, max_height: 512, max_pixels: 262144, max_frames: 33, max_steps: 50}
)";
}

v1::GenerateRequest Request(const std::string& prompt, uint32_t width, uint32_t height,
                            uint32_t frames, uint32_t steps) {
  v1::GenerateRequest r;
  r.set_model("wan-tiny");
  r.set_prompt(prompt);
  r.set_width(width);
  r.set_height(height);
  r.set_num_frames(frames);
  r.set_steps(steps);
  return r;
}

// VmRSS of process `pid` in bytes; -1 if unreadable.
int64_t ResidentBytes(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;  // "... kB"
  }
  return -1;
}

using EventReader = grpc::ClientReader<v1::GenerateEvent>;

// Reads into `events` until one satisfies `done` (true) or the stream ends (false).
template <typename Done>
bool ReadUntil(EventReader* reader, std::vector<v1::GenerateEvent>* events, Done done) {
  for (v1::GenerateEvent e; reader->Read(&e);) {
    events->push_back(e);
    if (done(e)) return true;
  }
  return false;
}

bool IsDenoiseProgress(const v1::GenerateEvent& e) {
  return e.has_progress() && e.progress().stage() == "denoise";
}

// One call's context, stream and events.
struct Call {
  grpc::ClientContext ctx;
  std::unique_ptr<EventReader> reader;
  std::vector<v1::GenerateEvent> events;
  grpc::Status status;

  void Start(v1::Generation::Stub* stub, const v1::GenerateRequest& request) {
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(400));
    reader = stub->Generate(&ctx, request);
  }
  void ReadToEnd() {
    ReadUntil(reader.get(), &events, [](const v1::GenerateEvent&) { return false; });
    status = reader->Finish();
  }
};

class WanTinyProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<ServerProcess>(WanTinyConfig());
    ASSERT_TRUE(server_->Start()) << server_->error();
    channel_ = grpc::CreateChannel(server_->grpc_target(), grpc::InsecureChannelCredentials());
    generation_ = v1::Generation::NewStub(channel_);
    auto models = v1::Models::NewStub(channel_);
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(300);
    v1::ListModelsResponse list;
    while (std::chrono::steady_clock::now() < end) {
      grpc::ClientContext ctx;
      list.Clear();
      ASSERT_TRUE(models->List(&ctx, v1::ListModelsRequest(), &list).ok());
      ASSERT_EQ(list.models_size(), 1);
      if (list.models(0).state() != v1::MODEL_STATE_LOADING) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ASSERT_EQ(list.models(0).state(), v1::MODEL_STATE_READY)
        << list.models(0).state_reason() << "\n" << server_->Stderr();
  }

  std::unique_ptr<ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Generation::Stub> generation_;
};

TEST_F(WanTinyProcessTest, SigtermLetsTheRunningJobFinishFailsQueuedOnesAndExitsZero) {
  constexpr uint32_t kSteps = 16;
  Call running;
  running.Start(generation_.get(), Request("running", 128, 128, 9, kSteps));
  ASSERT_TRUE(ReadUntil(running.reader.get(), &running.events, IsDenoiseProgress));
  Call queued[2];
  for (Call& call : queued) {
    call.Start(generation_.get(), Request("queued", 64, 64, 1, 1));
    ASSERT_TRUE(ReadUntil(call.reader.get(), &call.events,
                          [](const v1::GenerateEvent& e) { return e.has_queued(); }));
  }

  // From here on no ASSERT: `stopper` must be joined.
  int exit_status = -1;
  std::thread stopper([&] { exit_status = server_->Stop(SIGTERM, 400); });
  for (Call& call : queued) {
    call.ReadToEnd();
    // Queued jobs are failed at once (UNAVAILABLE, retryable); their streams
    // carry the final Failed event and end with its code.
    EXPECT_EQ(call.status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << call.status.error_message();
    EXPECT_TRUE(call.events.back().has_failed()) << call.events.back().DebugString();
    EXPECT_EQ(call.events.back().failed().code(), static_cast<int>(call.status.error_code()));
    EXPECT_TRUE(call.events.back().failed().retryable());
    for (const v1::GenerateEvent& e : call.events) EXPECT_FALSE(e.has_started());
  }
  running.ReadToEnd();
  stopper.join();
  EXPECT_TRUE(running.status.ok()) << running.status.error_message();
  EXPECT_TRUE(running.events.back().has_completed()) << running.events.back().DebugString();
  EXPECT_TRUE(WIFEXITED(exit_status)) << "status " << exit_status;
  EXPECT_EQ(WEXITSTATUS(exit_status), 0) << server_->Stderr();
}

// A second signal while the drain waits for a running job: the process stops
// at once with 128 + that signal's number, without waiting for the job.
TEST_F(WanTinyProcessTest, SecondSignalDuringTheDrainStopsAtOnceWith128PlusTheSignal) {
  Call running;
  running.Start(generation_.get(), Request("long", 512, 512, 33, 50));
  ASSERT_TRUE(ReadUntil(running.reader.get(), &running.events, IsDenoiseProgress));
  ASSERT_EQ(kill(server_->pid(), SIGTERM), 0);
  const auto drain_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (server_->Stderr().find("draining") == std::string::npos &&
         std::chrono::steady_clock::now() < drain_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_NE(server_->Stderr().find("draining"), std::string::npos) << server_->Stderr();

  const auto second = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(server_->pid(), SIGINT), 0);
  const int status = server_->Wait(10);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - second).count();
  ASSERT_NE(status, -1) << "still draining 10 s after the second signal";
  ASSERT_TRUE(WIFEXITED(status)) << "status " << status;
  EXPECT_EQ(WEXITSTATUS(status), 128 + SIGINT);
  EXPECT_LT(seconds, 5);
  EXPECT_NE(server_->Stderr().find("during the drain, stopping now"), std::string::npos)
      << server_->Stderr();
  running.ReadToEnd();
  EXPECT_FALSE(running.status.ok()) << "the job cannot have finished: the process is gone";
}

// A client that stops reading in the middle of an artifact, then reads one
// message at a time with pauses: the worker runs the next job meanwhile (on
// the same connection), and the server holds no more than the artifact.
TEST_F(WanTinyProcessTest, StalledReaderBlocksNeitherTheWorkerNorTheConnection) {
  const int64_t idle_rss = ResidentBytes(server_->pid());
  ASSERT_GT(idle_rss, 0);
  v1::GenerateRequest big = Request("big", 128, 128, 33, 2);
  big.set_output_format(v1::OUTPUT_FORMAT_RAW_RGB);
  const uint64_t artifact_bytes = 128u * 128u * 3u * 33u;  // 2 chunks of at most 1 MiB
  Call slow;
  slow.Start(generation_.get(), big);
  ASSERT_TRUE(ReadUntil(slow.reader.get(), &slow.events,
                        [](const v1::GenerateEvent& e) { return e.has_artifact_header(); }));
  ASSERT_EQ(slow.events.back().artifact_header().info().size_bytes(), artifact_bytes);

  Call next;
  next.Start(generation_.get(), Request("next", 64, 64, 1, 1));
  next.ReadToEnd();
  EXPECT_TRUE(next.status.ok()) << next.status.error_message();
  ASSERT_FALSE(next.events.empty());
  EXPECT_TRUE(next.events.back().has_completed());

  int64_t peak_rss = ResidentBytes(server_->pid());
  const int64_t finished_rss = peak_rss;
  uint64_t received = 0;
  for (v1::GenerateEvent e; slow.reader->Read(&e);) {
    slow.events.push_back(e);
    if (e.has_artifact_chunk()) received += e.artifact_chunk().data().size();
    peak_rss = std::max(peak_rss, ResidentBytes(server_->pid()));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  slow.status = slow.reader->Finish();
  EXPECT_TRUE(slow.status.ok()) << slow.status.error_message();
  EXPECT_TRUE(slow.events.back().has_completed());
  EXPECT_EQ(received, artifact_bytes);
  const std::string rss = "VmRSS idle " + std::to_string(idle_rss >> 20) + " MiB, after both jobs " +
                          std::to_string(finished_rss >> 20) + " MiB, peak " +
                          std::to_string(peak_rss >> 20) + " MiB";
  // Reading slowly costs the server nothing beyond what it already holds, and
  // the jobs themselves (a 1.6 MB artifact) stay far below this bound.
  EXPECT_LT(peak_rss, finished_rss + (int64_t{64} << 20)) << rss;
  EXPECT_LT(peak_rss, idle_rss + (int64_t{512} << 20)) << rss;
}

// server.max_message_bytes stays at its 4 MiB default; the model allows 8 MiB
// images, so the server accepts requests up to 9 MiB.
constexpr char kLargeImages[] = R"(
models:
  - name: broken
    path: no-such-checkpoint
    limits: {max_image_bytes: 8388608}
)";

TEST(ServerProcessImageTest, ReceiveLimitAdmitsTheModelsLargestImage) {
  ServerProcess server(kLargeImages);
  ASSERT_TRUE(server.Start()) << server.error();
  auto channel = grpc::CreateChannel(server.grpc_target(), grpc::InsecureChannelCredentials());
  auto stub = v1::Generation::NewStub(channel);
  auto submit = [&](size_t image_bytes) {
    v1::GenerateRequest req;
    req.set_model("broken");
    req.set_prompt("a boat");
    req.set_image(std::string(image_bytes, 'x'));
    grpc::ClientContext ctx;
    v1::SubmitResponse response;
    return stub->Submit(&ctx, req, &response);
  };
  // 6 MB passes gRPC and reaches the model lookup (not loaded: UNAVAILABLE).
  const grpc::Status within = submit(6 << 20);
  EXPECT_EQ(within.error_code(), grpc::StatusCode::UNAVAILABLE) << within.error_message();
  // 10 MB is past 8 MiB + 1 MiB: gRPC refuses it before RainServe sees it.
  const grpc::Status over = submit(10 << 20);
  EXPECT_EQ(over.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << over.error_message();
  EXPECT_EQ(submit(16).error_code(), grpc::StatusCode::UNAVAILABLE);  // still serving
}

TEST(ServerStartupTest, BadConfigExitsNonZeroWithKeyPath) {
  std::string err;
  const int code = testing::RunServerToExit("server: {queue: {max_pending: 0}}\n", "", &err);
  EXPECT_EQ(code, 2);
  EXPECT_NE(err.find("server.queue.max_pending: expected integer >= 1"), std::string::npos) << err;
}

TEST(ServerStartupTest, MissingConfigFileAndBadFlagsExitNonZero) {
  std::string err;
  EXPECT_EQ(testing::RunServerToExit("", "--config /nonexistent.yaml", &err), 2);
  EXPECT_NE(err.find("/nonexistent.yaml"), std::string::npos) << err;
  EXPECT_EQ(testing::RunServerToExit("", "--bogus", &err), 2);
  EXPECT_NE(err.find("bad argument '--bogus'"), std::string::npos) << err;
  EXPECT_EQ(testing::RunServerToExit("", "--listen nowhere", &err), 2);
  EXPECT_NE(err.find("--listen: expected \"host:port\""), std::string::npos) << err;
}

TEST(ServerStartupTest, PortInUseIsReportedNotCrashed) {
  ServerProcess first(kNoModels);
  ASSERT_TRUE(first.Start()) << first.error();
  std::string err;
  const std::string flags = "--listen 127.0.0.1:" + std::to_string(first.grpc_port()) +
                            " --metrics-listen 127.0.0.1:0";
  EXPECT_EQ(testing::RunServerToExit(kNoModels, flags, &err), 2);
  EXPECT_NE(err.find("cannot listen for gRPC"), std::string::npos) << err;
}

}  // namespace
}  // namespace rainserve
