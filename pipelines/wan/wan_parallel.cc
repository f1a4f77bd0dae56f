#include "pipelines/wan/wan_parallel.h"

#include <c10/core/DeviceGuard.h>

#include <string>
#include <thread>

#include "pipelines/core/torch_status.h"

namespace rainserve {
namespace {

Status CheckRanks(const ParallelPlan& plan, const std::vector<WanRank>& ranks, int64_t batch) {
  if (static_cast<int64_t>(ranks.size()) != plan.world) {
    return InvalidArgumentError("parallel forward: " + std::to_string(ranks.size()) +
                                " ranks for a plan of " + std::to_string(plan.world));
  }
  if (plan.cfg_degree == 2 && batch != 2) {
    return InvalidArgumentError("parallel forward: CFG parallel needs batch 2, got " +
                                std::to_string(batch));
  }
  for (int64_t r = 0; r < plan.world; ++r) {
    const WanRank& k = ranks[r];
    const std::string who = "parallel forward: rank " + std::to_string(r);
    if (k.transformer == nullptr || k.engine == nullptr) {
      return InvalidArgumentError(who + " has no transformer or engine");
    }
    if (plan.ulysses_degree > 1 &&
        (k.ulysses == nullptr || k.ulysses->size() != plan.ulysses_degree ||
         k.ulysses->rank() != plan.UlyssesRank(r))) {
      return InvalidArgumentError(who + ": its Ulysses group does not match the plan");
    }
    if (plan.cfg_degree > 1 && (k.cfg == nullptr || k.cfg->size() != plan.cfg_degree ||
                                k.cfg->rank() != plan.CfgRank(r))) {
      return InvalidArgumentError(who + ": its CFG pair does not match the plan");
    }
    if (k.transformer->config().num_attention_heads % plan.ulysses_degree != 0) {
      return InvalidArgumentError(who + ": heads do not divide over the Ulysses group");
    }
  }
  return OkStatus();
}

// Rank r's share: its CFG branch (batch element) on its device, Ulysses
// inside the group, then the CFG pair's all-gather along the batch.
StatusOr<at::Tensor> RankForward(const ParallelPlan& plan, const WanRank& k, int64_t r,
                                 const at::Tensor& latents, const at::Tensor& timestep,
                                 const at::Tensor& text, const WanForwardOptions& options,
                                 WanForwardStats* stats) {
  const at::Device device = k.transformer->device();
  const c10::DeviceGuard guard(device);
  auto branch = [&](const at::Tensor& t) {
    if (!t.defined()) return t;
    const at::Tensor mine = plan.cfg_degree == 2 ? t.narrow(0, plan.CfgRank(r), 1) : t;
    return mine.to(device);
  };
  WanForwardOptions o = options;
  o.engine = k.engine;
  o.sequence_parallel = plan.ulysses_degree > 1 ? k.ulysses : nullptr;
  o.image_embeds = branch(options.image_embeds);
  RAINSERVE_ASSIGN_OR_RETURN(
      at::Tensor out,
      k.transformer->Forward(branch(latents), branch(timestep), branch(text), o, stats));
  if (plan.cfg_degree == 1) return out;
  return AllGather(*k.cfg, out, 0, {1, 1});
}

}  // namespace

StatusOr<at::Tensor> ParallelWanForward(const ParallelPlan& plan,
                                        const std::vector<WanRank>& ranks,
                                        const at::Tensor& latents, const at::Tensor& timestep,
                                        const at::Tensor& text, const WanForwardOptions& options,
                                        WanForwardStats* stats) {
  RAINSERVE_RETURN_IF_ERROR(CheckRanks(plan, ranks, latents.defined() ? latents.size(0) : 0));
  std::vector<Status> status(plan.world, OkStatus());
  std::vector<at::Tensor> out(plan.world);
  std::vector<WanForwardStats> rank_stats(plan.world);
  auto run = [&](int64_t r) {
    try {
      StatusOr<at::Tensor> o = RankForward(plan, ranks[r], r, latents, timestep, text, options,
                                           &rank_stats[r]);
      if (o.ok()) {
        out[r] = std::move(o).value();
      } else {
        status[r] = o.status();
      }
    } catch (const std::exception& e) {
      status[r] = TorchExceptionStatus("rank " + std::to_string(r) + " forward", e);
    }
  };
  std::vector<std::thread> threads;
  for (int64_t r = 1; r < plan.world; ++r) threads.emplace_back(run, r);
  run(0);
  for (std::thread& t : threads) t.join();
  for (const Status& s : status) RAINSERVE_RETURN_IF_ERROR(s);
  if (stats) *stats = rank_stats[0];
  return out[0];
}

}  // namespace rainserve
