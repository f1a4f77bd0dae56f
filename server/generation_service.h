// rainserve.v1.Generation on the gRPC callback API, backed by a JobManager.
//
// Generate = Submit + Watch in one call: the stream carries the job's events
// from Accepted to Completed/Failed and then ends with the job's status (OK,
// or the failure's code and message). The Generate call that created a job
// owns it: when that client cancels or disconnects, the job is cancelled
// unless the request was `detached`, and the call's deadline becomes the
// job's deadline. A Generate whose client_request_id names an existing job
// only watches it: its departure changes nothing. Watch streams the same
// events from any seq (replay, then follow) and never cancels the job; it
// ends like Generate, or with OK when from_seq is already past the job's
// terminal event. ListJobs returns pages of job summaries, each response at
// most the configured max message size.
//
// The methods are served raw (server/raw_calls.h): each call is
// authenticated, then its request parsed (INVALID_ARGUMENT for bytes that are
// not a valid message), then its strings' lengths checked.
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
#include "pipelines/core/pipeline.h"
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

// Every rainserve.v1.Generation method as a raw callback method.
using RawGenerationService = v1::Generation::WithRawCallbackMethod_Generate<
    v1::Generation::WithRawCallbackMethod_Submit<v1::Generation::WithRawCallbackMethod_Watch<
        v1::Generation::WithRawCallbackMethod_Cancel<v1::Generation::WithRawCallbackMethod_GetJob<
            v1::Generation::WithRawCallbackMethod_ListJobs<v1::Generation::Service>>>>>>;

class GenerationService final : public RawGenerationService {
 public:
  // `jobs` (and `auth`, when given) must outlive the service and every call
  // it served (stop the gRPC server first). Without `auth` every call is allowed.
  // `observer` (optional) hears about requests refused before they became
  // jobs (invalid, unknown model, queue full, ...). `max_message_bytes`
  // bounds each ListJobs response (server.max_message_bytes).
  GenerationService(ModelLookup lookup, JobManager* jobs, const Authenticator* auth = nullptr,
                    JobObserver* observer = nullptr, int64_t max_message_bytes = 4 << 20);

  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* ctx,
                                                       const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* Submit(grpc::CallbackServerContext* ctx,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Watch(grpc::CallbackServerContext* ctx,
                                                    const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* Cancel(grpc::CallbackServerContext* ctx,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* ctx,
                                   const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* ctx,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;

 private:
  // Looks the model up, resolves and validates, and queues the job; reports
  // a refusal to the observer.
  // `*created` says whether this call created the job (false: the
  // client_request_id named an existing one).
  StatusOr<v1::Job> SubmitJob(const v1::GenerateRequest& request, const SubmitOptions& base,
                              bool* created);
  StatusOr<v1::Job> QueueJob(const v1::GenerateRequest& request, const SubmitOptions& base,
                             bool* created);
  uint64_t RandomSeed();

  grpc::Status Authorize(const grpc::CallbackServerContext* ctx) const {
    return auth_ != nullptr ? auth_->Check(ctx) : grpc::Status::OK;
  }

  const ModelLookup lookup_;
  JobManager* const jobs_;
  const Authenticator* const auth_;
  JobObserver* const observer_;
  const int64_t max_message_bytes_;
  std::mutex rng_mu_;
  std::mt19937_64 rng_;
};

}  // namespace rainserve
