// gRPC service implementations (callback API).
//
// Until a pipeline family is compiled in and a model is ready, Generation
// answers UNAVAILABLE ("no model is ready") and Models lists the configured
// entries with the reason they are not ready.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/config.h"
#include "rainserve/v1/generation.grpc.pb.h"
#include "rainserve/v1/models.grpc.pb.h"

namespace rainserve {

// One configured model as the server sees it. Read by services on gRPC threads.
struct ModelSlot {
  ModelEntry entry;
  v1::ModelState state = v1::MODEL_STATE_NOT_LOADED;
  std::string reason;
};

class ModelsService final : public v1::Models::CallbackService {
 public:
  explicit ModelsService(std::shared_ptr<const std::vector<ModelSlot>> models)
      : models_(std::move(models)) {}

  grpc::ServerUnaryReactor* List(grpc::CallbackServerContext* ctx,
                                 const v1::ListModelsRequest* request,
                                 v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* Describe(grpc::CallbackServerContext* ctx,
                                     const v1::DescribeModelRequest* request,
                                     v1::ModelInfo* response) override;
  grpc::ServerUnaryReactor* Load(grpc::CallbackServerContext* ctx,
                                 const v1::LoadModelRequest* request,
                                 v1::ModelInfo* response) override;
  grpc::ServerUnaryReactor* Unload(grpc::CallbackServerContext* ctx,
                                   const v1::UnloadModelRequest* request,
                                   v1::ModelInfo* response) override;

 private:
  std::shared_ptr<const std::vector<ModelSlot>> models_;
};

class GenerationService final : public v1::Generation::CallbackService {
 public:
  grpc::ServerWriteReactor<v1::GenerateEvent>* Generate(
      grpc::CallbackServerContext* ctx, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Submit(grpc::CallbackServerContext* ctx,
                                   const v1::GenerateRequest* request,
                                   v1::SubmitResponse* response) override;
  grpc::ServerWriteReactor<v1::GenerateEvent>* Watch(grpc::CallbackServerContext* ctx,
                                                     const v1::WatchRequest* request) override;
  grpc::ServerUnaryReactor* Cancel(grpc::CallbackServerContext* ctx,
                                   const v1::CancelRequest* request,
                                   v1::CancelResponse* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* ctx,
                                   const v1::GetJobRequest* request, v1::Job* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* ctx,
                                     const v1::ListJobsRequest* request,
                                     v1::ListJobsResponse* response) override;
};

}  // namespace rainserve
