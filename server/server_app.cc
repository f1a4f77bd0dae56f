#include "server/server_app.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <chrono>
#include <mutex>

#include "common/logging.h"
#include "pipelines/registry.h"
#include "server/build_info.h"
#include "server/metrics.h"
#include "server/metrics_http.h"
#include "server/services.h"

namespace rainserve {

struct ServerApp::State {
  ServerConfig config;
  std::shared_ptr<prometheus::Registry> registry;
  std::unique_ptr<ServerMetrics> metrics;
  std::unique_ptr<MetricsHttpServer> exposer;
  std::shared_ptr<std::vector<ModelSlot>> models;
  std::unique_ptr<ModelsService> models_service;
  std::unique_ptr<GenerationService> generation_service;
  std::unique_ptr<grpc::Server> server;
  int grpc_port = 0;
  int metrics_port = 0;
  std::once_flag shutdown_once;
};

namespace {

constexpr char kGenerationService[] = "rainserve.v1.Generation";
constexpr char kModelsService[] = "rainserve.v1.Models";

// Resolves each configured model against the pipeline families in this build.
std::shared_ptr<std::vector<ModelSlot>> PrepareModels(const ServerConfig& config) {
  PipelineRegistry registry;
  RegisterBuiltinPipelines(&registry);
  auto models = std::make_shared<std::vector<ModelSlot>>();
  for (const ModelEntry& entry : config.models) {
    ModelSlot slot;
    slot.entry = entry;
    auto pipeline = registry.Create(entry);
    if (pipeline.ok()) {
      slot.state = v1::MODEL_STATE_READY;
    } else {
      slot.state = v1::MODEL_STATE_FAILED;
      slot.reason = pipeline.status().message();
      RAINSERVE_LOG(WARNING) << "model not ready: " << slot.reason;
    }
    models->push_back(std::move(slot));
  }
  return models;
}

}  // namespace

ServerApp::ServerApp(std::unique_ptr<State> state) : state_(std::move(state)) {}

ServerApp::~ServerApp() { Shutdown(); }

int ServerApp::grpc_port() const { return state_->grpc_port; }
int ServerApp::metrics_port() const { return state_->metrics_port; }

StatusOr<std::unique_ptr<ServerApp>> ServerApp::Start(const ServerConfig& config) {
  auto st = std::make_unique<State>();
  st->config = config;
  const ServerSection& sc = config.server;

  st->registry = std::make_shared<prometheus::Registry>();
  st->metrics = std::make_unique<ServerMetrics>(st->registry);
  st->metrics->SetBuildInfo(kVersion, kGitSha, kCudaVersion);
  auto exposer = MetricsHttpServer::Start(sc.metrics_address, st->registry);
  if (!exposer.ok()) return exposer.status().WithPrefix("metrics");
  st->exposer = std::move(exposer).value();
  st->metrics_port = st->exposer->port();

  st->models = PrepareModels(config);
  st->models_service = std::make_unique<ModelsService>(st->models);
  st->generation_service = std::make_unique<GenerationService>();

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(sc.listen_address, grpc::InsecureServerCredentials(), &st->grpc_port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(sc.max_message_bytes));
  // Without this, Linux lets a second server bind the same port and the two
  // silently share its traffic.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(st->models_service.get());
  builder.RegisterService(st->generation_service.get());
  st->server = builder.BuildAndStart();
  if (!st->server || st->grpc_port == 0) {
    return UnavailableError("cannot listen for gRPC on " + sc.listen_address +
                            " (address in use or not local?)");
  }

  bool any_ready = false;
  for (const auto& m : *st->models) any_ready = any_ready || m.state == v1::MODEL_STATE_READY;
  grpc::HealthCheckServiceInterface* health = st->server->GetHealthCheckService();
  health->SetServingStatus("", true);
  health->SetServingStatus(kModelsService, true);
  health->SetServingStatus(kGenerationService, any_ready);

  RAINSERVE_LOG(INFO) << "rainserve " << kVersion << " (" << kGitSha << ") serving gRPC on port "
                      << st->grpc_port << ", metrics on port " << st->metrics_port << "; "
                      << st->models->size() << " model(s) configured, generation "
                      << (any_ready ? "SERVING" : "NOT_SERVING");
  return std::unique_ptr<ServerApp>(new ServerApp(std::move(st)));
}

void ServerApp::Shutdown() {
  std::call_once(state_->shutdown_once, [this] {
    State& st = *state_;
    if (st.server) {
      // Health first, so load balancers stop sending work before we stop accepting.
      st.server->GetHealthCheckService()->Shutdown();
      const auto drain = std::chrono::duration<double>(st.config.server.drain_timeout_seconds);
      st.server->Shutdown(std::chrono::system_clock::now() +
                          std::chrono::duration_cast<std::chrono::system_clock::duration>(drain));
      st.server->Wait();
    }
    st.exposer.reset();
    RAINSERVE_LOG(INFO) << "server stopped";
  });
}

}  // namespace rainserve
