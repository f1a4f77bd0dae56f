#include "attention/forward.h"

#include <algorithm>
#include <utility>

#include "common/clock.h"

namespace rainserve::attention {
namespace {

using Clock = SteadyClock;

std::string BackendName(AttentionEngine& engine, const at::Device& device) {
  if (device.is_cpu()) return engine.cpu().Name();
  if (device.is_cuda() && engine.cuda() != nullptr) return engine.cuda()->Name();
  return "";
}

// The plan's layout: the grid, the sink clamped to it (a one-frame forward
// has nothing to sink), the request's window or the layout's default.
StatusOr<AttentionPlan> PlanFor(const SparseSettings& settings, const LatentGrid& grid) {
  TokenLayout layout;
  layout.frames = grid.frames;
  layout.height = grid.height;
  layout.width = grid.width;
  layout.sink_frames =
      grid.frames == 1 ? 0 : std::clamp<int64_t>(settings.sink_frames, 0, grid.frames);
  layout.text_tokens = grid.text_tokens;
  layout.text_placement = grid.text_tokens > 0 ? TextPlacement::kAfter : TextPlacement::kNone;
  WindowShape window{settings.window[0], settings.window[1], settings.window[2]};
  if (window.t <= 0 || window.h <= 0 || window.w <= 0) window = DefaultWindow(layout);
  return AttentionPlan::Build(layout, window);
}

}  // namespace

// Dense self-attention, measured (B = 1, random inputs, same run):
// - CPU: our kernel 2.5-3.4x LibTorch's matmul-softmax-matmul at C1 / C2
//   (2,304 / 12,480 tokens; bench/results/attention_cpu.json).
// - Hopper: our kernel 1.13x / 1.11x LibTorch SDPA at W1 / W2 (257 / 592
//   blocks) but 0.93x at W3 (32 blocks) on an H200
//   (bench/results/attention_gpu.json; H100: attention_gpu_h100.json).
// - mma.sync (other GPUs): no measurement puts it ahead of SDPA.
DenseKernel ChooseDenseKernel(const std::string& backend_name, int64_t num_blocks) {
  if (backend_name.rfind("cpu", 0) == 0) return DenseKernel::kOurs;
  if (backend_name == "cuda-sm90" && num_blocks >= kMinBlocksOursBeatsSdpa) {
    return DenseKernel::kOurs;
  }
  return DenseKernel::kTorch;
}

StatusOr<std::unique_ptr<ForwardAttention>> ForwardAttention::Create(
    AttentionEngine& engine, const SparseSettings& settings, const LatentGrid& grid, int64_t step,
    const at::Device& device, const ForwardOptions& options) {
  RAINSERVE_ASSIGN_OR_RETURN(AttentionPlan plan, PlanFor(settings, grid));
  const bool sparse = SparseMode(settings) && step >= settings.dense_warmup_steps &&
                      plan.num_blocks() >= options.min_sparse_blocks;
  AttentionConfig config;
  config.min_sparse_blocks = options.min_sparse_blocks;
  if (sparse && settings.mode == AttentionMode::kRainFusionMass) {
    config.kept_mass = settings.kept_mass;
    config.min_kept_blocks = settings.min_kept_blocks;
    config.max_kept_blocks = settings.max_kept_blocks;
  } else if (sparse) {
    config.sparsity = settings.sparsity;
  }
  DenseKernel dense = options.dense_kernel;
  if (dense == DenseKernel::kAuto) {
    dense = ChooseDenseKernel(BackendName(engine, device), plan.num_blocks());
  }
  std::vector<int64_t> probe_layers;
  if (sparse && ProbeStep(options.probe_seed, step, settings.quality_probe_rate)) {
    probe_layers = ProbeLayers(options.probe_seed, step,
                               options.layers > 0 ? options.layers : kProbeLayersPerStep);
  }
  return std::unique_ptr<ForwardAttention>(
      new ForwardAttention(engine, std::move(plan), sparse, config, settings.mask_refresh, dense,
                           options, step, std::move(probe_layers)));
}

ForwardAttention::ForwardAttention(AttentionEngine& engine, AttentionPlan plan, bool sparse,
                                   const AttentionConfig& config, MaskRefresh refresh,
                                   DenseKernel dense_kernel,
                                   const ForwardOptions& options, int64_t step,
                                   std::vector<int64_t> probe_layers)
    : engine_(engine),
      plan_(std::move(plan)),
      sparse_(sparse),
      config_(config),
      refresh_(refresh),
      options_(options),
      dense_kernel_(dense_kernel),
      permuted_(sparse || dense_kernel == DenseKernel::kOurs),
      step_(step),
      probe_layers_(std::move(probe_layers)) {
  stats_.tokens = plan_.tokens();
}

void ForwardAttention::Sync() const {
  if (options_.synchronize) options_.synchronize();
}

StatusOr<at::Tensor> ForwardAttention::Reorder(const at::Tensor& x, int64_t token_dim,
                                               bool inverse) {
  if (!permuted_) return x;
  Sync();
  const auto start = Clock::now();
  StatusOr<at::Tensor> out = inverse ? UnpermuteTokens(engine_, x, plan_, token_dim)
                                     : PermuteTokens(engine_, x, plan_, token_dim);
  Sync();
  stats_.permute_seconds += SecondsSince(start);
  return out;
}

StatusOr<at::Tensor> ForwardAttention::Permute(const at::Tensor& x, int64_t token_dim) {
  return Reorder(x, token_dim, /*inverse=*/false);
}

StatusOr<at::Tensor> ForwardAttention::Unpermute(const at::Tensor& x, int64_t token_dim) {
  return Reorder(x, token_dim, /*inverse=*/true);
}

// The mask of this call: a new prediction per layer, or the forward's shared
// one (the first layer's with per-step refresh; the full mask when dense).
StatusOr<TorchBlockMask> ForwardAttention::MaskFor(const at::Tensor& q, const at::Tensor& k) {
  const bool shared = !sparse_ || refresh_ == MaskRefresh::kPerStep;
  if (shared && have_shared_mask_) return shared_mask_;
  Sync();
  const auto start = Clock::now();
  RAINSERVE_ASSIGN_OR_RETURN(TorchBlockMask mask, PredictBlockMask(engine_, q, k, plan_, config_));
  Sync();
  if (sparse_) stats_.mask_seconds += SecondsSince(start);
  if (shared) {
    shared_mask_ = mask;
    have_shared_mask_ = true;
  }
  return mask;
}

StatusOr<at::Tensor> ForwardAttention::SelfAttention(const at::Tensor& q, const at::Tensor& k,
                                                     const at::Tensor& v) {
  // Whether our backend takes this forward's q (dtype, head dim, strides) is
  // the same for every layer: asked once.
  if (!sparse_ && dense_kernel_ == DenseKernel::kOurs && !dense_supported_.has_value()) {
    dense_supported_ = SupportsBlockAttention(engine_, q, plan_).ok();
  }
  const bool ours = sparse_ || (dense_kernel_ == DenseKernel::kOurs && *dense_supported_);
  at::Tensor out;
  if (ours) {
    RAINSERVE_ASSIGN_OR_RETURN(TorchBlockMask mask, MaskFor(q, k));
    Sync();
    const auto start = Clock::now();
    RAINSERVE_ASSIGN_OR_RETURN(AttentionResult r,
                               BlockSparseAttention(engine_, q, k, v, plan_, mask, false));
    Sync();
    stats_.attention_seconds += SecondsSince(start);
    kept_sum_ = kept_sum_.defined() ? kept_sum_ + mask.kept_tensor : mask.kept_tensor;
    pairs_total_ += r.stats.total_blocks;
    out = std::move(r.out);
    RAINSERVE_RETURN_IF_ERROR(MaybeProbe(q, k, v, out, mask));
  } else {
    Sync();
    const auto start = Clock::now();
    out = DenseTorchAttention(q, k, v);
    Sync();
    stats_.attention_seconds += SecondsSince(start);
  }
  ++layer_;
  return out;
}

// Outside the attention timing: the probe's cost shows in the step time only.
Status ForwardAttention::MaybeProbe(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& out, const TorchBlockMask& mask) {
  if (!sparse_ ||
      std::find(probe_layers_.begin(), probe_layers_.end(), layer_) == probe_layers_.end()) {
    return OkStatus();
  }
  const ProbeSample sample =
      SampleProbeRows(plan_.blocks, q.size(0), q.size(2), options_.probe_seed, step_, layer_);
  RAINSERVE_ASSIGN_OR_RETURN(at::Tensor sums,
                             ProbeAttention(q, k, v, out, plan_, mask, sample));
  probes_.push_back({layer_, sample.rows.numel(), std::move(sums)});
  return OkStatus();
}

ForwardStats ForwardAttention::Stats() {
  ForwardStats st = stats_;
  st.sparse = sparse_ && pairs_total_ > 0;
  if (st.sparse) {
    st.realized_sparsity = 1.0 - double(kept_sum_.item<int64_t>()) / double(pairs_total_);
  }
  for (const PendingProbe& p : probes_) {
    st.probes.push_back(ProbeRecordFromSums(p.layer, p.rows, p.sums));
  }
  return st;
}

}  // namespace rainserve::attention
