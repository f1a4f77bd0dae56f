#include "pipelines/wan/wan_parallel.h"

#include <c10/core/DeviceGuard.h>

#include <mutex>
#include <string>
#include <thread>

#include "pipelines/core/torch_status.h"

#if RAINSERVE_WITH_CUDA && RAINSERVE_WITH_NCCL
#include "pipelines/core/cuda/nccl_group.h"
#endif

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

StatusOr<std::unique_ptr<WanParallelGroups>> WanParallelGroups::Create(
    const ParallelPlan& plan, const std::vector<at::Device>& devices, LoopbackFault fault) {
  if (static_cast<int64_t>(devices.size()) != plan.world) {
    return InvalidArgumentError("devices: " + std::to_string(devices.size()) +
                                " devices for a plan of " + std::to_string(plan.world));
  }
  std::unique_ptr<WanParallelGroups> g(new WanParallelGroups());
  g->plan_ = plan;
  g->ulysses_.assign(plan.world, nullptr);
  g->cfg_.assign(plan.world, nullptr);
  for (int64_t r = 0; r < plan.world; ++r) {
    // A group is created by its first rank.
    if (plan.ulysses_degree > 1 && plan.UlyssesRank(r) == 0) {
      RAINSERVE_RETURN_IF_ERROR(g->AddGroup(plan.UlyssesGroup(r), devices, fault, &g->ulysses_));
    }
    if (plan.cfg_degree > 1 && plan.CfgRank(r) == 0) {
      RAINSERVE_RETURN_IF_ERROR(g->AddGroup(plan.CfgGroup(r), devices, fault, &g->cfg_));
    }
  }
  return g;
}

WanParallelGroups::~WanParallelGroups() = default;

Status WanParallelGroups::AddGroup(const std::vector<int64_t>& ranks,
                                   const std::vector<at::Device>& devices,
                                   const LoopbackFault& fault, std::vector<Communicator*>* slots) {
  const int64_t n = static_cast<int64_t>(ranks.size());
  if (devices[ranks[0]].is_cpu()) {
    LoopbackFault local;
    if (fault) local = [fault, ranks](int64_t r) { return fault(ranks[r]); };
    loopback_.push_back(std::make_unique<LoopbackGroup>(n, std::move(local)));
    for (int64_t i = 0; i < n; ++i) (*slots)[ranks[i]] = &loopback_.back()->rank(i);
    return OkStatus();
  }
#if RAINSERVE_WITH_CUDA && RAINSERVE_WITH_NCCL
  std::vector<int> ordinals;
  for (int64_t r : ranks) ordinals.push_back(devices[r].index());
  RAINSERVE_ASSIGN_OR_RETURN(std::unique_ptr<NcclGroup> group, NcclGroup::Create(ordinals));
  const std::shared_ptr<const NcclGroup> shared(std::move(group));
  for (int64_t i = 0; i < n; ++i) {
    owned_.push_back(MakeNcclCommunicator(shared, i));
    (*slots)[ranks[i]] = owned_.back().get();
  }
  return OkStatus();
#else
  return FailedPreconditionError("devices: " + devices[ranks[0]].str() +
                                 " ranks need NCCL, which this build does not have");
#endif
}

StatusOr<at::Tensor> ParallelWanForward(const ParallelPlan& plan,
                                        const std::vector<WanRank>& ranks,
                                        const at::Tensor& latents, const at::Tensor& timestep,
                                        const at::Tensor& text, const WanForwardOptions& options,
                                        WanForwardStats* stats) {
  RAINSERVE_RETURN_IF_ERROR(CheckRanks(plan, ranks, latents.defined() ? latents.size(0) : 0));
  std::vector<at::Tensor> out(plan.world);
  std::vector<WanForwardStats> rank_stats(plan.world);
  std::mutex mu;
  Status first = OkStatus();  // the first failure, under mu
  // The first rank to fail aborts every group, so that no peer keeps waiting
  // on it inside a collective.
  auto fail = [&](int64_t r, const Status& s) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!first.ok()) return;
      first = Status(s.code(), "rank " + std::to_string(r) + " (" +
                                   ranks[r].transformer->device().str() + "): " + s.message());
    }
    for (const WanRank& k : ranks) {
      if (k.ulysses != nullptr) k.ulysses->Abort();
      if (k.cfg != nullptr) k.cfg->Abort();
    }
  };
  auto run = [&](int64_t r) {
    try {
      StatusOr<at::Tensor> o = RankForward(plan, ranks[r], r, latents, timestep, text, options,
                                           &rank_stats[r]);
      if (o.ok()) {
        out[r] = std::move(o).value();
      } else {
        fail(r, o.status());
      }
    } catch (const std::exception& e) {
      fail(r, TorchExceptionStatus("forward", e));
    }
  };
  std::vector<std::thread> threads;
  for (int64_t r = 1; r < plan.world; ++r) threads.emplace_back(run, r);
  run(0);
  for (std::thread& t : threads) t.join();
  RAINSERVE_RETURN_IF_ERROR(first);
  if (stats) *stats = rank_stats[0];
  return out[0];
}

}  // namespace rainserve
