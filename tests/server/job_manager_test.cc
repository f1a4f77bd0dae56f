// JobManager: queue order, limits, timeouts, cancellation, idempotency, event
// logs, retention, failure isolation and drain, against FakePipeline.
//   ctest --test-dir build -R job_manager_test
#include "server/job_manager.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <thread>

#include "server/request_mapping.h"
#include "tests/server/fake_pipeline.h"

namespace rainserve {
namespace {

using testing::FakeDescription;
using testing::FakePipeline;
using Events = std::vector<std::shared_ptr<const v1::GenerateEvent>>;

bool IsTerminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED ||
         s == v1::JOB_STATE_CANCELLED;
}

class JobManagerTest : public ::testing::Test {
 protected:
  void Start(JobManagerOptions options = JobManagerOptions(), double step_seconds = 0,
             JobObserver* observer = nullptr) {
    options.chunk_bytes = 1000;  // several chunks per artifact
    jobs_ = std::make_unique<JobManager>(options, testing::RawEncoder(), observer);
    pipeline_ = std::make_shared<FakePipeline>(FakeDescription(), step_seconds);
    ASSERT_TRUE(jobs_->AddModel("fake", pipeline_).ok());
  }

  void TearDown() override {
    if (pipeline_) pipeline_->Release();
    jobs_.reset();
  }

  StatusOr<v1::Job> Submit(const std::string& prompt, int32_t priority = 0,
                           const std::string& client_request_id = "", uint32_t steps = 4) {
    v1::GenerateRequest req;
    req.set_model("fake");
    req.set_prompt(prompt);
    req.set_seed(7);
    req.set_steps(steps);
    auto r = ResolveRequest(req, FakeDescription(), 0);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    SubmitOptions options;
    options.client_request_id = client_request_id;
    options.priority = priority;
    return jobs_->Submit(r->resolved, r->generation, options);
  }

  // Every job of a listing, one default page (fails the test if there are more).
  std::vector<v1::Job> List(bool include_finished) {
    ListQuery query;
    query.include_finished = include_finished;
    auto page = jobs_->ListPage(query);
    EXPECT_TRUE(page.ok()) << page.status().ToString();
    if (!page.ok()) return {};
    EXPECT_EQ(page->next_page_token, "");
    return page->jobs;
  }

  // A job with `prompt` (up to 16 KB) and `width` x `height` x `frames`
  // raw frames; larger than FakeDescription allows, which Submit does not re-check.
  StatusOr<v1::Job> SubmitLarge(const std::string& prompt, uint32_t width, uint32_t height,
                                uint32_t frames, const std::string& client_request_id = "") {
    PipelineDescription large = FakeDescription();
    large.limits.max_width = large.limits.max_height = 1024;
    large.limits.max_pixels = 1024 * 1024;
    large.limits.max_frames = 33;
    large.limits.max_prompt_bytes = 16384;
    v1::GenerateRequest req;
    req.set_model("fake");
    req.set_prompt(prompt);
    req.set_seed(7);
    req.set_steps(1);
    req.set_width(width);
    req.set_height(height);
    req.set_num_frames(frames);
    auto r = ResolveRequest(req, large, 0);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return r.status();
    SubmitOptions options;
    options.client_request_id = client_request_id;
    return jobs_->Submit(r->resolved, r->generation, options);
  }

  std::string MustSubmit(const std::string& prompt, int32_t priority = 0, uint32_t steps = 4) {
    auto job = Submit(prompt, priority, "", steps);
    EXPECT_TRUE(job.ok()) << job.status().ToString();
    return job.ok() ? job->job_id() : "";
  }

  v1::Job WaitDone(const std::string& id, double timeout_seconds = 10) {
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::duration<double>(timeout_seconds);
    for (;;) {
      auto job = jobs_->Get(id);
      if (!job.ok()) ADD_FAILURE() << job.status().ToString();
      if (!job.ok() || IsTerminal(job->state())) return job.ok() ? *job : v1::Job();
      if (std::chrono::steady_clock::now() > deadline) {
        ADD_FAILURE() << "job " << id << " did not finish";
        return *job;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }

  Events AllEvents(const std::string& id) {
    auto events = jobs_->Events(id, 0);
    EXPECT_TRUE(events.ok());
    return events.ok() ? *events : Events();
  }

  // A job that occupies the worker (held inside the pipeline) until Release.
  std::string StartBlocker() {
    pipeline_->Hold();
    const int before = pipeline_->calls();
    std::string id = MustSubmit("blocker");
    EXPECT_TRUE(pipeline_->WaitForCalls(before + 1));
    return id;
  }

  std::unique_ptr<JobManager> jobs_;
  std::shared_ptr<FakePipeline> pipeline_;
};

TEST_F(JobManagerTest, LogRunsAcceptedQueuedStartedProgressArtifactsCompletedWithContiguousSeqs) {
  Start();
  const std::string id = MustSubmit("a red fox", 0, 6);
  const v1::Job job = WaitDone(id);
  ASSERT_EQ(job.state(), v1::JOB_STATE_SUCCEEDED);

  const Events events = AllEvents(id);
  ASSERT_GE(events.size(), 6u);
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i]->seq(), i + 1);
    EXPECT_EQ(events[i]->job_id(), id);
  }
  EXPECT_TRUE(events[0]->has_accepted());
  EXPECT_EQ(events[0]->accepted().seed(), 7u);
  EXPECT_EQ(events[0]->accepted().resolved().width(), 32u);
  EXPECT_TRUE(events[1]->has_queued());
  EXPECT_EQ(events[1]->queued().position(), 0u);
  EXPECT_TRUE(events[2]->has_started());
  EXPECT_EQ(events[2]->started().device(), "cpu");
  ASSERT_TRUE(events.back()->has_completed());

  int denoise = 0;
  std::string bytes;
  const v1::ArtifactInfo* info = nullptr;
  for (const auto& e : events) {
    if (e->has_progress() && e->progress().stage() == "denoise") {
      ++denoise;
      EXPECT_EQ(e->progress().step(), static_cast<uint32_t>(denoise));
      EXPECT_EQ(e->progress().total_steps(), 6u);
    }
    if (e->has_artifact_header()) info = &e->artifact_header().info();
    if (e->has_artifact_chunk()) {
      EXPECT_EQ(e->artifact_chunk().offset(), bytes.size());
      EXPECT_LE(e->artifact_chunk().data().size(), 1000u);
      bytes += e->artifact_chunk().data();
    }
  }
  EXPECT_EQ(denoise, 6);
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(bytes.size(), 32u * 16u * 5u * 3u);
  EXPECT_EQ(info->size_bytes(), bytes.size());
  EXPECT_EQ(info->sha256(), testing::Sha256Hex(bytes));

  const v1::GenerateResult& result = events.back()->completed().result();
  EXPECT_EQ(result.steps_size(), 6);
  EXPECT_DOUBLE_EQ(result.requested_sparsity(), 0.5);
  EXPECT_EQ(result.applied().prompt(), "a red fox");
  EXPECT_EQ(result.device(), "cpu");
  EXPECT_EQ(job.step(), 6u);
  EXPECT_TRUE(job.has_finished());
}

TEST_F(JobManagerTest, HigherPriorityRunsFirstAndEqualPrioritiesKeepArrivalOrder) {
  Start();
  const std::string blocker = StartBlocker();
  const std::string a = MustSubmit("a", 0);
  const std::string b = MustSubmit("b", 5);
  const std::string c = MustSubmit("c", 0);
  const std::string d = MustSubmit("d", 5);

  const std::vector<v1::Job> listed = List(false);
  ASSERT_EQ(listed.size(), 5u);
  EXPECT_EQ(listed[0].job_id(), blocker);
  EXPECT_EQ(listed[0].state(), v1::JOB_STATE_RUNNING);
  const std::vector<std::string> queued_order = {b, d, a, c};
  for (size_t i = 0; i < queued_order.size(); ++i) {
    EXPECT_EQ(listed[i + 1].job_id(), queued_order[i]);
    EXPECT_EQ(listed[i + 1].queue_position(), i);
  }

  pipeline_->Release();
  WaitDone(c);
  EXPECT_EQ(pipeline_->prompts(), (std::vector<std::string>{"blocker", "b", "d", "a", "c"}));
  // "a" was announced at position 0, then moved back as b and d arrived,
  // and forward again as jobs ahead of it started.
  uint32_t last_position = 0;
  int queued_events = 0;
  for (const auto& e : AllEvents(a)) {
    if (e->has_queued()) {
      ++queued_events;
      last_position = e->queued().position();
    }
  }
  EXPECT_GE(queued_events, 3);
  EXPECT_EQ(last_position, 0u);
}

TEST_F(JobManagerTest, FullQueueIsResourceExhaustedWithRetryHint) {
  JobManagerOptions options;
  options.max_pending = 2;
  Start(options);
  StartBlocker();
  MustSubmit("q1");
  MustSubmit("q2");
  auto rejected = Submit("q3");
  ASSERT_FALSE(rejected.ok());
  EXPECT_EQ(rejected.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(rejected.status().message().find("retry in about"), std::string::npos)
      << rejected.status().message();
}

TEST_F(JobManagerTest, JobWaitingLongerThanQueueTimeoutFailsWithDeadlineExceeded) {
  JobManagerOptions options;
  options.queue_timeout_seconds = 0.1;
  Start(options);
  StartBlocker();
  const std::string waiting = MustSubmit("waits too long");
  const v1::Job job = WaitDone(waiting, 5);
  EXPECT_EQ(job.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(job.failure().code(), static_cast<int>(StatusCode::kDeadlineExceeded));
  EXPECT_TRUE(job.failure().retryable());
  EXPECT_TRUE(AllEvents(waiting).back()->has_failed());
}

TEST_F(JobManagerTest, CancellingQueuedJobEndsItAtOnceWithoutRunningIt) {
  Start();
  StartBlocker();
  const std::string queued = MustSubmit("never runs");
  auto cancelled = jobs_->Cancel(queued);
  ASSERT_TRUE(cancelled.ok());
  EXPECT_EQ(cancelled->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(cancelled->failure().code(), static_cast<int>(StatusCode::kCancelled));
  EXPECT_TRUE(AllEvents(queued).back()->has_failed());
  pipeline_->Release();
  const std::string after = MustSubmit("after");
  WaitDone(after);
  EXPECT_EQ(pipeline_->prompts(), (std::vector<std::string>{"blocker", "after"}));
}

TEST_F(JobManagerTest, CancellingRunningJobStopsItWithinOneStep) {
  Start(JobManagerOptions(), /*step_seconds=*/0.02);
  const std::string id = MustSubmit("long", 0, 100);
  for (;;) {
    auto job = jobs_->Get(id);
    ASSERT_TRUE(job.ok());
    if (job->step() >= 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  auto at_cancel = jobs_->Cancel(id);
  ASSERT_TRUE(at_cancel.ok());
  const v1::Job job = WaitDone(id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_CANCELLED);
  uint32_t last_step = 0;
  for (const auto& e : AllEvents(id)) {
    if (e->has_progress()) last_step = std::max(last_step, e->progress().step());
    EXPECT_FALSE(e->has_artifact_header());
  }
  EXPECT_LE(last_step, at_cancel->step() + 1);
}

TEST_F(JobManagerTest, SameClientRequestIdAndRequestReturnsTheSameJob) {
  Start();
  auto first = Submit("idempotent", 0, "key-1");
  auto second = Submit("idempotent", 0, "key-1");
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_EQ(first->job_id(), second->job_id());
  WaitDone(first->job_id());
  EXPECT_EQ(pipeline_->calls(), 1);
}

TEST_F(JobManagerTest, SameClientRequestIdWithDifferentRequestIsAlreadyExists) {
  Start();
  ASSERT_TRUE(Submit("one thing", 0, "key-2").ok());
  auto other = Submit("another thing", 0, "key-2");
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.status().code(), StatusCode::kAlreadyExists);
}

TEST_F(JobManagerTest, EventsReplayFromAnySeq) {
  Start();
  const std::string id = MustSubmit("replay");
  WaitDone(id);
  const Events all = AllEvents(id);
  for (uint64_t from : {uint64_t{0}, uint64_t{3}, static_cast<uint64_t>(all.size())}) {
    auto rest = jobs_->Events(id, from);
    ASSERT_TRUE(rest.ok());
    ASSERT_EQ(rest->size(), all.size() - from);
    if (!rest->empty()) {
      EXPECT_EQ(rest->front()->seq(), from + 1);
    }
  }
}

TEST_F(JobManagerTest, SlowReaderSkipsSupersededProgressButNeverChunksOrTheEnd) {
  Start();
  const std::string id = MustSubmit("slow reader", 0, 20);
  WaitDone(id);
  auto sub = jobs_->Subscribe(id, [] {});
  ASSERT_TRUE(sub.ok());
  const Events all = AllEvents(id);
  size_t chunks = 0, all_chunks = 0, progress = 0;
  for (const auto& e : all) all_chunks += e->has_artifact_chunk();
  uint64_t seq = 0;
  bool completed = false;
  for (;;) {
    JobManager::NextEvent next = jobs_->Next(*sub, seq);
    if (next.end) break;
    ASSERT_NE(next.event, nullptr);
    EXPECT_GT(next.event->seq(), seq);
    seq = next.event->seq();
    chunks += next.event->has_artifact_chunk();
    progress += next.event->has_progress();
    completed = completed || next.event->has_completed();
  }
  jobs_->Unsubscribe(*sub);
  EXPECT_TRUE(completed);
  EXPECT_EQ(chunks, all_chunks);
  EXPECT_LT(progress, 20u);  // the 20 denoise steps collapsed
  EXPECT_EQ(seq, all.size());
}

TEST_F(JobManagerTest, SubscriberIsNotifiedAsTheLogGrows) {
  Start();
  StartBlocker();
  const std::string id = MustSubmit("watched");
  std::atomic<int> notified{0};
  auto sub = jobs_->Subscribe(id, [&] { ++notified; });
  ASSERT_TRUE(sub.ok());
  pipeline_->Release();
  WaitDone(id);
  jobs_->Unsubscribe(*sub);
  EXPECT_GE(notified.load(), 5);
}

TEST_F(JobManagerTest, FinishedJobsExpireAfterRetentionTime) {
  JobManagerOptions options;
  options.retention_seconds = 0.1;
  Start(options);
  const std::string id = MustSubmit("short-lived");
  WaitDone(id);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(jobs_->Get(id).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(jobs_->Events(id, 0).status().code(), StatusCode::kNotFound);
}

TEST_F(JobManagerTest, OnlyTheNewestMaxRetainedFinishedJobsAreKept) {
  JobManagerOptions options;
  options.max_retained_jobs = 2;
  Start(options);
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    ids.push_back(MustSubmit("job " + std::to_string(i)));
    WaitDone(ids.back());
  }
  EXPECT_EQ(jobs_->Get(ids[0]).status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(jobs_->Get(ids[1]).ok());
  EXPECT_TRUE(jobs_->Get(ids[2]).ok());
  EXPECT_EQ(List(true).size(), 2u);
}

TEST_F(JobManagerTest, PipelineErrorOrExceptionFailsOnlyThatJob) {
  Start();
  for (auto failure : {FakePipeline::Failure::kError, FakePipeline::Failure::kThrow}) {
    pipeline_->set_failure(failure);
    const v1::Job failed = WaitDone(MustSubmit("doomed"));
    EXPECT_EQ(failed.state(), v1::JOB_STATE_FAILED);
    EXPECT_EQ(failed.failure().code(), static_cast<int>(StatusCode::kInternal));
    EXPECT_FALSE(failed.failure().retryable());
    pipeline_->set_failure(FakePipeline::Failure::kNone);
    EXPECT_EQ(WaitDone(MustSubmit("fine")).state(), v1::JOB_STATE_SUCCEEDED);
  }
}

TEST_F(JobManagerTest, DeviceFaultAfterAFailedJobIsReportedOnlyWhenThePipelineSaysSo) {
  std::mutex mu;
  std::vector<std::pair<std::string, std::string>> faults;
  JobManagerOptions options;
  options.on_device_fault = [&](const std::string& model, const Status& fault) {
    std::lock_guard<std::mutex> lock(mu);
    faults.emplace_back(model, fault.message());
  };
  Start(options);
  // A failure with a healthy device: no fault.
  pipeline_->set_failure(FakePipeline::Failure::kError);
  EXPECT_EQ(WaitDone(MustSubmit("transient")).state(), v1::JOB_STATE_FAILED);
  // A success never asks: no fault even if the device says so.
  pipeline_->set_failure(FakePipeline::Failure::kNone);
  pipeline_->SetDeviceFault(true);
  EXPECT_EQ(WaitDone(MustSubmit("fine")).state(), v1::JOB_STATE_SUCCEEDED);
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_TRUE(faults.empty());
  }
  // A failure on a faulted device: reported once, with the device's reason.
  pipeline_->set_failure(FakePipeline::Failure::kError);
  EXPECT_EQ(WaitDone(MustSubmit("sticky")).state(), v1::JOB_STATE_FAILED);
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(faults.size(), 1u);
  EXPECT_EQ(faults[0].first, "fake");
  EXPECT_EQ(faults[0].second, "fake device fault");
}

TEST_F(JobManagerTest, EncoderFailureFailsTheJob) {
  jobs_ = std::make_unique<JobManager>(
      JobManagerOptions(),
      [](const GenerationOutput&, const v1::GenerateRequest&)
          -> StatusOr<std::vector<media::Artifact>> { return InternalError("no codec"); });
  pipeline_ = std::make_shared<FakePipeline>();
  ASSERT_TRUE(jobs_->AddModel("fake", pipeline_).ok());
  const v1::Job job = WaitDone(MustSubmit("unencodable"));
  EXPECT_EQ(job.state(), v1::JOB_STATE_FAILED);
  EXPECT_NE(job.failure().message().find("no codec"), std::string::npos);
}

TEST_F(JobManagerTest, DrainFailsQueuedJobsLetsTheRunningOneFinishAndRefusesNewOnes) {
  Start();
  const std::string running = StartBlocker();
  const std::string queued = MustSubmit("queued");
  std::thread release([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    pipeline_->Release();
  });
  jobs_->Drain(10);
  release.join();
  EXPECT_EQ(jobs_->Get(running)->state(), v1::JOB_STATE_SUCCEEDED);
  const v1::Job q = *jobs_->Get(queued);
  EXPECT_EQ(q.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(q.failure().code(), static_cast<int>(StatusCode::kUnavailable));
  EXPECT_EQ(Submit("late").status().code(), StatusCode::kUnavailable);
}

TEST_F(JobManagerTest, DrainCancelsWhatStillRunsAtTheTimeout) {
  Start(JobManagerOptions(), /*step_seconds=*/0.02);
  const std::string id = MustSubmit("too long", 0, 100);
  ASSERT_TRUE(pipeline_->WaitForCalls(1));
  const auto start = std::chrono::steady_clock::now();
  jobs_->Drain(0.05);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 1.0);
  const v1::Job job = *jobs_->Get(id);
  EXPECT_EQ(job.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(job.failure().code(), static_cast<int>(StatusCode::kUnavailable));
}

TEST_F(JobManagerTest, RemoveModelFailsItsQueuedJobsAndLaterSubmitsAreUnavailable) {
  Start();
  const std::string running = StartBlocker();
  const std::string queued = MustSubmit("orphan");
  std::thread release([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    pipeline_->Release();
  });
  EXPECT_TRUE(jobs_->RemoveModel("fake").ok());
  release.join();
  EXPECT_EQ(jobs_->Get(running)->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(jobs_->Get(queued)->failure().code(), static_cast<int>(StatusCode::kUnavailable));
  EXPECT_EQ(Submit("no model").status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(jobs_->RemoveModel("fake").code(), StatusCode::kNotFound);
}

TEST_F(JobManagerTest, SubmitDeadlineFailsTheRunningJobWithDeadlineExceeded) {
  Start(JobManagerOptions(), /*step_seconds=*/0.02);
  v1::GenerateRequest req;
  req.set_model("fake");
  req.set_prompt("deadline");
  req.set_steps(100);
  auto r = ResolveRequest(req, FakeDescription(), 1);
  ASSERT_TRUE(r.ok());
  SubmitOptions options;
  options.deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
  auto job = jobs_->Submit(r->resolved, r->generation, options);
  ASSERT_TRUE(job.ok());
  const v1::Job done = WaitDone(job->job_id());
  EXPECT_EQ(done.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(done.failure().code(), static_cast<int>(StatusCode::kDeadlineExceeded));
}

class RecordingObserver : public JobObserver {
 public:
  void OnJobFinished(const JobReport& report) override {
    std::lock_guard<std::mutex> lock(mu);
    reports.push_back(report);
  }
  void OnQueueChanged(const std::string& model, int64_t pending, int64_t running) override {
    EXPECT_EQ(model, "fake");
    std::lock_guard<std::mutex> lock(mu);
    max_pending = std::max(max_pending, pending);
    max_running = std::max(max_running, running);
    last_pending = pending;
    last_running = running;
  }
  std::mutex mu;
  std::vector<JobReport> reports;
  int64_t max_pending = 0, max_running = 0, last_pending = -1, last_running = -1;
};

TEST_F(JobManagerTest, ObserverSeesQueueChangesAndFinishedJobsWithStepStats) {
  RecordingObserver observer;
  Start(JobManagerOptions(), 0, &observer);
  StartBlocker();
  const std::string queued = MustSubmit("observed", 0, 5);
  pipeline_->Release();
  WaitDone(queued);
  jobs_.reset();  // joins the workers; every callback has run
  ASSERT_EQ(observer.reports.size(), 2u);
  EXPECT_EQ(observer.max_pending, 1);
  EXPECT_EQ(observer.max_running, 1);
  EXPECT_EQ(observer.last_pending, 0);
  EXPECT_EQ(observer.last_running, 0);
  const JobReport& r = observer.reports[1];
  EXPECT_EQ(r.model, "fake");
  EXPECT_EQ(r.state, v1::JOB_STATE_SUCCEEDED);
  EXPECT_TRUE(r.ran);
  EXPECT_EQ(r.steps.size(), 5u);
  EXPECT_GT(r.queue_seconds, 0);
}

// ---------------------------------------------------------------- client request ids

TEST_F(JobManagerTest, RepeatedClientRequestIdReportsTheJobAsNotCreated) {
  Start();
  StartBlocker();
  v1::GenerateRequest req;
  req.set_model("fake");
  req.set_prompt("owned");
  auto r = ResolveRequest(req, FakeDescription(), 1);
  ASSERT_TRUE(r.ok());
  SubmitOptions options;
  options.client_request_id = "owner-key";
  bool created = false;
  auto first = jobs_->Submit(r->resolved, r->generation, options, &created);
  ASSERT_TRUE(first.ok());
  EXPECT_TRUE(created);
  auto second = jobs_->Submit(r->resolved, r->generation, options, &created);
  ASSERT_TRUE(second.ok());
  EXPECT_FALSE(created);
  EXPECT_EQ(second->job_id(), first->job_id());
}

TEST_F(JobManagerTest, AbandonedJobReleasesItsClientRequestIdForAFreshAttempt) {
  Start();
  StartBlocker();
  auto first = Submit("retry me", 0, "retry-key");
  ASSERT_TRUE(first.ok());
  jobs_->Abandon(first->job_id(), CancelledError("the client cancelled the call"));
  EXPECT_EQ(jobs_->Get(first->job_id())->state(), v1::JOB_STATE_CANCELLED);

  auto retry = Submit("retry me", 0, "retry-key");
  ASSERT_TRUE(retry.ok());
  EXPECT_NE(retry->job_id(), first->job_id());
  EXPECT_EQ(retry->state(), v1::JOB_STATE_QUEUED);
  // The id now leads to the fresh attempt; the old job keeps its own id.
  EXPECT_EQ(Submit("retry me", 0, "retry-key")->job_id(), retry->job_id());
  EXPECT_EQ(jobs_->Get(first->job_id())->state(), v1::JOB_STATE_CANCELLED);
  // A Cancel by job id is not an abandonment: the id keeps replaying it.
  ASSERT_TRUE(jobs_->Cancel(retry->job_id()).ok());
  EXPECT_EQ(Submit("retry me", 0, "retry-key")->job_id(), retry->job_id());
}

TEST_F(JobManagerTest, AbandonAfterTheJobFinishedLeavesTheIdLeadingToIt) {
  Start();
  auto first = Submit("done already", 0, "done-key");
  ASSERT_TRUE(first.ok());
  WaitDone(first->job_id());
  jobs_->Abandon(first->job_id(), CancelledError("the client cancelled the call"));
  EXPECT_EQ(jobs_->Get(first->job_id())->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(Submit("done already", 0, "done-key")->job_id(), first->job_id());
  EXPECT_EQ(pipeline_->calls(), 1);
}

// ---------------------------------------------------------------- retention by bytes

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAddressSanitizer = true;
#else
constexpr bool kAddressSanitizer = false;
#endif
#else
constexpr bool kAddressSanitizer = false;
#endif

int64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

TEST_F(JobManagerTest, RetainedResultsStayWithinMaxRetainedBytesAndSoDoesRss) {
  constexpr int64_t kBudget = 8 << 20;
  JobManagerOptions options;
  options.max_retained_bytes = kBudget;
  Start(options);
  // 256 x 256 x 9 raw RGB: 1.7 MB per job, 70 MB for all 40 without the budget.
  for (int i = 0; i < 2; ++i) WaitDone(SubmitLarge("warm-up", 256, 256, 9)->job_id());
  const int64_t rss_before = ResidentBytes();
  std::vector<std::string> ids;
  for (int i = 0; i < 40; ++i) {
    auto job = SubmitLarge("large " + std::to_string(i), 256, 256, 9);
    ASSERT_TRUE(job.ok()) << job.status().ToString();
    ids.push_back(job->job_id());
    WaitDone(ids.back());
    EXPECT_LE(jobs_->RetainedBytes(), kBudget);
  }
  const int64_t rss_after = ResidentBytes();
  // AddressSanitizer keeps freed memory in its quarantine (256 MB), so RSS
  // says nothing about retention there; the retained-bytes bound above holds.
  if (!kAddressSanitizer) {
    EXPECT_LT(rss_after - rss_before, kBudget + (int64_t{24} << 20))
        << "RSS " << (rss_before >> 20) << " MiB -> " << (rss_after >> 20) << " MiB";
  }
  // The newest stay readable, with their artifacts.
  EXPECT_TRUE(jobs_->Get(ids.back()).ok());
  EXPECT_TRUE(AllEvents(ids.back()).back()->has_completed());
  const Status evicted = jobs_->Get(ids.front()).status();
  EXPECT_EQ(evicted.code(), StatusCode::kNotFound);
  EXPECT_EQ(evicted.message(), "job '" + ids.front() +
                                   "' was evicted from retention: newer results took its memory "
                                   "(server.retention.max_bytes); its events and artifacts are "
                                   "gone");
  EXPECT_EQ(jobs_->Events(ids.front(), 0).status().message(), evicted.message());
  EXPECT_EQ(jobs_->Subscribe(ids.front(), [] {}).status().message(), evicted.message());
  EXPECT_EQ(jobs_->Cancel(ids.front()).status().message(), evicted.message());
}

TEST_F(JobManagerTest, JobsEvictedByCountOrTimeSaySoAndUnknownIdsDoNot) {
  JobManagerOptions options;
  options.max_retained_jobs = 1;
  Start(options);
  const std::string first = MustSubmit("first");
  WaitDone(first);
  WaitDone(MustSubmit("second"));
  EXPECT_NE(jobs_->Get(first).status().message().find(
                "evicted from retention: newer jobs took its place (server.jobs.max_retained)"),
            std::string::npos)
      << jobs_->Get(first).status().message();
  EXPECT_EQ(jobs_->Get("job-unknown").status().message(), "job 'job-unknown' not found");
}

// ---------------------------------------------------------------- ListPage

TEST_F(JobManagerTest, ListPagesVisitEveryJobOnceInOrderRunningQueuedThenFinished) {
  Start();
  std::vector<std::string> finished;
  for (int i = 0; i < 5; ++i) {
    finished.push_back(MustSubmit("done " + std::to_string(i)));
    WaitDone(finished.back());
  }
  const std::string running = StartBlocker();
  std::vector<std::string> queued;
  for (int i = 0; i < 4; ++i) queued.push_back(MustSubmit("queued " + std::to_string(i)));
  std::vector<std::string> expected = {running};
  expected.insert(expected.end(), queued.begin(), queued.end());
  expected.insert(expected.end(), finished.begin(), finished.end());

  for (uint32_t page_size : {1u, 2u, 3u, 5u, 10u}) {
    ListQuery query;
    query.include_finished = true;
    query.page_size = page_size;
    std::vector<std::string> listed;
    for (int pages = 0; pages < 20; ++pages) {
      auto page = jobs_->ListPage(query);
      ASSERT_TRUE(page.ok()) << page.status().ToString();
      EXPECT_LE(page->jobs.size(), page_size);
      for (const v1::Job& job : page->jobs) listed.push_back(job.job_id());
      if (page->next_page_token.empty()) break;
      query.page_token = page->next_page_token;
    }
    EXPECT_EQ(listed, expected) << "page_size " << page_size;
  }
  ListQuery active;
  active.page_size = 2;
  auto first = jobs_->ListPage(active);
  ASSERT_TRUE(first.ok());
  active.page_token = first->next_page_token;
  auto second = jobs_->ListPage(active);
  ASSERT_TRUE(second.ok());
  auto third = jobs_->ListPage({false, 2, second->next_page_token, 4 << 20});
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(third->jobs.size(), 1u);
  EXPECT_EQ(third->next_page_token, "") << "finished jobs are not listed without include_finished";
}

TEST_F(JobManagerTest, PageSizeDefaultsTo100AndIsCappedAt1000) {
  JobManagerOptions options;
  options.max_pending = 2000;
  Start(options);
  StartBlocker();
  for (int i = 0; i < 1001; ++i) MustSubmit("q");
  ListQuery query;
  auto page = jobs_->ListPage(query);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->jobs.size(), JobManager::kDefaultPageSize);
  EXPECT_NE(page->next_page_token, "");
  query.page_size = 5000;
  page = jobs_->ListPage(query);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->jobs.size(), JobManager::kMaxPageSize);
  EXPECT_NE(page->next_page_token, "");
}

TEST_F(JobManagerTest, SummariesCutPromptsAtAUtf8BoundaryAndCarryNoResult) {
  Start();
  std::string prompt = "a";
  for (int i = 0; i < 150; ++i) prompt += "\xc3\xa9";  // 301 bytes of "aéé..."
  auto job = SubmitLarge(prompt, 32, 16, 1);
  ASSERT_TRUE(job.ok());
  WaitDone(job->job_id());
  const std::string short_id = MustSubmit("short");
  WaitDone(short_id);

  auto page = jobs_->ListPage({true, 0, "", 4 << 20});
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->jobs.size(), 2u);
  const v1::Job& cut = page->jobs[0];
  EXPECT_TRUE(cut.prompt_truncated());
  // Byte 256 is inside a two-byte character: the prefix stops before it.
  EXPECT_EQ(cut.request().prompt(), prompt.substr(0, 255));
  EXPECT_FALSE(cut.has_result());
  EXPECT_EQ(cut.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_FALSE(page->jobs[1].prompt_truncated());
  EXPECT_EQ(page->jobs[1].request().prompt(), "short");
  // GetJob has it all.
  auto whole = jobs_->Get(job->job_id());
  EXPECT_EQ(whole->request().prompt(), prompt);
  EXPECT_TRUE(whole->has_result());
  EXPECT_FALSE(whole->prompt_truncated());
}

TEST_F(JobManagerTest, PagesStopEarlyToStayWithinMaxBytes) {
  Start();
  std::vector<std::string> ids;
  for (int i = 0; i < 30; ++i) {
    auto job = SubmitLarge(std::string(1000, 'a' + i % 26), 32, 16, 1, std::string(128, 'k') +
                                                                            std::to_string(i));
    ASSERT_TRUE(job.ok());
    ids.push_back(job->job_id());
    WaitDone(ids.back());
  }
  constexpr int64_t kMaxBytes = 4096;
  ListQuery query{true, 1000, "", kMaxBytes};
  std::vector<std::string> listed;
  int pages = 0;
  for (; pages < 30; ++pages) {
    auto page = jobs_->ListPage(query);
    ASSERT_TRUE(page.ok()) << page.status().ToString();
    v1::ListJobsResponse response;
    for (const v1::Job& job : page->jobs) {
      *response.add_jobs() = job;
      listed.push_back(job.job_id());
    }
    response.set_next_page_token(page->next_page_token);
    EXPECT_LE(static_cast<int64_t>(response.ByteSizeLong()), kMaxBytes);
    EXPECT_FALSE(page->jobs.empty());
    if (page->next_page_token.empty()) break;
    query.page_token = page->next_page_token;
  }
  EXPECT_EQ(listed, ids);
  EXPECT_GE(pages + 1, 3) << "about 300-byte summaries: a 4 KiB page holds at most 13";
  // A budget smaller than one summary cannot be met.
  EXPECT_EQ(jobs_->ListPage({true, 0, "", 200}).status().code(), StatusCode::kResourceExhausted);
}

TEST_F(JobManagerTest, MalformedOrForeignPageTokensAreInvalidArgument) {
  Start();
  for (int i = 0; i < 3; ++i) WaitDone(MustSubmit("j"));
  auto hex = [](const std::string& plain) {
    std::string out;
    char byte[3];
    for (unsigned char c : plain) {
      std::snprintf(byte, sizeof(byte), "%02x", c);
      out += byte;
    }
    return out;
  };
  const std::vector<std::string> malformed = {
      "zz", "abc", hex("1:x:1"), hex("0:f:1"), hex("1:a:"), hex("1:a:1x"),
      hex("1:a:99999999999999999999"), std::string(66, '0'), hex("1:f:-1")};
  for (const std::string& token : malformed) {
    auto page = jobs_->ListPage({true, 1, token, 4 << 20});
    ASSERT_FALSE(page.ok()) << token;
    EXPECT_EQ(page.status().code(), StatusCode::kInvalidArgument) << token;
    EXPECT_EQ(page.status().message().rfind("page_token: not a token this server issued", 0), 0u)
        << page.status().message();
  }
  auto first = jobs_->ListPage({true, 1, "", 4 << 20});
  ASSERT_TRUE(first.ok());
  auto other = jobs_->ListPage({false, 1, first->next_page_token, 4 << 20});
  EXPECT_EQ(other.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(other.status().message(),
            "page_token: it continues a listing with include_finished=true; ask with the same "
            "value");
}

// ---------------------------------------------------------------- retry hint

int64_t RetryHintSeconds(const Status& status) {
  const std::string& m = status.message();
  const auto at = m.find("retry in about ");
  if (at == std::string::npos) return -1;
  return std::stoll(m.substr(at + 15));
}

TEST_F(JobManagerTest, RetryHintIsTheMeasuredJobTimeTimesTheWaitingJobsPerWorker) {
  JobManagerOptions options;
  options.max_pending = 3;
  Start(options, /*step_seconds=*/0.2);
  WaitDone(MustSubmit("measured"));  // 4 steps: about 0.8 s
  StartBlocker();
  for (int i = 0; i < 3; ++i) MustSubmit("waiting");
  auto rejected = Submit("rejected");
  ASSERT_EQ(rejected.status().code(), StatusCode::kResourceExhausted);
  // 3 waiting x ~0.8 s / 1 worker.
  const int64_t hint = RetryHintSeconds(rejected.status());
  EXPECT_GE(hint, 2) << rejected.status().message();
  EXPECT_LE(hint, 4) << rejected.status().message();
}

TEST_F(JobManagerTest, RetryHintBeforeAnyJobFinishedUsesTheRunningJobsTimeSoFar) {
  JobManagerOptions options;
  options.max_pending = 2;
  Start(options);
  StartBlocker();
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  for (int i = 0; i < 2; ++i) MustSubmit("waiting");
  auto rejected = Submit("rejected");
  ASSERT_EQ(rejected.status().code(), StatusCode::kResourceExhausted);
  // 2 waiting x at least 1.5 s so far.
  const int64_t hint = RetryHintSeconds(rejected.status());
  EXPECT_GE(hint, 3) << rejected.status().message();
  EXPECT_LE(hint, 4) << rejected.status().message();
}

}  // namespace
}  // namespace rainserve
