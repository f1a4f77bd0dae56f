// ForwardAttention: everything a model does around self-attention in one
// transformer forward, behind four calls.
//
//   auto attn = ForwardAttention::Create(engine, settings, grid, step, device);
//   x = attn->Permute(x);              // once, after the patch embedding
//   rope = attn->Permute(rope, 0);     // the RoPE tables, identically
//   per layer: o = attn->SelfAttention(q, k, v);   // [B, N, H, D]
//   h = attn->Unpermute(h);            // once, before the output projection
//   ForwardStats s = attn->Stats();
//
// It owns the decisions: dense or sparse (mode, warm-up steps, sparsity 0,
// sequences of fewer than min_sparse_blocks blocks), which dense kernel runs
// on the device (ChooseDenseKernel), the plan and the permutation, mask
// refresh (per layer, or once per forward), the quality probe (which sparse
// forwards and layers are compared with dense attention, attention/probe.h),
// and the statistics. Settings were
// validated at the edge (ValidateSettings); the sink is clamped here only to
// the grid (a one-frame forward has no sink).
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "attention/config.h"
#include "attention/engine.h"
#include "attention/probe.h"
#include "attention/settings.h"
#include "attention/torch_adapter.h"
#include "common/status.h"

namespace rainserve::attention {

// Which kernel a dense self-attention call runs.
enum class DenseKernel {
  kAuto,   // the backend's fastest, by measurement (ChooseDenseKernel)
  kOurs,   // our block kernel with every block kept, in the permuted order
  kTorch,  // LibTorch's dense attention (SDPA), in the original token order
};

// The measured choice for a backend (AttentionBackend::Name()) and a sequence
// of `num_blocks` blocks: kOurs on the CPU and on Hopper ("cuda-sm90") from
// kMinBlocksOursBeatsSdpa blocks on, kTorch otherwise. forward.cc cites the
// measurements.
DenseKernel ChooseDenseKernel(const std::string& backend_name, int64_t num_blocks);
inline constexpr int64_t kMinBlocksOursBeatsSdpa = 256;

// The token layout of one forward: the latent grid after patchify, and the
// text tokens of a joint-attention model (placed after the video tokens,
// always attended densely; 0 for Wan, whose text enters by cross-attention).
struct LatentGrid {
  int64_t frames = 1, height = 1, width = 1;
  int64_t text_tokens = 0;
};

struct ForwardOptions {
  int64_t min_sparse_blocks = 4;  // sequences with fewer blocks run dense
  DenseKernel dense_kernel = DenseKernel::kAuto;
  // Benchmarks set a device synchronisation so that the mask, attention and
  // permutation times are device times (at some cost in speed).
  std::function<void()> synchronize;
  // The quality probe (attention/probe.h): the request seed its draws start
  // from, and the self-attention layers of one forward (the probe samples
  // among them; 0 = unknown: the first kProbeLayersPerStep calls).
  uint64_t probe_seed = 0;
  int64_t layers = 0;
};

struct ForwardStats {
  bool sparse = false;             // this forward ran block-sparse
  double realized_sparsity = 0.0;  // skipped block pairs / all, over its self-attention calls
  double mask_seconds = 0.0;
  double attention_seconds = 0.0;  // self-attention kernels, mask excluded
  double permute_seconds = 0.0;
  int64_t tokens = 0;
  // The quality probe's records, one per probed layer (empty when the forward
  // was not probed; dense forwards never are).
  std::vector<ProbeRecord> probes;
};

// A request's realized sparsity: the mean over its forwards that ran sparse
// (dense warm-up steps and short sequences are not averaged in).
class SparsityTally {
 public:
  void Add(const ForwardStats& stats) {
    if (!stats.sparse) return;
    sum_ += stats.realized_sparsity;
    ++count_;
  }
  double Mean() const { return count_ > 0 ? sum_ / static_cast<double>(count_) : 0.0; }

 private:
  double sum_ = 0.0;
  int64_t count_ = 0;
};

class ForwardAttention {
 public:
  // Called by a model at the start of its forward, on the request's worker
  // thread. `step` is the 0-based denoising step. Fails only for a grid the
  // plan cannot tile (INVALID_ARGUMENT).
  static StatusOr<std::unique_ptr<ForwardAttention>> Create(AttentionEngine& engine,
                                                            const SparseSettings& settings,
                                                            const LatentGrid& grid, int64_t step,
                                                            const at::Device& device,
                                                            const ForwardOptions& options = {});

  bool sparse() const { return sparse_; }

  // x: [B, N, ...] (token_dim 1) or a per-token table [N, ...] (token_dim 0),
  // N = the grid's tokens in raster order. Identity when the forward runs in
  // the original order (dense through LibTorch).
  StatusOr<at::Tensor> Permute(const at::Tensor& x, int64_t token_dim = 1);
  StatusOr<at::Tensor> Unpermute(const at::Tensor& x, int64_t token_dim = 1);

  // q, k, v: [B, N, H, D] in this forward's token order -> [B, N, H, D].
  StatusOr<at::Tensor> SelfAttention(const at::Tensor& q, const at::Tensor& k,
                                     const at::Tensor& v);

  // The statistics so far (reads the kept-pair count from the device once).
  ForwardStats Stats();

 private:
  ForwardAttention(AttentionEngine& engine, AttentionPlan plan, bool sparse,
                   const AttentionConfig& config, MaskRefresh refresh, DenseKernel dense_kernel,
                   const ForwardOptions& options, int64_t step,
                   std::vector<int64_t> probe_layers);
  // Probes this call when its layer is one of probe_layers_.
  Status MaybeProbe(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const at::Tensor& out, const TorchBlockMask& mask);
  StatusOr<at::Tensor> Reorder(const at::Tensor& x, int64_t token_dim, bool inverse);
  StatusOr<TorchBlockMask> MaskFor(const at::Tensor& q, const at::Tensor& k);
  void Sync() const;

  AttentionEngine& engine_;
  AttentionPlan plan_;
  bool sparse_;
  AttentionConfig config_;
  MaskRefresh refresh_;
  ForwardOptions options_;
  DenseKernel dense_kernel_;  // resolved (never kAuto)
  bool permuted_;             // false: dense through LibTorch in the original order
  std::optional<bool> dense_supported_;  // our backend takes this forward's dense calls
  TorchBlockMask shared_mask_;  // per-step refresh: the first layer's; dense: the full mask
  bool have_shared_mask_ = false;
  at::Tensor kept_sum_;         // kept block pairs, summed on the mask's device
  int64_t pairs_total_ = 0;
  int64_t step_;
  std::vector<int64_t> probe_layers_;  // empty: this forward is not probed
  int64_t layer_ = 0;                 // self-attention calls so far
  struct PendingProbe {
    int64_t layer, rows;
    at::Tensor sums;  // ProbeAttention's, read in Stats()
  };
  std::vector<PendingProbe> probes_;
  ForwardStats stats_;
};

}  // namespace rainserve::attention
