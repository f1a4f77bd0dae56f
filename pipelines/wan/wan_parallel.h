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

#include <memory>
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

// The communicators of one plan over the model's devices: one group per
// Ulysses group and one per CFG pair (a group of one rank is none). Loopback
// groups when the devices are CPU ranks (tests), NCCL groups on GPUs (CUDA
// builds with NCCL; FAILED_PRECONDITION naming devices without). `fault` is
// the loopback test hook, called with the plan's rank.
class WanParallelGroups {
 public:
  static StatusOr<std::unique_ptr<WanParallelGroups>> Create(const ParallelPlan& plan,
                                                             const std::vector<at::Device>& devices,
                                                             LoopbackFault fault = nullptr);
  ~WanParallelGroups();
  WanParallelGroups(const WanParallelGroups&) = delete;
  WanParallelGroups& operator=(const WanParallelGroups&) = delete;

  const ParallelPlan& plan() const { return plan_; }
  // Rank r's handles (null when the degree is 1).
  Communicator* ulysses(int64_t r) const { return ulysses_[r]; }
  Communicator* cfg(int64_t r) const { return cfg_[r]; }

 private:
  WanParallelGroups() = default;
  // The group of `ranks` (plan ranks): its communicators, rank i on ranks[i].
  Status AddGroup(const std::vector<int64_t>& ranks, const std::vector<at::Device>& devices,
                  const LoopbackFault& fault, std::vector<Communicator*>* slots);

  ParallelPlan plan_;
  std::vector<std::unique_ptr<LoopbackGroup>> loopback_;
  std::vector<std::unique_ptr<Communicator>> owned_;  // NCCL communicators
  std::vector<Communicator*> ulysses_, cfg_;
};

// latents, timestep, text and options.image_embeds batched as for
// WanTransformer::Forward on one device, with B = plan.cfg_degree when the
// plan splits CFG (2: conditional, unconditional). Returns rank 0's output
// [B, out_channels, F, H, W] (every rank computes the same) on rank 0's
// device; stats are rank 0's (its heads' sparsity). INVALID_ARGUMENT when
// the ranks do not match the plan. Inputs are checked before any rank
// starts, so ranks fail together rather than waiting on a peer inside a
// collective. A rank that fails while running aborts every communicator of
// the ranks (Communicator::Abort), so its peers return instead of waiting;
// the error is the first failure's, prefixed "rank r (device)"; the
// communicators are then unusable.
StatusOr<at::Tensor> ParallelWanForward(const ParallelPlan& plan,
                                        const std::vector<WanRank>& ranks,
                                        const at::Tensor& latents, const at::Tensor& timestep,
                                        const at::Tensor& text, const WanForwardOptions& options,
                                        WanForwardStats* stats = nullptr);

}  // namespace rainserve
