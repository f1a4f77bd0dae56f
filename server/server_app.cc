#include "server/server_app.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <chrono>
#include <mutex>

#include "common/files.h"
#include "common/logging.h"
#include "pipelines/core/registry.h"
#include "server/build_info.h"
#include "server/generation_service.h"
#include "server/metrics.h"
#include "server/metrics_http.h"
#include "server/model_manager.h"
#include "server/raw_calls.h"
#include "server/services.h"
#include "media/artifacts.h"
#include "media/ffmpeg_log.h"
#include "server/auth.h"

namespace rainserve {

struct ServerApp::State {
  ServerConfig config;
  std::shared_ptr<prometheus::Registry> registry;
  std::unique_ptr<ServerMetrics> metrics;
  std::unique_ptr<MetricsHttpServer> exposer;
  std::unique_ptr<Authenticator> auth;
  std::unique_ptr<JobManager> jobs;
  std::unique_ptr<ModelManager> models;
  std::unique_ptr<ModelsService> models_service;
  std::unique_ptr<GenerationService> generation_service;
  std::unique_ptr<grpc::Server> server;
  std::mutex health_mu;  // orders health updates from loader threads
  bool draining = false;
  int grpc_port = 0;
  int metrics_port = 0;
  std::once_flag shutdown_once;
};

namespace {

constexpr char kGenerationService[] = "rainserve.v1.Generation";
constexpr char kModelsService[] = "rainserve.v1.Models";

media::ArtifactFormat FormatOf(v1::OutputFormat format) {
  switch (format) {
    case v1::OUTPUT_FORMAT_PNG: return media::ArtifactFormat::kPng;
    case v1::OUTPUT_FORMAT_MP4: return media::ArtifactFormat::kMp4;
    case v1::OUTPUT_FORMAT_RAW_RGB: return media::ArtifactFormat::kRawRgb;
    default: return media::ArtifactFormat::kAuto;
  }
}

// Frames (or latents) -> the artifacts the resolved request asked for (worker thread).
StatusOr<std::vector<media::Artifact>> EncodeOutput(const GenerationOutput& out,
                                                    const v1::GenerateRequest& resolved) {
  if (resolved.output_format() == v1::OUTPUT_FORMAT_LATENTS) {
    if (out.latent_shape.size() != 4 || out.latents.empty()) {
      return InternalError("the pipeline returned no latents for a latents request");
    }
    return std::vector<media::Artifact>{
        media::LatentsArtifact(out.latents, out.latent_shape, resolved.fps())};
  }
  return media::EncodeArtifacts(out.rgb.data(), static_cast<int>(out.width),
                                static_cast<int>(out.height), static_cast<int>(out.num_frames),
                                static_cast<int>(resolved.fps()),
                                FormatOf(resolved.output_format()));
}

StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const SecurityConfig& sec) {
  if (sec.tls_cert_file.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  RAINSERVE_RETURN_IF_ERROR(ReadFile(sec.tls_key_file, &pair.private_key).WithPrefix("security.tls.key_file"));
  RAINSERVE_RETURN_IF_ERROR(ReadFile(sec.tls_cert_file, &pair.cert_chain).WithPrefix("security.tls.cert_file"));
  grpc::SslServerCredentialsOptions options(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  if (!sec.tls_client_ca_file.empty()) {
    RAINSERVE_RETURN_IF_ERROR(
        ReadFile(sec.tls_client_ca_file, &options.pem_root_certs).WithPrefix("security.tls.client_ca_file"));
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  options.pem_key_cert_pairs.push_back(pair);
  return grpc::SslServerCredentials(options);
}

// Health: "" and Models are SERVING while not draining; Generation while some
// model is ready; "rainserve.v1.Generation/<model>" per model.
void UpdateHealth(ServerApp* app, ServerApp::State* st);

}  // namespace

ServerApp::ServerApp(std::unique_ptr<State> state) : state_(std::move(state)) {}

ServerApp::~ServerApp() { Shutdown(); }

int ServerApp::grpc_port() const { return state_->grpc_port; }
int ServerApp::metrics_port() const { return state_->metrics_port; }

StatusOr<std::unique_ptr<ServerApp>> ServerApp::Start(const ServerConfig& config) {
  auto st = std::make_unique<State>();
  st->config = config;
  const ServerSection& sc = config.server;
  media::ForwardFfmpegLogs();
  RouteProtobufLogs();

  RAINSERVE_ASSIGN_OR_RETURN(Authenticator auth, Authenticator::FromConfig(config.security));
  st->auth = std::make_unique<Authenticator>(std::move(auth));
  RAINSERVE_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                             Credentials(config.security));

  st->registry = std::make_shared<prometheus::Registry>();
  st->metrics = std::make_unique<ServerMetrics>(st->registry);
  st->metrics->SetBuildInfo(kVersion, kGitSha, kCudaVersion);
  ServerMetrics* metrics = st->metrics.get();
  auto exposer = MetricsHttpServer::Start(sc.metrics_address, st->registry,
                                          [metrics] { metrics->RefreshDeviceMemory(); });
  if (!exposer.ok()) return exposer.status().WithPrefix("metrics");
  st->exposer = std::move(exposer).value();
  st->metrics_port = st->exposer->port();

  State* const state = st.get();
  JobManagerOptions job_options = JobManagerOptions::FromConfig(sc);
  job_options.on_device_fault = [state](const std::string& model, const Status& fault) {
    state->models->MarkFailed(model, fault.ToString());
  };
  st->jobs = std::make_unique<JobManager>(std::move(job_options), EncodeOutput,
                                          st->metrics.get());
  auto registry = std::make_shared<PipelineRegistry>();
  RegisterBuiltinPipelines(registry.get());
  State* raw = st.get();
  ModelManager::Hooks hooks;
  hooks.on_ready = [raw](const std::string& name, std::shared_ptr<Pipeline> pipeline) {
    const Status s = raw->jobs->AddModel(name, std::move(pipeline));
    if (!s.ok()) RAINSERVE_LOG(ERROR) << "model '" << name << "': " << s.ToString();
  };
  hooks.on_unload = [raw](const std::string& name) { (void)raw->jobs->RemoveModel(name); };
  hooks.on_change = [raw] {
    raw->metrics->SetModelsReady(raw->models->List());
    UpdateHealth(nullptr, raw);
  };
  st->models = std::make_unique<ModelManager>(
      config.models, [registry](const ModelOptions& e) { return registry->Create(e); },
      std::move(hooks));
  st->models_service = std::make_unique<ModelsService>(st->models.get(), st->auth.get());
  st->generation_service = std::make_unique<GenerationService>(
      [raw](const std::string& model) { return raw->models->Ready(model); }, st->jobs.get(),
      st->auth.get(), st->metrics.get(), sc.max_message_bytes);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(sc.listen_address, credentials, &st->grpc_port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(ReceiveMessageBytes(config)));
  // Calls open at once on one client connection (HTTP/2 SETTINGS); gRPC
  // clients queue the calls beyond it until one ends (docs/security.md).
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             static_cast<int>(sc.max_concurrent_streams));
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
  UpdateHealth(nullptr, raw);
  st->metrics->SetModelsReady(st->models->List());
  st->metrics->RefreshDeviceMemory();
  st->models->LoadAtStartup();

  RAINSERVE_LOG(INFO) << "rainserve " << kVersion << " (" << kGitSha << ") serving gRPC on port "
                      << st->grpc_port << (config.security.tls_cert_file.empty() ? "" : " (TLS)")
                      << (st->auth->enabled() ? " with bearer tokens" : "")
                      << ", metrics on port " << st->metrics_port << "; "
                      << config.models.size() << " model(s) configured";
  return std::unique_ptr<ServerApp>(new ServerApp(std::move(st)));
}

namespace {

void UpdateHealth(ServerApp*, ServerApp::State* st) {
  std::lock_guard<std::mutex> lock(st->health_mu);
  if (!st->server || st->draining) return;
  grpc::HealthCheckServiceInterface* health = st->server->GetHealthCheckService();
  health->SetServingStatus("", true);
  health->SetServingStatus(kModelsService, true);
  bool any_ready = false;
  for (const ModelView& m : st->models->List()) {
    const bool ready = m.state == ModelState::kReady;
    any_ready = any_ready || ready;
    health->SetServingStatus(std::string(kGenerationService) + "/" + m.entry.name, ready);
  }
  health->SetServingStatus(kGenerationService, any_ready);
}

}  // namespace

void ServerApp::WaitForModels() { state_->models->WaitIdle(); }

void ServerApp::Shutdown() {
  std::call_once(state_->shutdown_once, [this] {
    State& st = *state_;
    if (st.server) {
      {
        // Health first (everything NOT_SERVING), so load balancers stop
        // sending work while running jobs finish.
        std::lock_guard<std::mutex> lock(st.health_mu);
        st.draining = true;
        st.server->GetHealthCheckService()->Shutdown();
      }
      const double drain = st.config.server.drain_timeout_seconds;
      RAINSERVE_LOG(INFO) << "draining: new jobs are refused, running jobs get up to " << drain
                          << " s";
      st.jobs->Drain(drain);
      // Streams now end with their jobs' terminal events; give them a moment
      // to flush, then stop.
      st.server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
      st.server->Wait();
    }
    st.models->Shutdown();
    st.exposer.reset();
    RAINSERVE_LOG(INFO) << "server stopped";
  });
}

}  // namespace rainserve
