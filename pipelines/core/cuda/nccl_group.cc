#include "pipelines/core/cuda/nccl_group.h"

#include <nccl.h>

#include <string>

namespace rainserve {
namespace {

Status NcclStatus(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return OkStatus();
  return InternalError(std::string("NCCL ") + what + ": " + ncclGetErrorString(r));
}

ncclDataType_t ToNccl(NcclDtype dtype) {
  switch (dtype) {
    case NcclDtype::kBFloat16: return ncclBfloat16;
    case NcclDtype::kFloat16: return ncclFloat16;
    case NcclDtype::kFloat32: break;
  }
  return ncclFloat32;
}

}  // namespace

StatusOr<std::unique_ptr<NcclGroup>> NcclGroup::Create(const std::vector<int>& ordinals) {
  if (ordinals.empty()) return InvalidArgumentError("devices: NCCL group needs a device");
  std::vector<ncclComm_t> comms(ordinals.size(), nullptr);
  RAINSERVE_RETURN_IF_ERROR(NcclStatus(
      ncclCommInitAll(comms.data(), static_cast<int>(ordinals.size()), ordinals.data()),
      "ncclCommInitAll"));
  return std::unique_ptr<NcclGroup>(new NcclGroup(std::move(comms)));
}

NcclGroup::~NcclGroup() {
  if (aborted_.load()) return;  // ncclCommAbort released them
  for (ncclComm_t c : comms_) {
    if (c != nullptr) ncclCommDestroy(c);
  }
}

Status NcclGroup::AllToAll(int64_t rank, const std::vector<const void*>& send,
                           const std::vector<int64_t>& send_counts, const std::vector<void*>& recv,
                           const std::vector<int64_t>& recv_counts, NcclDtype dtype,
                           cudaStream_t stream) const {
  const size_t n = comms_.size();
  if (rank < 0 || static_cast<size_t>(rank) >= n || send.size() != n || recv.size() != n ||
      send_counts.size() != n || recv_counts.size() != n) {
    return InvalidArgumentError("NCCL all-to-all: rank or per-peer buffer lists do not match the " +
                                std::to_string(n) + " ranks");
  }
  if (aborted_.load()) return UnavailableError("NCCL all-to-all: the group was aborted");
  ncclComm_t comm = comms_[rank];
  const ncclDataType_t type = ToNccl(dtype);
  RAINSERVE_RETURN_IF_ERROR(NcclStatus(ncclGroupStart(), "ncclGroupStart"));
  Status status = OkStatus();
  for (size_t peer = 0; peer < n && status.ok(); ++peer) {
    if (send_counts[peer] > 0) {
      status = NcclStatus(ncclSend(send[peer], static_cast<size_t>(send_counts[peer]), type,
                                   static_cast<int>(peer), comm, stream),
                          "ncclSend");
    }
    if (status.ok() && recv_counts[peer] > 0) {
      status = NcclStatus(ncclRecv(recv[peer], static_cast<size_t>(recv_counts[peer]), type,
                                   static_cast<int>(peer), comm, stream),
                          "ncclRecv");
    }
  }
  const Status end = NcclStatus(ncclGroupEnd(), "ncclGroupEnd");
  return status.ok() ? end : status;
}

void NcclGroup::Abort() const {
  if (aborted_.exchange(true)) return;
  for (ncclComm_t c : comms_) {
    if (c != nullptr) ncclCommAbort(c);
  }
}

}  // namespace rainserve
