#include "server/generation_service.h"

#include <chrono>
#include <memory>
#include <optional>

#include "common/logging.h"
#include "server/raw_calls.h"

namespace rainserve {
namespace {

constexpr std::chrono::milliseconds kDeadlineSlack(250);

// A server stream that ends at once with a status.
class FinishedStream final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  explicit FinishedStream(const grpc::Status& s) { Finish(s); }
  void OnDone() override { delete this; }
};

// Streams one job's events with seq > from_seq, following the log until the
// terminal event, then finishes with the job's status. Lives from the
// handler that creates it until OnDone, which deletes it. Only the stream of
// the call that owns the job (created it, not detached) abandons the job
// when its client goes away.
class EventStream final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  EventStream(JobManager* jobs, grpc::CallbackServerContext* ctx, std::string job_id,
              uint64_t from_seq, bool cancel_job_on_disconnect)
      : jobs_(jobs),
        ctx_(ctx),
        job_id_(std::move(job_id)),
        cancel_job_on_disconnect_(cancel_job_on_disconnect),
        last_seq_(from_seq) {
    auto sub = jobs_->Subscribe(job_id_, [this] { Pump(); });
    if (!sub.ok()) {
      // The job expired between its lookup and now.
      if (cancel_job_on_disconnect_) jobs_->Abandon(job_id_, CancelledError("the call ended"));
      finished_ = true;
      Finish(ToGrpcStatus(sub.status()));
      return;
    }
    {
      // A notify may already be running Pump on another thread.
      std::lock_guard<std::mutex> lock(mu_);
      subscription_ = *sub;
    }
    Pump();
  }

  void OnWriteDone(bool ok) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
      buffer_.Clear();
      if (!ok) disconnected_ = true;
    }
    Pump();
  }

  // The client cancelled, went away, or the deadline passed.
  void OnCancel() override {
    if (cancel_job_on_disconnect_) {
      // A client cancels at its own deadline, which the server's copy of it
      // trails by the request's transit time.
      const bool deadline_passed =
          ctx_->deadline() <= std::chrono::system_clock::now() + kDeadlineSlack;
      const Status reason = deadline_passed
                                ? DeadlineExceededError("the call's deadline passed")
                                : CancelledError("the client cancelled the call");
      jobs_->Abandon(job_id_, reason);
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      disconnected_ = true;
    }
    Pump();
  }

  void OnDone() override {
    std::optional<JobManager::SubscriptionId> subscription;
    {
      std::lock_guard<std::mutex> lock(mu_);
      subscription = subscription_;
    }
    // Waits for a notify that may still be inside Pump on another thread.
    if (subscription) jobs_->Unsubscribe(*subscription);
    delete this;
  }

 private:
  // Starts the next write, or finishes; called from the constructor, the
  // JobManager's notify and reactions. Touches no member after StartWrite or
  // Finish, since OnDone may already be running on another thread.
  void Pump() {
    std::shared_ptr<const v1::GenerateEvent> next;
    grpc::Status final_status;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_ || writing_ || !subscription_) return;
      if (disconnected_) {
        finished_ = true;
        final_status = grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled");
      } else {
        JobManager::NextEvent n = jobs_->Next(*subscription_, last_seq_);
        if (n.event) {
          next = n.event;
          writing_ = true;
          last_seq_ = next->seq();
          if (next->has_failed()) {
            job_status_ = grpc::Status(static_cast<grpc::StatusCode>(next->failed().code()),
                                       next->failed().message());
          }
        } else if (n.end) {
          finished_ = true;
          final_status = job_status_;
        } else {
          return;
        }
      }
    }
    if (!next) {
      Finish(final_status);
      return;
    }
    // buffer_ is this thread's until OnWriteDone (writing_ is set).
    const grpc::Status serialized = SerializeMessage(*next, &buffer_);
    if (!serialized.ok()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        finished_ = true;
      }
      Finish(serialized);
      return;
    }
    StartWrite(&buffer_);
  }

  JobManager* const jobs_;
  grpc::CallbackServerContext* const ctx_;
  const std::string job_id_;
  const bool cancel_job_on_disconnect_;

  std::mutex mu_;
  std::optional<JobManager::SubscriptionId> subscription_;
  uint64_t last_seq_;
  bool writing_ = false;       // a StartWrite has no OnWriteDone yet
  bool finished_ = false;      // Finish was called
  bool disconnected_ = false;  // cancelled, or a write failed
  grpc::ByteBuffer buffer_;    // the event being written
  grpc::Status job_status_;    // from the job's Failed event, if any
};

// Idempotency identity of a request: everything the client asked for except
// the key itself and how it waits for the result.
// What a client_request_id is compared by: the request without its
// transport fields, its image's bytes replaced by their SHA-256 (so that a
// retained job does not keep a copy of the image).
std::string Fingerprint(const v1::GenerateRequest& request, const std::string& image_sha256) {
  v1::GenerateRequest copy = request;
  copy.clear_client_request_id();
  copy.clear_detached();
  copy.clear_input_image();
  if (!copy.image().empty()) copy.set_image("sha256:" + image_sha256);
  return copy.SerializeAsString();
}

std::optional<std::chrono::steady_clock::time_point> SteadyDeadline(
    const grpc::CallbackServerContext& ctx) {
  const auto deadline = ctx.deadline();
  const auto now = std::chrono::system_clock::now();
  // gRPC reports "no deadline" as a time centuries away.
  if (deadline - now > std::chrono::hours(24 * 365)) return std::nullopt;
  return std::chrono::steady_clock::now() +
         std::chrono::duration_cast<std::chrono::steady_clock::duration>(deadline - now);
}

}  // namespace

grpc::Status ToGrpcStatus(const Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), status.message());
}

GenerationService::GenerationService(ModelLookup lookup, JobManager* jobs,
                                     const Authenticator* auth, JobObserver* observer,
                                     int64_t max_message_bytes)
    : lookup_(std::move(lookup)),
      jobs_(jobs),
      auth_(auth),
      observer_(observer),
      max_message_bytes_(max_message_bytes),
      rng_(std::random_device{}()) {}

uint64_t GenerationService::RandomSeed() {
  // Below 2^53 so that clients holding numbers as doubles echo it exactly.
  std::lock_guard<std::mutex> lock(rng_mu_);
  return rng_() >> 11;
}

StatusOr<v1::Job> GenerationService::SubmitJob(const v1::GenerateRequest& request,
                                               const SubmitOptions& base, bool* created) {
  StatusOr<v1::Job> job = QueueJob(request, base, created);
  if (!job.ok() && observer_ != nullptr) {
    // Only configured model names become labels; anything else is "unknown".
    StatusOr<PipelineDescription> lookup = lookup_(request.model());
    const bool configured = lookup.ok() || lookup.status().code() == StatusCode::kUnavailable;
    observer_->OnRequestRefused(configured ? request.model() : "unknown", job.status().code());
  }
  return job;
}

StatusOr<v1::Job> GenerationService::QueueJob(const v1::GenerateRequest& request,
                                              const SubmitOptions& base, bool* created) {
  RAINSERVE_RETURN_IF_ERROR(CheckRequestStrings(request));
  RAINSERVE_ASSIGN_OR_RETURN(PipelineDescription model, lookup_(request.model()));
  RAINSERVE_ASSIGN_OR_RETURN(ResolvedRequest r, ResolveRequest(request, model, RandomSeed()));
  SubmitOptions options = base;
  options.client_request_id = request.client_request_id();
  options.priority = request.priority();
  options.fingerprint = Fingerprint(request, r.resolved.input_image().sha256());
  RAINSERVE_ASSIGN_OR_RETURN(v1::Job job,
                             jobs_->Submit(r.resolved, r.generation, options, created));
  RAINSERVE_LOG(DEBUG) << "job " << job.job_id() << " for model '" << r.resolved.model() << "': "
                       << r.generation.width << "x" << r.generation.height << "x"
                       << r.generation.num_frames << ", " << r.generation.steps << " steps"
                       << (*created ? "" : " (existing job for its client_request_id)");
  return job;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* GenerationService::Generate(
    grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* bytes) {
  if (grpc::Status denied = Authorize(ctx); !denied.ok()) return new FinishedStream(denied);
  v1::GenerateRequest request;
  if (grpc::Status bad = ParseRequest(*ctx, *bytes, &request); !bad.ok()) {
    return new FinishedStream(bad);
  }
  SubmitOptions options;
  if (!request.detached()) options.deadline = SteadyDeadline(*ctx);
  bool created = false;
  StatusOr<v1::Job> job = SubmitJob(request, options, &created);
  if (!job.ok()) return new FinishedStream(ToGrpcStatus(job.status()));
  // Only the call that created the job owns it; one that found it by its
  // client_request_id just watches.
  return new EventStream(jobs_, ctx, job->job_id(), 0, created && !request.detached());
}

grpc::ServerUnaryReactor* GenerationService::Submit(grpc::CallbackServerContext* ctx,
                                                    const grpc::ByteBuffer* request,
                                                    grpc::ByteBuffer* response) {
  return ServeUnary<v1::GenerateRequest, v1::SubmitResponse>(
      ctx, Authorize(ctx), request, response,
      [&](const v1::GenerateRequest& req, v1::SubmitResponse* resp) {
        bool created = false;
        StatusOr<v1::Job> job = SubmitJob(req, SubmitOptions(), &created);
        if (!job.ok()) return ToGrpcStatus(job.status());
        *resp->mutable_job() = std::move(job).value();
        return grpc::Status::OK;
      });
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* GenerationService::Watch(
    grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* bytes) {
  if (grpc::Status denied = Authorize(ctx); !denied.ok()) return new FinishedStream(denied);
  v1::WatchRequest request;
  if (grpc::Status bad = ParseRequest(*ctx, *bytes, &request); !bad.ok()) {
    return new FinishedStream(bad);
  }
  if (Status bad = CheckJobId(request.job_id()); !bad.ok()) {
    return new FinishedStream(ToGrpcStatus(bad));
  }
  StatusOr<v1::Job> job = jobs_->Get(request.job_id());
  if (!job.ok()) return new FinishedStream(ToGrpcStatus(job.status()));
  return new EventStream(jobs_, ctx, request.job_id(), request.from_seq(), false);
}

grpc::ServerUnaryReactor* GenerationService::Cancel(grpc::CallbackServerContext* ctx,
                                                    const grpc::ByteBuffer* request,
                                                    grpc::ByteBuffer* response) {
  return ServeUnary<v1::CancelRequest, v1::CancelResponse>(
      ctx, Authorize(ctx), request, response,
      [&](const v1::CancelRequest& req, v1::CancelResponse* resp) {
        if (Status bad = CheckJobId(req.job_id()); !bad.ok()) return ToGrpcStatus(bad);
        StatusOr<v1::Job> job =
            jobs_->Cancel(req.job_id(), CancelledError("cancelled by a Cancel request"));
        if (!job.ok()) return ToGrpcStatus(job.status());
        *resp->mutable_job() = std::move(job).value();
        return grpc::Status::OK;
      });
}

grpc::ServerUnaryReactor* GenerationService::GetJob(grpc::CallbackServerContext* ctx,
                                                    const grpc::ByteBuffer* request,
                                                    grpc::ByteBuffer* response) {
  return ServeUnary<v1::GetJobRequest, v1::Job>(
      ctx, Authorize(ctx), request, response,
      [&](const v1::GetJobRequest& req, v1::Job* resp) {
        if (Status bad = CheckJobId(req.job_id()); !bad.ok()) return ToGrpcStatus(bad);
        StatusOr<v1::Job> job = jobs_->Get(req.job_id());
        if (!job.ok()) return ToGrpcStatus(job.status());
        *resp = std::move(job).value();
        return grpc::Status::OK;
      });
}

grpc::ServerUnaryReactor* GenerationService::ListJobs(grpc::CallbackServerContext* ctx,
                                                      const grpc::ByteBuffer* request,
                                                      grpc::ByteBuffer* response) {
  return ServeUnary<v1::ListJobsRequest, v1::ListJobsResponse>(
      ctx, Authorize(ctx), request, response,
      [&](const v1::ListJobsRequest& req, v1::ListJobsResponse* resp) {
        ListQuery query;
        query.include_finished = req.include_finished();
        query.page_size = req.page_size();
        query.page_token = req.page_token();
        query.max_bytes = max_message_bytes_;
        StatusOr<JobPage> page = jobs_->ListPage(query);
        if (!page.ok()) return ToGrpcStatus(page.status());
        for (v1::Job& job : page->jobs) *resp->add_jobs() = std::move(job);
        resp->set_next_page_token(std::move(page->next_page_token));
        return grpc::Status::OK;
      });
}

}  // namespace rainserve
