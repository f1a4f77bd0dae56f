// End-to-end tests of the real service: ServerApp in-process on 127.0.0.1:0
// with the embedded wan-tiny model (random weights, CPU), driven over
// loopback by the generated C++ stubs. Covers images and videos (decoded with
// libpng/FFmpeg), progress, determinism, cancellation, deadlines, the queue,
// Watch replay, idempotency, Models, health during shutdown, bearer tokens,
// TLS/mTLS (certificates made at run time with the openssl command line), the
// metrics endpoint, and faults: clients hanging up, deadlines that pass in the
// queue, corrupt or missing checkpoint files, oversize requests and the
// per-connection stream limit. (Signals, slow readers and the server's
// memory are tested against the real binary in server_process_test.cc.)
//
//   ctest --test-dir build -R e2e_test --output-on-failure
#include <google/protobuf/util/message_differencer.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/files.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "media/sha256.h"
#include "rainserve/v1/generation.grpc.pb.h"
#include "rainserve/v1/models.grpc.pb.h"
#include "server/config.h"
#include "server/server_app.h"
#include "tests/media/test_frames.h"
#include "tests/server/e2e_client.h"
#include "tests/server/test_server.h"

namespace rainserve {
namespace {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;
using media::Sha256Hex;
using media::testing::DecodeMp4;
using media::testing::DecodePng;
using testing::Artifact;
using testing::Artifacts;
using testing::Client;
using testing::ReadToEnd;
using testing::StartApp;
using testing::Stream;
using testing::Target;

constexpr char kModel[] = "wan-tiny";
constexpr char kGeneration[] = "rainserve.v1.Generation";
constexpr char kGenerationModel[] = "rainserve.v1.Generation/wan-tiny";
// Long enough that a cancel, a deadline or a shutdown lands mid-run: the
// largest frames and step count the limits allow (the run is cut short).
constexpr uint32_t kLongSteps = 50;

// A fresh folder under the system's temporary directory, removed afterwards.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "rainserve-e2e-XXXXXX").string();
    if (mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  std::string Write(const std::string& name, const std::string& text) const {
    const std::string file = path_ + "/" + name;
    std::ofstream(file) << text;
    return file;
  }
  std::string File(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// wan-tiny with small defaults and the limits of configs/server.yaml, but
// 64 prompt tokens (faster tests; the shipped config has the reference's 512).
ModelEntry WanTiny(bool load_at_startup = true) {
  ModelEntry e;
  e.name = kModel;
  e.pipeline = "wan";
  e.path = testing::SourceDir() + "/models/wan-tiny";
  e.device = "cpu";
  e.dtype = "fp32";
  e.threads = 2;
  e.load_at_startup = load_at_startup;
  e.defaults.width = 64;
  e.defaults.height = 64;
  e.defaults.num_frames = 5;
  e.defaults.fps = 8;
  e.defaults.steps = 2;
  e.defaults.guidance_scale = 5.0;
  e.defaults.attention_mode = attention::AttentionMode::kRainFusion;
  e.defaults.sparsity = 0.5;
  e.defaults.sink_frames = 1;
  e.defaults.dense_warmup_steps = 1;
  e.defaults.mask_refresh = attention::MaskRefresh::kEveryLayer;
  e.limits.max_width = 512;
  e.limits.max_height = 512;
  e.limits.max_pixels = 262144;
  e.limits.max_frames = 33;
  e.limits.max_steps = 50;
  e.limits.max_prompt_tokens = 64;
  return e;
}

ServerConfig Config(bool load_at_startup = true) {
  ServerConfig c;
  c.server.listen_address = "127.0.0.1:0";
  c.server.metrics_address = "127.0.0.1:0";
  c.server.drain_timeout_seconds = 60;
  c.models.push_back(WanTiny(load_at_startup));
  c.source = "e2e_test";
  return c;
}

v1::GenerateRequest Request(const std::string& prompt, uint32_t width, uint32_t height,
                            uint32_t frames, uint32_t steps, uint64_t seed = 1) {
  v1::GenerateRequest r;
  r.set_model(kModel);
  r.set_prompt(prompt);
  r.set_width(width);
  r.set_height(height);
  r.set_num_frames(frames);
  r.set_steps(steps);
  r.set_seed(seed);
  return r;
}

v1::GenerateRequest LongRequest(const std::string& prompt) {
  return Request(prompt, 256, 256, 17, kLongSteps);
}

std::vector<v1::Progress> DenoiseProgress(const Stream& s) {
  std::vector<v1::Progress> progress;
  for (const v1::GenerateEvent& e : s.events) {
    if (e.has_progress() && e.progress().stage() == "denoise") progress.push_back(e.progress());
  }
  return progress;
}

// Reads `reader` up to and including the first denoise Progress event.
bool ReadUntilDenoising(grpc::ClientReader<v1::GenerateEvent>* reader, Stream* s) {
  for (v1::GenerateEvent e; reader->Read(&e);) {
    s->events.push_back(e);
    if (e.has_progress() && e.progress().stage() == "denoise") return true;
  }
  return false;
}

// What a streaming reader that fell behind gets (job_manager.h): a Queued
// event followed by another Queued, or a Progress followed by a Progress of
// the same stage, is superseded and dropped.
std::vector<v1::GenerateEvent> Coalesced(const std::vector<v1::GenerateEvent>& events) {
  std::vector<v1::GenerateEvent> kept;
  for (size_t i = 0; i < events.size(); ++i) {
    if (i + 1 < events.size()) {
      const v1::GenerateEvent& e = events[i];
      const v1::GenerateEvent& next = events[i + 1];
      if (e.has_queued() && next.has_queued()) continue;
      if (e.has_progress() && next.has_progress() &&
          e.progress().stage() == next.progress().stage()) {
        continue;
      }
    }
    kept.push_back(events[i]);
  }
  return kept;
}

// ---------------------------------------------------------------- one shared server

std::unique_ptr<ServerApp> StartWanTiny() { return StartApp(Config()); }

// The default configuration (no auth, no TLS, queue of 64), started once for
// every test of the suite: these tests leave the server as they found it.
using WanTinyE2eTest = testing::SharedServerTest<StartWanTiny>;

TEST_F(WanTinyE2eTest, ImageRequestReturnsAPngThatDecodesToTheRequestedSize) {
  const Stream s = client_->Generate(Request("a red kite", 80, 48, 1, 2));
  ASSERT_TRUE(s.status.ok()) << s.status.error_message();
  const std::vector<Artifact> artifacts = Artifacts(s);
  ASSERT_EQ(artifacts.size(), 1u);
  const v1::ArtifactInfo& info = artifacts[0].info;
  EXPECT_EQ(info.mime_type(), "image/png");
  EXPECT_EQ(info.width(), 80u);
  EXPECT_EQ(info.height(), 48u);
  EXPECT_EQ(info.frames(), 1u);
  auto png = DecodePng(artifacts[0].data);
  ASSERT_TRUE(png.ok()) << png.status().ToString();
  EXPECT_EQ(png->width, 80);
  EXPECT_EQ(png->height, 48);
  EXPECT_EQ(png->rgb.size(), 80u * 48u * 3u);
  ASSERT_TRUE(s.events.back().has_completed());
  EXPECT_EQ(s.events.back().completed().result().applied().num_frames(), 1u);
}

TEST_F(WanTinyE2eTest, VideoRequestReturnsAnMp4WithTheRequestedFramesAndSize) {
  const Stream s = client_->Generate(Request("waves", 64, 48, 9, 2));
  ASSERT_TRUE(s.status.ok()) << s.status.error_message();
  const std::vector<Artifact> artifacts = Artifacts(s);
  ASSERT_EQ(artifacts.size(), 1u);
  const v1::ArtifactInfo& info = artifacts[0].info;
  EXPECT_EQ(info.mime_type(), "video/mp4");
  EXPECT_EQ(info.frames(), 9u);
  EXPECT_EQ(info.fps(), 8u);
  auto video = DecodeMp4(artifacts[0].data);
  ASSERT_TRUE(video.ok()) << video.status().ToString();
  EXPECT_EQ(video->rgb_frames.size(), 9u);  // 1 + 4k with k = 2
  EXPECT_EQ(video->width, 64);
  EXPECT_EQ(video->height, 48);
  EXPECT_EQ(video->codec_name, "h264");
}

// Mass mode through gRPC: 256x256, 5 frames = 4 key blocks of 128 and no
// sink, so kept_mass 0.5 keeps 1 or 2 blocks per row (sparsity in [0.5, 0.75]).
TEST_F(WanTinyE2eTest, MassModeRequestRealizesSparsityAndEchoesItsSettings) {
  v1::GenerateRequest r = Request("waves", 256, 256, 5, 2);
  r.set_output_format(v1::OUTPUT_FORMAT_LATENTS);
  r.mutable_sparse_attention()->set_mode(v1::ATTENTION_MODE_RAINFUSION_MASS);
  r.mutable_sparse_attention()->set_kept_mass(0.5);
  r.mutable_sparse_attention()->set_sink_frames(0);
  const Stream s = client_->Generate(r);
  ASSERT_TRUE(s.status.ok()) << s.status.error_message();
  ASSERT_TRUE(s.events.back().has_completed());
  const v1::GenerateResult& result = s.events.back().completed().result();
  EXPECT_EQ(result.applied().sparse_attention().mode(), v1::ATTENTION_MODE_RAINFUSION_MASS);
  EXPECT_DOUBLE_EQ(result.applied().sparse_attention().kept_mass(), 0.5);
  EXPECT_GE(result.realized_sparsity(), 0.5);
  EXPECT_LE(result.realized_sparsity(), 0.75);
}

TEST_F(WanTinyE2eTest, LatentsRequestReturnsTheUndecodedLatentsWithTheirShape) {
  v1::GenerateRequest r = Request("waves", 64, 48, 9, 2);
  r.set_output_format(v1::OUTPUT_FORMAT_LATENTS);
  const Stream s = client_->Generate(r);
  ASSERT_TRUE(s.status.ok()) << s.status.error_message();
  const std::vector<Artifact> artifacts = Artifacts(s);
  ASSERT_EQ(artifacts.size(), 1u);
  const v1::ArtifactInfo& info = artifacts[0].info;
  EXPECT_EQ(info.mime_type(), "application/octet-stream");
  EXPECT_EQ(info.dtype(), "float32");
  // [C, latent frames, latent height, latent width]: 9 frames -> 3, 48 x 64 -> 6 x 8.
  ASSERT_EQ(info.shape_size(), 4);
  EXPECT_GT(info.shape(0), 0u);
  EXPECT_EQ(info.shape(1), 3u);
  EXPECT_EQ(info.shape(2), 6u);
  EXPECT_EQ(info.shape(3), 8u);
  EXPECT_EQ(info.frames(), 3u);
  EXPECT_EQ(info.height(), 6u);
  EXPECT_EQ(info.width(), 8u);
  const std::string& data = artifacts[0].data;
  ASSERT_EQ(data.size(), sizeof(float) * info.shape(0) * 3 * 6 * 8);
  EXPECT_EQ(Sha256Hex(data), info.sha256());
  std::vector<float> values(data.size() / sizeof(float));
  std::memcpy(values.data(), data.data(), data.size());
  double sum_sq = 0;
  for (float v : values) {
    ASSERT_TRUE(std::isfinite(v));
    sum_sq += double(v) * v;
  }
  EXPECT_GT(sum_sq, 0.0);  // denoised noise, not an unwritten buffer
  // The VAE did not run: no decode stage, no decode time.
  for (const v1::GenerateEvent& e : s.events) {
    if (e.has_progress()) {
      EXPECT_NE(e.progress().stage(), "decode");
    }
  }
  ASSERT_TRUE(s.events.back().has_completed());
  const v1::GenerateResult& result = s.events.back().completed().result();
  EXPECT_EQ(result.timings().decode().seconds(), 0);
  EXPECT_EQ(result.timings().decode().nanos(), 0);
  EXPECT_EQ(result.applied().output_format(), v1::OUTPUT_FORMAT_LATENTS);
}

TEST_F(WanTinyE2eTest, DenoiseProgressHasOneEventPerStepAndSeqIsContiguous) {
  const Stream s = client_->Generate(Request("steps", 64, 64, 5, 3));
  ASSERT_TRUE(s.status.ok()) << s.status.error_message();
  const std::vector<v1::Progress> progress = DenoiseProgress(s);
  ASSERT_EQ(progress.size(), 3u);
  for (size_t i = 0; i < progress.size(); ++i) {
    EXPECT_EQ(progress[i].step(), i + 1);
    EXPECT_EQ(progress[i].total_steps(), 3u);
  }
  for (size_t i = 0; i < s.events.size(); ++i) {
    EXPECT_EQ(s.events[i].seq(), i + 1) << s.events[i].DebugString();
  }
  EXPECT_TRUE(s.events.front().has_accepted());
  EXPECT_TRUE(s.events.back().has_completed());
}

TEST_F(WanTinyE2eTest, SameSeedGivesTheSameBytesAndAnotherSeedDoesNot) {
  auto sha = [&](const v1::GenerateRequest& request) {
    const Stream s = client_->Generate(request);
    EXPECT_TRUE(s.status.ok()) << s.status.error_message();
    const std::vector<Artifact> artifacts = Artifacts(s);
    return artifacts.size() == 1 ? Sha256Hex(artifacts[0].data) : std::string();
  };
  const std::string png = sha(Request("seeded", 64, 64, 1, 2, 42));
  ASSERT_FALSE(png.empty());
  EXPECT_EQ(sha(Request("seeded", 64, 64, 1, 2, 42)), png);
  EXPECT_NE(sha(Request("seeded", 64, 64, 1, 2, 43)), png);
  const std::string mp4 = sha(Request("seeded", 64, 64, 5, 2, 42));
  ASSERT_FALSE(mp4.empty());
  EXPECT_EQ(sha(Request("seeded", 64, 64, 5, 2, 42)), mp4);
}

TEST_F(WanTinyE2eTest, CancelRpcStopsARunningJob) {
  grpc::ClientContext ctx;
  client_->Prepare(&ctx);
  auto reader = client_->generation()->Generate(&ctx, LongRequest("cancel me"));
  Stream s;
  ASSERT_TRUE(ReadUntilDenoising(reader.get(), &s));
  const std::string id = s.events.front().job_id();
  ASSERT_TRUE(client_->Cancel(id).ok());
  ReadToEnd(reader.get(), &s);
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::CANCELLED) << s.status.error_message();
  ASSERT_TRUE(s.events.back().has_failed());
  EXPECT_EQ(s.events.back().failed().code(), static_cast<int>(grpc::StatusCode::CANCELLED));
  EXPECT_LT(DenoiseProgress(s).size(), kLongSteps);
  const v1::Job job = client_->WaitForState(id, v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(job.failure().code(), static_cast<int>(grpc::StatusCode::CANCELLED));
}

TEST_F(WanTinyE2eTest, ClientTryCancelCancelsTheJob) {
  grpc::ClientContext ctx;
  client_->Prepare(&ctx);
  auto reader = client_->generation()->Generate(&ctx, LongRequest("hang up"));
  Stream s;
  ASSERT_TRUE(ReadUntilDenoising(reader.get(), &s));
  const std::string id = s.events.front().job_id();
  ctx.TryCancel();
  for (v1::GenerateEvent e; reader->Read(&e);) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  const v1::Job job = client_->WaitForState(id, v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(job.failure().code(), static_cast<int>(grpc::StatusCode::CANCELLED));
  EXPECT_LT(job.step(), kLongSteps);
}

TEST_F(WanTinyE2eTest, DetachedGenerateKeepsRunningWhenTheClientHangsUp) {
  v1::GenerateRequest request = Request("left alone", 64, 64, 5, 8);
  request.set_detached(true);
  grpc::ClientContext ctx;
  client_->Prepare(&ctx);
  auto reader = client_->generation()->Generate(&ctx, request);
  Stream s;
  ASSERT_TRUE(ReadUntilDenoising(reader.get(), &s));
  const std::string id = s.events.front().job_id();
  ctx.TryCancel();
  for (v1::GenerateEvent e; reader->Read(&e);) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  const Stream later = client_->Watch(id, 0);
  ASSERT_TRUE(later.status.ok()) << later.status.error_message();
  ASSERT_FALSE(later.events.empty());
  EXPECT_TRUE(later.events.back().has_completed()) << later.events.back().DebugString();
  EXPECT_EQ(Artifacts(later).size(), 1u);
  EXPECT_EQ(client_->GetJob(id).state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(WanTinyE2eTest, DeadlineThatPassesInTheQueueFailsTheJobWithoutRunningIt) {
  v1::Job running;
  ASSERT_TRUE(client_->Submit(LongRequest("hogging the worker"), &running).ok());
  client_->WaitForState(running.job_id(), v1::JOB_STATE_RUNNING);
  const Stream s = client_->Generate(Request("impatient", 64, 64, 1, 1), /*deadline_seconds=*/1.0);
  ASSERT_TRUE(client_->Cancel(running.job_id()).ok());
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << s.status.error_message();
  ASSERT_FALSE(s.events.empty());
  ASSERT_TRUE(s.events.front().has_accepted());
  const std::string id = s.events.front().job_id();
  const v1::Job job = client_->WaitForState(id, v1::JOB_STATE_FAILED);
  EXPECT_EQ(job.failure().code(), static_cast<int>(grpc::StatusCode::DEADLINE_EXCEEDED));
  EXPECT_FALSE(job.has_started()) << job.DebugString();
  // Watch replays the log and ends with the job's status.
  const Stream log = client_->Watch(id, 0);
  EXPECT_EQ(log.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << log.status.error_message();
  for (const v1::GenerateEvent& e : log.events) {
    EXPECT_FALSE(e.has_started() || e.has_progress()) << e.DebugString();
  }
  ASSERT_FALSE(log.events.empty());
  EXPECT_TRUE(log.events.back().has_failed());
  client_->WaitForState(running.job_id(), v1::JOB_STATE_CANCELLED);
}

TEST_F(WanTinyE2eTest, ClientDeadlineShorterThanTheRunIsDeadlineExceeded) {
  const Stream s = client_->Generate(LongRequest("too slow"), /*deadline_seconds=*/1.0);
  EXPECT_EQ(s.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << s.status.error_message();
  ASSERT_FALSE(s.events.empty());
  ASSERT_TRUE(s.events.front().has_accepted());
  // The server stops the job too, at its next step.
  const v1::Job job = client_->WaitForState(s.events.front().job_id(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(job.failure().code(), static_cast<int>(grpc::StatusCode::DEADLINE_EXCEEDED));
  EXPECT_LT(job.step(), kLongSteps);
}

TEST_F(WanTinyE2eTest, DetachedSubmitThenWatchReplayMatchesALiveWatcher) {
  v1::GenerateRequest request = Request("watched", 64, 64, 5, 3);
  request.set_detached(true);
  v1::Job job;
  ASSERT_TRUE(client_->Submit(request, &job).ok());
  const Stream live = client_->Watch(job.job_id(), 0);
  ASSERT_TRUE(live.status.ok()) << live.status.error_message();
  ASSERT_FALSE(live.events.empty());
  EXPECT_TRUE(live.events.back().has_completed());
  const Stream replay = client_->Watch(job.job_id(), 0);
  ASSERT_TRUE(replay.status.ok()) << replay.status.error_message();

  // Either reader may skip superseded Progress/Queued events; everything
  // else (and the newest Progress of each run of them) is the same event.
  const std::vector<v1::GenerateEvent> a = Coalesced(live.events);
  const std::vector<v1::GenerateEvent> b = Coalesced(replay.events);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(a[i], b[i]))
        << "live:\n" << a[i].DebugString() << "replay:\n" << b[i].DebugString();
  }
  const std::vector<Artifact> artifacts = Artifacts(replay);
  ASSERT_EQ(artifacts.size(), 1u);
  EXPECT_EQ(Artifacts(live)[0].data, artifacts[0].data);
  EXPECT_EQ(artifacts[0].info.mime_type(), "video/mp4");
}

TEST_F(WanTinyE2eTest, ClientRequestIdIsIdempotentAndRefusesAnotherRequest) {
  v1::GenerateRequest request = Request("once", 64, 64, 1, 1);
  request.set_client_request_id("e2e-idempotent");
  v1::Job first, second, other;
  ASSERT_TRUE(client_->Submit(request, &first).ok());
  ASSERT_TRUE(client_->Submit(request, &second).ok());
  EXPECT_EQ(second.job_id(), first.job_id());
  request.set_prompt("twice");
  const grpc::Status s = client_->Submit(request, &other);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS) << s.error_message();
  EXPECT_NE(s.error_message().find("e2e-idempotent"), std::string::npos) << s.error_message();
  client_->WaitForState(first.job_id(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(WanTinyE2eTest, ModelsListAndDescribeShowReadyWithLimitsAndDefaults) {
  v1::ListModelsResponse list;
  ASSERT_TRUE(client_->ListModels(&list).ok());
  ASSERT_EQ(list.models_size(), 1);
  const v1::ModelInfo& m = list.models(0);
  EXPECT_EQ(m.name(), kModel);
  EXPECT_EQ(m.state(), v1::MODEL_STATE_READY);
  EXPECT_EQ(m.device(), "cpu");
  EXPECT_EQ(m.limits().max_width(), 512u);
  EXPECT_EQ(m.limits().max_height(), 512u);
  EXPECT_EQ(m.limits().max_pixels(), 262144u);
  EXPECT_EQ(m.limits().max_frames(), 33u);
  EXPECT_EQ(m.limits().max_steps(), 50u);
  EXPECT_EQ(m.limits().max_prompt_tokens(), 64u);
  EXPECT_EQ(m.limits().size_multiple(), 16u);
  EXPECT_EQ(m.limits().frame_multiple(), 4u);
  EXPECT_EQ(m.defaults().width(), 64u);
  EXPECT_EQ(m.defaults().height(), 64u);
  EXPECT_EQ(m.defaults().num_frames(), 5u);
  EXPECT_EQ(m.defaults().steps(), 2u);
  EXPECT_EQ(m.defaults().fps(), 8u);
  EXPECT_DOUBLE_EQ(m.defaults().guidance_scale(), 5.0);
  EXPECT_DOUBLE_EQ(m.defaults().sparse_attention().sparsity(), 0.5);
  // A one-expert text-to-video model: its tasks, no second guidance scale,
  // the default image limits.
  ASSERT_EQ(m.tasks_size(), 2);
  EXPECT_EQ(m.tasks(0), "t2v");
  EXPECT_EQ(m.tasks(1), "t2i");
  EXPECT_EQ(m.experts(), 1u);
  EXPECT_FALSE(m.defaults().has_guidance_scale_2());
  EXPECT_EQ(m.limits().max_image_bytes(), 16u << 20);
  EXPECT_EQ(m.limits().max_image_pixels(), 4096u * 4096);

  v1::ModelInfo described;
  ASSERT_TRUE(client_->Describe(kModel, &described).ok());
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(described, m))
      << described.DebugString();
  EXPECT_EQ(client_->Describe("no-such-model", &described).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(WanTinyE2eTest, HealthIsServingForServerGenerationAndTheModel) {
  EXPECT_EQ(client_->Health(""), HealthCheckResponse::SERVING);
  EXPECT_EQ(client_->Health(kGeneration), HealthCheckResponse::SERVING);
  EXPECT_EQ(client_->Health(kGenerationModel), HealthCheckResponse::SERVING);
}

TEST_F(WanTinyE2eTest, MetricsShowFinishedJobsStepTimesAndTheQueue) {
  const Stream s = client_->Generate(Request("metered", 64, 64, 1, 2));
  ASSERT_TRUE(s.status.ok()) << s.status.error_message();
  const std::string body = testing::HttpGet(app_->metrics_port(), "/metrics");
  EXPECT_NE(body.find("rainserve_requests_total{model=\"wan-tiny\",status=\"ok\"}"),
            std::string::npos)
      << body;
  EXPECT_NE(body.find("rainserve_denoise_step_duration_seconds_count{attention="),
            std::string::npos)
      << body;
  EXPECT_NE(body.find("\nrainserve_pending_requests{model=\"wan-tiny\"} 0"), std::string::npos)
      << body;
}

TEST_F(WanTinyE2eTest, InvalidRequestsNameTheFieldOrTheModel) {
  const Stream bad_width = client_->Generate(Request("odd", 72, 64, 1, 1));
  EXPECT_EQ(bad_width.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(bad_width.status.error_message().find("width"), std::string::npos)
      << bad_width.status.error_message();
  EXPECT_TRUE(bad_width.events.empty());

  v1::GenerateRequest unknown = Request("lost", 64, 64, 1, 1);
  unknown.set_model("no-such-model");
  const Stream missing = client_->Generate(unknown);
  EXPECT_EQ(missing.status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(missing.status.error_message().find("no-such-model"), std::string::npos)
      << missing.status.error_message();
}

// ---------------------------------------------------------------- servers of their own

// Each test starts the service with its own configuration.
class E2eTest : public ::testing::Test {
 protected:
  void StartServer(const ServerConfig& config) {
    app_ = StartApp(config);
    ASSERT_NE(app_, nullptr);
  }
  void TearDown() override {
    if (app_) app_->Shutdown();
  }

  std::unique_ptr<ServerApp> app_;
};

TEST_F(E2eTest, FullQueueIsResourceExhausted) {
  ServerConfig config = Config();
  config.server.queue.max_pending = 1;
  ASSERT_NO_FATAL_FAILURE(StartServer(config));
  Client client(*app_);
  v1::Job running, queued, refused;
  ASSERT_TRUE(client.Submit(LongRequest("first"), &running).ok());
  client.WaitForState(running.job_id(), v1::JOB_STATE_RUNNING);
  ASSERT_TRUE(client.Submit(LongRequest("second"), &queued).ok());
  EXPECT_EQ(queued.state(), v1::JOB_STATE_QUEUED);
  for (const char* prompt : {"third", "fourth"}) {
    const grpc::Status s = client.Submit(LongRequest(prompt), &refused);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
    EXPECT_NE(s.error_message().find("queue is full"), std::string::npos) << s.error_message();
  }
  ASSERT_TRUE(client.Cancel(queued.job_id()).ok());
  ASSERT_TRUE(client.Cancel(running.job_id()).ok());
  client.WaitForState(queued.job_id(), v1::JOB_STATE_CANCELLED);
  client.WaitForState(running.job_id(), v1::JOB_STATE_CANCELLED);
}

TEST_F(E2eTest, UnloadMakesGenerateUnavailableAndLoadMakesItReadyAgain) {
  ASSERT_NO_FATAL_FAILURE(StartServer(Config()));
  Client client(*app_);
  v1::ModelInfo info;
  ASSERT_TRUE(client.Unload(kModel, &info).ok());
  EXPECT_EQ(info.state(), v1::MODEL_STATE_NOT_LOADED);
  const Stream unavailable = client.Generate(Request("nobody home", 64, 64, 1, 1));
  EXPECT_EQ(unavailable.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << unavailable.status.error_message();
  EXPECT_EQ(client.Health(kGenerationModel), HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(client.Health(kGeneration), HealthCheckResponse::NOT_SERVING);  // no model ready
  EXPECT_EQ(client.Health(""), HealthCheckResponse::SERVING);

  ASSERT_TRUE(client.Load(kModel, &info).ok());
  EXPECT_EQ(info.state(), v1::MODEL_STATE_READY);
  EXPECT_EQ(client.Health(kGenerationModel), HealthCheckResponse::SERVING);
  EXPECT_EQ(client.Health(kGeneration), HealthCheckResponse::SERVING);
  const Stream back = client.Generate(Request("back again", 64, 64, 1, 1));
  EXPECT_TRUE(back.status.ok()) << back.status.error_message();
}

TEST_F(E2eTest, ShutdownFlipsHealthToNotServingAndDrainsTheRunningJob) {
  ASSERT_NO_FATAL_FAILURE(StartServer(Config()));
  Client client(*app_);
  const std::vector<std::string> services = {"", kGeneration, kGenerationModel};
  for (const std::string& service : services) {
    EXPECT_EQ(client.Health(service), HealthCheckResponse::SERVING) << service;
  }
  constexpr uint32_t kSteps = 16;
  grpc::ClientContext ctx;
  client.Prepare(&ctx);
  auto reader = client.generation()->Generate(&ctx, Request("last one", 128, 128, 9, kSteps));
  Stream s;
  ASSERT_TRUE(ReadUntilDenoising(reader.get(), &s));

  grpc::ClientContext watch_ctx;
  watch_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  HealthCheckRequest watch_request;
  auto watch = client.health()->Watch(&watch_ctx, watch_request);
  HealthCheckResponse health;
  ASSERT_TRUE(watch->Read(&health));
  EXPECT_EQ(health.status(), HealthCheckResponse::SERVING);

  // From here on no ASSERT: `stopper` must be joined.
  std::thread stopper([&] { app_->Shutdown(); });
  health.Clear();
  EXPECT_TRUE(watch->Read(&health));
  EXPECT_EQ(health.status(), HealthCheckResponse::NOT_SERVING);
  // Still draining (the job runs): the server answers, NOT_SERVING everywhere,
  // and takes no new work.
  for (const std::string& service : services) {
    EXPECT_EQ(client.Health(service), HealthCheckResponse::NOT_SERVING) << service;
  }
  const Stream refused = client.Generate(Request("too late", 64, 64, 1, 1));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << refused.status.error_message();
  watch_ctx.TryCancel();
  (void)watch->Finish();

  ReadToEnd(reader.get(), &s);
  stopper.join();
  EXPECT_TRUE(s.status.ok()) << s.status.error_message();
  ASSERT_FALSE(s.events.empty());
  EXPECT_TRUE(s.events.back().has_completed()) << s.events.back().DebugString();
  EXPECT_EQ(DenoiseProgress(s).size(), kSteps);
}

// ---------------------------------------------------------------- damaged checkpoints

// Copies of wan-tiny in a temporary folder, to damage.
class CheckpointE2eTest : public E2eTest {
 protected:
  ModelEntry CopyOfWanTiny(const std::string& name, bool load_at_startup = true) {
    ModelEntry e = WanTiny(load_at_startup);
    e.name = name;
    e.path = dir_.File(name);
    std::filesystem::copy(WanTiny().path, e.path, std::filesystem::copy_options::recursive);
    return e;
  }

  // The FAILED model's reason from Models.Describe.
  std::string FailureReason(Client* client, const std::string& name) {
    v1::ModelInfo info;
    const grpc::Status s = client->Describe(name, &info);
    EXPECT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(info.state(), v1::MODEL_STATE_FAILED) << info.DebugString();
    return info.state_reason();
  }

  TempDir dir_;
};

TEST_F(CheckpointE2eTest, CorruptFilesAtStartupFailOnlyTheirModelNamingTheFile) {
  ASSERT_FALSE(dir_.path().empty());
  ServerConfig config = Config();
  const ModelEntry truncated = CopyOfWanTiny("truncated");
  const std::string weights = truncated.path + "/transformer/diffusion_pytorch_model.safetensors";
  std::filesystem::resize_file(weights, std::filesystem::file_size(weights) / 2);
  const ModelEntry bad_json = CopyOfWanTiny("bad-json");
  dir_.Write("bad-json/transformer/config.json", "{\"num_layers\": 2,");
  config.models.push_back(truncated);
  config.models.push_back(bad_json);
  ASSERT_NO_FATAL_FAILURE(StartServer(config));
  Client client(*app_);

  const std::string truncated_reason = FailureReason(&client, "truncated");
  EXPECT_NE(truncated_reason.find(weights), std::string::npos) << truncated_reason;
  const std::string json_reason = FailureReason(&client, "bad-json");
  EXPECT_NE(json_reason.find(bad_json.path + "/transformer/config.json"), std::string::npos)
      << json_reason;
  EXPECT_NE(json_reason.find("bad JSON"), std::string::npos) << json_reason;

  EXPECT_EQ(client.Health(""), HealthCheckResponse::SERVING);
  EXPECT_EQ(client.Health(kGenerationModel), HealthCheckResponse::SERVING);
  EXPECT_EQ(client.Health(std::string(kGeneration) + "/truncated"),
            HealthCheckResponse::NOT_SERVING);
  v1::GenerateRequest broken = Request("broken", 64, 64, 1, 1);
  broken.set_model("truncated");
  EXPECT_EQ(client.Generate(broken).status.error_code(), grpc::StatusCode::UNAVAILABLE);
  const Stream good = client.Generate(Request("still here", 64, 64, 1, 1));
  EXPECT_TRUE(good.status.ok()) << good.status.error_message();
}

TEST_F(CheckpointE2eTest, MissingFileAtModelsLoadFailsItAndAFixedFolderLoads) {
  ASSERT_FALSE(dir_.path().empty());
  ServerConfig config = Config();
  const ModelEntry late = CopyOfWanTiny("late", /*load_at_startup=*/false);
  config.models.push_back(late);
  ASSERT_NO_FATAL_FAILURE(StartServer(config));
  Client client(*app_);
  const std::string vae = late.path + "/vae/diffusion_pytorch_model.safetensors";
  const std::string kept = dir_.File("vae.safetensors");
  std::filesystem::rename(vae, kept);

  v1::ModelInfo info;
  const grpc::Status failed = client.Load("late", &info);
  EXPECT_EQ(failed.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(failed.error_message().find(late.path + "/vae"), std::string::npos)
      << failed.error_message();
  EXPECT_NE(FailureReason(&client, "late").find(late.path + "/vae"), std::string::npos);
  const Stream good = client.Generate(Request("unaffected", 64, 64, 1, 1));
  EXPECT_TRUE(good.status.ok()) << good.status.error_message();

  std::filesystem::rename(kept, vae);
  const grpc::Status loaded = client.Load("late", &info);
  ASSERT_TRUE(loaded.ok()) << loaded.error_message();
  EXPECT_EQ(info.state(), v1::MODEL_STATE_READY);
}

// ---------------------------------------------------------------- security

class SecurityE2eTest : public E2eTest {
 protected:
  TempDir dir_;
};

TEST_F(SecurityE2eTest, BearerTokensGuardTheApiAndAdminTokensGuardModelManagement) {
  ServerConfig config = Config();
  config.security.tokens_file = dir_.Write("tokens", "# users\nuser-token\n");
  config.security.admin_tokens_file = dir_.Write("admin_tokens", "admin-token\n");
  ASSERT_NO_FATAL_FAILURE(StartServer(config));
  v1::ListModelsResponse list;
  v1::ModelInfo info;

  Client anonymous(*app_);
  EXPECT_EQ(anonymous.ListModels(&list).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(anonymous.Generate(Request("who", 64, 64, 1, 1)).status.error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(anonymous.Health(""), HealthCheckResponse::SERVING);  // probes stay open
  Client stranger(*app_, "wrong-token");
  EXPECT_EQ(stranger.ListModels(&list).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(stranger.Generate(Request("who", 64, 64, 1, 1)).status.error_code(),
            grpc::StatusCode::UNAUTHENTICATED);

  Client user(*app_, "user-token");
  EXPECT_TRUE(user.ListModels(&list).ok());
  const Stream generated = user.Generate(Request("welcome", 64, 64, 1, 1));
  EXPECT_TRUE(generated.status.ok()) << generated.status.error_message();
  EXPECT_EQ(user.Unload(kModel, &info).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(user.Load(kModel, &info).error_code(), grpc::StatusCode::PERMISSION_DENIED);

  Client admin(*app_, "admin-token");
  ASSERT_TRUE(admin.Unload(kModel, &info).ok());
  EXPECT_EQ(info.state(), v1::MODEL_STATE_NOT_LOADED);
  ASSERT_TRUE(admin.Load(kModel, &info).ok());
  EXPECT_EQ(info.state(), v1::MODEL_STATE_READY);
}

TEST_F(SecurityE2eTest, DisabledModelManagementIsDeniedEvenToAdmins) {
  ServerConfig config = Config(/*load_at_startup=*/false);
  config.security.tokens_file = dir_.Write("tokens", "user-token\n");
  config.security.admin_tokens_file = dir_.Write("admin_tokens", "admin-token\n");
  config.security.model_management = false;
  ASSERT_NO_FATAL_FAILURE(StartServer(config));
  Client admin(*app_, "admin-token");
  v1::ModelInfo info;
  EXPECT_EQ(admin.Load(kModel, &info).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(admin.Unload(kModel, &info).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  v1::ListModelsResponse list;
  ASSERT_TRUE(admin.ListModels(&list).ok());
  ASSERT_EQ(list.models_size(), 1);
  EXPECT_EQ(list.models(0).state(), v1::MODEL_STATE_NOT_LOADED);
}

// No model is loaded: gRPC refuses the request before any RainServe code
// runs, and the next call on the connection reaches the service again.
TEST_F(SecurityE2eTest, OversizeRequestIsResourceExhaustedAndTheServerKeepsServing) {
  // The receive limit is the larger of max_message_bytes and the model's
  // image limit + 1 MiB (ReceiveMessageBytes): 1 MiB + 1 KiB here.
  ServerConfig config = Config(/*load_at_startup=*/false);
  config.server.max_message_bytes = 4096;
  config.models.at(0).limits.max_image_bytes = 1024;
  ASSERT_NO_FATAL_FAILURE(StartServer(config));
  Client client(*app_);
  const v1::GenerateRequest huge = Request(std::string(2 << 20, 'a'), 64, 64, 1, 1);
  const Stream streamed = client.Generate(huge);
  EXPECT_EQ(streamed.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << streamed.status.error_message();
  EXPECT_TRUE(streamed.events.empty());
  v1::Job job;
  const grpc::Status submitted = client.Submit(huge, &job);
  EXPECT_EQ(submitted.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << submitted.error_message();
  EXPECT_NE(submitted.error_message().find("larger than max"), std::string::npos)
      << submitted.error_message();
  // The same connection still serves: the service itself answers.
  const Stream small = client.Generate(Request("small", 64, 64, 1, 1));
  EXPECT_EQ(small.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << small.status.error_message();
  EXPECT_NE(small.status.error_message().find("is not ready"), std::string::npos)
      << small.status.error_message();
  v1::ListModelsResponse list;
  EXPECT_TRUE(client.ListModels(&list).ok());
}

// With max_concurrent_streams open calls on one connection, a further call
// on it waits (it does not fail) until one ends; other connections are not
// affected.
TEST_F(SecurityE2eTest, CallsBeyondMaxConcurrentStreamsWaitOnTheirConnection) {
  ServerConfig config = Config(/*load_at_startup=*/false);
  config.server.max_concurrent_streams = 2;
  ASSERT_NO_FATAL_FAILURE(StartServer(config));
  // A channel of its own (no subchannel shared with other channels).
  auto connection = [&] {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    return grpc::CreateCustomChannel(Target(*app_), grpc::InsecureChannelCredentials(), args);
  };
  Client busy(connection());
  grpc::ClientContext watch_ctx[2];
  std::unique_ptr<grpc::ClientReader<HealthCheckResponse>> watches[2];
  for (int i = 0; i < 2; ++i) {
    busy.Prepare(&watch_ctx[i], 60);
    watches[i] = busy.health()->Watch(&watch_ctx[i], HealthCheckRequest());
    HealthCheckResponse first;
    ASSERT_TRUE(watches[i]->Read(&first));
  }
  v1::ListModelsResponse list;
  EXPECT_EQ(busy.ListModels(&list, /*deadline_seconds=*/1.0).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
  Client other(connection());
  EXPECT_TRUE(other.ListModels(&list).ok());

  watch_ctx[0].TryCancel();
  EXPECT_EQ(watches[0]->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(busy.ListModels(&list).ok());
  watch_ctx[1].TryCancel();
  (void)watches[1]->Finish();
}

// A CA, a server certificate for localhost/127.0.0.1 and a client
// certificate, made with the openssl command line in a temporary folder.
class TlsE2eTest : public SecurityE2eTest {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    const std::string key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    dir_.Write("server.ext", "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                             "extendedKeyUsage=serverAuth\n");
    dir_.Write("client.ext", "extendedKeyUsage=clientAuth\n");
    ASSERT_NO_FATAL_FAILURE(Openssl(
        "req -x509 " + key + " -keyout ca.key -out ca.pem -days 2 -subj /CN=rainserve-test-ca" +
        " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"));
    for (const std::string name : {"server", "client"}) {
      const std::string cn = name == "server" ? "localhost" : "rainserve-test-client";
      ASSERT_NO_FATAL_FAILURE(Openssl("req " + key + " -keyout " + name + ".key -out " + name +
                                      ".csr -subj /CN=" + cn));
      ASSERT_NO_FATAL_FAILURE(Openssl("x509 -req -in " + name + ".csr -CA ca.pem -CAkey ca.key" +
                                      " -set_serial " + (name == "server" ? "2" : "3") +
                                      " -days 2 -out " + name + ".pem -extfile " + name + ".ext"));
    }
  }

  void Openssl(const std::string& args) {
    const std::string log = dir_.File("openssl.log");
    const std::string command =
        "cd '" + dir_.path() + "' && openssl " + args + " > '" + log + "' 2>&1";
    std::string output;
    if (std::system(command.c_str()) != 0) {
      (void)ReadFile(log, &output);
      FAIL() << "openssl " << args << " failed:\n" << output;
    }
  }

  std::string Pem(const std::string& name) {
    std::string text;
    EXPECT_TRUE(ReadFile(dir_.File(name), &text).ok()) << name;
    return text;
  }

  ServerConfig TlsConfig(bool mutual) {
    ServerConfig config = Config(/*load_at_startup=*/false);
    config.security.tls_cert_file = dir_.File("server.pem");
    config.security.tls_key_file = dir_.File("server.key");
    if (mutual) config.security.tls_client_ca_file = dir_.File("ca.pem");
    return config;
  }

  // Models.List over a channel with `credentials` (certificates checked
  // against the name "localhost").
  grpc::Status List(std::shared_ptr<grpc::ChannelCredentials> credentials) {
    grpc::ChannelArguments args;
    args.SetSslTargetNameOverride("localhost");
    Client client(grpc::CreateCustomChannel(Target(*app_), std::move(credentials), args));
    v1::ListModelsResponse list;
    return client.ListModels(&list);
  }

  std::shared_ptr<grpc::ChannelCredentials> TrustingCa(bool with_client_cert) {
    grpc::SslCredentialsOptions options;
    options.pem_root_certs = Pem("ca.pem");
    if (with_client_cert) {
      options.pem_private_key = Pem("client.key");
      options.pem_cert_chain = Pem("client.pem");
    }
    return grpc::SslCredentials(options);
  }
};

TEST_F(TlsE2eTest, TlsServerServesClientsTrustingItsCaAndRefusesPlaintext) {
  ASSERT_NO_FATAL_FAILURE(StartServer(TlsConfig(/*mutual=*/false)));
  const grpc::Status tls = List(TrustingCa(/*with_client_cert=*/false));
  EXPECT_TRUE(tls.ok()) << tls.error_message();
  EXPECT_FALSE(List(grpc::InsecureChannelCredentials()).ok());
  // A client that does not trust the CA refuses the server.
  EXPECT_FALSE(List(grpc::SslCredentials(grpc::SslCredentialsOptions())).ok());
}

TEST_F(TlsE2eTest, MutualTlsRequiresAClientCertificateSignedByTheCa) {
  ASSERT_NO_FATAL_FAILURE(StartServer(TlsConfig(/*mutual=*/true)));
  EXPECT_FALSE(List(TrustingCa(/*with_client_cert=*/false)).ok());
  EXPECT_FALSE(List(grpc::InsecureChannelCredentials()).ok());
  const grpc::Status mutual = List(TrustingCa(/*with_client_cert=*/true));
  EXPECT_TRUE(mutual.ok()) << mutual.error_message();
}

}  // namespace
}  // namespace rainserve
