// Collectives between the ranks of a model with several devices
// (pipelines/core/parallel_plan.h), on at::Tensor:
//   Communicator        one rank's handle on a group: an all-to-all with
//                       per-peer tensors (uneven sizes allowed)
//   LoopbackGroup       N ranks in one process on the CPU (or any device),
//                       each rank on its own thread; for tests
//   TokensToHeads /     Ulysses: [B, n_r, H, D] token shards -> [B, L, H/P, D]
//   HeadsToTokens       head slices of the full sequence, and back
//   AllGather           every rank's tensor concatenated along a dim (the
//                       token shards before the output projection; the two
//                       CFG branches' outputs, dim 0, over a CFG pair)
// The NCCL communicator of CUDA builds (pipelines/core/cuda/nccl_group.h)
// implements the same Communicator for device tensors.
#pragma once

#include <ATen/ATen.h>

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "common/status.h"
#include "pipelines/core/parallel_plan.h"

namespace rainserve {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int64_t rank() const = 0;
  virtual int64_t size() const = 0;
  // send[s] goes to rank s; recv[r] (allocated by the caller, contiguous,
  // send's dtype and device) is filled with what rank r sent to this rank.
  // Every rank of the group calls it; sizes must match pairwise
  // (INVALID_ARGUMENT on every rank otherwise).
  virtual Status AllToAll(const std::vector<at::Tensor>& send,
                          const std::vector<at::Tensor>& recv) = 0;
  // Fails the whole group for good: every rank's pending and later
  // all-to-alls return UNAVAILABLE instead of waiting on a peer. Called from
  // any thread by whoever sees a rank fail (ParallelWanForward), so that the
  // other ranks do not hang inside a collective; the group is not used again.
  virtual void Abort() = 0;
};

// Test hook of a LoopbackGroup: called by rank r at the start of each of its
// all-to-alls; a non-OK status fails that rank there, before it reaches its
// peers, as a lost device would (they wait until the group is aborted).
using LoopbackFault = std::function<Status(int64_t rank)>;

// N ranks in one process: rank(i) is used by one thread per rank. Each
// AllToAll is two barriers: every rank posts its send list, copies its
// receives from the others' lists, and waits until all have copied.
class LoopbackGroup {
 public:
  explicit LoopbackGroup(int64_t size, LoopbackFault fault = nullptr);
  ~LoopbackGroup();
  int64_t size() const { return static_cast<int64_t>(ranks_.size()); }
  Communicator& rank(int64_t r);
  // Communicator::Abort for every rank.
  void Abort();

 private:
  class Rank;
  // Blocks until every rank has arrived; false when `abortable` and the
  // group was aborted.
  bool Barrier(bool abortable);
  Status Exchange(int64_t rank, const std::vector<at::Tensor>& send,
                  const std::vector<at::Tensor>& recv);

  std::vector<std::unique_ptr<Rank>> ranks_;
  std::vector<const std::vector<at::Tensor>*> posted_;
  std::mutex mu_;
  std::condition_variable cv_;
  int64_t arrived_ = 0, generation_ = 0;
  bool aborted_ = false;
  LoopbackFault fault_;
};

// q, k or v of rank `comm.rank()`: x [B, shards[rank].size, H, D] ->
// [B, L, H/P, D], the whole sequence (tokens in order) for the rank's head
// slice. shards: TokenShards(L, P), P = comm.size(), H % P == 0.
StatusOr<at::Tensor> TokensToHeads(Communicator& comm, const at::Tensor& x,
                                   const std::vector<IndexRange>& shards);
// The inverse: y [B, L, H/P, D] -> [B, shards[rank].size, H, D].
StatusOr<at::Tensor> HeadsToTokens(Communicator& comm, const at::Tensor& y,
                                   const std::vector<IndexRange>& shards);
// Every rank's x concatenated along `dim` in rank order; sizes[r] is rank
// r's extent along `dim` (the other dims equal).
StatusOr<at::Tensor> AllGather(Communicator& comm, const at::Tensor& x, int64_t dim,
                               const std::vector<int64_t>& sizes);

#if RAINSERVE_WITH_CUDA && RAINSERVE_WITH_NCCL
class NcclGroup;
// CUDA builds with NCCL: rank `rank` of `group` (one communicator per GPU,
// ncclCommInitAll), on the current CUDA stream of the tensors' device; the
// thread that calls it drives that GPU. Not exercised on CPU-only machines.
std::unique_ptr<Communicator> MakeNcclCommunicator(std::shared_ptr<const NcclGroup> group,
                                                   int64_t rank);
#endif

}  // namespace rainserve
