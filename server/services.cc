#include "server/services.h"

namespace rainserve {
namespace {

grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* ctx, const grpc::Status& s) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(s);
  return reactor;
}

// A server stream that ends at once with a status.
class FinishedStream final : public grpc::ServerWriteReactor<v1::GenerateEvent> {
 public:
  explicit FinishedStream(const grpc::Status& s) { Finish(s); }
  void OnDone() override { delete this; }
};

const grpc::Status kNoModelReady(grpc::StatusCode::UNAVAILABLE,
                                 "no model is ready: the server has no loaded model "
                                 "(see Models.List for each model's state)");

void FillInfo(const ModelSlot& slot, v1::ModelInfo* info) {
  info->set_name(slot.entry.name);
  info->set_pipeline(slot.entry.pipeline);
  info->set_task("text-to-video");
  info->set_device(slot.entry.device);
  info->set_dtype(slot.entry.dtype);
  info->set_state(slot.state);
  info->set_state_reason(slot.reason);
}

const ModelSlot* FindModel(const std::vector<ModelSlot>& models, const std::string& name) {
  for (const auto& m : models) {
    if (m.entry.name == name) return &m;
  }
  return nullptr;
}

grpc::Status UnknownModel(const std::string& name) {
  if (name.empty()) return {grpc::StatusCode::INVALID_ARGUMENT, "name: required"};
  return {grpc::StatusCode::NOT_FOUND, "model '" + name + "' is not configured"};
}

}  // namespace

grpc::ServerUnaryReactor* ModelsService::List(grpc::CallbackServerContext* ctx,
                                              const v1::ListModelsRequest*,
                                              v1::ListModelsResponse* response) {
  for (const auto& slot : *models_) FillInfo(slot, response->add_models());
  return FinishUnary(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* ModelsService::Describe(grpc::CallbackServerContext* ctx,
                                                  const v1::DescribeModelRequest* request,
                                                  v1::ModelInfo* response) {
  const ModelSlot* slot = FindModel(*models_, request->name());
  if (slot == nullptr) return FinishUnary(ctx, UnknownModel(request->name()));
  FillInfo(*slot, response);
  return FinishUnary(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* ModelsService::Load(grpc::CallbackServerContext* ctx,
                                              const v1::LoadModelRequest* request,
                                              v1::ModelInfo* response) {
  const ModelSlot* slot = FindModel(*models_, request->name());
  if (slot == nullptr) return FinishUnary(ctx, UnknownModel(request->name()));
  return FinishUnary(ctx, {grpc::StatusCode::FAILED_PRECONDITION,
                           "model '" + slot->entry.name + "' cannot be loaded: " + slot->reason});
}

grpc::ServerUnaryReactor* ModelsService::Unload(grpc::CallbackServerContext* ctx,
                                                const v1::UnloadModelRequest* request,
                                                v1::ModelInfo* response) {
  const ModelSlot* slot = FindModel(*models_, request->name());
  if (slot == nullptr) return FinishUnary(ctx, UnknownModel(request->name()));
  FillInfo(*slot, response);
  return FinishUnary(ctx, grpc::Status::OK);
}

grpc::ServerWriteReactor<v1::GenerateEvent>* GenerationService::Generate(
    grpc::CallbackServerContext*, const v1::GenerateRequest*) {
  return new FinishedStream(kNoModelReady);
}

grpc::ServerUnaryReactor* GenerationService::Submit(grpc::CallbackServerContext* ctx,
                                                    const v1::GenerateRequest*,
                                                    v1::SubmitResponse*) {
  return FinishUnary(ctx, kNoModelReady);
}

grpc::ServerWriteReactor<v1::GenerateEvent>* GenerationService::Watch(
    grpc::CallbackServerContext*, const v1::WatchRequest* request) {
  return new FinishedStream(
      {grpc::StatusCode::NOT_FOUND, "job '" + request->job_id() + "' not found"});
}

grpc::ServerUnaryReactor* GenerationService::Cancel(grpc::CallbackServerContext* ctx,
                                                    const v1::CancelRequest* request,
                                                    v1::CancelResponse*) {
  return FinishUnary(ctx, {grpc::StatusCode::NOT_FOUND, "job '" + request->job_id() + "' not found"});
}

grpc::ServerUnaryReactor* GenerationService::GetJob(grpc::CallbackServerContext* ctx,
                                                    const v1::GetJobRequest* request, v1::Job*) {
  return FinishUnary(ctx, {grpc::StatusCode::NOT_FOUND, "job '" + request->job_id() + "' not found"});
}

grpc::ServerUnaryReactor* GenerationService::ListJobs(grpc::CallbackServerContext* ctx,
                                                      const v1::ListJobsRequest*,
                                                      v1::ListJobsResponse*) {
  return FinishUnary(ctx, grpc::Status::OK);
}

}  // namespace rainserve
