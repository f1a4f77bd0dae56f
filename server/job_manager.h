// JobManager: the generation jobs of one server process.
//
// A job is one resolved request (server/request_mapping.h). Jobs wait in one
// bounded queue shared by all models (higher priority first, ties in arrival
// order) and run on their model's single worker thread, one at a time. Each
// job moves queued -> running -> succeeded | failed | cancelled (a queued job
// may go straight to failed or cancelled) and keeps an append-only log of
// v1::GenerateEvent with seq 1, 2, 3, ...:
//
//   Accepted, Queued (again whenever the position changes), Started,
//   Progress (one per denoising step, plus stage starts),
//   ArtifactHeader + ArtifactChunk... per artifact, then Completed | Failed.
//
// Streams read the log through subscriptions: the manager calls a subscriber's
// notify callback (which must not block) whenever the log grows, and the
// subscriber pulls the next event when it is ready for it. The worker thus
// never waits for a client; a reader that falls behind skips superseded
// Progress/Queued events but never headers, chunks or the terminal event.
//
// Finished jobs are kept for JobManagerOptions::retention_seconds (at most
// max_retained_jobs of them, holding at most max_retained_bytes of events and
// artifacts; the oldest go first) so that clients can Watch or GetJob them.
// An evicted job's id is remembered for a while so that lookups can say it
// was evicted rather than never known.
//
// Client request ids: the call that created a job for a client_request_id
// owns it; a repeated Submit with the same id returns the job without owning
// it. When the owner abandons its job (Abandon: its call went away or its
// deadline passed), the id is released and the next Submit with it creates a
// fresh job.
//
// Threads: every public method may be called from any thread. Internally one
// mutex guards all jobs; it is never held while a pipeline, the encoder, a
// notify callback or the observer runs.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "server/config.h"
#include "common/status.h"
#include "media/artifacts.h"
#include "pipelines/core/pipeline.h"
#include "rainserve/v1/generation.pb.h"

namespace rainserve {

// Turns a pipeline's frames into the artifacts the resolved request asked for
// (output_format, fps). Runs on the model's worker thread; an error fails the
// job with that status.
using ArtifactEncoder = std::function<StatusOr<std::vector<media::Artifact>>(
    const GenerationOutput& output, const v1::GenerateRequest& resolved)>;

// What the observer learns about a finished job (plain values, no protobuf).
struct JobReport {
  std::string model;
  v1::JobState state = v1::JOB_STATE_UNSPECIFIED;
  StatusCode code = StatusCode::kOk;
  double queue_seconds = 0;   // created -> started (or -> finished if it never ran)
  double total_seconds = 0;   // created -> finished
  bool ran = false;           // the pipeline was called
  double text_encode_seconds = 0;
  double denoise_seconds = 0;
  double decode_seconds = 0;
  double encode_seconds = 0;
  double realized_sparsity = 0;
  std::vector<StepStat> steps;  // empty unless the pipeline returned an output
  std::vector<QualityProbeStat> quality_probes;  // the pipeline's, likewise
  double first_progress_seconds = -1;  // created -> first Progress event (-1: none)
  double requested_sparsity = 0;       // 0 for dense requests
  int64_t sink_frames = 0;             // as applied
  std::string step_cache_mode = "off"; // as applied (StepCacheModeName)
  int64_t cache_skipped_steps = 0;     // steps that reused the step cache's residual
  double mask_seconds = 0;             // mask prediction, summed over the job
  int64_t frames = 0;                  // frames generated
  uint64_t peak_memory_bytes = 0;
  std::string device;
  std::vector<std::pair<std::string, uint64_t>> outputs;  // (mime type, bytes) per artifact
};

// Metrics hooks, called on whichever thread caused the change (a worker, the
// timer thread, or a caller of Submit, Cancel, Drain or RemoveModel).
// Implementations must be thread-safe, quick, and must not call back into the
// JobManager.
class JobObserver {
 public:
  virtual ~JobObserver() = default;
  // Once per job, after its terminal event; no JobManager lock held.
  virtual void OnJobFinished(const JobReport& report) { (void)report; }
  // A request refused before it became a job (by the service's edge checks
  // or Submit): invalid fields, unknown or unready model, queue full, ...
  // `model` is a configured model name or "unknown".
  virtual void OnRequestRefused(const std::string& model, StatusCode code) {
    (void)model;
    (void)code;
  }
  // `pending`: queued jobs of `model`; `running`: its jobs inside the pipeline (0 or 1).
  // Called with the JobManager's lock held, so gauges see changes in order.
  virtual void OnQueueChanged(const std::string& model, int64_t pending, int64_t running) {
    (void)model;
    (void)pending;
    (void)running;
  }
};

struct JobManagerOptions {
  int64_t max_pending = 64;           // queued jobs (all models) before RESOURCE_EXHAUSTED
  double queue_timeout_seconds = 600;  // longer in the queue -> DEADLINE_EXCEEDED
  double retention_seconds = 600;      // finished jobs stay visible this long
  int64_t max_retained_jobs = 1000;    // and at most this many (oldest go first)
  int64_t max_retained_bytes = int64_t{1} << 30;  // and at most this many bytes (JobBytes)
  int64_t chunk_bytes = 1 << 20;       // ArtifactChunk payload size
  // Called on the model's worker thread when, after a failed job, the
  // pipeline reports a device fault (Pipeline::DeviceStatus). Must not call
  // RemoveModel for that model (it would wait for this worker).
  std::function<void(const std::string& model, const Status& fault)> on_device_fault;

  static JobManagerOptions FromConfig(const ServerSection& server);
};

struct SubmitOptions {
  // Idempotency key: a second Submit with the same key and the same
  // `fingerprint` returns the first job; with another fingerprint it fails
  // with ALREADY_EXISTS. Empty = no key. Keys are forgotten with their job.
  std::string client_request_id;
  // Identifies the request for the idempotency check (e.g. the client's
  // request serialized without its transport fields). Empty = the resolved
  // request's serialization.
  std::string fingerprint;
  int32_t priority = 0;  // higher runs first
  // The job fails with DEADLINE_EXCEEDED at this time, queued or running
  // (a running one stops at its next step).
  std::optional<std::chrono::steady_clock::time_point> deadline;
};

// One page of ListPage. Jobs are summaries: prompts cut to
// kSummaryPromptBytes (prompt_truncated set), failure messages to
// kSummaryMessageBytes, no result attached.
struct JobPage {
  std::vector<v1::Job> jobs;
  std::string next_page_token;  // empty on the last page
};

struct ListQuery {
  bool include_finished = false;
  uint32_t page_size = 0;   // 0: kDefaultPageSize; capped at kMaxPageSize
  std::string page_token;   // from the previous page; empty for the first
  int64_t max_bytes = 4 << 20;  // the serialized ListJobsResponse stays within this
};

class JobManager {
 public:
  using SubscriptionId = uint64_t;

  static constexpr uint32_t kDefaultPageSize = 100;
  static constexpr uint32_t kMaxPageSize = 1000;
  static constexpr size_t kSummaryPromptBytes = 256;
  static constexpr size_t kSummaryMessageBytes = 512;
  // Evicted job ids remembered for the "was evicted" answer.
  static constexpr size_t kRememberedEvictions = 10000;

  // `encoder` runs on worker threads; `observer` (optional) must outlive
  // the manager.
  JobManager(JobManagerOptions options, ArtifactEncoder encoder, JobObserver* observer = nullptr);
  // Drains with no grace period (running jobs are cancelled), then stops
  // every worker. Subscriptions must be gone by then.
  ~JobManager();
  JobManager(const JobManager&) = delete;
  JobManager& operator=(const JobManager&) = delete;

  // Starts a worker thread for `name` (the resolved request's `model`). Called
  // by the model manager once the pipeline is ready. ALREADY_EXISTS if taken.
  Status AddModel(const std::string& name, std::shared_ptr<Pipeline> pipeline);
  // Fails the model's queued jobs with UNAVAILABLE (retryable), waits for its
  // running job to finish and stops the worker. NOT_FOUND if not added.
  Status RemoveModel(const std::string& name);

  // Queues a job for `resolved.model()` and returns its snapshot (or the
  // existing job for a repeated client_request_id; `*created`, when given,
  // says which). Errors: UNAVAILABLE (draining, or no worker for the model),
  // RESOURCE_EXHAUSTED (queue full; the message says when to retry, from the
  // measured job durations), ALREADY_EXISTS (key reused for another request).
  // `request` must already be valid for the model.
  StatusOr<v1::Job> Submit(const v1::GenerateRequest& resolved, const GenerationRequest& request,
                           const SubmitOptions& options, bool* created = nullptr);

  // A queued job ends at once; a running one stops at its next step. `reason`
  // (non-OK) becomes its failure: CANCELLED -> state cancelled, anything else
  // -> failed. Finished jobs are returned unchanged. NOT_FOUND if unknown.
  StatusOr<v1::Job> Cancel(const std::string& job_id,
                           const Status& reason = CancelledError("cancelled by the client"));

  // Cancel by the call that created the job, because that call went away
  // (`reason`: CANCELLED or DEADLINE_EXCEEDED). A job this stops releases its
  // client_request_id: a later Submit with the id starts a fresh job.
  void Abandon(const std::string& job_id, const Status& reason);

  // NOT_FOUND if unknown, or evicted (the message says so and why).
  StatusOr<v1::Job> Get(const std::string& job_id) const;
  // Job summaries, one page: running jobs, then queued ones in queue order
  // (with positions), then, when asked, finished ones oldest first. Errors:
  // INVALID_ARGUMENT for a page_token this listing did not issue,
  // RESOURCE_EXHAUSTED when one summary alone exceeds max_bytes.
  StatusOr<JobPage> ListPage(const ListQuery& query) const;

  // Bytes held by finished jobs (JobBytes summed); for metrics and tests.
  int64_t RetainedBytes() const;

  // Registers `notify`, called (on any thread, without locks held) after the
  // job's log grows. It must not block nor call Unsubscribe. The subscription
  // keeps the job's log readable even after the job expires.
  StatusOr<SubscriptionId> Subscribe(const std::string& job_id, std::function<void()> notify);
  // Blocks until no notify call of this subscription is running.
  void Unsubscribe(SubscriptionId id);

  struct NextEvent {
    std::shared_ptr<const v1::GenerateEvent> event;  // null: nothing new yet, or end
    bool end = false;  // the job finished and every event up to its last was read
  };
  // The next event after `after_seq` for a streaming reader. Coalesces: a
  // Queued event directly followed by another Queued, or a Progress directly
  // followed by a Progress of the same stage, is skipped, so a reader that
  // fell behind jumps to the newest one.
  NextEvent Next(SubscriptionId id, uint64_t after_seq) const;

  // Every event after `after_seq`, nothing skipped. NOT_FOUND if unknown.
  StatusOr<std::vector<std::shared_ptr<const v1::GenerateEvent>>> Events(
      const std::string& job_id, uint64_t after_seq) const;

  // Stops accepting (Submit -> UNAVAILABLE), fails queued jobs with
  // UNAVAILABLE, lets running jobs finish for up to `timeout_seconds`, then
  // cancels what still runs (UNAVAILABLE) and waits for it to stop. Called
  // by the server on SIGTERM; idempotent.
  void Drain(double timeout_seconds);

 private:
  struct Job;
  struct Worker;
  struct Subscriber;
  struct Outbox;

  void WorkerLoop(Worker* worker);
  void RunJob(Worker* worker, const std::shared_ptr<Job>& job);
  // RunJob's parts: the pipeline call (with progress events), the artifact
  // encoding into header and chunk events, and the bookkeeping at the end.
  struct RunOutcome;
  void RunPipeline(Worker* worker, const std::shared_ptr<Job>& job, RunOutcome* run);
  void EncodeArtifacts(Worker* worker, const std::shared_ptr<Job>& job, RunOutcome* run);
  void FinishRun(Worker* worker, const std::shared_ptr<Job>& job, RunOutcome* run);
  void TimerLoop();

  // The *Locked helpers need mu_ held; they queue notifications in `out`.
  void AppendLocked(const std::shared_ptr<Job>& job, v1::GenerateEvent event, Outbox* out);
  void RefreshPositionsLocked(Worker* worker, Outbox* out);
  void FinishLocked(const std::shared_ptr<Job>& job, const Status& status,
                    const v1::GenerateResult* result, JobReport report, Outbox* out);
  void FailQueuedLocked(const std::shared_ptr<Job>& job, const Status& status, Outbox* out);
  void ReportQueueLocked(const Worker* worker);
  void RequestCancelLocked(const std::shared_ptr<Job>& job, const Status& reason);
  void EvictLocked(std::chrono::steady_clock::time_point now);
  // The job by id, or NOT_FOUND saying whether it was evicted.
  StatusOr<std::shared_ptr<Job>> FindLocked(const std::string& job_id) const;
  v1::Job SnapshotLocked(const Job& job) const;
  v1::Job SummaryLocked(const Job& job) const;
  std::string RetryHintLocked() const;
  // Runs subscribers' notify callbacks and the observer; mu_ must not be held.
  void Flush(Outbox* out);

  const JobManagerOptions options_;
  const ArtifactEncoder encoder_;
  JobObserver* const observer_;

  mutable std::mutex mu_;
  std::condition_variable idle_cv_;    // running_ dropped, notify calls returned
  std::condition_variable timer_cv_;   // new deadlines, shutdown
  std::map<std::string, std::unique_ptr<Worker>> workers_;
  std::unordered_map<std::string, std::shared_ptr<Job>> jobs_;
  std::unordered_map<std::string, std::string> job_by_client_id_;
  std::deque<std::shared_ptr<Job>> finished_;  // in finishing order (finish_seq ascending)
  int64_t retained_bytes_ = 0;                 // JobBytes of finished_
  uint64_t next_finish_seq_ = 1;
  // Recently evicted job ids and why, oldest first (kRememberedEvictions).
  std::deque<std::string> evicted_order_;
  std::unordered_map<std::string, std::string> evicted_;
  std::map<SubscriptionId, std::shared_ptr<Subscriber>> subscribers_;
  SubscriptionId next_subscription_ = 1;
  uint64_t next_arrival_ = 0;
  int64_t pending_ = 0;
  int64_t running_ = 0;
  double mean_run_seconds_ = 0;  // moving average of job run times, for the retry hint
  bool accepting_ = true;
  bool stopping_ = false;
  std::mt19937_64 rng_;
  std::thread timer_;
};

}  // namespace rainserve
