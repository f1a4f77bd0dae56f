// The end-to-end tests' view of the service: ServerApp started in-process on
// loopback ports, a gRPC client with the generated stubs (optional bearer
// token, a deadline on every call), the events of a Generate or Watch stream
// and the artifacts they carry (offsets and SHA-256 checked), and a fixture
// that shares one server among the tests of a suite. Used by e2e_test.cc and
// e2e_models_test.cc.
#pragma once

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "media/sha256.h"
#include "rainserve/v1/generation.grpc.pb.h"
#include "rainserve/v1/models.grpc.pb.h"
#include "server/config.h"
#include "server/server_app.h"

namespace rainserve::testing {

// Starts the service and waits for its models; null (with a failure) on error.
inline std::unique_ptr<ServerApp> StartApp(const ServerConfig& config) {
  StatusOr<std::unique_ptr<ServerApp>> app = ServerApp::Start(config);
  if (!app.ok()) {
    ADD_FAILURE() << "ServerApp::Start(" << config.source << "): " << app.status().ToString();
    return nullptr;
  }
  (*app)->WaitForModels();
  return std::move(app).value();
}

inline std::string Target(const ServerApp& app) {
  return "127.0.0.1:" + std::to_string(app.grpc_port());
}

// The events of one Generate or Watch call, in order, and how it ended.
struct Stream {
  std::vector<v1::GenerateEvent> events;
  grpc::Status status;
};

// Reads `reader` to its end into `s` and finishes the call.
inline void ReadToEnd(grpc::ClientReader<v1::GenerateEvent>* reader, Stream* s) {
  for (v1::GenerateEvent e; reader->Read(&e);) s->events.push_back(e);
  s->status = reader->Finish();
}

struct Artifact {
  v1::ArtifactInfo info;
  std::string data;
};

// The artifacts of a stream, from their headers and chunks: each chunk's
// offset is the bytes received so far, and each artifact's size and SHA-256
// are its header's.
inline std::vector<Artifact> Artifacts(const Stream& s) {
  std::vector<Artifact> artifacts;
  for (const v1::GenerateEvent& e : s.events) {
    if (e.has_artifact_header()) {
      EXPECT_EQ(e.artifact_header().info().index(), artifacts.size());
      artifacts.push_back({e.artifact_header().info(), ""});
    } else if (e.has_artifact_chunk()) {
      const v1::ArtifactChunk& c = e.artifact_chunk();
      EXPECT_LT(c.index(), artifacts.size());
      if (c.index() >= artifacts.size()) continue;
      EXPECT_EQ(c.offset(), artifacts[c.index()].data.size());
      artifacts[c.index()].data += c.data();
    }
  }
  for (const Artifact& a : artifacts) {
    EXPECT_EQ(a.data.size(), a.info.size_bytes());
    EXPECT_EQ(media::Sha256Hex(a.data), a.info.sha256());
  }
  return artifacts;
}

// What a Generate stream delivered: the resolved request (its Accepted
// event), the result (its Completed event) and the artifacts.
struct Generated {
  grpc::Status status;
  v1::GenerateRequest resolved;
  v1::GenerateResult result;
  std::vector<Artifact> artifacts;
};

inline Generated Summarize(const Stream& s) {
  Generated g;
  g.status = s.status;
  for (const v1::GenerateEvent& e : s.events) {
    if (e.has_accepted()) g.resolved = e.accepted().resolved();
    if (e.has_completed()) g.result = e.completed().result();
  }
  g.artifacts = Artifacts(s);
  return g;
}

// A connection with stubs for the API and health; `token` goes out as
// "authorization: Bearer <token>" on every API call when set.
class Client {
 public:
  explicit Client(std::shared_ptr<grpc::Channel> channel, std::string token = "")
      : channel_(std::move(channel)),
        token_(std::move(token)),
        generation_(v1::Generation::NewStub(channel_)),
        models_(v1::Models::NewStub(channel_)),
        health_(grpc::health::v1::Health::NewStub(channel_)) {}
  explicit Client(const ServerApp& app, std::string token = "")
      : Client(grpc::CreateChannel(Target(app), grpc::InsecureChannelCredentials()),
               std::move(token)) {}

  // Token and a deadline (every call has one, so that a hang fails the test).
  void Prepare(grpc::ClientContext* ctx, double deadline_seconds = 120) const {
    if (!token_.empty()) ctx->AddMetadata("authorization", "Bearer " + token_);
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(static_cast<int64_t>(deadline_seconds * 1000)));
  }

  Stream Generate(const v1::GenerateRequest& request, double deadline_seconds = 120) {
    grpc::ClientContext ctx;
    Prepare(&ctx, deadline_seconds);
    Stream s;
    ReadToEnd(generation_->Generate(&ctx, request).get(), &s);
    return s;
  }

  Stream Watch(const std::string& job_id, uint64_t from_seq) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    v1::WatchRequest watch;
    watch.set_job_id(job_id);
    watch.set_from_seq(from_seq);
    Stream s;
    ReadToEnd(generation_->Watch(&ctx, watch).get(), &s);
    return s;
  }

  grpc::Status Submit(const v1::GenerateRequest& request, v1::Job* job) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    v1::SubmitResponse response;
    const grpc::Status s = generation_->Submit(&ctx, request, &response);
    *job = response.job();
    return s;
  }

  grpc::Status Cancel(const std::string& job_id) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    v1::CancelRequest request;
    request.set_job_id(job_id);
    v1::CancelResponse response;
    return generation_->Cancel(&ctx, request, &response);
  }

  v1::Job GetJob(const std::string& job_id) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    v1::GetJobRequest request;
    request.set_job_id(job_id);
    v1::Job job;
    const grpc::Status s = generation_->GetJob(&ctx, request, &job);
    EXPECT_TRUE(s.ok()) << job_id << ": " << s.error_message();
    return job;
  }

  // Polls GetJob until the job reaches `state`; the last snapshot either way.
  v1::Job WaitForState(const std::string& job_id, v1::JobState state, double timeout_seconds = 60) {
    const auto end = std::chrono::steady_clock::now() +
                     std::chrono::milliseconds(static_cast<int64_t>(timeout_seconds * 1000));
    v1::Job job = GetJob(job_id);
    while (job.state() != state && std::chrono::steady_clock::now() < end) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      job = GetJob(job_id);
    }
    EXPECT_EQ(job.state(), state) << job.DebugString();
    return job;
  }

  grpc::Status ListModels(v1::ListModelsResponse* response, double deadline_seconds = 10) {
    grpc::ClientContext ctx;
    Prepare(&ctx, deadline_seconds);
    return models_->List(&ctx, v1::ListModelsRequest(), response);
  }

  grpc::Status Describe(const std::string& name, v1::ModelInfo* info) {
    return CallModel(&v1::Models::Stub::Describe, name, info);
  }

  // Models.Describe of a model that exists; the RPC must succeed.
  v1::ModelInfo Describe(const std::string& name) {
    v1::ModelInfo info;
    const grpc::Status s = Describe(name, &info);
    EXPECT_TRUE(s.ok()) << name << ": " << s.error_message();
    return info;
  }

  grpc::Status Load(const std::string& name, v1::ModelInfo* info) {
    return CallModel(&v1::Models::Stub::Load, name, info);
  }

  grpc::Status Unload(const std::string& name, v1::ModelInfo* info) {
    return CallModel(&v1::Models::Stub::Unload, name, info);
  }

  // Health.Check for `service`; the RPC must succeed.
  grpc::health::v1::HealthCheckResponse::ServingStatus Health(const std::string& service) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    const grpc::Status s = health_->Check(&ctx, request, &response);
    EXPECT_TRUE(s.ok()) << service << ": " << s.error_message();
    return response.status();
  }

  v1::Generation::Stub* generation() { return generation_.get(); }
  grpc::health::v1::Health::Stub* health() { return health_.get(); }

 private:
  // A Models RPC whose request names the model (Describe, Load, Unload).
  template <typename Request>
  grpc::Status CallModel(grpc::Status (v1::Models::Stub::*rpc)(grpc::ClientContext*,
                                                               const Request&, v1::ModelInfo*),
                         const std::string& name, v1::ModelInfo* info) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    Request request;
    request.set_name(name);
    return (models_.get()->*rpc)(&ctx, request, info);
  }

  std::shared_ptr<grpc::Channel> channel_;
  std::string token_;
  std::unique_ptr<v1::Generation::Stub> generation_;
  std::unique_ptr<v1::Models::Stub> models_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

// One server for all the tests of a suite: `kStart` makes it (null, with a
// failure, when it cannot) before the first test, and it stops after the
// last; each test gets a Client of its own. For tests that leave the server
// as they found it.
template <std::unique_ptr<ServerApp> (*kStart)()>
class SharedServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { app_ = kStart().release(); }
  static void TearDownTestSuite() {
    delete app_;
    app_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(app_, nullptr);
    client_ = std::make_unique<Client>(*app_);
  }

  static inline ServerApp* app_ = nullptr;
  std::unique_ptr<Client> client_;
};

}  // namespace rainserve::testing
