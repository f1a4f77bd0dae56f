// Fuzzes request validation and mapping: arbitrary bytes parsed as a
// rainserve.v1.GenerateRequest, then ResolveRequest (server/request_mapping.h)
// against three fixed models (text-to-video, a small one, and a two-expert
// image-to-video one). Any request resolves or is INVALID_ARGUMENT; a
// resolved request passes ValidateGenerationRequest, has every field set,
// echoes no image bytes, and (without an image, which the echo drops)
// resolves again to itself.
//
//   build-fuzz/tests/fuzz/fuzz_request tests/fuzz/corpus/request
#include <google/protobuf/stubs/logging.h>
#include <google/protobuf/util/message_differencer.h>

#include <cstdint>

#include "server/request_mapping.h"
#include "tests/fuzz/fuzz_util.h"

namespace rainserve {
namespace {

// The pipeline's own limits and defaults, as the wan pipeline describes them.
PipelineDescription VideoModel() {
  PipelineDescription d;
  d.name = "wan-video";
  d.pipeline = "wan";
  d.tasks = {Task::kTextToVideo, Task::kTextToImage};
  d.defaults.sparse.window = {2, 8, 8};
  return d;
}

// A small model: tight limits, image defaults, dense attention by default.
PipelineDescription SmallModel() {
  PipelineDescription d;
  d.name = "wan-tiny";
  d.pipeline = "wan";
  d.limits.size_multiple = 8;
  d.limits.max_width = 64;
  d.limits.max_height = 48;
  d.limits.max_pixels = 64 * 32;
  d.limits.max_frames = 9;
  d.limits.max_steps = 4;
  d.limits.max_prompt_bytes = 64;
  d.defaults.width = 64;
  d.defaults.height = 32;
  d.defaults.num_frames = 1;
  d.defaults.steps = 2;
  d.defaults.scheduler = "euler";
  d.defaults.sparse.mode = AttentionMode::kDense;
  return d;
}

// Two experts, image-to-video, small image limits.
PipelineDescription ImageModel() {
  PipelineDescription d = SmallModel();
  d.name = "wan-i2v";
  d.tasks = {Task::kImageToVideo};
  d.experts = 2;
  d.boundary_timestep = 900;
  d.limits.max_image_bytes = 4096;
  d.limits.max_image_pixels = 64 * 64;
  return d;
}

void CheckResolved(const v1::GenerateRequest& request, const PipelineDescription& model,
                   const ResolvedRequest& out, uint64_t random_seed) {
  const GenerationRequest& g = out.generation;
  const v1::GenerateRequest& r = out.resolved;
  RAINSERVE_FUZZ_CHECK(ValidateGenerationRequest(model, g).ok());
  RAINSERVE_FUZZ_CHECK(g.seed == (request.has_seed() ? request.seed() : random_seed));
  RAINSERVE_FUZZ_CHECK(r.model() == model.name);
  RAINSERVE_FUZZ_CHECK(r.has_seed() && r.has_steps() && r.has_guidance_scale() &&
                       r.has_flow_shift() && r.has_width() && r.has_height() &&
                       r.has_num_frames() && r.has_fps());
  RAINSERVE_FUZZ_CHECK(r.scheduler() != v1::SCHEDULER_UNSPECIFIED);
  RAINSERVE_FUZZ_CHECK(r.output_format() != v1::OUTPUT_FORMAT_UNSPECIFIED);
  RAINSERVE_FUZZ_CHECK(r.sparse_attention().mode() != v1::ATTENTION_MODE_UNSPECIFIED);
  RAINSERVE_FUZZ_CHECK(r.sparse_attention().mask_refresh() != v1::MASK_REFRESH_UNSPECIFIED);
  RAINSERVE_FUZZ_CHECK(r.width() == g.width && r.height() == g.height &&
                       r.num_frames() == g.num_frames && r.steps() == g.steps);
  RAINSERVE_FUZZ_CHECK(g.num_frames != 1 || g.sparse.sink_frames == 0);
  RAINSERVE_FUZZ_CHECK(r.image().empty());
  RAINSERVE_FUZZ_CHECK(r.has_guidance_scale_2() == (model.experts >= 2));
  RAINSERVE_FUZZ_CHECK(g.guidance_scale_2.has_value() == (model.experts >= 2));
  RAINSERVE_FUZZ_CHECK(request.image().empty() == g.image.empty());
  if (!request.image().empty()) {
    RAINSERVE_FUZZ_CHECK(r.input_image().width() == g.image.width &&
                         r.input_image().height() == g.image.height);
    RAINSERVE_FUZZ_CHECK(r.input_image().size_bytes() == request.image().size());
    return;  // the echo has no image to resolve again with
  }

  // The applied settings, sent back as a request, mean the same thing.
  auto again = ResolveRequest(r, model, random_seed + 1);
  RAINSERVE_FUZZ_CHECK(again.ok());
  RAINSERVE_FUZZ_CHECK(google::protobuf::util::MessageDifferencer::Equals(again->resolved, r));
  RAINSERVE_FUZZ_CHECK(again->generation.seed == g.seed);
}

}  // namespace
}  // namespace rainserve

// Invalid UTF-8 in string fields fails parsing (as it does for gRPC) and
// protobuf logs each one; quiet.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace rainserve;
  static const PipelineDescription models[] = {VideoModel(), SmallModel(), ImageModel()};
  v1::GenerateRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  const uint64_t random_seed = size * 2654435761u;
  for (const PipelineDescription& model : models) {
    auto out = ResolveRequest(request, model, random_seed);
    if (!out.ok()) {
      RAINSERVE_FUZZ_CHECK(out.status().code() == StatusCode::kInvalidArgument);
      continue;
    }
    CheckResolved(request, model, *out, random_seed);
  }
  return 0;
}
