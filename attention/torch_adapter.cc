#include "attention/torch_adapter.h"

#include <cmath>
#include <list>
#include <mutex>
#include <sstream>
#include <tuple>

#include <torch/version.h>

#if RAINSERVE_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

#include "common/clock.h"

namespace rainserve::attention {
namespace {

using Clock = SteadyClock;

StatusOr<DType> ToDType(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    default:
      return InvalidArgumentError(std::string(name) + " must be float32, bfloat16 or float16, got " +
                                  std::string(c10::toString(t.scalar_type())));
  }
}

TensorView ViewOf(const at::Tensor& t, DType dtype) {
  TensorView v;
  v.data = t.data_ptr();
  v.dtype = dtype;
  v.batch = t.size(0);
  v.tokens = t.size(1);
  v.heads = t.size(2);
  v.head_dim = t.size(3);
  v.stride_batch = t.stride(0);
  v.stride_token = t.stride(1);
  v.stride_head = t.stride(2);
  return v;
}

// Checks one of q/k/v against the expected [B, N, H, D] and q's dtype/device.
Status CheckTensor(const at::Tensor& t, const char* name, const at::Tensor& q, int64_t tokens) {
  if (!t.defined()) return InvalidArgumentError(std::string(name) + " is undefined");
  if (t.dim() != 4) {
    return InvalidArgumentError(std::string(name) + " must be 4-d [B, N, H, D], got " + ShapeOf(t));
  }
  if (t.size(1) != tokens) {
    return InvalidArgumentError(std::string(name) + " must have N = " + std::to_string(tokens) +
                                " tokens (the plan's layout), got " + ShapeOf(t));
  }
  if (t.size(0) < 1 || t.size(2) < 1 || t.size(3) < 1) {
    return InvalidArgumentError(std::string(name) + " has an empty dimension: " + ShapeOf(t));
  }
  if (&t != &q) {
    if (t.sizes() != q.sizes()) {
      return InvalidArgumentError(std::string(name) + " must have the shape of q " + ShapeOf(q) +
                                  ", got " + ShapeOf(t));
    }
    if (t.scalar_type() != q.scalar_type()) {
      return InvalidArgumentError(std::string(name) + " must have q's dtype " +
                                  std::string(c10::toString(q.scalar_type())) + ", got " +
                                  std::string(c10::toString(t.scalar_type())));
    }
    if (t.device() != q.device()) {
      return InvalidArgumentError(std::string(name) + " must be on q's device " + q.device().str() +
                                  ", got " + t.device().str());
    }
  }
  return ToDType(t, name).status();
}

StatusOr<AttentionBackend*> BackendFor(AttentionEngine& engine, const at::Tensor& q) {
  if (q.is_cpu()) return static_cast<AttentionBackend*>(&engine.cpu());
  if (q.is_cuda()) {
    if (engine.cuda() == nullptr) {
      return UnimplementedError("q is a CUDA tensor but this build has no CUDA attention backend");
    }
    return engine.cuda();
  }
  return UnimplementedError("no attention backend for device " + q.device().str());
}

at::Tensor DenseD(const at::Tensor& t) {
  return t.stride(3) == 1 ? t : t.contiguous();
}

// The stream kernels for `t` are enqueued on (the current CUDA stream).
void* StreamFor(const at::Tensor& t) {
#if RAINSERVE_WITH_CUDA
  if (t.is_cuda()) return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
#endif
  (void)t;
  return nullptr;
}

// The plan's tables where the backend reads them: views of the host vectors
// on the CPU, cached device copies elsewhere (a plan is reused by every layer).
struct PlanTables {
  at::Tensor starts;   // [nb + 1] int32
  at::Tensor forced;   // [nb] uint8
  at::Tensor gather;   // [N] int64
  at::Tensor scatter;  // [N] int64
  int64_t trailing_forced = 0;
};

PlanTables TablesFor(const AttentionPlan& plan, const at::Device& device) {
  auto& perm = plan.permutation;
  auto& blocks = plan.blocks;
  auto view = [](const void* data, int64_t n, at::ScalarType type) {
    return at::from_blob(const_cast<void*>(data), {n}, at::TensorOptions().dtype(type));
  };
  PlanTables host{view(blocks.starts.data(), blocks.num_blocks() + 1, at::kInt),
                  view(blocks.forced.data(), blocks.num_blocks(), at::kByte),
                  view(perm.gather.data(), perm.size(), at::kLong),
                  view(perm.scatter.data(), perm.size(), at::kLong),
                  blocks.num_trailing_forced()};
  if (device.is_cpu()) return host;

  static std::mutex mutex;
  static std::list<std::tuple<uint64_t, at::Device, PlanTables>> cache;  // most recent first
  std::lock_guard<std::mutex> lock(mutex);
  for (auto it = cache.begin(); it != cache.end(); ++it) {
    if (std::get<0>(*it) == plan.id && std::get<1>(*it) == device) {
      cache.splice(cache.begin(), cache, it);
      return std::get<2>(cache.front());
    }
  }
  PlanTables dev{host.starts.to(device), host.forced.to(device), host.gather.to(device),
                 host.scatter.to(device), host.trailing_forced};
  cache.emplace_front(plan.id, device, dev);
  if (cache.size() > 16) cache.pop_back();
  return dev;
}

BlockTableView BlockView(const PlanTables& t) {
  return BlockTableView{t.forced.numel(), t.starts.data_ptr<int32_t>(), t.forced.data_ptr<uint8_t>(),
                        t.trailing_forced};
}

StatusOr<at::Tensor> Reorder(AttentionEngine& engine, const at::Tensor& x,
                             const AttentionPlan& plan, int64_t token_dim, bool inverse) {
  if (!x.defined()) return InvalidArgumentError("x is undefined");
  if (token_dim < 0 || token_dim >= x.dim()) {
    return InvalidArgumentError("token_dim " + std::to_string(token_dim) + " is out of range for " +
                                ShapeOf(x));
  }
  if (x.size(token_dim) != plan.tokens()) {
    return InvalidArgumentError("x must have " + std::to_string(plan.tokens()) +
                                " tokens in dim " + std::to_string(token_dim) + ", got " +
                                ShapeOf(x));
  }
  RAINSERVE_ASSIGN_OR_RETURN(AttentionBackend * backend, BackendFor(engine, x));
  const PlanTables tables = TablesFor(plan, x.device());
  const at::Tensor src = x.contiguous();
  at::Tensor dst = at::empty_like(src);
  int64_t outer = 1, row = src.element_size();
  for (int64_t i = 0; i < token_dim; ++i) outer *= src.size(i);
  for (int64_t i = token_dim + 1; i < src.dim(); ++i) row *= src.size(i);
  const at::Tensor& index = inverse ? tables.scatter : tables.gather;
  RAINSERVE_RETURN_IF_ERROR(backend->GatherRows(src.data_ptr(), dst.data_ptr(),
                                                index.data_ptr<int64_t>(), outer, plan.tokens(),
                                                row, StreamFor(x)));
  return dst;
}

}  // namespace

StatusOr<TorchBlockMask> PredictBlockMask(AttentionEngine& engine, const at::Tensor& q,
                                          const at::Tensor& k, const AttentionPlan& plan,
                                          const AttentionConfig& config) {
  RAINSERVE_RETURN_IF_ERROR(ValidateConfig(config));
  RAINSERVE_RETURN_IF_ERROR(CheckTensor(q, "q", q, plan.tokens()));
  RAINSERVE_RETURN_IF_ERROR(CheckTensor(k, "k", q, plan.tokens()));
  RAINSERVE_ASSIGN_OR_RETURN(AttentionBackend * backend, BackendFor(engine, q));
  const int64_t B = q.size(0), H = q.size(2), nb = plan.num_blocks();
  const auto int_opts = at::TensorOptions().dtype(at::kInt).device(q.device());

  TorchBlockMask mask;
  if (RunsDense(config, nb)) {
    mask.dense = true;
    mask.counts = at::full({B, H, nb}, nb, int_opts);
    mask.indices = at::arange(nb, int_opts).expand({B, H, nb, nb}).contiguous();
    mask.kept = B * H * nb * nb;
    mask.kept_tensor = at::full({1}, mask.kept, int_opts.dtype(at::kLong));
    return mask;
  }
  const auto start = Clock::now();
  const at::Tensor qc = DenseD(q), kc = DenseD(k);
  RAINSERVE_ASSIGN_OR_RETURN(DType dtype, ToDType(qc, "q"));
  mask.counts = at::empty({B, H, nb}, int_opts);
  mask.indices = at::empty({B, H, nb, nb}, int_opts);
  at::Tensor kept = at::zeros({1}, at::TensorOptions().dtype(at::kLong).device(q.device()));
  const PlanTables tables = TablesFor(plan, q.device());
  MaskArgs args;
  args.q = ViewOf(qc, dtype);
  args.k = ViewOf(kc, dtype);
  args.blocks = BlockView(tables);
  args.stream = StreamFor(q);
  args.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(q.size(3))));
  args.sparsity = config.sparsity;
  args.kept_mass = config.kept_mass;
  args.min_kept_blocks = config.min_kept_blocks;
  args.max_kept_blocks = config.max_kept_blocks;
  args.counts = mask.counts.data_ptr<int32_t>();
  args.indices = mask.indices.data_ptr<int32_t>();
  args.kept = kept.data_ptr<int64_t>();
  if (config.kept_mass > 0.0 && !q.is_cpu()) {
    // Rows keep uneven counts: the GPU starts each head's longest first.
    mask.order = at::empty({B * H * nb}, int_opts);
    args.order = mask.order.data_ptr<int32_t>();
  }
  RAINSERVE_RETURN_IF_ERROR(backend->PredictMask(args));
  mask.kept_tensor = kept;
  // On the CPU the count is already there; a GPU count is read only on demand.
  if (q.is_cpu()) mask.kept = kept.item<int64_t>();
  mask.mask_seconds = SecondsSince(start);
  return mask;
}

StatusOr<AttentionResult> BlockSparseAttention(AttentionEngine& engine, const at::Tensor& q,
                                               const at::Tensor& k, const at::Tensor& v,
                                               const AttentionPlan& plan,
                                               const TorchBlockMask& mask, bool return_lse) {
  RAINSERVE_RETURN_IF_ERROR(CheckTensor(q, "q", q, plan.tokens()));
  RAINSERVE_RETURN_IF_ERROR(CheckTensor(k, "k", q, plan.tokens()));
  RAINSERVE_RETURN_IF_ERROR(CheckTensor(v, "v", q, plan.tokens()));
  const int64_t B = q.size(0), N = q.size(1), H = q.size(2), nb = plan.num_blocks();
  if (!mask.counts.defined() || mask.counts.sizes() != at::IntArrayRef({B, H, nb}) ||
      !mask.indices.defined() || mask.indices.sizes() != at::IntArrayRef({B, H, nb, nb}) ||
      mask.counts.scalar_type() != at::kInt || mask.indices.scalar_type() != at::kInt ||
      mask.counts.device() != q.device() || mask.indices.device() != q.device()) {
    return InvalidArgumentError("mask must hold int32 counts [" + std::to_string(B) + ", " +
                                std::to_string(H) + ", " + std::to_string(nb) +
                                "] and indices [.., " + std::to_string(nb) + "] on q's device");
  }
  if (mask.order.defined() &&
      (mask.order.numel() != B * H * nb || mask.order.scalar_type() != at::kInt ||
       mask.order.device() != q.device())) {
    return InvalidArgumentError("mask order must hold " + std::to_string(B * H * nb) +
                                " int32 rows on q's device");
  }
  RAINSERVE_ASSIGN_OR_RETURN(AttentionBackend * backend, BackendFor(engine, q));
  const at::Tensor qc = DenseD(q), kc = DenseD(k), vc = DenseD(v);
  RAINSERVE_ASSIGN_OR_RETURN(DType dtype, ToDType(qc, "q"));

  AttentionResult result;
  result.out = at::empty({B, N, H, q.size(3)}, qc.options());
  if (return_lse) result.lse = at::empty({B, H, N}, qc.options().dtype(at::kFloat));
  ForwardArgs args;
  args.q = ViewOf(qc, dtype);
  args.k = ViewOf(kc, dtype);
  args.v = ViewOf(vc, dtype);
  args.out = ViewOf(result.out, dtype);
  args.lse = return_lse ? result.lse.data_ptr<float>() : nullptr;
  const PlanTables tables = TablesFor(plan, q.device());
  args.blocks = BlockView(tables);
  args.stream = StreamFor(q);
  const at::Tensor counts = mask.counts.contiguous(), indices = mask.indices.contiguous();
  args.mask = BlockMaskView{B, H, nb, nb, counts.data_ptr<int32_t>(), indices.data_ptr<int32_t>()};
  const at::Tensor order = mask.order.defined() ? mask.order.contiguous() : at::Tensor();
  if (order.defined()) args.mask.order = order.data_ptr<int32_t>();
  args.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(q.size(3))));
  RAINSERVE_RETURN_IF_ERROR(backend->Supports(args, plan.blocks.block_size));

  const auto start = Clock::now();
  RAINSERVE_RETURN_IF_ERROR(backend->Forward(args));
  AttentionStats& st = result.stats;
  st.attention_seconds = SecondsSince(start);
  st.sparse = !mask.dense;
  st.kept_blocks = mask.kept;
  st.total_blocks = B * H * nb * nb;
  st.realized_sparsity = st.kept_blocks < 0
                             ? std::nan("")
                             : 1.0 - double(st.kept_blocks) / double(st.total_blocks);
  st.mask_seconds = mask.mask_seconds;
  st.backend = backend->Name();
  return result;
}

Status SupportsBlockAttention(AttentionEngine& engine, const at::Tensor& q,
                              const AttentionPlan& plan) {
  RAINSERVE_RETURN_IF_ERROR(CheckTensor(q, "q", q, plan.tokens()));
  RAINSERVE_ASSIGN_OR_RETURN(AttentionBackend * backend, BackendFor(engine, q));
  const at::Tensor qc = DenseD(q);
  RAINSERVE_ASSIGN_OR_RETURN(DType dtype, ToDType(qc, "q"));
  ForwardArgs args;  // q's layout stands for k, v and out, which share it
  args.q = args.k = args.v = args.out = ViewOf(qc, dtype);
  const PlanTables tables = TablesFor(plan, q.device());
  args.blocks = BlockView(tables);
  return backend->Supports(args, plan.blocks.block_size);
}

at::Tensor DenseTorchAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const at::Tensor qt = q.transpose(1, 2), kt = k.transpose(1, 2), vt = v.transpose(1, 2);
#if TORCH_VERSION_MAJOR >= 2
  return at::scaled_dot_product_attention(qt, kt, vt).transpose(1, 2);
#else
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  const at::Tensor scores =
      at::matmul(qt.to(at::kFloat), kt.to(at::kFloat).transpose(-1, -2)) * scale;
  return at::matmul(at::softmax(scores, -1), vt.to(at::kFloat))
      .to(q.scalar_type())
      .transpose(1, 2);
#endif
}

int64_t KeptBlocks(const TorchBlockMask& mask) {
  if (mask.kept >= 0 || !mask.kept_tensor.defined()) return mask.kept;
  return mask.kept_tensor.item<int64_t>();
}

StatusOr<AttentionResult> RainFusionAttention(AttentionEngine& engine, const at::Tensor& q,
                                              const at::Tensor& k, const at::Tensor& v,
                                              const AttentionPlan& plan,
                                              const AttentionConfig& config) {
  RAINSERVE_ASSIGN_OR_RETURN(TorchBlockMask mask, PredictBlockMask(engine, q, k, plan, config));
  return BlockSparseAttention(engine, q, k, v, plan, mask, config.return_lse);
}

StatusOr<at::Tensor> PermuteTokens(AttentionEngine& engine, const at::Tensor& x,
                                   const AttentionPlan& plan, int64_t token_dim) {
  return Reorder(engine, x, plan, token_dim, /*inverse=*/false);
}

StatusOr<at::Tensor> UnpermuteTokens(AttentionEngine& engine, const at::Tensor& x,
                                     const AttentionPlan& plan, int64_t token_dim) {
  return Reorder(engine, x, plan, token_dim, /*inverse=*/true);
}

std::string ShapeOf(const at::Tensor& t) {
  std::ostringstream s;
  s << "[";
  for (int64_t i = 0; i < t.dim(); ++i) s << (i ? ", " : "") << t.size(i);
  s << "]";
  return s.str();
}

}  // namespace rainserve::attention
