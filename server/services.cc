#include "server/services.h"

#include "server/generation_service.h"
#include "server/request_mapping.h"

namespace rainserve {
namespace {

grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* ctx, const grpc::Status& s) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(s);
  return reactor;
}

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
  if (info->task().empty()) info->set_task("text-to-video");
  info->set_device(view.entry.device);
  info->set_dtype(view.entry.dtype);
  info->set_state(ToProto(view.state));
  info->set_state_reason(view.reason);
}

grpc::ServerUnaryReactor* ModelsService::List(grpc::CallbackServerContext* ctx,
                                              const v1::ListModelsRequest*,
                                              v1::ListModelsResponse* response) {
  if (grpc::Status denied = auth_->Check(ctx); !denied.ok()) return FinishUnary(ctx, denied);
  for (const ModelView& view : models_->List()) FillModelView(view, response->add_models());
  return FinishUnary(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* ModelsService::Describe(grpc::CallbackServerContext* ctx,
                                                  const v1::DescribeModelRequest* request,
                                                  v1::ModelInfo* response) {
  if (grpc::Status denied = auth_->Check(ctx); !denied.ok()) return FinishUnary(ctx, denied);
  if (grpc::Status bad = RequireName(request->name()); !bad.ok()) return FinishUnary(ctx, bad);
  StatusOr<ModelView> view = models_->Get(request->name());
  if (!view.ok()) return FinishUnary(ctx, ToGrpcStatus(view.status()));
  FillModelView(*view, response);
  return FinishUnary(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* ModelsService::Load(grpc::CallbackServerContext* ctx,
                                              const v1::LoadModelRequest* request,
                                              v1::ModelInfo* response) {
  if (grpc::Status denied = auth_->CheckAdmin(ctx); !denied.ok()) return FinishUnary(ctx, denied);
  if (grpc::Status bad = RequireName(request->name()); !bad.ok()) return FinishUnary(ctx, bad);
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  const Status started = models_->Load(request->name(), [reactor, response](const ModelView& v) {
    FillModelView(v, response);
    if (v.state == ModelState::kFailed) {
      reactor->Finish({grpc::StatusCode::FAILED_PRECONDITION,
                       "model '" + v.entry.name + "' failed to load: " + v.reason});
    } else {
      reactor->Finish(grpc::Status::OK);
    }
  });
  if (!started.ok()) reactor->Finish(ToGrpcStatus(started));
  return reactor;
}

grpc::ServerUnaryReactor* ModelsService::Unload(grpc::CallbackServerContext* ctx,
                                                const v1::UnloadModelRequest* request,
                                                v1::ModelInfo* response) {
  if (grpc::Status denied = auth_->CheckAdmin(ctx); !denied.ok()) return FinishUnary(ctx, denied);
  if (grpc::Status bad = RequireName(request->name()); !bad.ok()) return FinishUnary(ctx, bad);
  StatusOr<ModelView> view = models_->Unload(request->name());
  if (!view.ok()) return FinishUnary(ctx, ToGrpcStatus(view.status()));
  FillModelView(*view, response);
  return FinishUnary(ctx, grpc::Status::OK);
}

}  // namespace rainserve
