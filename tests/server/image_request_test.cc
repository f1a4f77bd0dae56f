// Image-to-video and two-expert requests over the API: input images decoded
// at the edge (PNG, JPEG) and refused there (corrupt, foreign, oversized,
// over-pixel, for a model without an image task), sizing from max_area,
// guidance_scale_2, and what Models.Describe and results say. In-process: a
// grpc::Server with GenerationService + JobManager + two FakePipelines, a
// text-to-video one ("fake") and an image-to-video two-expert one ("fake-i2v").
//   build/tests/server/image_request_test
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <map>
#include <memory>

#include "media/image_decoder.h"
#include "server/generation_service.h"
#include "server/job_manager.h"
#include "server/request_mapping.h"
#include "tests/media/test_images.h"
#include "tests/server/fake_pipeline.h"

namespace rainserve {
namespace {

using media::testing::EncodeTestJpeg;
using media::testing::EncodeTestPng;
using media::testing::MakePng;
using testing::FakeDescription;
using testing::FakeImageDescription;
using testing::FakePipeline;

// [height, width, 3] gradients.
std::vector<uint8_t> Gradient(int width, int height) {
  std::vector<uint8_t> rgb(static_cast<size_t>(width) * height * 3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      uint8_t* p = &rgb[(static_cast<size_t>(y) * width + x) * 3];
      p[0] = static_cast<uint8_t>(4 * x);
      p[1] = static_cast<uint8_t>(4 * y);
      p[2] = static_cast<uint8_t>(200 - 2 * x);
    }
  }
  return rgb;
}

// [height, width, 3] pseudo-random bytes (PNG cannot compress them).
std::vector<uint8_t> Noise(int width, int height) {
  std::vector<uint8_t> rgb(static_cast<size_t>(width) * height * 3);
  uint32_t state = 1;
  for (auto& b : rgb) b = static_cast<uint8_t>((state = state * 1664525u + 1013904223u) >> 24);
  return rgb;
}

std::string Png(int width, int height) {
  return EncodeTestPng(MakePng(width, height, 8, 2, Gradient(width, height)));
}

// ---------------------------------------------------------------- mapping

v1::GenerateRequest ImageRequest(const std::string& image) {
  v1::GenerateRequest req;
  req.set_model("fake-i2v");
  req.set_prompt("the picture comes alive");
  req.set_image(image);
  return req;
}

TEST(ImageMappingTest, WithoutWidthAndHeightTheSizeIsSizeForImageOfMaxArea) {
  // 48x24 (aspect 1/2), max_area 2048: height round(sqrt(1024)) = 32,
  // width round(sqrt(4096)) = 64, both multiples of 16.
  v1::GenerateRequest req = ImageRequest(Png(48, 24));
  req.set_max_area(2048);
  auto r = ResolveRequest(req, FakeImageDescription(), 1);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->generation.width, 64);
  EXPECT_EQ(r->generation.height, 32);
  const ImageSize expected = SizeForImage(48, 24, 2048, 16);
  EXPECT_EQ(r->resolved.width(), expected.width);
  EXPECT_EQ(r->resolved.height(), expected.height);
  EXPECT_EQ(r->resolved.max_area(), 2048u);
  // No max_area: the model's default width x height (32 x 16 = 512) -> 32x16.
  req.clear_max_area();
  auto d = ResolveRequest(req, FakeImageDescription(), 1);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->resolved.max_area(), 512u);
  EXPECT_EQ(d->generation.width, 32);
  EXPECT_EQ(d->generation.height, 16);
}

TEST(ImageMappingTest, GivenWidthAndHeightWinAndMaxAreaIsNotEchoed) {
  v1::GenerateRequest req = ImageRequest(Png(48, 24));
  req.set_width(16);
  req.set_height(48);
  req.set_max_area(2048);
  auto r = ResolveRequest(req, FakeImageDescription(), 1);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->generation.width, 16);
  EXPECT_EQ(r->generation.height, 48);
  EXPECT_FALSE(r->resolved.has_max_area());
  EXPECT_EQ(r->generation.image.width, 48);  // the image itself is not resized here
}

TEST(ImageMappingTest, OnlyOneOfWidthAndHeightIsRefusedNamingTheOther) {
  v1::GenerateRequest req = ImageRequest(Png(8, 8));
  req.set_width(32);
  auto r = ResolveRequest(req, FakeImageDescription(), 1);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message().rfind("height: ", 0), 0u) << r.status().message();
  req.clear_width();
  req.set_height(32);
  r = ResolveRequest(req, FakeImageDescription(), 1);
  EXPECT_EQ(r.status().message().rfind("width: ", 0), 0u) << r.status().message();
}

TEST(ImageMappingTest, MaxAreaOutOfRangeAndAnAspectBeyondTheLimitsAreRefused) {
  v1::GenerateRequest req = ImageRequest(Png(8, 8));
  req.set_max_area(4097);  // max_pixels 64 * 64
  auto r = ResolveRequest(req, FakeImageDescription(), 1);
  EXPECT_EQ(r.status().message(), "max_area must be in [256, 4096] (got 4097)");
  // 256x2 at max_area 4096: width round(sqrt(4096 * 128)) = 724 -> 720 > 64.
  req = ImageRequest(Png(256, 2));
  req.set_max_area(4096);
  r = ResolveRequest(req, FakeImageDescription(), 1);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message().rfind("image: a 256x2 image at max_area 4096 gives 720x16", 0),
            0u)
      << r.status().message();
}

TEST(ImageMappingTest, ResolvedRequestCarriesTheImageSummaryNotItsBytes) {
  const std::string png = Png(40, 24);
  auto r = ResolveRequest(ImageRequest(png), FakeImageDescription(), 1);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->resolved.image().empty());
  const v1::InputImageInfo& info = r->resolved.input_image();
  EXPECT_EQ(info.mime_type(), "image/png");
  EXPECT_EQ(info.width(), 40u);
  EXPECT_EQ(info.height(), 24u);
  EXPECT_EQ(info.size_bytes(), png.size());
  EXPECT_EQ(info.sha256(), testing::Sha256Hex(png));
  EXPECT_LT(r->resolved.ByteSizeLong(), 1024u);
  // A client's own input_image is not echoed for a request without an image.
  v1::GenerateRequest text;
  text.set_prompt("p");
  *text.mutable_input_image() = info;
  auto t = ResolveRequest(text, FakeDescription(), 1);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_FALSE(t->resolved.has_input_image());
}

TEST(ImageMappingTest, GuidanceScale2ResolvesForTwoExpertsAndIsRefusedForOne) {
  v1::GenerateRequest req = ImageRequest(Png(8, 8));
  req.set_guidance_scale(4.0);
  PipelineDescription model = FakeImageDescription();
  // Unset everywhere: the first expert's guidance.
  auto r = ResolveRequest(req, model, 1);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->generation.guidance_scale_2, 4.0);
  EXPECT_DOUBLE_EQ(r->resolved.guidance_scale_2(), 4.0);
  // The model's default.
  model.defaults.guidance_scale_2 = 3.0;
  r = ResolveRequest(req, model, 1);
  ASSERT_TRUE(r.ok());
  EXPECT_DOUBLE_EQ(r->resolved.guidance_scale_2(), 3.0);
  // The request's.
  req.set_guidance_scale_2(2.5);
  r = ResolveRequest(req, model, 1);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->generation.guidance_scale_2, 2.5);
  EXPECT_DOUBLE_EQ(r->resolved.guidance_scale_2(), 2.5);
  req.set_guidance_scale_2(51);
  EXPECT_EQ(ResolveRequest(req, model, 1).status().message().rfind("guidance_scale_2 must be", 0),
            0u);
  // One expert: never echoed, refused when asked for.
  v1::GenerateRequest text;
  text.set_prompt("p");
  auto one = ResolveRequest(text, FakeDescription(), 1);
  ASSERT_TRUE(one.ok());
  EXPECT_FALSE(one->resolved.has_guidance_scale_2());
  EXPECT_FALSE(one->generation.guidance_scale_2.has_value());
  text.set_guidance_scale_2(3);
  one = ResolveRequest(text, FakeDescription(), 1);
  ASSERT_FALSE(one.ok());
  EXPECT_EQ(one.status().message().rfind("guidance_scale_2: model 'fake' has one transformer", 0),
            0u)
      << one.status().message();
}

TEST(ImageMappingTest, ModelInfoListsTasksExpertsAndImageLimits) {
  v1::ModelInfo info;
  FillModelInfo(FakeImageDescription(), &info);
  ASSERT_EQ(info.tasks_size(), 1);
  EXPECT_EQ(info.tasks(0), "i2v");
  EXPECT_EQ(info.experts(), 2u);
  EXPECT_DOUBLE_EQ(info.boundary_timestep(), 900);
  EXPECT_EQ(info.limits().max_image_bytes(), 64u << 10);
  EXPECT_EQ(info.limits().max_image_pixels(), 256u * 256);
  ASSERT_TRUE(info.defaults().has_guidance_scale_2());
  EXPECT_DOUBLE_EQ(info.defaults().guidance_scale_2(), info.defaults().guidance_scale());

  FillModelInfo(FakeDescription(), &info);
  ASSERT_EQ(info.tasks_size(), 2);
  EXPECT_EQ(info.tasks(0), "t2v");
  EXPECT_EQ(info.tasks(1), "t2i");
  EXPECT_EQ(info.experts(), 1u);
  EXPECT_FALSE(info.defaults().has_guidance_scale_2());
}

TEST(ImageMappingTest, ResultsCarryTheExpertOfEachStepAndImageTimings) {
  GenerationOutput out;
  out.steps = {{1, false, 0.0, 0.5}, {2, true, 0.5, 0.5}};
  out.steps[1].expert = 1;
  out.image_encode_seconds = 0.25;
  out.expert_switch_seconds = 1.5;
  v1::GenerateResult result;
  FillResultFromOutput(out, v1::GenerateRequest(), &result);
  EXPECT_EQ(result.steps(0).expert(), 0u);
  EXPECT_EQ(result.steps(1).expert(), 1u);
  EXPECT_EQ(result.timings().image_encode().nanos(), 250000000);
  EXPECT_EQ(result.timings().expert_switch().seconds(), 1);
  EXPECT_EQ(result.timings().expert_switch().nanos(), 500000000);
}

// ---------------------------------------------------------------- service

class ImageServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    jobs_ = std::make_unique<JobManager>(JobManagerOptions(), testing::RawEncoder());
    for (const PipelineDescription& d : {FakeDescription(), FakeImageDescription()}) {
      descriptions_[d.name] = d;
      pipelines_[d.name] = std::make_shared<FakePipeline>(d);
      ASSERT_TRUE(jobs_->AddModel(d.name, pipelines_[d.name]).ok());
    }
    service_ = std::make_unique<GenerationService>(
        [this](const std::string& model) -> StatusOr<PipelineDescription> {
          auto it = descriptions_.find(model);
          if (it == descriptions_.end()) return NotFoundError("model '" + model + "'");
          return it->second;
        },
        jobs_.get());
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.SetMaxReceiveMessageSize(8 << 20);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_TRUE(server_ != nullptr);
    stub_ = v1::Generation::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                                        grpc::InsecureChannelCredentials()));
  }

  void TearDown() override {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    server_->Wait();
  }

  struct Outcome {
    grpc::Status status;
    std::vector<v1::GenerateEvent> events;
    const v1::GenerateEvent* Completed() const {
      for (const auto& e : events) {
        if (e.has_completed()) return &e;
      }
      return nullptr;
    }
  };

  Outcome Generate(const v1::GenerateRequest& req) {
    grpc::ClientContext ctx;
    auto reader = stub_->Generate(&ctx, req);
    Outcome out;
    v1::GenerateEvent event;
    while (reader->Read(&event)) out.events.push_back(event);
    out.status = reader->Finish();
    return out;
  }

  // Submit and Generate both refuse `req` with INVALID_ARGUMENT starting `prefix`.
  void ExpectRefused(const v1::GenerateRequest& req, const std::string& prefix) {
    grpc::ClientContext ctx;
    v1::SubmitResponse response;
    const grpc::Status submit = stub_->Submit(&ctx, req, &response);
    EXPECT_EQ(submit.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(submit.error_message().rfind(prefix, 0), 0u) << submit.error_message();
    const Outcome generate = Generate(req);
    EXPECT_EQ(generate.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(generate.status.error_message(), submit.error_message());
    EXPECT_TRUE(generate.events.empty());
  }

  std::map<std::string, PipelineDescription> descriptions_;
  std::map<std::string, std::shared_ptr<FakePipeline>> pipelines_;
  std::unique_ptr<JobManager> jobs_;
  std::unique_ptr<GenerationService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Generation::Stub> stub_;
};

TEST_F(ImageServiceTest, PngReachesThePipelineDecodedWithItsSizeAndPixels) {
  const std::string png = Png(40, 24);
  v1::GenerateRequest req = ImageRequest(png);
  req.set_width(32);
  req.set_height(16);
  const Outcome out = Generate(req);
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  const GenerationRequest seen = pipelines_["fake-i2v"]->last_request();
  EXPECT_EQ(seen.image.width, 40);
  EXPECT_EQ(seen.image.height, 24);
  EXPECT_EQ(seen.image.rgb, Gradient(40, 24));
  EXPECT_EQ(seen.width, 32);
  EXPECT_EQ(seen.height, 16);
  // Accepted echoes the summary, never the bytes.
  ASSERT_TRUE(out.events.front().has_accepted());
  const v1::GenerateRequest& resolved = out.events.front().accepted().resolved();
  EXPECT_TRUE(resolved.image().empty());
  EXPECT_EQ(resolved.input_image().sha256(), testing::Sha256Hex(png));
  const v1::GenerateEvent* done = out.Completed();
  ASSERT_NE(done, nullptr);
  EXPECT_TRUE(done->completed().result().applied().image().empty());
  EXPECT_EQ(done->completed().result().applied().input_image().width(), 40u);
}

TEST_F(ImageServiceTest, JpegReachesThePipelineAsTheDecoderDecodesIt) {
  const std::vector<uint8_t> rgb = Gradient(48, 32);
  const std::string jpeg = EncodeTestJpeg(rgb, 48, 32, 95);
  const Outcome out = Generate(ImageRequest(jpeg));
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  const GenerationRequest seen = pipelines_["fake-i2v"]->last_request();
  ASSERT_EQ(seen.image.width, 48);
  ASSERT_EQ(seen.image.height, 32);
  EXPECT_EQ(seen.image.rgb, media::DecodeImage(jpeg, {1 << 20, 1 << 20})->rgb);
  double error = 0;
  for (size_t i = 0; i < rgb.size(); ++i) error += std::abs(seen.image.rgb[i] - rgb[i]);
  EXPECT_LT(error / static_cast<double>(rgb.size()), 4.0);
  EXPECT_EQ(out.events.front().accepted().resolved().input_image().mime_type(), "image/jpeg");
}

TEST_F(ImageServiceTest, BadImagesAreInvalidArgumentNamingImageAndTheServerKeepsServing) {
  const std::string png = Png(40, 24);
  // Noise does not compress: 160x160 RGB is over the 64 KiB limit.
  const std::string big = EncodeTestPng(MakePng(160, 160, 8, 2, Noise(160, 160)));
  ASSERT_GT(big.size(), 64u << 10);
  const std::pair<std::string, std::string> cases[] = {
      {png.substr(0, png.size() / 2), "image: corrupt PNG"},
      {"GIF89a\x01\x00\x01\x00\x80\x00\x00;", "image: not a PNG or JPEG"},
      {big, "image: " + std::to_string(big.size()) + " bytes, at most 65536"},
      {Png(300, 300), "image: 300x300 pixels, at most 65536 in all"},
  };
  for (const auto& [bytes, prefix] : cases) {
    SCOPED_TRACE(prefix);
    ExpectRefused(ImageRequest(bytes), prefix);
  }
  EXPECT_EQ(pipelines_["fake-i2v"]->calls(), 0);
  EXPECT_TRUE(Generate(ImageRequest(png)).status.ok());
  EXPECT_EQ(pipelines_["fake-i2v"]->calls(), 1);
}

TEST_F(ImageServiceTest, TaskMismatchesAreInvalidArgumentWithTheReason) {
  // An image for a text-to-video model: refused for the task, not decoded
  // (a corrupt file gets the same answer).
  v1::GenerateRequest text = ImageRequest(Png(8, 8));
  text.set_model("fake");
  ExpectRefused(text, "image: model 'fake' does not take an input image (it serves t2v, t2i)");
  text.set_image("not an image at all");
  ExpectRefused(text, "image: model 'fake' does not take an input image");
  // An image-to-video model without an image.
  v1::GenerateRequest no_image = ImageRequest("");
  ExpectRefused(no_image, "image: model 'fake-i2v' needs an input image (it serves i2v)");
  v1::GenerateRequest g2 = ImageRequest("");
  g2.set_model("fake");
  g2.set_guidance_scale_2(3);
  ExpectRefused(g2, "guidance_scale_2: model 'fake' has one transformer");
  EXPECT_EQ(pipelines_["fake"]->calls() + pipelines_["fake-i2v"]->calls(), 0);
}

TEST_F(ImageServiceTest, TwoExpertResultsEchoGuidanceScale2AndTheExpertPerStep) {
  v1::GenerateRequest req = ImageRequest(Png(16, 16));
  req.set_guidance_scale(6);
  req.set_steps(4);
  const Outcome out = Generate(req);
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  EXPECT_DOUBLE_EQ(out.events.front().accepted().resolved().guidance_scale_2(), 6);
  EXPECT_EQ(pipelines_["fake-i2v"]->last_request().guidance_scale_2, 6.0);
  const v1::GenerateResult& result = out.Completed()->completed().result();
  ASSERT_EQ(result.steps_size(), 4);
  EXPECT_EQ(result.steps(1).expert(), 0u);
  EXPECT_EQ(result.steps(2).expert(), 1u);
  EXPECT_EQ(result.timings().image_encode().nanos(), 250000000);
  EXPECT_DOUBLE_EQ(result.applied().guidance_scale_2(), 6);
}

TEST_F(ImageServiceTest, JobsAndListingsHoldNoImageBytes) {
  const std::string png = EncodeTestPng(MakePng(128, 128, 8, 2, Noise(128, 128)));
  ASSERT_GT(png.size(), 40000u);
  v1::GenerateRequest req = ImageRequest(png);
  req.set_client_request_id("with-image");
  grpc::ClientContext ctx;
  v1::SubmitResponse submitted;
  ASSERT_TRUE(stub_->Submit(&ctx, req, &submitted).ok());
  EXPECT_LT(submitted.job().request().ByteSizeLong(), 1024u);
  grpc::ClientContext list_ctx;
  v1::ListJobsRequest all;
  all.set_include_finished(true);
  v1::ListJobsResponse list;
  ASSERT_TRUE(stub_->ListJobs(&list_ctx, all, &list).ok());
  ASSERT_EQ(list.jobs_size(), 1);
  EXPECT_TRUE(list.jobs(0).request().image().empty());
  EXPECT_EQ(list.jobs(0).request().input_image().size_bytes(), png.size());
  // The same id with the same image is the same job; with another image it
  // is a different request.
  grpc::ClientContext again_ctx;
  v1::SubmitResponse again;
  ASSERT_TRUE(stub_->Submit(&again_ctx, req, &again).ok());
  EXPECT_EQ(again.job().job_id(), submitted.job().job_id());
  req.set_image(Png(40, 24));
  grpc::ClientContext other_ctx;
  EXPECT_EQ(stub_->Submit(&other_ctx, req, &again).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
}

}  // namespace
}  // namespace rainserve
