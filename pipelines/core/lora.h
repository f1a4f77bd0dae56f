// LoRA files merged into a model's weights at load (models[].loras).
//
// A LoRA file holds, for each adapted layer <m> (weight W: [out, in] or a conv
// [out, in, k...]), a low-rank pair and optionally an alpha:
//   down: [r, in...]   up: [out, r] (a conv's up may be [out, r, 1, ...])
// and merging adds, in fp32 on the weight's device, then casts back:
//   W += strength * scale * (up @ down)     scale = alpha / r, or 1 without alpha
// Full deltas are merged too where a file has them:
//   <m>.diff: W += strength * diff    <m>.diff_b, <m>.lora_B.bias: bias += strength * it
//
// Key formats read (the ones Wan LoRAs are published in):
//   diffusers / PEFT   [transformer.|base_model.model.]<m>.lora_A.weight, .lora_B.weight
//   kohya              <m>.lora_down.weight, <m>.lora_up.weight, <m>.alpha
//   original names     [diffusion_model.]<m> in the names of the model's original
//                      code (ModuleRenamer), with either pair naming
//   musubi-tuner       lora_unet_<m with '_' for '.'>.lora_down.weight, ...
// Text-encoder keys (text_encoder*, lora_te*) are errors: only the
// transformer's weights are merged, and a half-applied LoRA would change the
// output silently.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "pipelines/core/model_options.h"

namespace rainserve {

// A module's name in the model's original code for its diffusers name
// (e.g. "blocks.0.self_attn.q" for "blocks.0.attn1.to_q"); "" when the
// original code has no such module, or names it the same.
using ModuleRenamer = std::function<std::string(const std::string&)>;

// Merges `files` in order into `params` (diffusers names, e.g.
// "blocks.0.attn1.to_q.weight"). Called at load, before the model resolves its
// typed views. Each touched parameter is replaced by a new tensor of its own
// dtype and device; untouched ones are left as they are. Every file is read
// and checked before any weight changes. INVALID_ARGUMENT naming the file and
// the key: a key that matches no parameter, a text-encoder key, a pair with one
// half missing, an alpha without a pair, not a scalar or not finite, a rank-0
// pair, a shape that does not fit the parameter. File problems are the safetensors reader's errors.
Status MergeLoras(const std::vector<LoraFile>& files, const ModuleRenamer& original_name,
                  std::vector<std::pair<std::string, at::Tensor>>* params);

}  // namespace rainserve
