#include "server/job_manager.h"

#include <google/protobuf/timestamp.pb.h>
#include <malloc.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <sstream>

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

// The longest prefix of UTF-8 `s` of at most `max_bytes` that ends on a
// character boundary.
std::string Utf8Prefix(const std::string& s, size_t max_bytes) {
  if (s.size() <= max_bytes) return s;
  size_t n = max_bytes;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return s.substr(0, n);
}

// Where a ListJobs page resumes. Tokens are the hex of
// "<include_finished 0|1>:<section>:<n>": section 'a' (running and queued
// jobs; n = how many of them earlier pages listed) or 'f' (finished jobs;
// n = finish_seq of the last one listed).
struct PageCursor {
  bool include_finished = false;
  char section = 'a';
  uint64_t n = 0;
};

constexpr size_t kMaxPageTokenBytes = 64;
constexpr int64_t kPageTokenReserveBytes = 2 + kMaxPageTokenBytes;  // next_page_token field

std::string EncodeCursor(const PageCursor& c) {
  const std::string plain = std::string(c.include_finished ? "1" : "0") + ":" + c.section + ":" +
                            std::to_string(c.n);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string token;
  for (unsigned char ch : plain) {
    token += kHex[ch >> 4];
    token += kHex[ch & 15];
  }
  return token;
}

StatusOr<PageCursor> DecodeCursor(const std::string& token) {
  const Status malformed = InvalidArgumentError(
      "page_token: not a token this server issued (pass next_page_token back unchanged)");
  if (token.size() > kMaxPageTokenBytes || token.size() % 2 != 0) return malformed;
  std::string plain;
  for (size_t i = 0; i < token.size(); i += 2) {
    int byte = 0;
    for (size_t k = i; k < i + 2; ++k) {
      const char h = token[k];
      const int v = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : -1;
      if (v < 0) return malformed;
      byte = byte * 16 + v;
    }
    plain += static_cast<char>(byte);
  }
  // "F:S:N" with N 1..20 decimal digits.
  if (plain.size() < 5 || plain.size() > 24 || (plain[0] != '0' && plain[0] != '1') ||
      plain[1] != ':' || (plain[2] != 'a' && plain[2] != 'f') || plain[3] != ':') {
    return malformed;
  }
  PageCursor c;
  c.include_finished = plain[0] == '1';
  c.section = plain[2];
  for (size_t i = 4; i < plain.size(); ++i) {
    if (plain[i] < '0' || plain[i] > '9') return malformed;
    const uint64_t digit = static_cast<uint64_t>(plain[i] - '0');
    if (c.n > (UINT64_MAX - digit) / 10) return malformed;
    c.n = c.n * 10 + digit;
  }
  if (c.section == 'f' && !c.include_finished) return malformed;
  return c;
}

// Bytes a field of `size` bytes takes in its enclosing message (tag + length).
size_t FieldBytes(size_t size) {
  size_t varint = 1;
  for (size_t v = size; v >= 0x80; v >>= 7) ++varint;
  return 1 + varint + size;
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
  // Stopped by the call that created it (gone, or its deadline passed): the
  // client_request_id no longer leads here.
  bool abandoned = false;

  int64_t bytes = 0;        // JobBytes, once finished
  uint64_t finish_seq = 0;  // order in finished_, once finished

  v1::GenerateResult result;  // when succeeded
  v1::Failed failure;         // when failed or cancelled

  std::vector<std::shared_ptr<const v1::GenerateEvent>> events;  // events[i].seq == i + 1
  std::vector<std::shared_ptr<Subscriber>> subscribers;

  // What retaining the job costs: its event log (artifact chunks dominate),
  // the requests and keys it holds, and allowances for the allocations
  // around them (per job, per event).
  int64_t MemoryBytes() const {
    constexpr size_t kJobBytes = 2048;
    constexpr size_t kEventBytes = 256;
    size_t total = kJobBytes + resolved.ByteSizeLong() + request.prompt.size() +
                   request.negative_prompt.size() + fingerprint.size() +
                   client_request_id.size() + result.ByteSizeLong() + failure.ByteSizeLong();
    for (const auto& event : events) total += kEventBytes + event->ByteSizeLong();
    return static_cast<int64_t>(total);
  }
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
  o.max_retained_bytes = server.retention.max_bytes;
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
                                     const SubmitOptions& options, bool* created) {
  if (created != nullptr) *created = false;
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
      // An abandoned job's id starts a fresh attempt (the old job keeps its own id).
      if (it != job_by_client_id_.end() && !jobs_.at(it->second)->abandoned) {
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
  if (created != nullptr) *created = true;
  timer_cv_.notify_all();
  Flush(&out);
  return snapshot;
}

StatusOr<v1::Job> JobManager::Cancel(const std::string& job_id, const Status& reason) {
  Outbox out;
  v1::Job snapshot;
  {
    std::lock_guard<std::mutex> lock(mu_);
    RAINSERVE_ASSIGN_OR_RETURN(std::shared_ptr<Job> job, FindLocked(job_id));
    const Status why = reason.ok() ? CancelledError("cancelled") : reason;
    if (job->state == v1::JOB_STATE_QUEUED) FailQueuedLocked(job, why, &out);
    if (job->state == v1::JOB_STATE_RUNNING) RequestCancelLocked(job, why);
    snapshot = SnapshotLocked(*job);
  }
  Flush(&out);
  return snapshot;
}

void JobManager::Abandon(const std::string& job_id, const Status& reason) {
  Outbox out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) return;
    const std::shared_ptr<Job> job = it->second;
    if (job->finished_wall) return;  // it ended on its own; its id keeps leading to it
    job->abandoned = true;
    if (job->state == v1::JOB_STATE_QUEUED) FailQueuedLocked(job, reason, &out);
    if (job->state == v1::JOB_STATE_RUNNING) RequestCancelLocked(job, reason);
  }
  Flush(&out);
}

StatusOr<v1::Job> JobManager::Get(const std::string& job_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  RAINSERVE_ASSIGN_OR_RETURN(std::shared_ptr<Job> job, FindLocked(job_id));
  return SnapshotLocked(*job);
}

StatusOr<JobPage> JobManager::ListPage(const ListQuery& query) const {
  PageCursor cursor;
  cursor.include_finished = query.include_finished;
  if (!query.page_token.empty()) {
    RAINSERVE_ASSIGN_OR_RETURN(cursor, DecodeCursor(query.page_token));
    if (cursor.include_finished != query.include_finished) {
      return InvalidArgumentError(
          "page_token: it continues a listing with include_finished=" +
          std::string(cursor.include_finished ? "true" : "false") + "; ask with the same value");
    }
  }
  const uint32_t page_size =
      query.page_size == 0 ? kDefaultPageSize : std::min(query.page_size, kMaxPageSize);
  const int64_t budget = query.max_bytes - kPageTokenReserveBytes;

  std::lock_guard<std::mutex> lock(mu_);
  // Up to page_size + 1 candidates (one more says whether a next page
  // exists), each with the cursor that resumes after it.
  std::vector<std::pair<const Job*, PageCursor>> candidates;
  if (cursor.section == 'a') {
    std::vector<const Job*> active;
    for (const auto& [name, worker] : workers_) {
      if (worker->running) active.push_back(worker->running.get());
    }
    for (const auto& [name, worker] : workers_) {
      for (const auto& [key, job] : worker->queue) active.push_back(job.get());
    }
    for (uint64_t i = cursor.n; i < active.size() && candidates.size() <= page_size; ++i) {
      candidates.push_back({active[i], {query.include_finished, 'a', i + 1}});
    }
  }
  if (query.include_finished) {
    const uint64_t after = cursor.section == 'f' ? cursor.n : 0;
    auto it = std::upper_bound(
        finished_.begin(), finished_.end(), after,
        [](uint64_t seq, const std::shared_ptr<Job>& job) { return seq < job->finish_seq; });
    for (; it != finished_.end() && candidates.size() <= page_size; ++it) {
      candidates.push_back({it->get(), {true, 'f', (*it)->finish_seq}});
    }
  }

  JobPage page;
  PageCursor next = cursor;
  int64_t used = 0;
  for (const auto& [job, after] : candidates) {
    if (page.jobs.size() == page_size) break;
    v1::Job summary = SummaryLocked(*job);
    const auto bytes = static_cast<int64_t>(FieldBytes(summary.ByteSizeLong()));
    if (used + bytes > budget) {
      if (page.jobs.empty()) {
        return ResourceExhaustedError("the summary of job '" + job->id + "' (" +
                                      std::to_string(bytes) +
                                      " bytes) does not fit in a response of at most " +
                                      std::to_string(query.max_bytes) + " bytes");
      }
      break;
    }
    used += bytes;
    page.jobs.push_back(std::move(summary));
    next = after;
  }
  if (page.jobs.size() < candidates.size()) page.next_page_token = EncodeCursor(next);
  return page;
}

int64_t JobManager::RetainedBytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return retained_bytes_;
}

// ---------------------------------------------------------------- events

StatusOr<JobManager::SubscriptionId> JobManager::Subscribe(const std::string& job_id,
                                                           std::function<void()> notify) {
  std::lock_guard<std::mutex> lock(mu_);
  RAINSERVE_ASSIGN_OR_RETURN(std::shared_ptr<Job> job, FindLocked(job_id));
  auto sub = std::make_shared<Subscriber>();
  sub->job = std::move(job);
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
  RAINSERVE_ASSIGN_OR_RETURN(std::shared_ptr<Job> job, FindLocked(job_id));
  const auto& events = job->events;
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

struct JobManager::RunOutcome {
  JobReport report;
  Status status;
  std::optional<GenerationOutput> output;  // when the pipeline succeeded
  std::vector<v1::GenerateEvent> artifact_events;
  v1::GenerateResult result;
};

void JobManager::RunJob(Worker* worker, const std::shared_ptr<Job>& job) {
  RunOutcome run;
  run.report.model = job->model;
  run.report.ran = true;
  run.report.device = worker->device;
  RunPipeline(worker, job, &run);
  if (run.status.ok()) EncodeArtifacts(worker, job, &run);
  run.output.reset();
  FinishRun(worker, job, &run);
  // Hand the pages this job's tensors freed back to the OS. glibc keeps freed
  // memory in its per-thread arenas, and jobs of varying shapes fragment them:
  // under the load test (bench/load) the idle RSS grows by about a third over
  // 2000 requests without it, and malloc_trim(0) returns most of that. It runs
  // on the worker thread after the job's final event is out, at no measurable
  // throughput cost.
  malloc_trim(0);
}

void JobManager::RunPipeline(Worker* worker, const std::shared_ptr<Job>& job, RunOutcome* run) {
  // ETA from the denoising steps seen so far: the first step also carries
  // the text encoding, so later estimates use steps 2.. only.
  double first_step_elapsed = 0;
  JobReport& report = run->report;
  ProgressCallback progress = [&](const ProgressUpdate& u) {
    v1::GenerateEvent event;
    v1::Progress* p = event.mutable_progress();
    p->set_stage(u.stage);
    p->set_step(static_cast<uint32_t>(u.step));
    p->set_total_steps(static_cast<uint32_t>(u.total_steps));
    *p->mutable_elapsed() = SecondsToDuration(u.elapsed_seconds);
    const bool denoise = u.stage == "denoise" && u.step > 0;
    if (report.first_progress_seconds < 0) {
      report.first_progress_seconds = SecondsBetween(job->created, SteadyClock::now());
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

  report.requested_sparsity =
      job->request.sparse.mode == AttentionMode::kRainFusion ? job->request.sparse.sparsity : 0.0;
  report.sink_frames = job->request.sparse.sink_frames;
  report.step_cache_mode = StepCacheModeName(job->request.step_cache.mode);
  StatusOr<GenerationOutput> output = Guarded<GenerationOutput>("pipeline", [&] {
    return worker->pipeline->Generate(job->request, progress, job->cancel);
  });
  run->status = output.status();
  if (!output.ok()) {
    if (run->status.code() != StatusCode::kCancelled && options_.on_device_fault) {
      const Status device = worker->pipeline->DeviceStatus();
      if (!device.ok()) {
        RAINSERVE_LOG(ERROR) << "model '" << job->model << "': " << device.ToString();
        options_.on_device_fault(job->model, device);
      }
    }
    return;
  }
  report.text_encode_seconds = output->text_encode_seconds;
  report.denoise_seconds = output->denoise_seconds;
  report.decode_seconds = output->decode_seconds;
  report.realized_sparsity = output->realized_sparsity;
  report.steps = output->steps;
  report.quality_probes = output->quality_probes;
  report.cache_skipped_steps = output->cache_skipped_steps;
  report.mask_seconds = output->mask_seconds;
  report.frames = output->num_frames;
  report.peak_memory_bytes = output->peak_memory_bytes;
  // Encoding is a step boundary too: a job cancelled by now is not encoded.
  if (job->cancel.cancelled()) run->status = CancelledError("cancelled");
  run->output = std::move(output).value();
}

void JobManager::EncodeArtifacts(Worker* worker, const std::shared_ptr<Job>& job,
                                 RunOutcome* run) {
  const auto encode_start = SteadyClock::now();
  StatusOr<std::vector<media::Artifact>> artifacts =
      Guarded<std::vector<media::Artifact>>("artifact encoding", [&] {
        return encoder_ ? encoder_(*run->output, job->resolved)
                        : StatusOr<std::vector<media::Artifact>>(
                              UnimplementedError("no artifact encoder configured"));
      });
  run->report.encode_seconds = SecondsBetween(encode_start, SteadyClock::now());
  run->status = artifacts.status();
  if (!artifacts.ok()) return;
  v1::GenerateResult& result = run->result;
  FillResultFromOutput(*run->output, job->resolved, &result);
  result.set_device(worker->device);
  const uint64_t chunk = static_cast<uint64_t>(std::max<int64_t>(1, options_.chunk_bytes));
  for (size_t index = 0; index < artifacts->size(); ++index) {
    media::Artifact& a = (*artifacts)[index];
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
    run->report.outputs.emplace_back(a.mime_type, a.data.size());
    run->artifact_events.emplace_back();
    *run->artifact_events.back().mutable_artifact_header()->mutable_info() = *info;
    for (uint64_t offset = 0; offset < a.data.size(); offset += chunk) {
      run->artifact_events.emplace_back();
      v1::ArtifactChunk* c = run->artifact_events.back().mutable_artifact_chunk();
      c->set_index(static_cast<uint32_t>(index));
      c->set_offset(offset);
      c->set_data(a.data.substr(offset, chunk));
    }
    std::string().swap(a.data);  // the chunks hold the bytes now
  }
}

void JobManager::FinishRun(Worker* worker, const std::shared_ptr<Job>& job, RunOutcome* run) {
  Status& status = run->status;
  Outbox out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!status.ok() && job->cancel_requested) status = job->cancel_reason;
    if (status.ok()) {
      for (auto& event : run->artifact_events) AppendLocked(job, std::move(event), &out);
    }
    run->artifact_events.clear();
    const double run_seconds = SecondsBetween(job->started, SteadyClock::now());
    mean_run_seconds_ =
        mean_run_seconds_ == 0 ? run_seconds : 0.8 * mean_run_seconds_ + 0.2 * run_seconds;
    FinishLocked(job, status, status.ok() ? &run->result : nullptr, std::move(run->report), &out);
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
          std::ostringstream seconds;
          seconds << options_.queue_timeout_seconds;
          expired.emplace_back(job, DeadlineExceededError(
                                        "the job waited longer than the queue timeout (" +
                                        seconds.str() + " s); the server is overloaded"));
        } else if (job->deadline && now >= *job->deadline) {
          job->abandoned = true;  // the creating call's deadline
          expired.emplace_back(job, DeadlineExceededError("deadline exceeded while queued"));
        } else {
          wake = std::min(wake, job->queue_expiry);
          if (job->deadline) wake = std::min(wake, *job->deadline);
        }
      }
      const std::shared_ptr<Job>& running = worker->running;
      if (running && running->deadline && !running->cancel_requested) {
        if (now >= *running->deadline) {
          running->abandoned = true;
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
  job->request.image = InputImage();  // the decoded pixels go; input_image stays in `resolved`
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

  job->bytes = job->MemoryBytes();
  job->finish_seq = next_finish_seq_++;
  retained_bytes_ += job->bytes;
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
  while (!finished_.empty()) {
    const char* why = nullptr;
    if (finished_.front()->finished + retention <= now) {
      why = "its retention time passed (server.jobs.retention_seconds)";
    } else if (static_cast<int64_t>(finished_.size()) > options_.max_retained_jobs) {
      why = "newer jobs took its place (server.jobs.max_retained)";
    } else if (retained_bytes_ > options_.max_retained_bytes) {
      why = "newer results took its memory (server.retention.max_bytes)";
    } else {
      break;
    }
    const std::shared_ptr<Job> job = finished_.front();
    finished_.pop_front();
    retained_bytes_ -= job->bytes;
    jobs_.erase(job->id);
    auto it = job_by_client_id_.find(job->client_request_id);
    if (it != job_by_client_id_.end() && it->second == job->id) job_by_client_id_.erase(it);
    evicted_order_.push_back(job->id);
    evicted_[job->id] = why;
    if (evicted_order_.size() > kRememberedEvictions) {
      evicted_.erase(evicted_order_.front());
      evicted_order_.pop_front();
    }
  }
}

StatusOr<std::shared_ptr<JobManager::Job>> JobManager::FindLocked(
    const std::string& job_id) const {
  auto it = jobs_.find(job_id);
  if (it != jobs_.end()) return it->second;
  auto evicted = evicted_.find(job_id);
  if (evicted != evicted_.end()) {
    return NotFoundError("job '" + job_id + "' was evicted from retention: " +
                         evicted->second + "; its events and artifacts are gone");
  }
  return NotFoundError("job '" + job_id + "' not found");
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

v1::Job JobManager::SummaryLocked(const Job& job) const {
  v1::Job j = SnapshotLocked(job);
  j.clear_result();
  v1::GenerateRequest* r = j.mutable_request();
  const std::string prompt = Utf8Prefix(r->prompt(), kSummaryPromptBytes);
  const std::string negative = Utf8Prefix(r->negative_prompt(), kSummaryPromptBytes);
  j.set_prompt_truncated(prompt.size() < r->prompt().size() ||
                         negative.size() < r->negative_prompt().size());
  r->set_prompt(prompt);
  r->set_negative_prompt(negative);
  if (j.has_failure()) {
    j.mutable_failure()->set_message(Utf8Prefix(job.failure.message(), kSummaryMessageBytes));
  }
  return j;
}

std::string JobManager::RetryHintLocked() const {
  // The waiting jobs run in about pending x (mean job run time) / workers.
  // Before any job has finished, the running jobs' time so far stands in
  // for the mean (a lower bound).
  double per_job = mean_run_seconds_;
  if (per_job <= 0) {
    const auto now = SteadyClock::now();
    for (const auto& [name, worker] : workers_) {
      if (!worker->running) continue;
      per_job = std::max(per_job, SecondsBetween(worker->running->started, now));
    }
  }
  const double workers = static_cast<double>(std::max<size_t>(1, workers_.size()));
  const double seconds = std::max(1.0, per_job * static_cast<double>(pending_) / workers);
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
