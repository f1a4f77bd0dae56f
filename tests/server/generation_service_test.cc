// rainserve.v1.Generation end to end in one process: a grpc::Server on
// 127.0.0.1:0 with GenerationService + JobManager + FakePipeline, driven by
// the generated C++ client stub. Also the request mapping it relies on.
//   ctest --test-dir build -R generation_service_test
#include "server/generation_service.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <map>
#include <set>
#include <thread>

#include "server/auth.h"
#include "server/job_manager.h"
#include "server/metrics.h"
#include "server/raw_calls.h"
#include "server/request_mapping.h"
#include "tests/server/fake_pipeline.h"
#include "tests/server/raw_call.h"

namespace rainserve {
namespace {

using testing::FakeDescription;
using testing::FakePipeline;

// ---------------------------------------------------------------- mapping

TEST(RequestMappingTest, UnsetFieldsTakeTheModelDefaultsAndTheRandomSeed) {
  v1::GenerateRequest req;
  req.set_model("fake");
  req.set_prompt("a lighthouse");
  auto r = ResolveRequest(req, FakeDescription(), 1234);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const v1::GenerateRequest& applied = r->resolved;
  EXPECT_EQ(applied.seed(), 1234u);
  EXPECT_EQ(applied.steps(), 4u);
  EXPECT_DOUBLE_EQ(applied.guidance_scale(), 5.0);
  EXPECT_DOUBLE_EQ(applied.flow_shift(), 3.0);
  EXPECT_EQ(applied.scheduler(), v1::SCHEDULER_UNIPC);
  EXPECT_EQ(applied.width(), 32u);
  EXPECT_EQ(applied.height(), 16u);
  EXPECT_EQ(applied.num_frames(), 5u);
  EXPECT_EQ(applied.fps(), 8u);
  EXPECT_EQ(applied.output_format(), v1::OUTPUT_FORMAT_MP4);
  const v1::SparseAttention& s = applied.sparse_attention();
  EXPECT_EQ(s.mode(), v1::ATTENTION_MODE_RAINFUSION);
  EXPECT_TRUE(s.has_sparsity());
  EXPECT_DOUBLE_EQ(s.sparsity(), 0.5);
  EXPECT_EQ(s.sink_frames(), 1u);
  EXPECT_EQ(s.dense_warmup_steps(), 1u);
  EXPECT_EQ(s.mask_refresh(), v1::MASK_REFRESH_EVERY_LAYER);
  EXPECT_EQ(r->generation.seed, 1234u);
  EXPECT_EQ(r->generation.scheduler, "unipc");
  EXPECT_EQ(r->generation.width, 32);
}

TEST(RequestMappingTest, GivenFieldsWinOverDefaults) {
  v1::GenerateRequest req;
  req.set_prompt("p");
  req.set_seed(9);
  req.set_scheduler(v1::SCHEDULER_EULER);
  req.set_width(64);
  req.set_num_frames(9);
  req.mutable_sparse_attention()->set_mode(v1::ATTENTION_MODE_DENSE);
  req.mutable_sparse_attention()->set_mask_refresh(v1::MASK_REFRESH_PER_STEP);
  req.mutable_sparse_attention()->mutable_window()->set_h(4);
  auto r = ResolveRequest(req, FakeDescription(), 1);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->resolved.seed(), 9u);
  EXPECT_EQ(r->generation.scheduler, "euler");
  EXPECT_EQ(r->generation.width, 64);
  EXPECT_EQ(r->generation.num_frames, 9);
  EXPECT_EQ(r->generation.sparse.mode, AttentionMode::kDense);
  EXPECT_EQ(r->generation.sparse.mask_refresh, MaskRefresh::kPerStep);
  EXPECT_EQ(r->generation.sparse.window[1], 4);
  EXPECT_EQ(r->resolved.sparse_attention().window().h(), 4u);
  EXPECT_EQ(r->resolved.model(), "fake");
}

TEST(RequestMappingTest, MassModeAndItsFieldsResolveAndEcho) {
  v1::GenerateRequest req;
  req.set_prompt("p");
  v1::SparseAttention* sa = req.mutable_sparse_attention();
  sa->set_mode(v1::ATTENTION_MODE_RAINFUSION_MASS);
  sa->set_kept_mass(0.75);
  sa->set_min_kept_blocks(2);
  sa->set_max_kept_blocks(6);
  auto r = ResolveRequest(req, FakeDescription(), 1);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->generation.sparse.mode, AttentionMode::kRainFusionMass);
  EXPECT_DOUBLE_EQ(r->generation.sparse.kept_mass, 0.75);
  EXPECT_EQ(r->generation.sparse.min_kept_blocks, 2);
  EXPECT_EQ(r->generation.sparse.max_kept_blocks, 6);
  const v1::SparseAttention& applied = r->resolved.sparse_attention();
  EXPECT_EQ(applied.mode(), v1::ATTENTION_MODE_RAINFUSION_MASS);
  EXPECT_DOUBLE_EQ(applied.kept_mass(), 0.75);
  EXPECT_EQ(applied.min_kept_blocks(), 2u);
  EXPECT_EQ(applied.max_kept_blocks(), 6u);
}

TEST(RequestMappingTest, MassModeOnACudaModelIsAccepted) {
  v1::GenerateRequest req;
  req.set_prompt("p");
  req.mutable_sparse_attention()->set_mode(v1::ATTENTION_MODE_RAINFUSION_MASS);
  PipelineDescription cuda = FakeDescription();
  cuda.attention_backends = {"cuda"};
  auto r = ResolveRequest(req, cuda, 1);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->generation.sparse.mode, AttentionMode::kRainFusionMass);
}

TEST(RequestMappingTest, OneFrameIsAnImageWithNoSinkFramesAndPngOutput) {
  v1::GenerateRequest req;
  req.set_prompt("still life");
  req.set_num_frames(1);
  req.mutable_sparse_attention()->set_sink_frames(1);
  auto r = ResolveRequest(req, FakeDescription(), 1);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->generation.sparse.sink_frames, 0);
  EXPECT_EQ(r->resolved.sparse_attention().sink_frames(), 0u);
  EXPECT_EQ(r->resolved.output_format(), v1::OUTPUT_FORMAT_PNG);
}

TEST(RequestMappingTest, OnlyTheLatentsFormatSkipsTheDecode) {
  v1::GenerateRequest req;
  req.set_prompt("waves");
  for (v1::OutputFormat f : {v1::OUTPUT_FORMAT_UNSPECIFIED, v1::OUTPUT_FORMAT_PNG,
                             v1::OUTPUT_FORMAT_MP4, v1::OUTPUT_FORMAT_RAW_RGB}) {
    req.set_output_format(f);
    auto r = ResolveRequest(req, FakeDescription(), 1);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_TRUE(r->generation.decode_frames) << v1::OutputFormat_Name(f);
  }
  req.set_output_format(v1::OUTPUT_FORMAT_LATENTS);
  auto r = ResolveRequest(req, FakeDescription(), 1);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->generation.decode_frames);
  EXPECT_EQ(r->resolved.output_format(), v1::OUTPUT_FORMAT_LATENTS);
}

TEST(RequestMappingTest, ModelInfoCarriesLimitsAndEveryDefault) {
  v1::ModelInfo info;
  FillModelInfo(FakeDescription(), &info);
  EXPECT_EQ(info.name(), "fake");
  EXPECT_EQ(info.limits().max_width(), 64u);
  EXPECT_EQ(info.limits().frame_multiple(), 4u);
  EXPECT_EQ(info.limits().max_steps(), 100u);
  EXPECT_DOUBLE_EQ(info.limits().max_quality_probe_rate(), 0.5);
  EXPECT_EQ(info.defaults().steps(), 4u);
  EXPECT_TRUE(info.defaults().sparse_attention().quality_probe().has_rate());
  EXPECT_EQ(info.defaults().scheduler(), "unipc");
  EXPECT_TRUE(info.defaults().sparse_attention().has_sparsity());
  EXPECT_TRUE(info.defaults().sparse_attention().has_sink_frames());
  EXPECT_TRUE(info.defaults().sparse_attention().has_dense_warmup_steps());
  EXPECT_EQ(info.defaults().step_cache().mode(), v1::STEP_CACHE_MODE_OFF);
  EXPECT_TRUE(info.defaults().step_cache().has_threshold());
  EXPECT_EQ(info.attention_backends_size(), 1);
}

TEST(RequestMappingTest, ResultCarriesStepStatsSparsityAndTimings) {
  GenerationOutput out;
  out.steps = {{1, false, 0.0, 0.25}, {2, true, 0.7, 1.5}};
  out.requested_sparsity = 0.8;
  out.realized_sparsity = 0.7;
  out.denoise_seconds = 1.75;
  out.peak_memory_bytes = 12345;
  v1::GenerateRequest applied;
  applied.set_prompt("x");
  v1::GenerateResult result;
  FillResultFromOutput(out, applied, &result);
  ASSERT_EQ(result.steps_size(), 2);
  EXPECT_TRUE(result.steps(1).sparse());
  EXPECT_EQ(result.steps(1).duration().seconds(), 1);
  EXPECT_EQ(result.steps(1).duration().nanos(), 500000000);
  EXPECT_DOUBLE_EQ(result.requested_sparsity(), 0.8);
  EXPECT_DOUBLE_EQ(result.realized_sparsity(), 0.7);
  EXPECT_EQ(result.timings().denoise().seconds(), 1);
  EXPECT_EQ(result.peak_memory_bytes(), 12345u);
  EXPECT_EQ(result.applied().prompt(), "x");
}

TEST(RequestMappingTest, StepCacheTakesModelDefaultsAndIsEchoedResolved) {
  PipelineDescription model = FakeDescription();
  model.defaults.step_cache = {StepCacheMode::kTeaCache, 0.2, 1};
  v1::GenerateRequest req;
  req.set_prompt("rain");
  auto r = ResolveRequest(req, model, 1);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->generation.step_cache.mode, StepCacheMode::kTeaCache);
  EXPECT_DOUBLE_EQ(r->generation.step_cache.threshold, 0.2);
  EXPECT_EQ(r->generation.step_cache.warmup_steps, 1);
  EXPECT_EQ(r->resolved.step_cache().mode(), v1::STEP_CACHE_MODE_TEACACHE);
  EXPECT_DOUBLE_EQ(r->resolved.step_cache().threshold(), 0.2);
  EXPECT_EQ(r->resolved.step_cache().warmup_steps(), 1u);

  req.mutable_step_cache()->set_mode(v1::STEP_CACHE_MODE_FIRST_BLOCK);
  req.mutable_step_cache()->set_warmup_steps(3);
  r = ResolveRequest(req, model, 1);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->generation.step_cache.mode, StepCacheMode::kFirstBlock);
  EXPECT_DOUBLE_EQ(r->generation.step_cache.threshold, 0.2);  // kept from the defaults
  EXPECT_EQ(r->resolved.step_cache().warmup_steps(), 3u);
  req.mutable_step_cache()->set_mode(v1::STEP_CACHE_MODE_OFF);
  r = ResolveRequest(req, model, 1);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->generation.step_cache.mode, StepCacheMode::kOff);
  EXPECT_EQ(r->resolved.step_cache().mode(), v1::STEP_CACHE_MODE_OFF);
}

TEST(RequestMappingTest, ExplicitTimestepsComeFromTheRequestElseTheDefaultsUnlessStepsIsSet) {
  PipelineDescription model = FakeDescription();
  model.defaults.timesteps = {1000, 750, 500, 250};
  model.defaults.steps = 4;
  v1::GenerateRequest req;
  req.set_prompt("rain");
  // Neither steps nor timesteps: the model's schedule, echoed.
  auto r = ResolveRequest(req, model, 1);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->generation.timesteps, (std::vector<double>{1000, 750, 500, 250}));
  EXPECT_EQ(r->generation.steps, 4);
  ASSERT_EQ(r->resolved.timesteps_size(), 4);
  EXPECT_DOUBLE_EQ(r->resolved.timesteps(1), 750);
  EXPECT_EQ(r->resolved.steps(), 4u);

  // steps alone: evenly spaced, the default schedule dropped.
  req.set_steps(3);
  r = ResolveRequest(req, model, 1);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->generation.timesteps.empty());
  EXPECT_EQ(r->generation.steps, 3);
  EXPECT_EQ(r->resolved.timesteps_size(), 0);

  // The request's own list sets the step count.
  req.clear_steps();
  for (double t : {999.0, 500.0}) req.add_timesteps(t);
  r = ResolveRequest(req, model, 1);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->generation.timesteps, (std::vector<double>{999, 500}));
  EXPECT_EQ(r->generation.steps, 2);
  EXPECT_EQ(r->resolved.steps(), 2u);

  // Models.Describe shows the default schedule.
  v1::ModelInfo info;
  FillModelInfo(model, &info);
  ASSERT_EQ(info.defaults().timesteps_size(), 4);
  EXPECT_DOUBLE_EQ(info.defaults().timesteps(3), 250);
}

TEST(RequestMappingTest, ExplicitTimestepErrorsNameTheField) {
  const PipelineDescription model = FakeDescription();
  const std::pair<const char*, std::function<void(v1::GenerateRequest*)>> cases[] = {
      {"timesteps[1]",
       [](v1::GenerateRequest* q) {
         q->add_timesteps(500);
         q->add_timesteps(600);
       }},
      {"timesteps[0]", [](v1::GenerateRequest* q) { q->add_timesteps(1000.5); }},
      {"timesteps[0]", [](v1::GenerateRequest* q) { q->add_timesteps(-1); }},
      {"timesteps",
       [](v1::GenerateRequest* q) {
         q->set_steps(3);
         q->add_timesteps(900);
         q->add_timesteps(100);
       }},
      {"timesteps",  // more values than limits.max_steps: refused before they are copied
       [&model](v1::GenerateRequest* q) {
         for (int64_t i = 0; i <= model.limits.max_steps; ++i) q->add_timesteps(1000.0 - i);
       }},
  };
  for (const auto& [field, mutate] : cases) {
    v1::GenerateRequest req;
    req.set_prompt("rain");
    mutate(&req);
    auto r = ResolveRequest(req, model, 1);
    ASSERT_FALSE(r.ok()) << field;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(r.status().message().rfind(field, 0), 0u) << r.status().message();
  }
}

TEST(RequestMappingTest, StepCacheValidationNamesTheField) {
  const std::pair<const char*, std::function<void(v1::StepCache*)>> cases[] = {
      {"step_cache.mode", [](v1::StepCache* c) { c->set_mode(static_cast<v1::StepCacheMode>(9)); }},
      {"step_cache.threshold", [](v1::StepCache* c) { c->set_threshold(10.01); }},
      {"step_cache.threshold", [](v1::StepCache* c) { c->set_threshold(-1); }},
      {"step_cache.threshold", [](v1::StepCache* c) { c->set_threshold(INFINITY); }},
      {"step_cache.warmup_steps", [](v1::StepCache* c) { c->set_warmup_steps(5); }},  // steps 4
  };
  for (const auto& [field, mutate] : cases) {
    v1::GenerateRequest req;
    req.set_prompt("rain");
    mutate(req.mutable_step_cache());
    auto r = ResolveRequest(req, FakeDescription(), 1);
    ASSERT_FALSE(r.ok()) << field;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(r.status().message().rfind(field, 0), 0u) << r.status().message();
  }
}

TEST(RequestMappingTest, ResultCarriesSkippedSteps) {
  GenerationOutput out;
  out.steps = {{1, false, 0, 0.1, false}, {2, false, 0, 0.1, true}, {3, false, 0, 0.1, false}};
  out.cache_skipped_steps = 1;
  v1::GenerateResult result;
  FillResultFromOutput(out, v1::GenerateRequest(), &result);
  ASSERT_EQ(result.steps_size(), 3);
  EXPECT_FALSE(result.steps(0).cache_skipped());
  EXPECT_TRUE(result.steps(1).cache_skipped());
  EXPECT_EQ(result.cache_skipped_steps(), 1u);
}

double SkippedStepsCounter(const prometheus::Registry& registry, const std::string& model,
                           const std::string& mode) {
  for (const auto& family : registry.Collect()) {
    if (family.name != "rainserve_step_cache_skipped_steps_total") continue;
    for (const auto& metric : family.metric) {
      std::map<std::string, std::string> labels;
      for (const auto& l : metric.label) labels[l.name] = l.value;
      if (labels["model"] == model && labels["mode"] == mode) return metric.counter.value;
    }
  }
  return -1;  // no such series
}

// Count and sum of a histogram series with the model label, {-1, -1} when absent.
std::pair<double, double> HistogramOf(const prometheus::Registry& registry, const std::string& name,
                                      const std::string& model) {
  for (const auto& family : registry.Collect()) {
    if (family.name != name) continue;
    for (const auto& metric : family.metric) {
      for (const auto& l : metric.label) {
        if (l.name == "model" && l.value == model) {
          return {static_cast<double>(metric.histogram.sample_count), metric.histogram.sample_sum};
        }
      }
    }
  }
  return {-1, -1};
}

TEST(ServerMetricsTest, QualityProbeHistogramsObserveEveryRecordByModel) {
  ServerMetrics metrics(std::make_shared<prometheus::Registry>());
  JobReport report;
  report.model = "wan";
  report.ran = true;
  report.quality_probes = {{2, 0, 64, 0.1, 0.99, 0.8}, {3, 1, 64, 0.3, 0.95, 0.6}};
  metrics.OnJobFinished(report);
  const auto& reg = *metrics.registry();
  const auto cosine = HistogramOf(reg, "rainserve_attention_probe_cosine", "wan");
  EXPECT_EQ(cosine.first, 2);
  EXPECT_DOUBLE_EQ(cosine.second, 0.99 + 0.95);
  const auto rel_l2 = HistogramOf(reg, "rainserve_attention_probe_rel_l2", "wan");
  EXPECT_EQ(rel_l2.first, 2);
  EXPECT_DOUBLE_EQ(rel_l2.second, 0.1 + 0.3);
  const auto mass = HistogramOf(reg, "rainserve_attention_probe_kept_mass_ratio", "wan");
  EXPECT_EQ(mass.first, 2);
  EXPECT_DOUBLE_EQ(mass.second, 0.8 + 0.6);
  report.model = "other";  // no records: no series
  report.quality_probes.clear();
  metrics.OnJobFinished(report);
  EXPECT_EQ(HistogramOf(reg, "rainserve_attention_probe_cosine", "other").first, -1);
}

TEST(RequestMappingTest, ResultCarriesQualityProbes) {
  GenerationOutput out;
  out.quality_probes = {{2, 1, 128, 0.25, 0.97, 0.75}};
  v1::GenerateResult result;
  FillResultFromOutput(out, v1::GenerateRequest(), &result);
  ASSERT_EQ(result.quality_probes_size(), 1);
  const v1::QualityProbeStats& p = result.quality_probes(0);
  EXPECT_EQ(p.step(), 2u);
  EXPECT_EQ(p.layer(), 1u);
  EXPECT_EQ(p.rows(), 128u);
  EXPECT_DOUBLE_EQ(p.rel_l2(), 0.25);
  EXPECT_DOUBLE_EQ(p.cosine(), 0.97);
  EXPECT_DOUBLE_EQ(p.kept_mass(), 0.75);
}

TEST(ServerMetricsTest, SkippedStepsCounterAddsPerModelAndMode) {
  ServerMetrics metrics(std::make_shared<prometheus::Registry>());
  JobReport report;
  report.model = "wan";
  report.ran = true;
  report.step_cache_mode = "teacache";
  report.cache_skipped_steps = 3;
  metrics.OnJobFinished(report);
  report.cache_skipped_steps = 2;
  metrics.OnJobFinished(report);
  EXPECT_DOUBLE_EQ(SkippedStepsCounter(*metrics.registry(), "wan", "teacache"), 5);
  report.step_cache_mode = "first_block";
  report.cache_skipped_steps = 4;
  metrics.OnJobFinished(report);
  EXPECT_DOUBLE_EQ(SkippedStepsCounter(*metrics.registry(), "wan", "first_block"), 4);
  EXPECT_DOUBLE_EQ(SkippedStepsCounter(*metrics.registry(), "wan", "teacache"), 5);
  report.step_cache_mode = "off";
  metrics.OnJobFinished(report);
  EXPECT_EQ(SkippedStepsCounter(*metrics.registry(), "wan", "off"), -1);
}

// ---------------------------------------------------------------- service

class GenerationServiceTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(JobManagerOptions(), 0); }

  void Start(JobManagerOptions options, double step_seconds,
             const Authenticator* auth = nullptr, int64_t max_message_bytes = 4 << 20) {
    Stop();
    options.chunk_bytes = 1000;
    jobs_ = std::make_unique<JobManager>(options, testing::RawEncoder());
    pipeline_ = std::make_shared<FakePipeline>(FakeDescription(), step_seconds);
    ASSERT_TRUE(jobs_->AddModel("fake", pipeline_).ok());
    service_ = std::make_unique<GenerationService>(
        [](const std::string& model) -> StatusOr<PipelineDescription> {
          if (model == "fake") return FakeDescription();
          if (model == "loading") return UnavailableError("model 'loading' is not ready");
          return NotFoundError("model '" + model + "' is not configured");
        },
        jobs_.get(), auth, nullptr, max_message_bytes);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_TRUE(server_ != nullptr);
    ASSERT_NE(port, 0);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::Generation::NewStub(channel_);
  }

  // Sends `bytes` as the request of `method` ("/rainserve.v1.Generation/Submit")
  // the way any client could, without the generated stub.
  grpc::Status RawCall(const std::string& method, const std::string& bytes,
                       const std::string& token = "") {
    return testing::RawCall(channel_, method, bytes, token);
  }

  void Stop() {
    if (pipeline_) pipeline_->Release();
    if (server_) {
      server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
      server_->Wait();
    }
    server_.reset();
    service_.reset();
    jobs_.reset();
  }

  void TearDown() override { Stop(); }

  static v1::GenerateRequest Request(const std::string& prompt, uint64_t seed = 7) {
    v1::GenerateRequest req;
    req.set_model("fake");
    req.set_prompt(prompt);
    req.set_seed(seed);
    return req;
  }

  struct Stream {
    std::vector<v1::GenerateEvent> events;
    grpc::Status status;
  };

  // Reads until the server ends the stream; `on_event` may cancel `ctx`.
  static Stream ReadAll(grpc::ClientReader<v1::GenerateEvent>* reader,
                        const std::function<void(const v1::GenerateEvent&)>& on_event = {}) {
    Stream s;
    v1::GenerateEvent event;
    while (reader->Read(&event)) {
      s.events.push_back(event);
      if (on_event) on_event(event);
    }
    s.status = reader->Finish();
    return s;
  }

  Stream Generate(const v1::GenerateRequest& req) {
    grpc::ClientContext ctx;
    auto reader = stub_->Generate(&ctx, req);
    return ReadAll(reader.get());
  }

  // The reassembled bytes of artifact 0, checked against its header.
  static std::string Artifact(const Stream& s) {
    const v1::ArtifactInfo* info = nullptr;
    std::string bytes;
    for (const auto& e : s.events) {
      if (e.has_artifact_header() && e.artifact_header().info().index() == 0) {
        info = &e.artifact_header().info();
      }
      if (e.has_artifact_chunk() && e.artifact_chunk().index() == 0) {
        EXPECT_EQ(e.artifact_chunk().offset(), bytes.size());
        bytes += e.artifact_chunk().data();
      }
    }
    EXPECT_NE(info, nullptr);
    if (info == nullptr) return "";
    EXPECT_EQ(info->size_bytes(), bytes.size());
    EXPECT_EQ(info->sha256(), testing::Sha256Hex(bytes));
    return bytes;
  }

  v1::Job WaitForState(const std::string& id, v1::JobState state, double timeout_seconds = 10) {
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::duration<double>(timeout_seconds);
    for (;;) {
      auto job = jobs_->Get(id);
      if (job.ok() && job->state() == state) return *job;
      if (std::chrono::steady_clock::now() > deadline) {
        ADD_FAILURE() << "job " << id << " never reached state " << v1::JobState_Name(state)
                      << (job.ok() ? ", it is " + v1::JobState_Name(job->state()) : "");
        return job.ok() ? *job : v1::Job();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }

  std::unique_ptr<JobManager> jobs_;
  std::shared_ptr<FakePipeline> pipeline_;
  std::unique_ptr<GenerationService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Generation::Stub> stub_;
};

TEST_F(GenerationServiceTest, GenerateStreamsAcceptedThroughCompletedWithChunksMatchingTheHeader) {
  const Stream s = Generate(Request("a boat at dawn"));
  ASSERT_TRUE(s.status.ok()) << s.status.error_message();
  ASSERT_GE(s.events.size(), 5u);
  EXPECT_TRUE(s.events.front().has_accepted());
  EXPECT_EQ(s.events.front().seq(), 1u);
  EXPECT_EQ(s.events.front().accepted().resolved().steps(), 4u);
  EXPECT_TRUE(s.events[1].has_queued());
  EXPECT_TRUE(s.events.back().has_completed());
  uint64_t last_seq = 0;
  bool started = false, progress = false;
  for (const auto& e : s.events) {
    EXPECT_GT(e.seq(), last_seq);
    last_seq = e.seq();
    started = started || e.has_started();
    progress = progress || e.has_progress();
  }
  EXPECT_TRUE(started);
  EXPECT_TRUE(progress);
  EXPECT_EQ(Artifact(s).size(), 32u * 16u * 5u * 3u);
  EXPECT_EQ(s.events.back().completed().result().artifacts_size(), 1);
}

// The pipeline's probe records reach the Completed event and the job's
// result; an unprobed request has none.
TEST_F(GenerationServiceTest, QualityProbeRecordsReachTheCompletedEventAndTheJob) {
  v1::GenerateRequest req = Request("a probed boat");
  req.mutable_sparse_attention()->mutable_quality_probe()->set_rate(0.5);
  const Stream s = Generate(req);
  ASSERT_TRUE(s.status.ok()) << s.status.error_message();
  ASSERT_TRUE(s.events.back().has_completed());
  const v1::GenerateResult& result = s.events.back().completed().result();
  EXPECT_DOUBLE_EQ(result.applied().sparse_attention().quality_probe().rate(), 0.5);
  ASSERT_EQ(result.quality_probes_size(), 3);  // 4 steps, 1 dense warm-up
  for (int i = 0; i < 3; ++i) {
    const v1::QualityProbeStats& p = result.quality_probes(i);
    EXPECT_EQ(p.step(), static_cast<uint32_t>(i + 2));
    EXPECT_EQ(p.layer(), static_cast<uint32_t>((i + 2) % 2));
    EXPECT_EQ(p.rows(), 64u);
    EXPECT_DOUBLE_EQ(p.rel_l2(), 0.01 * (i + 2));
    EXPECT_DOUBLE_EQ(p.cosine(), 1.0 - 0.001 * (i + 2));
    EXPECT_DOUBLE_EQ(p.kept_mass(), 0.9);
  }
  grpc::ClientContext ctx;
  v1::GetJobRequest get;
  get.set_job_id(s.events.front().job_id());
  v1::Job job;
  ASSERT_TRUE(stub_->GetJob(&ctx, get, &job).ok());
  EXPECT_EQ(job.result().quality_probes_size(), 3);

  const Stream plain = Generate(Request("a plain boat"));
  ASSERT_TRUE(plain.events.back().has_completed());
  EXPECT_EQ(plain.events.back().completed().result().quality_probes_size(), 0);
  EXPECT_DOUBLE_EQ(
      plain.events.back().completed().result().applied().sparse_attention().quality_probe().rate(),
      0.0);
}

TEST_F(GenerationServiceTest, SameSeedGivesTheSameSha256AndAnotherSeedDoesNot) {
  const Stream a = Generate(Request("same", 11));
  const Stream b = Generate(Request("same", 11));
  const Stream c = Generate(Request("same", 12));
  const auto sha = [](const Stream& s) {
    return s.events.back().completed().result().artifacts(0).sha256();
  };
  ASSERT_TRUE(a.status.ok() && b.status.ok() && c.status.ok());
  EXPECT_EQ(sha(a), sha(b));
  EXPECT_NE(sha(a), sha(c));
}

TEST_F(GenerationServiceTest, ClientCancelCancelsTheJob) {
  Start(JobManagerOptions(), /*step_seconds=*/0.01);
  v1::GenerateRequest req = Request("cancel me");
  req.set_steps(100);
  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, req);
  std::string job_id;
  const Stream s = ReadAll(reader.get(), [&](const v1::GenerateEvent& e) {
    job_id = e.job_id();
    if (e.has_progress() && e.progress().step() >= 2) ctx.TryCancel();
  });
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::CANCELLED);
  const v1::Job job = WaitForState(job_id, v1::JOB_STATE_CANCELLED);
  EXPECT_LT(job.step(), 100u);
}

TEST_F(GenerationServiceTest, DeadlineFailsTheStreamAndTheJobWithDeadlineExceeded) {
  Start(JobManagerOptions(), /*step_seconds=*/0.01);
  v1::GenerateRequest req = Request("too slow");
  req.set_steps(100);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  auto reader = stub_->Generate(&ctx, req);
  const Stream s = ReadAll(reader.get());
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  ASSERT_FALSE(s.events.empty());
  const v1::Job job = WaitForState(s.events.front().job_id(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(job.failure().code(), static_cast<int>(grpc::StatusCode::DEADLINE_EXCEEDED));
}

TEST_F(GenerationServiceTest, DetachedGenerateKeepsRunningAfterTheClientLeaves) {
  Start(JobManagerOptions(), /*step_seconds=*/0.01);
  v1::GenerateRequest req = Request("detached");
  req.set_steps(20);
  req.set_detached(true);
  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, req);
  const Stream s = ReadAll(reader.get(), [&](const v1::GenerateEvent& e) {
    if (e.has_started()) ctx.TryCancel();
  });
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::CANCELLED);
  WaitForState(s.events.front().job_id(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(GenerationServiceTest, SubmitThenWatchReplaysFromAnySeq) {
  grpc::ClientContext submit_ctx;
  v1::SubmitResponse submitted;
  ASSERT_TRUE(stub_->Submit(&submit_ctx, Request("watch me"), &submitted).ok());
  const std::string id = submitted.job().job_id();
  EXPECT_EQ(submitted.job().request().seed(), 7u);
  WaitForState(id, v1::JOB_STATE_SUCCEEDED);

  v1::WatchRequest watch;
  watch.set_job_id(id);
  grpc::ClientContext ctx;
  auto reader = stub_->Watch(&ctx, watch);
  const Stream all = ReadAll(reader.get());
  ASSERT_TRUE(all.status.ok()) << all.status.error_message();
  EXPECT_TRUE(all.events.front().has_accepted());
  EXPECT_TRUE(all.events.back().has_completed());
  Artifact(all);

  watch.set_from_seq(3);
  grpc::ClientContext ctx2;
  auto reader2 = stub_->Watch(&ctx2, watch);
  const Stream rest = ReadAll(reader2.get());
  ASSERT_TRUE(rest.status.ok());
  ASSERT_FALSE(rest.events.empty());
  EXPECT_EQ(rest.events.front().seq(), 4u);  // the text_encode progress: never superseded
  EXPECT_EQ(rest.events.back().seq(), all.events.back().seq());
}

TEST_F(GenerationServiceTest, WatchFollowsARunningJobToItsEnd) {
  Start(JobManagerOptions(), /*step_seconds=*/0.01);
  v1::GenerateRequest req = Request("followed");
  req.set_steps(20);
  grpc::ClientContext submit_ctx;
  v1::SubmitResponse submitted;
  ASSERT_TRUE(stub_->Submit(&submit_ctx, req, &submitted).ok());
  v1::WatchRequest watch;
  watch.set_job_id(submitted.job().job_id());
  grpc::ClientContext ctx;
  auto reader = stub_->Watch(&ctx, watch);
  const Stream s = ReadAll(reader.get());
  ASSERT_TRUE(s.status.ok());
  EXPECT_TRUE(s.events.back().has_completed());
}

TEST_F(GenerationServiceTest, WatchAndGetJobOfUnknownJobAreNotFound) {
  v1::WatchRequest watch;
  watch.set_job_id("job-nope");
  grpc::ClientContext ctx;
  auto reader = stub_->Watch(&ctx, watch);
  EXPECT_EQ(ReadAll(reader.get()).status.error_code(), grpc::StatusCode::NOT_FOUND);
  grpc::ClientContext ctx2;
  v1::GetJobRequest get;
  get.set_job_id("job-nope");
  v1::Job job;
  EXPECT_EQ(stub_->GetJob(&ctx2, get, &job).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(GenerationServiceTest, CancelRpcCancelsAQueuedJobAndListJobsShowsPositions) {
  pipeline_->Hold();
  std::vector<std::string> ids;
  for (const char* prompt : {"first", "second", "third"}) {
    grpc::ClientContext ctx;
    v1::SubmitResponse r;
    ASSERT_TRUE(stub_->Submit(&ctx, Request(prompt), &r).ok());
    ids.push_back(r.job().job_id());
  }
  ASSERT_TRUE(pipeline_->WaitForCalls(1));

  grpc::ClientContext list_ctx;
  v1::ListJobsResponse list;
  ASSERT_TRUE(stub_->ListJobs(&list_ctx, v1::ListJobsRequest(), &list).ok());
  ASSERT_EQ(list.jobs_size(), 3);
  EXPECT_EQ(list.jobs(0).job_id(), ids[0]);
  EXPECT_EQ(list.jobs(0).state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(list.jobs(1).job_id(), ids[1]);
  EXPECT_EQ(list.jobs(1).queue_position(), 0u);
  EXPECT_EQ(list.jobs(2).job_id(), ids[2]);
  EXPECT_EQ(list.jobs(2).queue_position(), 1u);

  grpc::ClientContext cancel_ctx;
  v1::CancelRequest cancel;
  cancel.set_job_id(ids[1]);
  v1::CancelResponse cancelled;
  ASSERT_TRUE(stub_->Cancel(&cancel_ctx, cancel, &cancelled).ok());
  EXPECT_EQ(cancelled.job().state(), v1::JOB_STATE_CANCELLED);

  grpc::ClientContext get_ctx;
  v1::GetJobRequest get;
  get.set_job_id(ids[2]);
  v1::Job third;
  ASSERT_TRUE(stub_->GetJob(&get_ctx, get, &third).ok());
  EXPECT_EQ(third.queue_position(), 0u);

  grpc::ClientContext unknown_ctx;
  cancel.set_job_id("job-nope");
  EXPECT_EQ(stub_->Cancel(&unknown_ctx, cancel, &cancelled).error_code(),
            grpc::StatusCode::NOT_FOUND);
  pipeline_->Release();
}

TEST_F(GenerationServiceTest, FullQueueIsResourceExhausted) {
  JobManagerOptions options;
  options.max_pending = 1;
  Start(options, 0);
  pipeline_->Hold();
  grpc::ClientContext c1, c2, c3;
  v1::SubmitResponse r;
  ASSERT_TRUE(stub_->Submit(&c1, Request("runs"), &r).ok());
  ASSERT_TRUE(pipeline_->WaitForCalls(1));
  ASSERT_TRUE(stub_->Submit(&c2, Request("waits"), &r).ok());
  const grpc::Status full = stub_->Submit(&c3, Request("rejected"), &r);
  EXPECT_EQ(full.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(full.error_message().find("retry"), std::string::npos);
}

TEST_F(GenerationServiceTest, UnknownModelIsNotFoundAndAModelNotReadyIsUnavailable) {
  v1::GenerateRequest req = Request("x");
  req.set_model("nope");
  EXPECT_EQ(Generate(req).status.error_code(), grpc::StatusCode::NOT_FOUND);
  req.set_model("loading");
  EXPECT_EQ(Generate(req).status.error_code(), grpc::StatusCode::UNAVAILABLE);
}

struct InvalidCase {
  const char* field;  // the message must start with it
  std::function<void(v1::GenerateRequest*)> mutate;
};

TEST_F(GenerationServiceTest, EveryInvalidFieldIsInvalidArgumentNamingIt) {
  const std::vector<InvalidCase> cases = {
      {"prompt", [](v1::GenerateRequest* r) { r->set_prompt(""); }},
      {"prompt", [](v1::GenerateRequest* r) { r->set_prompt(std::string(65, 'a')); }},
      {"negative_prompt",
       [](v1::GenerateRequest* r) { r->set_negative_prompt(std::string(65, 'a')); }},
      {"width", [](v1::GenerateRequest* r) { r->set_width(40); }},
      {"width", [](v1::GenerateRequest* r) { r->set_width(80); }},
      {"width", [](v1::GenerateRequest* r) { r->set_width(0); }},
      {"height", [](v1::GenerateRequest* r) { r->set_height(24); }},
      {"height", [](v1::GenerateRequest* r) { r->set_height(128); }},
      {"num_frames", [](v1::GenerateRequest* r) { r->set_num_frames(4); }},
      {"num_frames", [](v1::GenerateRequest* r) { r->set_num_frames(13); }},
      {"num_frames", [](v1::GenerateRequest* r) { r->set_num_frames(0); }},
      {"steps", [](v1::GenerateRequest* r) { r->set_steps(0); }},
      {"steps", [](v1::GenerateRequest* r) { r->set_steps(101); }},
      {"guidance_scale", [](v1::GenerateRequest* r) { r->set_guidance_scale(-1); }},
      {"guidance_scale", [](v1::GenerateRequest* r) { r->set_guidance_scale(std::nan("")); }},
      {"guidance_scale", [](v1::GenerateRequest* r) { r->set_guidance_scale(51); }},
      {"flow_shift", [](v1::GenerateRequest* r) { r->set_flow_shift(-1); }},
      {"flow_shift", [](v1::GenerateRequest* r) { r->set_flow_shift(INFINITY); }},
      {"fps", [](v1::GenerateRequest* r) { r->set_fps(0); }},
      {"scheduler", [](v1::GenerateRequest* r) { r->set_scheduler(static_cast<v1::Scheduler>(7)); }},
      {"output_format",
       [](v1::GenerateRequest* r) { r->set_output_format(static_cast<v1::OutputFormat>(9)); }},
      {"sparse_attention.mode",
       [](v1::GenerateRequest* r) {
         r->mutable_sparse_attention()->set_mode(static_cast<v1::AttentionMode>(5));
       }},
      {"sparse_attention.mask_refresh",
       [](v1::GenerateRequest* r) {
         r->mutable_sparse_attention()->set_mask_refresh(static_cast<v1::MaskRefresh>(5));
       }},
      {"sparse_attention.sparsity",
       [](v1::GenerateRequest* r) { r->mutable_sparse_attention()->set_sparsity(-0.1); }},
      {"sparse_attention.sparsity",
       [](v1::GenerateRequest* r) { r->mutable_sparse_attention()->set_sparsity(1.0); }},
      {"sparse_attention.sink_frames",
       [](v1::GenerateRequest* r) {
         r->set_num_frames(5);  // 2 latent frames
         r->mutable_sparse_attention()->set_sink_frames(3);
       }},
      {"sparse_attention.dense_warmup_steps",
       [](v1::GenerateRequest* r) {
         r->set_steps(4);
         r->mutable_sparse_attention()->set_dense_warmup_steps(5);
       }},
      {"sparse_attention.window.t",
       [](v1::GenerateRequest* r) { r->mutable_sparse_attention()->mutable_window()->set_t(65); }},
      {"sparse_attention.quality_probe.rate",  // above the fake model's cap of 0.5
       [](v1::GenerateRequest* r) {
         r->mutable_sparse_attention()->mutable_quality_probe()->set_rate(0.75);
       }},
      {"sparse_attention.quality_probe.rate",
       [](v1::GenerateRequest* r) {
         r->mutable_sparse_attention()->mutable_quality_probe()->set_rate(-0.5);
       }},
  };
  for (const InvalidCase& c : cases) {
    v1::GenerateRequest req = Request("valid prompt");
    c.mutate(&req);
    SCOPED_TRACE(std::string("field ") + c.field + ": " + req.ShortDebugString());
    grpc::ClientContext ctx;
    v1::SubmitResponse r;
    const grpc::Status submit = stub_->Submit(&ctx, req, &r);
    EXPECT_EQ(submit.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(submit.error_message().rfind(std::string(c.field) + " ", 0), 0u)
        << submit.error_message();
    const Stream generate = Generate(req);
    EXPECT_EQ(generate.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_TRUE(generate.events.empty());
  }
  EXPECT_EQ(pipeline_->calls(), 0);
  grpc::ClientContext ctx;
  v1::ListJobsRequest all;
  all.set_include_finished(true);
  v1::ListJobsResponse list;
  ASSERT_TRUE(stub_->ListJobs(&ctx, all, &list).ok());
  EXPECT_EQ(list.jobs_size(), 0);
}

// ---------------------------------------------------------------- shared client_request_id

TEST_F(GenerationServiceTest, SecondCallWithTheSameIdWatchesADetachedJobAndLeavesItRunning) {
  Start(JobManagerOptions(), /*step_seconds=*/0.01);
  v1::GenerateRequest req = Request("shared");
  req.set_steps(30);
  req.set_client_request_id("shared-id");
  req.set_detached(true);
  grpc::ClientContext submit_ctx;
  v1::SubmitResponse submitted;
  ASSERT_TRUE(stub_->Submit(&submit_ctx, req, &submitted).ok());
  const std::string id = submitted.job().job_id();

  // A second client sends the same request without `detached`, then leaves.
  req.set_detached(false);
  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, req);
  const Stream s = ReadAll(reader.get(), [&](const v1::GenerateEvent& e) {
    EXPECT_EQ(e.job_id(), id);
    if (e.has_progress() && e.progress().step() >= 2) ctx.TryCancel();
  });
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(WaitForState(id, v1::JOB_STATE_SUCCEEDED).state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(GenerationServiceTest, SecondCallWithTheSameIdWatchesAStreamingCreatorsJobWithoutOwningIt) {
  Start(JobManagerOptions(), /*step_seconds=*/0.01);
  v1::GenerateRequest req = Request("streamed");
  req.set_steps(30);
  req.set_client_request_id("streamed-id");
  grpc::ClientContext creator_ctx;
  auto creator = stub_->Generate(&creator_ctx, req);
  v1::GenerateEvent first;
  ASSERT_TRUE(creator->Read(&first));
  ASSERT_TRUE(first.has_accepted());

  grpc::ClientContext observer_ctx;
  auto observer = stub_->Generate(&observer_ctx, req);
  const Stream watched = ReadAll(observer.get(), [&](const v1::GenerateEvent& e) {
    EXPECT_EQ(e.job_id(), first.job_id());
    if (e.has_progress() && e.progress().step() >= 2) observer_ctx.TryCancel();
  });
  EXPECT_EQ(watched.status.error_code(), grpc::StatusCode::CANCELLED);

  const Stream created = ReadAll(creator.get());
  EXPECT_TRUE(created.status.ok()) << created.status.error_message();
  ASSERT_FALSE(created.events.empty());
  EXPECT_TRUE(created.events.back().has_completed());
}

TEST_F(GenerationServiceTest, RetryAfterTheCreatorLeftStartsAFreshJobInsteadOfReplayingTheCancel) {
  Start(JobManagerOptions(), /*step_seconds=*/0.01);
  v1::GenerateRequest req = Request("retried");
  req.set_steps(30);
  req.set_client_request_id("retry-id");
  grpc::ClientContext ctx;
  auto reader = stub_->Generate(&ctx, req);
  std::string first_id;
  const Stream dropped = ReadAll(reader.get(), [&](const v1::GenerateEvent& e) {
    first_id = e.job_id();
    if (e.has_progress() && e.progress().step() >= 2) ctx.TryCancel();
  });
  EXPECT_EQ(dropped.status.error_code(), grpc::StatusCode::CANCELLED);
  WaitForState(first_id, v1::JOB_STATE_CANCELLED);

  req.set_steps(30);
  const Stream retry = Generate(req);
  EXPECT_TRUE(retry.status.ok()) << retry.status.error_message();
  ASSERT_FALSE(retry.events.empty());
  EXPECT_NE(retry.events.front().job_id(), first_id);
  EXPECT_TRUE(retry.events.back().has_completed());
  // The abandoned job keeps its own id and state.
  EXPECT_EQ(jobs_->Get(first_id)->state(), v1::JOB_STATE_CANCELLED);
}

// ---------------------------------------------------------------- string bounds

TEST_F(GenerationServiceTest, OversizedIdsAndNamesAreInvalidArgumentNamingTheField) {
  v1::GenerateRequest req = Request("bounded");
  req.set_client_request_id(std::string(128, 'k'));
  grpc::ClientContext ok_ctx;
  v1::SubmitResponse r;
  EXPECT_TRUE(stub_->Submit(&ok_ctx, req, &r).ok());

  req.set_client_request_id(std::string(1 << 20, 'k'));
  grpc::ClientContext id_ctx;
  const grpc::Status id = stub_->Submit(&id_ctx, req, &r);
  EXPECT_EQ(id.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(id.error_message(), "client_request_id must be at most 128 bytes (got 1048576)");
  EXPECT_EQ(Generate(req).status.error_message(), id.error_message());

  req.set_client_request_id("");
  req.set_model(std::string(129, 'm'));
  grpc::ClientContext model_ctx;
  const grpc::Status model = stub_->Submit(&model_ctx, req, &r);
  EXPECT_EQ(model.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(model.error_message(), "model must be at most 128 bytes (got 129)");

  const std::string long_id(65, 'j');
  v1::GetJobRequest get;
  get.set_job_id(long_id);
  v1::Job job;
  grpc::ClientContext get_ctx;
  const grpc::Status got = stub_->GetJob(&get_ctx, get, &job);
  EXPECT_EQ(got.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(got.error_message(), "job_id must be at most 64 bytes (got 65)");
  v1::CancelRequest cancel;
  cancel.set_job_id(long_id);
  v1::CancelResponse cancelled;
  grpc::ClientContext cancel_ctx;
  EXPECT_EQ(stub_->Cancel(&cancel_ctx, cancel, &cancelled).error_message(), got.error_message());
  v1::WatchRequest watch;
  watch.set_job_id(long_id);
  grpc::ClientContext watch_ctx;
  auto reader = stub_->Watch(&watch_ctx, watch);
  EXPECT_EQ(ReadAll(reader.get()).status.error_message(), got.error_message());
}

// ---------------------------------------------------------------- ListJobs pages

TEST_F(GenerationServiceTest, ListJobsPagesThroughEveryJobOnceAndRejectsForeignTokens) {
  std::vector<std::string> ids;
  for (int i = 0; i < 7; ++i) {
    const Stream s = Generate(Request("job " + std::to_string(i)));
    ASSERT_TRUE(s.status.ok());
    ids.push_back(s.events.front().job_id());
  }
  std::vector<std::string> listed;
  v1::ListJobsRequest list;
  list.set_include_finished(true);
  list.set_page_size(3);
  int pages = 0;
  do {
    grpc::ClientContext ctx;
    v1::ListJobsResponse page;
    ASSERT_TRUE(stub_->ListJobs(&ctx, list, &page).ok());
    EXPECT_LE(page.jobs_size(), 3);
    for (const v1::Job& job : page.jobs()) {
      listed.push_back(job.job_id());
      EXPECT_FALSE(job.has_result()) << "summaries carry no result";
    }
    list.set_page_token(page.next_page_token());
    ++pages;
  } while (!list.page_token().empty() && pages < 10);
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(listed, ids);

  for (const std::string& token : {std::string("garbage"), std::string("3a663a31"),
                                   std::string(4096, 'a')}) {
    list.set_page_token(token);
    grpc::ClientContext ctx;
    v1::ListJobsResponse page;
    const grpc::Status bad = stub_->ListJobs(&ctx, list, &page);
    EXPECT_EQ(bad.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << token;
    EXPECT_EQ(bad.error_message().rfind("page_token: ", 0), 0u) << bad.error_message();
  }
}

TEST_F(GenerationServiceTest, ListJobsResponsesStayWithinTheMaxMessageSize) {
  constexpr int64_t kMaxMessage = 2048;
  Start(JobManagerOptions(), 0, nullptr, kMaxMessage);
  for (int i = 0; i < 20; ++i) {
    v1::GenerateRequest req = Request(std::string(60, 'p'));
    req.set_client_request_id(std::string(100, 'a' + i));
    ASSERT_TRUE(Generate(req).status.ok());
  }
  v1::ListJobsRequest list;
  list.set_include_finished(true);
  std::set<std::string> listed;
  int pages = 0;
  do {
    grpc::ClientContext ctx;
    v1::ListJobsResponse page;
    ASSERT_TRUE(stub_->ListJobs(&ctx, list, &page).ok());
    EXPECT_LE(static_cast<int64_t>(page.ByteSizeLong()), kMaxMessage);
    EXPECT_GT(page.jobs_size(), 0);
    for (const v1::Job& job : page.jobs()) listed.insert(job.job_id());
    list.set_page_token(page.next_page_token());
    ++pages;
  } while (!list.page_token().empty() && pages < 50);
  EXPECT_EQ(listed.size(), 20u);
  EXPECT_GT(pages, 1) << "the default page size would hold all 20: the byte limit must cut it";
}

// ---------------------------------------------------------------- malformed bytes

// GenerateRequest with field 2 (prompt) holding bytes that are not UTF-8.
std::string InvalidUtf8Prompt() {
  v1::GenerateRequest req;
  req.set_model("fake");
  std::string bytes = req.SerializeAsString();
  bytes += std::string("\x12\x03\xff\xfe\x80", 5);
  return bytes;
}

TEST_F(GenerationServiceTest, MalformedBytesAreInvalidArgumentAndTheirLogLinesRateLimited) {
  RouteProtobufLogs();
  const std::string garbage("\xff\xff\xff\xff\x0f\x01\x02", 7);
  ::testing::internal::CaptureStderr();
  const auto start = std::chrono::steady_clock::now();
  constexpr int kCalls = 40;
  for (int i = 0; i < kCalls; ++i) {
    for (const char* method : {"Generate", "Submit"}) {
      const grpc::Status s =
          RawCall(std::string("/rainserve.v1.Generation/") + method, InvalidUtf8Prompt());
      EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
      EXPECT_EQ(s.error_message(),
                "request: not a valid rainserve.v1.GenerateRequest (malformed protobuf bytes, or "
                "invalid UTF-8 in a string field)");
    }
  }
  for (const char* method : {"Watch", "Cancel", "GetJob", "ListJobs", "Submit", "Generate"}) {
    const grpc::Status s = RawCall(std::string("/rainserve.v1.Generation/") + method, garbage);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
    EXPECT_EQ(s.error_message().rfind("request: not a valid rainserve.v1.", 0), 0u)
        << method << ": " << s.error_message();
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::string log = ::testing::internal::GetCapturedStderr();
  int lines = 0;
  for (char c : log) lines += c == '\n';
  // Two limiters (protobuf's lines and the refusals), 5 lines a second each.
  const int allowed = 2 * 5 * (static_cast<int>(seconds) + 2);
  EXPECT_GT(lines, 0);
  EXPECT_LE(lines, allowed) << log;
  EXPECT_LT(lines, 2 * kCalls) << "one line per call is what the limiter prevents";
  EXPECT_EQ(pipeline_->calls(), 0);
}

TEST_F(GenerationServiceTest, MalformedBytesFromAnUnauthenticatedCallerAreUnauthenticated) {
  const std::string tokens = ::testing::TempDir() + "/generation_service_test_tokens";
  std::ofstream(tokens) << "secret-token\n";
  SecurityConfig security;
  security.tokens_file = tokens;
  StatusOr<Authenticator> auth = Authenticator::FromConfig(security);
  ASSERT_TRUE(auth.ok()) << auth.status().ToString();
  Start(JobManagerOptions(), 0, &*auth);
  const std::string garbage("\xff\xff\xff\xff\x0f", 5);
  for (const char* method : {"Generate", "Submit", "Watch", "Cancel", "GetJob", "ListJobs"}) {
    const std::string path = std::string("/rainserve.v1.Generation/") + method;
    EXPECT_EQ(RawCall(path, garbage).error_code(), grpc::StatusCode::UNAUTHENTICATED) << method;
    EXPECT_EQ(RawCall(path, garbage, "secret-token").error_code(),
              grpc::StatusCode::INVALID_ARGUMENT)
        << method;
  }
  Stop();  // before `auth` goes
}

}  // namespace
}  // namespace rainserve
