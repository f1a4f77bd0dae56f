// One Wan transformer forward over the ranks of a ParallelPlan
// (pipelines/core/parallel_plan.h): CFG parallel (rank group c runs batch
// element c: the conditional branch first, as the pipeline batches it) times
// Ulysses sequence parallel inside each group (WanForwardOptions::
// sequence_parallel), then an all-gather over each CFG pair so that every
// rank holds the batched output. One host thread per rank, each on its
// replica's device. The pipeline's denoising loop calls it where it calls
// WanTransformer::Forward on one device.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "attention/engine.h"
#include "common/status.h"
#include "pipelines/core/collective.h"
#include "pipelines/core/parallel_plan.h"
#include "pipelines/wan/wan_transformer.h"

namespace rainserve {

// What one rank runs with. The replicas hold the same weights; ulysses is
// the rank's group of plan.ulysses_degree ranks (its rank there is
// plan.UlyssesRank), cfg its pair of plan.cfg_degree ranks (rank there:
// plan.CfgRank); either may be null when its degree is 1.
struct WanRank {
  const WanTransformer* transformer = nullptr;
  attention::AttentionEngine* engine = nullptr;
  Communicator* ulysses = nullptr;
  Communicator* cfg = nullptr;
};

// latents, timestep, text and options.image_embeds batched as for
// WanTransformer::Forward on one device, with B = plan.cfg_degree when the
// plan splits CFG (2: conditional, unconditional). Returns rank 0's output
// [B, out_channels, F, H, W] (every rank computes the same) on rank 0's
// device; stats are rank 0's (its heads' sparsity). INVALID_ARGUMENT when
// the ranks do not match the plan; otherwise the first failing rank's error.
// Inputs are checked before any rank starts, so ranks fail together rather
// than waiting on a peer inside a collective.
StatusOr<at::Tensor> ParallelWanForward(const ParallelPlan& plan,
                                        const std::vector<WanRank>& ranks,
                                        const at::Tensor& latents, const at::Tensor& timestep,
                                        const at::Tensor& text, const WanForwardOptions& options,
                                        WanForwardStats* stats = nullptr);

}  // namespace rainserve
