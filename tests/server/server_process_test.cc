// Starts the real rainserve-server binary on ephemeral ports and talks to it
// the way clients and orchestrators do: gRPC health, reflection, the API,
// the metrics endpoint, and signals.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <set>
#include <thread>

#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "rainserve/v1/generation.grpc.pb.h"
#include "rainserve/v1/models.grpc.pb.h"
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
