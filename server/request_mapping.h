// Request mapping: the edge between the API (rainserve.v1 protobuf messages)
// and the plain structs of pipelines/core/pipeline.h.
//
// ResolveRequest fills every default from the model's description, rejects
// what the model cannot run (INVALID_ARGUMENT naming the field and the allowed
// range) and yields both the resolved API request (echoed to clients as the
// applied settings) and the GenerationRequest a pipeline runs. Nothing that
// fails here reaches a pipeline. The other functions turn descriptions and
// outputs back into API messages. All functions are pure and thread-safe.
#pragma once

#include <google/protobuf/duration.pb.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "server/config.h"
#include "common/status.h"
#include "pipelines/core/pipeline.h"
#include "rainserve/v1/generation.pb.h"
#include "rainserve/v1/models.pb.h"

namespace rainserve {

// Bounds of client-supplied strings the service keeps or echoes (the prompt
// bounds are per model: PipelineLimits::max_prompt_bytes).
constexpr size_t kMaxClientRequestIdBytes = 128;
constexpr size_t kMaxJobIdBytes = 64;

// The lengths of `request`'s identifying strings: model (kMaxModelNameBytes)
// and client_request_id (kMaxClientRequestIdBytes). Checked before the model
// lookup, so that no oversized string is echoed or kept. INVALID_ARGUMENT
// naming the field.
Status CheckRequestStrings(const v1::GenerateRequest& request);

// A job id given by a client (Watch, Cancel, GetJob): required and at most
// kMaxJobIdBytes. INVALID_ARGUMENT naming `job_id`.
Status CheckJobId(const std::string& job_id);

struct ResolvedRequest {
  v1::GenerateRequest resolved;  // every optional field set, enums specified
  GenerationRequest generation;  // what the pipeline runs
};

// Fills defaults from `model` and validates. `random_seed` becomes the seed
// when the request has none. The resolved request names the model by
// `model.name`; priority, client_request_id and detached are copied as given.
// Errors: INVALID_ARGUMENT naming the field ("scheduler", "width",
// "sparse_attention.sparsity", "image", ...). One-frame requests
// (text-to-image) run with sparse_attention.sink_frames = 0 whatever was asked.
//
// Images: decoded here with the model's max_image_bytes / max_image_pixels
// (a model without an image task refuses any image, undecoded). The resolved
// request drops the image's bytes and carries input_image (type, size,
// SHA-256) instead; an image request that sets neither width nor height is
// sized by SizeForImage from max_area (echoed). Two-expert models echo
// guidance_scale_2 resolved (request, model default, else guidance_scale);
// one-expert models refuse it.
StatusOr<ResolvedRequest> ResolveRequest(const v1::GenerateRequest& request,
                                         const PipelineDescription& model, uint64_t random_seed);

// Name, pipeline, tasks, experts, device, dtype, attention backends, limits
// and defaults (every sparse_attention field set; guidance_scale_2 for
// two-expert models). State is left to the caller.
void FillModelInfo(const PipelineDescription& model, v1::ModelInfo* info);

// The parts of a result a pipeline output determines: the applied request,
// requested and realized sparsity, per-step stats (with the expert), the
// text-encode / image-encode / denoise / expert-switch / decode timings and
// peak memory. Artifacts, device and the queue / encode /
// total timings are the job's to fill.
void FillResultFromOutput(const GenerationOutput& output, const v1::GenerateRequest& applied,
                          v1::GenerateResult* result);

google::protobuf::Duration SecondsToDuration(double seconds);

}  // namespace rainserve
