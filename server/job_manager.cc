#include "server/job_manager.h"

#include <google/protobuf/timestamp.pb.h>
#include <malloc.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>

#include "common/logging.h"
#include "server/request_mapping.h"

namespace rainserve {
namespace {

using SteadyClock = std::chrono::steady_clock;
using WallClock = std::chrono::system_clock;

double SecondsBetween(SteadyClock::time_point a, SteadyClock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

SteadyClock::duration ToSteadyDuration(double seconds) {
  return std::chrono::duration_cast<SteadyClock::duration>(std::chrono::duration<double>(seconds));
}

google::protobuf::Timestamp ToTimestamp(WallClock::time_point t) {
  const auto nanos =
      std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  google::protobuf::Timestamp ts;
  ts.set_seconds(nanos / 1000000000);
  ts.set_nanos(static_cast<int32_t>(nanos % 1000000000));
  return ts;
}

// Failures a client may simply retry (elsewhere or later).
bool IsRetryable(StatusCode code) {
  return code == StatusCode::kUnavailable || code == StatusCode::kResourceExhausted ||
         code == StatusCode::kDeadlineExceeded || code == StatusCode::kAborted;
}

// Higher priority first, then arrival order.
struct QueueKey {
  int32_t priority = 0;
  uint64_t arrival = 0;
  bool operator<(const QueueKey& o) const {
    if (priority != o.priority) return priority > o.priority;
    return arrival < o.arrival;
  }
};

// Runs `fn`, turning an escaping exception into INTERNAL so that one broken
// job never takes the worker down.
template <typename T, typename Fn>
StatusOr<T> Guarded(const char* what, Fn&& fn) {
  try {
    return fn();
  } catch (const std::exception& e) {
    return InternalError(std::string(what) + " failed: " + e.what());
  } catch (...) {
    return InternalError(std::string(what) + " failed with an unknown exception");
  }
}

}  // namespace

struct JobManager::Job {
  std::string id;
  std::string model;
  std::string client_request_id;
  std::string fingerprint;
  v1::GenerateRequest resolved;
  GenerationRequest request;
  QueueKey key;
  Worker* worker = nullptr;  // while queued or running

  v1::JobState state = v1::JOB_STATE_QUEUED;
  int64_t position = -1;  // last position announced in a Queued event
  int64_t step = 0;
  int64_t total_steps = 0;

  SteadyClock::time_point created;
  SteadyClock::time_point started;
  SteadyClock::time_point finished;
  WallClock::time_point created_wall;
  std::optional<WallClock::time_point> started_wall;
  std::optional<WallClock::time_point> finished_wall;
  SteadyClock::time_point queue_expiry;
  std::optional<SteadyClock::time_point> deadline;

  CancelToken cancel;
  bool cancel_requested = false;
  Status cancel_reason;

  v1::GenerateResult result;  // when succeeded
  v1::Failed failure;         // when failed or cancelled

  std::vector<std::shared_ptr<const v1::GenerateEvent>> events;  // events[i].seq == i + 1
  std::vector<std::shared_ptr<Subscriber>> subscribers;
};

struct JobManager::Worker {
  std::string name;
  std::string device;
  std::shared_ptr<Pipeline> pipeline;
  std::map<QueueKey, std::shared_ptr<Job>> queue;
  std::shared_ptr<Job> running;
  std::condition_variable cv;  // queue grew, or stopping
  bool stopping = false;
  std::thread thread;
};

struct JobManager::Subscriber {
  std::shared_ptr<Job> job;
  std::function<void()> notify;
  int in_flight = 0;  // notify calls running now
};

// Side effects collected under mu_ and delivered by Flush after unlocking.
struct JobManager::Outbox {
  std::vector<std::shared_ptr<Job>> touched;  // jobs whose log grew
  std::vector<JobReport> reports;
};

JobManagerOptions JobManagerOptions::FromConfig(const ServerSection& server) {
  JobManagerOptions o;
  o.max_pending = server.queue.max_pending;
  o.queue_timeout_seconds = server.queue.timeout_seconds;
  o.retention_seconds = server.jobs.retention_seconds;
  o.max_retained_jobs = server.jobs.max_retained;
  return o;
}

JobManager::JobManager(JobManagerOptions options, ArtifactEncoder encoder, JobObserver* observer)
    : options_(std::move(options)),
      encoder_(std::move(encoder)),
      observer_(observer),
      rng_(std::random_device{}()) {
  timer_ = std::thread([this] { TimerLoop(); });
}

JobManager::~JobManager() {
  Drain(0);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    for (auto& [name, worker] : workers_) {
      worker->stopping = true;
      worker->cv.notify_all();
    }
  }
  timer_cv_.notify_all();
  for (auto& [name, worker] : workers_) worker->thread.join();
  timer_.join();
}

// ---------------------------------------------------------------- models

Status JobManager::AddModel(const std::string& name, std::shared_ptr<Pipeline> pipeline) {
  const std::string device = pipeline->Describe().device;
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return UnavailableError("the job manager is shutting down");
  if (workers_.count(name) != 0) {
    return AlreadyExistsError("model '" + name + "' already has a worker");
  }
  auto worker = std::make_unique<Worker>();
  worker->name = name;
  worker->device = device;
  worker->pipeline = std::move(pipeline);
  Worker* w = worker.get();
  workers_[name] = std::move(worker);
  w->thread = std::thread([this, w] { WorkerLoop(w); });
  return OkStatus();
}

Status JobManager::RemoveModel(const std::string& name) {
  std::unique_ptr<Worker> worker;
  Outbox out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = workers_.find(name);
    if (it == workers_.end()) return NotFoundError("model '" + name + "' has no worker");
    worker = std::move(it->second);
    workers_.erase(it);
    worker->stopping = true;
    std::vector<std::shared_ptr<Job>> queued;
    for (auto& [key, job] : worker->queue) queued.push_back(job);
    for (auto& job : queued) {
      FailQueuedLocked(job, UnavailableError("model '" + name + "' was unloaded"), &out);
    }
    worker->cv.notify_all();
  }
  Flush(&out);
  worker->thread.join();  // lets the running job finish
  return OkStatus();
}

// ---------------------------------------------------------------- jobs

StatusOr<v1::Job> JobManager::Submit(const v1::GenerateRequest& resolved,
                                     const GenerationRequest& request,
                                     const SubmitOptions& options) {
  Outbox out;
  v1::Job snapshot;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!accepting_) {
      return UnavailableError("the server is shutting down and accepts no new jobs");
    }
    const std::string fingerprint =
        options.fingerprint.empty() ? resolved.SerializeAsString() : options.fingerprint;
    if (!options.client_request_id.empty()) {
      auto it = job_by_client_id_.find(options.client_request_id);
      if (it != job_by_client_id_.end()) {
        const Job& existing = *jobs_.at(it->second);
        if (existing.fingerprint != fingerprint) {
          return AlreadyExistsError("client_request_id '" + options.client_request_id +
                                    "' was already used for a different request (job " +
                                    existing.id + ")");
        }
        return SnapshotLocked(existing);
      }
    }
    auto wit = workers_.find(resolved.model());
    if (wit == workers_.end()) {
      return UnavailableError("model '" + resolved.model() + "' is not loaded");
    }
    Worker* worker = wit->second.get();
    if (pending_ >= options_.max_pending) {
      return ResourceExhaustedError("the queue is full (" + std::to_string(pending_) +
                                    " jobs waiting); " + RetryHintLocked());
    }

    auto job = std::make_shared<Job>();
    do {
      char id[32];
      std::snprintf(id, sizeof(id), "job-%016llx", static_cast<unsigned long long>(rng_()));
      job->id = id;
    } while (jobs_.count(job->id) != 0);
    job->model = resolved.model();
    job->client_request_id = options.client_request_id;
    job->fingerprint = fingerprint;
    job->resolved = resolved;
    job->request = request;
    job->key = {options.priority, next_arrival_++};
    job->worker = worker;
    job->created = SteadyClock::now();
    job->created_wall = WallClock::now();
    job->queue_expiry = job->created + ToSteadyDuration(options_.queue_timeout_seconds);
    job->deadline = options.deadline;
    job->total_steps = request.steps;
    jobs_[job->id] = job;
    if (!job->client_request_id.empty()) job_by_client_id_[job->client_request_id] = job->id;

    v1::GenerateEvent accepted;
    accepted.mutable_accepted()->set_job_id(job->id);
    *accepted.mutable_accepted()->mutable_resolved() = resolved;
    accepted.mutable_accepted()->set_seed(request.seed);
    AppendLocked(job, std::move(accepted), &out);

    worker->queue[job->key] = job;
    ++pending_;
    RefreshPositionsLocked(worker, &out);
    ReportQueueLocked(worker);
    snapshot = SnapshotLocked(*job);
    worker->cv.notify_one();
  }
  timer_cv_.notify_all();
  Flush(&out);
  return snapshot;
}

StatusOr<v1::Job> JobManager::Cancel(const std::string& job_id, const Status& reason) {
  Outbox out;
  v1::Job snapshot;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) return NotFoundError("job '" + job_id + "' not found");
    const std::shared_ptr<Job>& job = it->second;
    const Status why = reason.ok() ? CancelledError("cancelled") : reason;
    if (job->state == v1::JOB_STATE_QUEUED) FailQueuedLocked(job, why, &out);
    if (job->state == v1::JOB_STATE_RUNNING) RequestCancelLocked(job, why);
    snapshot = SnapshotLocked(*job);
  }
  Flush(&out);
  return snapshot;
}

StatusOr<v1::Job> JobManager::Get(const std::string& job_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return NotFoundError("job '" + job_id + "' not found");
  return SnapshotLocked(*it->second);
}

std::vector<v1::Job> JobManager::List(bool include_finished) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<v1::Job> jobs;
  for (const auto& [name, worker] : workers_) {
    if (worker->running) jobs.push_back(SnapshotLocked(*worker->running));
  }
  for (const auto& [name, worker] : workers_) {
    for (const auto& [key, job] : worker->queue) jobs.push_back(SnapshotLocked(*job));
  }
  if (include_finished) {
    for (const auto& job : finished_) jobs.push_back(SnapshotLocked(*job));
  }
  return jobs;
}

// ---------------------------------------------------------------- events

StatusOr<JobManager::SubscriptionId> JobManager::Subscribe(const std::string& job_id,
                                                           std::function<void()> notify) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return NotFoundError("job '" + job_id + "' not found");
  auto sub = std::make_shared<Subscriber>();
  sub->job = it->second;
  sub->notify = std::move(notify);
  sub->job->subscribers.push_back(sub);
  const SubscriptionId id = next_subscription_++;
  subscribers_[id] = sub;
  return id;
}

void JobManager::Unsubscribe(SubscriptionId id) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = subscribers_.find(id);
  if (it == subscribers_.end()) return;
  std::shared_ptr<Subscriber> sub = it->second;
  subscribers_.erase(it);
  auto& subs = sub->job->subscribers;
  subs.erase(std::remove(subs.begin(), subs.end(), sub), subs.end());
  idle_cv_.wait(lock, [&] { return sub->in_flight == 0; });
}

JobManager::NextEvent JobManager::Next(SubscriptionId id, uint64_t after_seq) const {
  std::lock_guard<std::mutex> lock(mu_);
  NextEvent next;
  auto it = subscribers_.find(id);
  if (it == subscribers_.end()) {
    next.end = true;
    return next;
  }
  const Job& job = *it->second->job;
  const auto& events = job.events;
  size_t i = static_cast<size_t>(after_seq);
  if (i >= events.size()) {
    next.end = job.finished_wall.has_value();
    return next;
  }
  auto superseded = [&](size_t k) {
    const v1::GenerateEvent& e = *events[k];
    const v1::GenerateEvent& later = *events[k + 1];
    if (e.has_queued()) return later.has_queued();
    return e.has_progress() && later.has_progress() &&
           later.progress().stage() == e.progress().stage();
  };
  while (i + 1 < events.size() && superseded(i)) ++i;
  next.event = events[i];
  return next;
}

StatusOr<std::vector<std::shared_ptr<const v1::GenerateEvent>>> JobManager::Events(
    const std::string& job_id, uint64_t after_seq) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return NotFoundError("job '" + job_id + "' not found");
  const auto& events = it->second->events;
  if (after_seq >= events.size()) return std::vector<std::shared_ptr<const v1::GenerateEvent>>();
  return std::vector<std::shared_ptr<const v1::GenerateEvent>>(events.begin() + after_seq,
                                                               events.end());
}

// ---------------------------------------------------------------- drain

void JobManager::Drain(double timeout_seconds) {
  Outbox out;
  std::unique_lock<std::mutex> lock(mu_);
  accepting_ = false;
  std::vector<std::shared_ptr<Job>> queued;
  for (auto& [name, worker] : workers_) {
    for (auto& [key, job] : worker->queue) queued.push_back(job);
  }
  for (auto& job : queued) {
    FailQueuedLocked(job, UnavailableError("the server is shutting down"), &out);
  }
  lock.unlock();
  Flush(&out);
  lock.lock();
  const auto deadline = SteadyClock::now() + ToSteadyDuration(timeout_seconds);
  if (!idle_cv_.wait_until(lock, deadline, [&] { return running_ == 0; })) {
    for (auto& [name, worker] : workers_) {
      if (worker->running) {
        RequestCancelLocked(worker->running,
                            UnavailableError("the server shut down before the job finished"));
      }
    }
    idle_cv_.wait(lock, [&] { return running_ == 0; });
  }
}

// ---------------------------------------------------------------- threads

void JobManager::WorkerLoop(Worker* worker) {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    worker->cv.wait(lock, [&] { return worker->stopping || !worker->queue.empty(); });
    if (worker->queue.empty()) return;
    Outbox out;
    auto first = worker->queue.begin();
    std::shared_ptr<Job> job = first->second;
    worker->queue.erase(first);
    --pending_;
    ++running_;
    worker->running = job;
    job->state = v1::JOB_STATE_RUNNING;
    job->started = SteadyClock::now();
    job->started_wall = WallClock::now();
    v1::GenerateEvent started;
    started.mutable_started()->set_device(worker->device);
    AppendLocked(job, std::move(started), &out);
    RefreshPositionsLocked(worker, &out);
    ReportQueueLocked(worker);
    lock.unlock();
    Flush(&out);
    RunJob(worker, job);
    lock.lock();
  }
}

void JobManager::RunJob(Worker* worker, const std::shared_ptr<Job>& job) {
  // ETA from the denoising steps seen so far: the first step also carries
  // the text encoding, so later estimates use steps 2.. only.
  double first_step_elapsed = 0;
  double first_progress_seconds = -1;
  ProgressCallback progress = [&](const ProgressUpdate& u) {
    v1::GenerateEvent event;
    v1::Progress* p = event.mutable_progress();
    p->set_stage(u.stage);
    p->set_step(static_cast<uint32_t>(u.step));
    p->set_total_steps(static_cast<uint32_t>(u.total_steps));
    *p->mutable_elapsed() = SecondsToDuration(u.elapsed_seconds);
    const bool denoise = u.stage == "denoise" && u.step > 0;
    if (first_progress_seconds < 0) {
      first_progress_seconds = SecondsBetween(job->created, SteadyClock::now());
    }
    if (denoise) {
      if (u.step == 1) first_step_elapsed = u.elapsed_seconds;
      const double per_step = u.step == 1 ? u.elapsed_seconds
                                          : (u.elapsed_seconds - first_step_elapsed) /
                                                static_cast<double>(u.step - 1);
      const int64_t left = std::max<int64_t>(0, u.total_steps - u.step);
      *p->mutable_eta() = SecondsToDuration(per_step * static_cast<double>(left));
    }
    Outbox out;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (denoise) {
        job->step = u.step;
        job->total_steps = u.total_steps;
      }
      AppendLocked(job, std::move(event), &out);
    }
    Flush(&out);
  };

  JobReport report;
  report.model = job->model;
  report.ran = true;
  report.device = worker->device;
  report.requested_sparsity =
      job->request.sparse.mode == AttentionMode::kRainFusion ? job->request.sparse.sparsity : 0.0;
  report.sink_frames = job->request.sparse.sink_frames;
  StatusOr<GenerationOutput> output = Guarded<GenerationOutput>("pipeline", [&] {
    return worker->pipeline->Generate(job->request, progress, job->cancel);
  });
  Status status = output.status();
  if (!status.ok() && status.code() != StatusCode::kCancelled && options_.on_device_fault) {
    const Status device = worker->pipeline->DeviceStatus();
    if (!device.ok()) {
      RAINSERVE_LOG(ERROR) << "model '" << job->model << "': " << device.ToString();
      options_.on_device_fault(job->model, device);
    }
  }
  std::vector<v1::GenerateEvent> artifact_events;
  v1::GenerateResult result;
  if (output.ok()) {
    report.text_encode_seconds = output->text_encode_seconds;
    report.denoise_seconds = output->denoise_seconds;
    report.decode_seconds = output->decode_seconds;
    report.realized_sparsity = output->realized_sparsity;
    report.steps = output->steps;
    report.mask_seconds = output->mask_seconds;
    report.frames = output->num_frames;
    report.peak_memory_bytes = output->peak_memory_bytes;
    // Encoding is a step boundary too: a job cancelled by now is not encoded.
    if (job->cancel.cancelled()) status = CancelledError("cancelled");
  }
  if (status.ok()) {
    const auto encode_start = SteadyClock::now();
    StatusOr<std::vector<EncodedArtifact>> artifacts =
        Guarded<std::vector<EncodedArtifact>>("artifact encoding", [&] {
          return encoder_ ? encoder_(*output, job->resolved)
                          : StatusOr<std::vector<EncodedArtifact>>(
                                UnimplementedError("no artifact encoder configured"));
        });
    report.encode_seconds = SecondsBetween(encode_start, SteadyClock::now());
    status = artifacts.status();
    if (artifacts.ok()) {
      FillResultFromOutput(*output, job->resolved, &result);
      result.set_device(worker->device);
      const uint64_t chunk = static_cast<uint64_t>(std::max<int64_t>(1, options_.chunk_bytes));
      for (size_t index = 0; index < artifacts->size(); ++index) {
        const EncodedArtifact& a = (*artifacts)[index];
        v1::ArtifactInfo* info = result.add_artifacts();
        info->set_index(static_cast<uint32_t>(index));
        info->set_mime_type(a.mime_type);
        info->set_size_bytes(a.data.size());
        info->set_sha256(a.sha256);
        info->set_width(static_cast<uint32_t>(a.width));
        info->set_height(static_cast<uint32_t>(a.height));
        info->set_frames(static_cast<uint32_t>(a.frames));
        info->set_fps(static_cast<uint32_t>(a.fps));
        for (int64_t d : a.shape) info->add_shape(static_cast<uint32_t>(d));
        info->set_dtype(a.dtype);
        report.outputs.emplace_back(a.mime_type, a.data.size());
        artifact_events.emplace_back();
        *artifact_events.back().mutable_artifact_header()->mutable_info() = *info;
        for (uint64_t offset = 0; offset < a.data.size(); offset += chunk) {
          artifact_events.emplace_back();
          v1::ArtifactChunk* c = artifact_events.back().mutable_artifact_chunk();
          c->set_index(static_cast<uint32_t>(index));
          c->set_offset(offset);
          c->set_data(a.data.substr(offset, chunk));
        }
      }
    }
  }

  Outbox out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!status.ok() && job->cancel_requested) status = job->cancel_reason;
    if (status.ok()) {
      for (auto& event : artifact_events) AppendLocked(job, std::move(event), &out);
    }
    const double run_seconds = SecondsBetween(job->started, SteadyClock::now());
    mean_run_seconds_ =
        mean_run_seconds_ == 0 ? run_seconds : 0.8 * mean_run_seconds_ + 0.2 * run_seconds;
    report.first_progress_seconds = first_progress_seconds;
    FinishLocked(job, status, status.ok() ? &result : nullptr, std::move(report), &out);
    worker->running = nullptr;
    --running_;
    ReportQueueLocked(worker);
  }
  idle_cv_.notify_all();
  Flush(&out);
  if (!status.ok() && status.code() != StatusCode::kCancelled) {
    RAINSERVE_LOG(WARNING) << "job " << job->id << " on model '" << job->model
                           << "' failed: " << status.ToString();
  }
  // Hand the pages this job's tensors freed back to the OS. glibc keeps freed
  // memory in its per-thread arenas, and jobs of varying shapes fragment them:
  // under the load test (bench/load) the idle RSS grows by about a third over
  // 2000 requests without it, and malloc_trim(0) returns most of that. It runs
  // on the worker thread after the job's final event is out, at no measurable
  // throughput cost.
  malloc_trim(0);
}

void JobManager::TimerLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    const auto now = SteadyClock::now();
    auto wake = now + std::chrono::hours(1);
    Outbox out;
    std::vector<std::pair<std::shared_ptr<Job>, Status>> expired;
    for (auto& [name, worker] : workers_) {
      for (auto& [key, job] : worker->queue) {
        if (now >= job->queue_expiry) {
          std::string seconds = std::to_string(options_.queue_timeout_seconds);
          expired.emplace_back(job, DeadlineExceededError(
                                        "the job waited longer than the queue timeout (" +
                                        seconds + " s); the server is overloaded"));
        } else if (job->deadline && now >= *job->deadline) {
          expired.emplace_back(job, DeadlineExceededError("deadline exceeded while queued"));
        } else {
          wake = std::min(wake, job->queue_expiry);
          if (job->deadline) wake = std::min(wake, *job->deadline);
        }
      }
      const std::shared_ptr<Job>& running = worker->running;
      if (running && running->deadline && !running->cancel_requested) {
        if (now >= *running->deadline) {
          RequestCancelLocked(running, DeadlineExceededError("deadline exceeded"));
        } else {
          wake = std::min(wake, *running->deadline);
        }
      }
    }
    for (auto& [job, status] : expired) FailQueuedLocked(job, status, &out);
    EvictLocked(now);
    if (!finished_.empty()) {
      wake = std::min(wake, finished_.front()->finished +
                                ToSteadyDuration(options_.retention_seconds));
    }
    if (!out.touched.empty() || !out.reports.empty()) {
      lock.unlock();
      Flush(&out);
      lock.lock();
      continue;
    }
    timer_cv_.wait_until(lock, wake);
  }
}

// ---------------------------------------------------------------- helpers

void JobManager::AppendLocked(const std::shared_ptr<Job>& job, v1::GenerateEvent event,
                              Outbox* out) {
  event.set_seq(job->events.size() + 1);
  event.set_job_id(job->id);
  job->events.push_back(std::make_shared<const v1::GenerateEvent>(std::move(event)));
  out->touched.push_back(job);
}

void JobManager::RefreshPositionsLocked(Worker* worker, Outbox* out) {
  const auto depth = static_cast<uint32_t>(worker->queue.size());
  int64_t position = 0;
  for (auto& [key, job] : worker->queue) {
    if (job->position != position) {
      job->position = position;
      v1::GenerateEvent event;
      event.mutable_queued()->set_position(static_cast<uint32_t>(position));
      event.mutable_queued()->set_depth(depth);
      AppendLocked(job, std::move(event), out);
    }
    ++position;
  }
}

void JobManager::FinishLocked(const std::shared_ptr<Job>& job, const Status& status,
                              const v1::GenerateResult* result, JobReport report, Outbox* out) {
  job->finished = SteadyClock::now();
  job->finished_wall = WallClock::now();
  job->worker = nullptr;
  v1::GenerateEvent event;
  if (status.ok()) {
    job->state = v1::JOB_STATE_SUCCEEDED;
    job->result = *result;
    v1::StageTimings* t = job->result.mutable_timings();
    *t->mutable_queue() = SecondsToDuration(SecondsBetween(job->created, job->started));
    *t->mutable_encode() = SecondsToDuration(report.encode_seconds);
    *t->mutable_total() = SecondsToDuration(SecondsBetween(job->created, job->finished));
    *event.mutable_completed()->mutable_result() = job->result;
  } else {
    job->state = status.code() == StatusCode::kCancelled ? v1::JOB_STATE_CANCELLED
                                                         : v1::JOB_STATE_FAILED;
    job->failure.set_code(static_cast<int32_t>(status.code()));
    job->failure.set_message(status.message());
    job->failure.set_retryable(IsRetryable(status.code()));
    *event.mutable_failed() = job->failure;
  }
  AppendLocked(job, std::move(event), out);

  report.model = job->model;
  report.state = job->state;
  report.code = status.code();
  report.queue_seconds =
      SecondsBetween(job->created, job->started_wall ? job->started : job->finished);
  report.total_seconds = SecondsBetween(job->created, job->finished);
  out->reports.push_back(std::move(report));

  finished_.push_back(job);
  EvictLocked(job->finished);
  timer_cv_.notify_all();  // its retention may end before the timer's next wake-up
}

void JobManager::ReportQueueLocked(const Worker* worker) {
  if (observer_ == nullptr) return;
  observer_->OnQueueChanged(worker->name, static_cast<int64_t>(worker->queue.size()),
                            worker->running ? 1 : 0);
}

void JobManager::FailQueuedLocked(const std::shared_ptr<Job>& job, const Status& status,
                                  Outbox* out) {
  Worker* worker = job->worker;
  worker->queue.erase(job->key);
  --pending_;
  FinishLocked(job, status, nullptr, JobReport(), out);
  RefreshPositionsLocked(worker, out);
  ReportQueueLocked(worker);
}

void JobManager::RequestCancelLocked(const std::shared_ptr<Job>& job, const Status& reason) {
  if (job->cancel_requested) return;
  job->cancel_requested = true;
  job->cancel_reason = reason;
  job->cancel.Cancel();
}

void JobManager::EvictLocked(SteadyClock::time_point now) {
  const auto retention = ToSteadyDuration(options_.retention_seconds);
  while (!finished_.empty() &&
         (static_cast<int64_t>(finished_.size()) > options_.max_retained_jobs ||
          finished_.front()->finished + retention <= now)) {
    const std::shared_ptr<Job> job = finished_.front();
    finished_.pop_front();
    jobs_.erase(job->id);
    auto it = job_by_client_id_.find(job->client_request_id);
    if (it != job_by_client_id_.end() && it->second == job->id) job_by_client_id_.erase(it);
  }
}

v1::Job JobManager::SnapshotLocked(const Job& job) const {
  v1::Job j;
  j.set_job_id(job.id);
  j.set_state(job.state);
  *j.mutable_request() = job.resolved;
  if (job.state == v1::JOB_STATE_QUEUED) {
    j.set_queue_position(static_cast<uint32_t>(std::max<int64_t>(0, job.position)));
  }
  j.set_step(static_cast<uint32_t>(job.step));
  j.set_total_steps(static_cast<uint32_t>(job.total_steps));
  *j.mutable_created() = ToTimestamp(job.created_wall);
  if (job.started_wall) *j.mutable_started() = ToTimestamp(*job.started_wall);
  if (job.finished_wall) *j.mutable_finished() = ToTimestamp(*job.finished_wall);
  if (job.state == v1::JOB_STATE_SUCCEEDED) *j.mutable_result() = job.result;
  if (job.state == v1::JOB_STATE_FAILED || job.state == v1::JOB_STATE_CANCELLED) {
    *j.mutable_failure() = job.failure;
  }
  return j;
}

std::string JobManager::RetryHintLocked() const {
  // One slot frees when a running job finishes; before any has, guess 5 s.
  const double seconds = mean_run_seconds_ > 0 ? mean_run_seconds_ : 5.0;
  return "retry in about " + std::to_string(static_cast<int64_t>(std::ceil(seconds))) + " s";
}

void JobManager::Flush(Outbox* out) {
  if (!out->touched.empty()) {
    std::sort(out->touched.begin(), out->touched.end());
    out->touched.erase(std::unique(out->touched.begin(), out->touched.end()), out->touched.end());
    std::vector<std::shared_ptr<Subscriber>> subs;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& job : out->touched) {
        for (const auto& sub : job->subscribers) {
          ++sub->in_flight;
          subs.push_back(sub);
        }
      }
    }
    for (const auto& sub : subs) sub->notify();
    if (!subs.empty()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (const auto& sub : subs) --sub->in_flight;
      }
      idle_cv_.notify_all();
    }
  }
  if (observer_) {
    for (const JobReport& report : out->reports) observer_->OnJobFinished(report);
  }
  out->touched.clear();
  out->reports.clear();
}

}  // namespace rainserve
