// rainserve.v1.Models (callback API) on the ModelManager: List/Describe show
// every configured model with its state, limits and defaults; Load/Unload
// manage them (admin token, or refused when model management is disabled).
// rainserve.v1.Generation lives in server/generation_service.h.
#pragma once

#include "rainserve/v1/models.grpc.pb.h"
#include "server/auth.h"
#include "server/model_manager.h"

namespace rainserve {

// Fills `info` from a model snapshot (state, reason, limits and defaults
// when ready). Called on gRPC threads.
void FillModelView(const ModelView& view, v1::ModelInfo* info);

class ModelsService final : public v1::Models::CallbackService {
 public:
  // `models` and `auth` must outlive the service and the calls it served.
  ModelsService(ModelManager* models, const Authenticator* auth) : models_(models), auth_(auth) {}

  grpc::ServerUnaryReactor* List(grpc::CallbackServerContext* ctx,
                                 const v1::ListModelsRequest* request,
                                 v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* Describe(grpc::CallbackServerContext* ctx,
                                     const v1::DescribeModelRequest* request,
                                     v1::ModelInfo* response) override;
  // Finishes when the model is READY or FAILED (the reactor completes on the
  // loader thread); FAILED_PRECONDITION with the reason when loading failed.
  grpc::ServerUnaryReactor* Load(grpc::CallbackServerContext* ctx,
                                 const v1::LoadModelRequest* request,
                                 v1::ModelInfo* response) override;
  // Fails the model's queued jobs (UNAVAILABLE), waits for its running job,
  // frees it.
  grpc::ServerUnaryReactor* Unload(grpc::CallbackServerContext* ctx,
                                   const v1::UnloadModelRequest* request,
                                   v1::ModelInfo* response) override;

 private:
  ModelManager* const models_;
  const Authenticator* const auth_;
};

}  // namespace rainserve
