#include "pipelines/core/collective.h"

#include <string>

#include "attention/torch_adapter.h"
#include "pipelines/core/torch_status.h"

#if RAINSERVE_WITH_CUDA && RAINSERVE_WITH_NCCL
#include <c10/cuda/CUDAStream.h>

#include "pipelines/core/cuda/nccl_group.h"
#endif

namespace rainserve {

class LoopbackGroup::Rank final : public Communicator {
 public:
  Rank(LoopbackGroup* group, int64_t rank) : group_(group), rank_(rank) {}
  int64_t rank() const override { return rank_; }
  int64_t size() const override { return group_->size(); }
  Status AllToAll(const std::vector<at::Tensor>& send,
                  const std::vector<at::Tensor>& recv) override {
    return group_->Exchange(rank_, send, recv);
  }
  void Abort() override { group_->Abort(); }

 private:
  LoopbackGroup* group_;
  int64_t rank_;
};

LoopbackGroup::LoopbackGroup(int64_t size, LoopbackFault fault)
    : posted_(size, nullptr), fault_(std::move(fault)) {
  for (int64_t r = 0; r < size; ++r) ranks_.push_back(std::make_unique<Rank>(this, r));
}

LoopbackGroup::~LoopbackGroup() = default;

Communicator& LoopbackGroup::rank(int64_t r) { return *ranks_[r]; }

void LoopbackGroup::Abort() {
  std::lock_guard<std::mutex> lock(mu_);
  aborted_ = true;
  cv_.notify_all();
}

bool LoopbackGroup::Barrier(bool abortable) {
  std::unique_lock<std::mutex> lock(mu_);
  if (abortable && aborted_) return false;
  const int64_t generation = generation_;
  if (++arrived_ == size()) {
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
    return true;
  }
  cv_.wait(lock, [&] { return generation_ != generation || (abortable && aborted_); });
  return generation_ != generation;
}

Status LoopbackGroup::Exchange(int64_t rank, const std::vector<at::Tensor>& send,
                               const std::vector<at::Tensor>& recv) {
  const size_t n = ranks_.size();
  if (fault_) RAINSERVE_RETURN_IF_ERROR(fault_(rank));
  {
    std::lock_guard<std::mutex> lock(mu_);
    posted_[rank] = &send;
  }
  if (!Barrier(/*abortable=*/true)) {
    return UnavailableError("all-to-all: rank " + std::to_string(rank) + "'s group was aborted");
  }
  // Every rank has posted; each copies its receives, then all wait so that
  // no send list goes away while a peer still reads it.
  Status status = OkStatus();
  bool lists_ok = send.size() == n && recv.size() == n;
  for (size_t peer = 0; peer < n && lists_ok; ++peer) lists_ok = posted_[peer]->size() == n;
  if (!lists_ok) {
    status = InvalidArgumentError("all-to-all: every rank must pass one tensor per rank (" +
                                  std::to_string(n) + ")");
  }
  for (size_t peer = 0; peer < n && status.ok(); ++peer) {
    const at::Tensor& from = (*posted_[peer])[rank];
    if (!recv[peer].sizes().equals(from.sizes()) || recv[peer].dtype() != from.dtype()) {
      status = InvalidArgumentError("all-to-all: rank " + std::to_string(rank) + " expects " +
                                    attention::ShapeOf(recv[peer]) + " from rank " +
                                    std::to_string(peer) + ", which sent " +
                                    attention::ShapeOf(from));
      break;
    }
    try {
      recv[peer].copy_(from);
    } catch (const std::exception& e) {
      status = TorchExceptionStatus("all-to-all copy", e);
    }
  }
  // Every rank passed the first barrier, so all reach this one: it waits
  // even after an abort, since a peer may still be reading `send`.
  Barrier(/*abortable=*/false);
  return status;
}

namespace {

Status CheckShards(const Communicator& comm, const std::vector<IndexRange>& shards) {
  if (static_cast<int64_t>(shards.size()) != comm.size()) {
    return InvalidArgumentError("sequence parallel: " + std::to_string(shards.size()) +
                                " token shards for " + std::to_string(comm.size()) + " ranks");
  }
  return OkStatus();
}

}  // namespace

StatusOr<at::Tensor> TokensToHeads(Communicator& comm, const at::Tensor& x,
                                   const std::vector<IndexRange>& shards) {
  RAINSERVE_RETURN_IF_ERROR(CheckShards(comm, shards));
  const int64_t P = comm.size(), me = comm.rank();
  if (x.dim() != 4 || x.size(1) != shards[me].size || x.size(2) % P != 0) {
    return InvalidArgumentError("sequence parallel: x must be [B, " +
                                std::to_string(shards[me].size) + ", H, D] with H % " +
                                std::to_string(P) + " == 0, got " + attention::ShapeOf(x));
  }
  const int64_t B = x.size(0), hp = x.size(2) / P, D = x.size(3);
  std::vector<at::Tensor> send, recv;
  for (int64_t peer = 0; peer < P; ++peer) {
    send.push_back(x.narrow(2, peer * hp, hp).contiguous());  // [B, n_me, H/P, D]
    recv.push_back(at::empty({B, shards[peer].size, hp, D}, x.options()));
  }
  RAINSERVE_RETURN_IF_ERROR(comm.AllToAll(send, recv));
  return at::cat(recv, 1);  // [B, L, H/P, D]
}

StatusOr<at::Tensor> HeadsToTokens(Communicator& comm, const at::Tensor& y,
                                   const std::vector<IndexRange>& shards) {
  RAINSERVE_RETURN_IF_ERROR(CheckShards(comm, shards));
  const int64_t P = comm.size(), me = comm.rank();
  const int64_t L = shards.back().end();
  if (y.dim() != 4 || y.size(1) != L) {
    return InvalidArgumentError("sequence parallel: y must be [B, " + std::to_string(L) +
                                ", H/P, D], got " + attention::ShapeOf(y));
  }
  const int64_t B = y.size(0), hp = y.size(2), D = y.size(3);
  std::vector<at::Tensor> send, recv;
  for (int64_t peer = 0; peer < P; ++peer) {
    send.push_back(y.narrow(1, shards[peer].begin, shards[peer].size).contiguous());
    recv.push_back(at::empty({B, shards[me].size, hp, D}, y.options()));
  }
  RAINSERVE_RETURN_IF_ERROR(comm.AllToAll(send, recv));
  return at::cat(recv, 2);  // [B, n_me, H, D], heads in rank order
}

StatusOr<at::Tensor> AllGather(Communicator& comm, const at::Tensor& x, int64_t dim,
                               const std::vector<int64_t>& sizes) {
  const int64_t P = comm.size();
  if (static_cast<int64_t>(sizes.size()) != P || dim < 0 || dim >= x.dim() ||
      x.size(dim) != sizes[comm.rank()]) {
    return InvalidArgumentError("all-gather: " + attention::ShapeOf(x) + " along dim " +
                                std::to_string(dim) + " does not match this rank's size");
  }
  const at::Tensor local = x.contiguous();
  std::vector<at::Tensor> send(P, local), recv;
  for (int64_t peer = 0; peer < P; ++peer) {
    std::vector<int64_t> shape = x.sizes().vec();
    shape[dim] = sizes[peer];
    recv.push_back(at::empty(shape, x.options()));
  }
  RAINSERVE_RETURN_IF_ERROR(comm.AllToAll(send, recv));
  return at::cat(recv, dim);
}

#if RAINSERVE_WITH_CUDA && RAINSERVE_WITH_NCCL
namespace {

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(std::shared_ptr<const NcclGroup> group, int64_t rank)
      : group_(std::move(group)), rank_(rank) {}
  int64_t rank() const override { return rank_; }
  int64_t size() const override { return group_->size(); }
  Status AllToAll(const std::vector<at::Tensor>& send,
                  const std::vector<at::Tensor>& recv) override {
    if (send.empty() || !send[0].is_cuda()) {
      return InvalidArgumentError("NCCL all-to-all: tensors must be on this rank's GPU");
    }
    const at::ScalarType t = send[0].scalar_type();
    const NcclDtype dtype = t == at::kBFloat16 ? NcclDtype::kBFloat16
                            : t == at::kHalf   ? NcclDtype::kFloat16
                                               : NcclDtype::kFloat32;
    if (t != at::kFloat && t != at::kBFloat16 && t != at::kHalf) {
      return InvalidArgumentError("NCCL all-to-all: fp32, bf16 or fp16 tensors only");
    }
    std::vector<const void*> send_ptrs;
    std::vector<void*> recv_ptrs;
    std::vector<int64_t> send_counts, recv_counts;
    for (const at::Tensor& s : send) {
      send_ptrs.push_back(s.data_ptr());
      send_counts.push_back(s.numel());
    }
    for (const at::Tensor& r : recv) {
      recv_ptrs.push_back(r.data_ptr());
      recv_counts.push_back(r.numel());
    }
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(send[0].device().index()).stream();
    return group_->AllToAll(rank_, send_ptrs, send_counts, recv_ptrs, recv_counts, dtype, stream);
  }
  void Abort() override { group_->Abort(); }

 private:
  std::shared_ptr<const NcclGroup> group_;
  int64_t rank_;
};

}  // namespace

std::unique_ptr<Communicator> MakeNcclCommunicator(std::shared_ptr<const NcclGroup> group,
                                                   int64_t rank) {
  return std::make_unique<NcclCommunicator>(std::move(group), rank);
}
#endif

}  // namespace rainserve
