// NCCL communicators for the GPUs of one model in one process: torch-free
// (raw device pointers and CUDA streams), compiled only in CUDA builds and
// linked with the CUDA toolkit's libnccl.
//
// Process model: one process drives every GPU of the host. NcclGroup::Create
// calls ncclCommInitAll once for a list of CUDA ordinals (one communicator
// per GPU, rank i on ordinals[i]); each GPU then has its own host thread and
// stream, and rank i's thread issues rank i's collectives on its stream.
// This keeps one copy of the server (queue, metrics, health) per host and
// needs no launcher or rendezvous; a process per GPU would need a bootstrap
// (ncclGetUniqueId shared over a side channel) and cross-process job fan-out.
// A CFG x Ulysses plan creates one NcclGroup per Ulysses group and one per
// CFG pair.
//
// All-to-all is one ncclGroupStart/End around an ncclSend and an ncclRecv
// per peer, with per-peer element counts (uneven token shards need no
// padding). Errors are Status values carrying ncclGetErrorString; a failing
// collective leaves the communicator unusable and the caller fails the
// request and marks the model FAILED.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/status.h"

typedef struct ncclComm* ncclComm_t;

namespace rainserve {

enum class NcclDtype { kFloat32, kBFloat16, kFloat16 };

class NcclGroup {
 public:
  // One communicator per ordinal (distinct CUDA device ordinals).
  static StatusOr<std::unique_ptr<NcclGroup>> Create(const std::vector<int>& ordinals);
  ~NcclGroup();
  NcclGroup(const NcclGroup&) = delete;
  NcclGroup& operator=(const NcclGroup&) = delete;

  int64_t size() const { return static_cast<int64_t>(comms_.size()); }

  // Rank `rank`'s half of an all-to-all, issued on `stream` (rank's device):
  // send[s] (send_counts[s] elements) goes to rank s, recv[r] (recv_counts[r]
  // elements) receives from rank r. Buffers are device memory of rank's GPU;
  // every rank calls it with matching counts. Zero counts are skipped.
  Status AllToAll(int64_t rank, const std::vector<const void*>& send,
                  const std::vector<int64_t>& send_counts, const std::vector<void*>& recv,
                  const std::vector<int64_t>& recv_counts, NcclDtype dtype,
                  cudaStream_t stream) const;

  // Aborts every communicator (ncclCommAbort), ending collectives still in
  // flight on any rank; later AllToAll calls are UNAVAILABLE. Called from
  // any thread once a rank has failed; the group is not used again.
  void Abort() const;

 private:
  explicit NcclGroup(std::vector<ncclComm_t> comms) : comms_(std::move(comms)) {}
  std::vector<ncclComm_t> comms_;
  mutable std::atomic<bool> aborted_{false};
};

}  // namespace rainserve
