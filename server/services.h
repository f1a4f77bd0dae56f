// rainserve.v1.Models (callback API) on the ModelManager: List/Describe show
// every configured model with its state, limits and defaults; Load/Unload
// manage them (admin token, or refused when model management is disabled).
// rainserve.v1.Generation lives in server/generation_service.h. The methods
// are served raw like Generation's (server/raw_calls.h): authenticated first,
// then parsed, INVALID_ARGUMENT for bytes that are not a valid message.
#pragma once

#include "rainserve/v1/models.grpc.pb.h"
#include "server/auth.h"
#include "server/model_manager.h"

namespace rainserve {

// Fills `info` from a model snapshot (state, reason, limits and defaults
// when ready). Called on gRPC threads.
void FillModelView(const ModelView& view, v1::ModelInfo* info);

// Every rainserve.v1.Models method as a raw callback method.
using RawModelsService = v1::Models::WithRawCallbackMethod_List<
    v1::Models::WithRawCallbackMethod_Describe<v1::Models::WithRawCallbackMethod_Load<
        v1::Models::WithRawCallbackMethod_Unload<v1::Models::Service>>>>;

class ModelsService final : public RawModelsService {
 public:
  // `models` and `auth` must outlive the service and the calls it served.
  ModelsService(ModelManager* models, const Authenticator* auth) : models_(models), auth_(auth) {}

  grpc::ServerUnaryReactor* List(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* Describe(grpc::CallbackServerContext* ctx,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  // Finishes when the model is READY or FAILED (the reactor completes on the
  // loader thread); FAILED_PRECONDITION with the reason when loading failed.
  grpc::ServerUnaryReactor* Load(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request,
                                 grpc::ByteBuffer* response) override;
  // Fails the model's queued jobs (UNAVAILABLE), waits for its running job,
  // frees it.
  grpc::ServerUnaryReactor* Unload(grpc::CallbackServerContext* ctx,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;

 private:
  ModelManager* const models_;
  const Authenticator* const auth_;
};

}  // namespace rainserve
