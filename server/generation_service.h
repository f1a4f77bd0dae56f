// rainserve.v1.Generation on the gRPC callback API, backed by a JobManager.
//
// Generate = Submit + Watch in one call: the stream carries the job's events
// from Accepted to Completed/Failed and then ends with the job's status (OK,
// or the failure's code and message). A client that cancels or disconnects
// cancels the job unless the request was `detached`; the call's deadline
// becomes the job's deadline. Watch streams the same events from any seq
// (replay, then follow) and never cancels the job; it ends like Generate, or
// with OK when from_seq is already past the job's terminal event.
//
// Threads: gRPC calls every method on its own threads. Each streaming call
// gets one reactor that owns its state; the JobManager wakes it through a
// non-blocking notify, it writes one event at a time, and it holds no lock
// while gRPC runs a reaction.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <random>
#include <string>

#include "common/status.h"
#include "pipelines/pipeline.h"
#include "rainserve/v1/generation.grpc.pb.h"
#include "server/auth.h"
#include "server/job_manager.h"
#include "server/request_mapping.h"

namespace rainserve {

// The description of a model by request name. NOT_FOUND for a model the
// server does not know, UNAVAILABLE for one that is not ready. Called on gRPC
// threads.
using ModelLookup = std::function<StatusOr<PipelineDescription>(const std::string& model)>;

grpc::Status ToGrpcStatus(const Status& status);

class GenerationService final : public v1::Generation::CallbackService {
 public:
  // `jobs` (and `auth`, when given) must outlive the service and every call
  // it served (stop the gRPC server first). Without `auth` every call is allowed.
  // `observer` (optional) hears about requests refused before they became
  // jobs (invalid, unknown model, queue full, ...).
  GenerationService(ModelLookup lookup, JobManager* jobs, const Authenticator* auth = nullptr,
                    JobObserver* observer = nullptr);

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

 private:
  // Looks the model up, resolves and validates, and queues the job; reports
  // a refusal to the observer.
  StatusOr<v1::Job> SubmitJob(const v1::GenerateRequest& request, const SubmitOptions& base);
  StatusOr<v1::Job> QueueJob(const v1::GenerateRequest& request, const SubmitOptions& base);
  uint64_t RandomSeed();

  grpc::Status Authorize(const grpc::CallbackServerContext* ctx) const {
    return auth_ != nullptr ? auth_->Check(ctx) : grpc::Status::OK;
  }

  const ModelLookup lookup_;
  JobManager* const jobs_;
  const Authenticator* const auth_;
  JobObserver* const observer_;
  std::mutex rng_mu_;
  std::mt19937_64 rng_;
};

}  // namespace rainserve
