// The Wan text-to-video / text-to-image pipeline (Wan2.1-style diffusers
// checkpoint folders): UMT5 prompt encoding, flow-matching denoising of the
// WanTransformer3DModel with classifier-free guidance and RainFusion2.0
// sparse self-attention, Wan VAE decoding to RGB frames.
//
// Checkpoint folder (as published, e.g. Wan2.1-T2V-1.3B-Diffusers):
//   model_index.json            optional; Wan2.2 two-expert folders are refused
//   tokenizer/                  tokenizer.json or spiece.model (UMT5, unigram),
//                               tokenizer_config.json, special_tokens_map.json
//   text_encoder/               config.json + model*.safetensors
//   transformer/                config.json + diffusion_pytorch_model*.safetensors
//   vae/                        config.json + diffusion_pytorch_model*.safetensors
//   scheduler/scheduler_config.json
//
// Torch-free header: the server creates pipelines through the registry.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "pipelines/core/model_options.h"
#include "common/status.h"
#include "pipelines/core/pipeline.h"

namespace rainserve {

// Loads every component of `entry.path` onto `entry.device` in `entry.dtype`
// (the VAE stays fp32). Called by the server's model loader thread.
// NOT_FOUND / INVALID_ARGUMENT / UNIMPLEMENTED name the file at fault;
// FAILED_PRECONDITION when the device is not available in this build.
//
// With several `entry.devices` (docs/multi-gpu.md) the transformer is read
// once onto devices[0] and copied to every other device, the text encoder
// and VAE stay on devices[0], and each denoising step runs over all devices
// (ParallelWanForward, pipelines/wan/wan_parallel.h) through NCCL groups
// created here. Tests may pass devices that are all "cpu": the same wiring
// then runs on CPU ranks with loopback groups (the config file refuses it).
// Two-expert models with several devices are UNIMPLEMENTED naming devices.
StatusOr<std::unique_ptr<Pipeline>> LoadWanPipeline(const ModelOptions& entry);

// Test hooks of a multi-device load.
struct WanPipelineHooks {
  // CPU ranks only: called by plan rank r at the start of each of its
  // collectives; a non-OK status fails that rank there, as a lost device
  // would (LoopbackFault, pipelines/core/collective.h).
  std::function<Status(int64_t rank)> collective_fault;
};
StatusOr<std::unique_ptr<Pipeline>> LoadWanPipelineWithHooks(const ModelOptions& entry,
                                                             const WanPipelineHooks& hooks);

}  // namespace rainserve
