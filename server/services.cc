#include "server/services.h"

#include <memory>

#include "server/generation_service.h"
#include "server/raw_calls.h"
#include "server/request_mapping.h"

namespace rainserve {
namespace {

v1::ModelState ToProto(ModelState state) {
  switch (state) {
    case ModelState::kNotLoaded: return v1::MODEL_STATE_NOT_LOADED;
    case ModelState::kLoading: return v1::MODEL_STATE_LOADING;
    case ModelState::kReady: return v1::MODEL_STATE_READY;
    case ModelState::kFailed: return v1::MODEL_STATE_FAILED;
  }
  return v1::MODEL_STATE_UNSPECIFIED;
}

grpc::Status RequireName(const std::string& name) {
  if (name.empty()) return {grpc::StatusCode::INVALID_ARGUMENT, "name: required"};
  if (name.size() > kMaxModelNameBytes) {
    return {grpc::StatusCode::INVALID_ARGUMENT, "name must be at most " +
                                                    std::to_string(kMaxModelNameBytes) +
                                                    " bytes (got " +
                                                    std::to_string(name.size()) + ")"};
  }
  return grpc::Status::OK;
}

}  // namespace

void FillModelView(const ModelView& view, v1::ModelInfo* info) {
  if (view.description) FillModelInfo(*view.description, info);
  info->set_name(view.entry.name);
  info->set_pipeline(view.entry.pipeline);
  info->set_device(view.entry.device);
  info->clear_devices();
  if (view.entry.DeviceCount() > 1) {
    for (const std::string& device : view.entry.devices) info->add_devices(device);
  }
  info->set_dtype(view.entry.dtype);
  info->set_state(ToProto(view.state));
  info->set_state_reason(view.reason);
}

grpc::ServerUnaryReactor* ModelsService::List(grpc::CallbackServerContext* ctx,
                                              const grpc::ByteBuffer* request,
                                              grpc::ByteBuffer* response) {
  return ServeUnary<v1::ListModelsRequest, v1::ListModelsResponse>(
      ctx, auth_->Check(ctx), request, response,
      [&](const v1::ListModelsRequest&, v1::ListModelsResponse* resp) {
        for (const ModelView& view : models_->List()) FillModelView(view, resp->add_models());
        return grpc::Status::OK;
      });
}

grpc::ServerUnaryReactor* ModelsService::Describe(grpc::CallbackServerContext* ctx,
                                                  const grpc::ByteBuffer* request,
                                                  grpc::ByteBuffer* response) {
  return ServeUnary<v1::DescribeModelRequest, v1::ModelInfo>(
      ctx, auth_->Check(ctx), request, response,
      [&](const v1::DescribeModelRequest& req, v1::ModelInfo* info) {
        if (grpc::Status bad = RequireName(req.name()); !bad.ok()) return bad;
        StatusOr<ModelView> view = models_->Get(req.name());
        if (!view.ok()) return ToGrpcStatus(view.status());
        FillModelView(*view, info);
        return grpc::Status::OK;
      });
}

grpc::ServerUnaryReactor* ModelsService::Load(grpc::CallbackServerContext* ctx,
                                              const grpc::ByteBuffer* request,
                                              grpc::ByteBuffer* response) {
  v1::LoadModelRequest req;
  grpc::Status s = auth_->CheckAdmin(ctx);
  if (s.ok()) s = ParseRequest(*ctx, *request, &req);
  if (s.ok()) s = RequireName(req.name());
  if (!s.ok()) return FinishUnary(ctx, s);
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  // Finishes on the loader thread once the model is READY or FAILED.
  const Status started = models_->Load(req.name(), [reactor, response](const ModelView& v) {
    v1::ModelInfo info;
    FillModelView(v, &info);
    if (v.state == ModelState::kFailed) {
      reactor->Finish({grpc::StatusCode::FAILED_PRECONDITION,
                       "model '" + v.entry.name + "' failed to load: " + v.reason});
    } else {
      reactor->Finish(SerializeMessage(info, response));
    }
  });
  if (!started.ok()) reactor->Finish(ToGrpcStatus(started));
  return reactor;
}

grpc::ServerUnaryReactor* ModelsService::Unload(grpc::CallbackServerContext* ctx,
                                                const grpc::ByteBuffer* request,
                                                grpc::ByteBuffer* response) {
  return ServeUnary<v1::UnloadModelRequest, v1::ModelInfo>(
      ctx, auth_->CheckAdmin(ctx), request, response,
      [&](const v1::UnloadModelRequest& req, v1::ModelInfo* info) {
        if (grpc::Status bad = RequireName(req.name()); !bad.ok()) return bad;
        StatusOr<ModelView> view = models_->Unload(req.name());
        if (!view.ok()) return ToGrpcStatus(view.status());
        FillModelView(*view, info);
        return grpc::Status::OK;
      });
}

}  // namespace rainserve
