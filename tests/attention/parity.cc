// The parity suite's cases, inputs, float64 expectations, comparisons and
// CPU variants (parity.h says what the suite is).
#include "tests/attention/parity.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <sstream>

#include "attention/bf16.h"
#include "attention/cpu/cpu_backend.h"
#include "attention/reference.h"
#include "attention/testing/inputs.h"

namespace rainserve::attention::parity {
namespace {

using testing::VideoLayout;

constexpr int kCpuThreads = 2;

// A structured-input case without a window of its own.
ParityCase Case(const TokenLayout& layout, int64_t block, int64_t batch, int64_t heads,
                int64_t head_dim, DType dtype, double sparsity) {
  return ParityCase{layout, std::nullopt, block, batch, heads, head_dim, dtype, sparsity,
                    Inputs::kStructured};
}

// The cases the CPU kernel was first checked on: fp32 head dims (odd ones
// too), block sizes 16..128, images, a single token, a sparse 72-dim row.
void AddCpuHeritageCases(std::vector<ParityCase>* cases) {
  auto add = [&](TokenLayout l, int64_t block, int64_t batch, int64_t heads, int64_t d,
                 DType dtype, double sparsity) {
    cases->push_back(Case(l, block, batch, heads, d, dtype, sparsity));
  };
  for (int64_t d : {64, 128, 40, 33}) add(VideoLayout(3, 8, 11), 128, 1, 2, d, DType::kFloat32, 0);
  for (double s : {0.5, 0.9}) {
    add(VideoLayout(5, 8, 12, 1, 20), 32, 2, 2, 64, DType::kFloat32, s);
    add(VideoLayout(5, 8, 12, 1), 64, 1, 2, 128, DType::kFloat32, s);
  }
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    add(VideoLayout(3, 8, 11, 1), 32, 1, 2, 64, dt, 0.0);
    add(VideoLayout(5, 8, 12, 1, 9), 32, 2, 2, 128, dt, 0.8);
    add(VideoLayout(2, 6, 10), 16, 1, 1, 72, dt, 0.5);
  }
  add(VideoLayout(1, 9, 23), 128, 1, 2, 64, DType::kFloat32, 0.0);  // T = 1, one partial block
  add(VideoLayout(1, 16, 20), 16, 1, 2, 64, DType::kFloat32, 0.7);
  add(VideoLayout(1, 1, 1), 16, 1, 1, 8, DType::kFloat32, 0.0);     // a single token
}

// The rows the CUDA kernels were first checked on, all at block 128: both
// head dims, dtypes, sparsities and sink settings at N = 128 and 1000, and
// N = 4096 + 7 text tokens (a 7-token text block, partial everything).
void AddGpuHeritageCases(std::vector<ParityCase>* cases) {
  auto add = [&](TokenLayout l, int64_t heads, int64_t d, DType dtype, double sparsity) {
    cases->push_back(Case(l, 128, 2, heads, d, dtype, sparsity));
  };
  for (int64_t d : {64, 128}) {
    for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
      for (double s : {0.0, 0.5, 0.9}) {
        for (int64_t sink : {0, 1}) {
          add(VideoLayout(2, 8, 8, sink), 2, d, dt, s);     // N = 128
          add(VideoLayout(10, 10, 10, sink), 2, d, dt, s);  // N = 1000
        }
      }
    }
  }
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    add(VideoLayout(4, 32, 32, 1, 7), 1, 128, dt, 0.5);
  }
  add(VideoLayout(4, 32, 32, 0, 7), 1, 64, DType::kBFloat16, 0.9);
  add(VideoLayout(4, 32, 32, 1, 7), 1, 128, DType::kBFloat16, 0.0);
}

// Windows other than the default (their edges not on block edges) and text
// placed before the video, in shapes every backend runs.
void AddWindowAndTextCases(std::vector<ParityCase>* cases) {
  ParityCase c;
  c.layout = VideoLayout(6, 10, 14);
  c.window = WindowShape{2, 4, 8};  // 64-token windows, 128-token blocks
  c.batch = 2;
  c.heads = 2;
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    c.dtype = dt;
    c.sparsity = 0.5;
    cases->push_back(c);
  }
  c.layout = VideoLayout(4, 12, 20, 1);
  c.window = WindowShape{1, 4, 4};
  c.block_size = 16;
  c.head_dim = 32;
  c.dtype = DType::kFloat32;
  c.sparsity = 0.6;
  cases->push_back(c);
  c.layout = VideoLayout(5, 16, 16, 1, 13, TextPlacement::kBefore);
  c.window = WindowShape{2, 16, 32};  // wider than the grid: clipped to 2 x 16 x 16
  c.block_size = 128;
  c.head_dim = 128;
  c.heads = 1;
  c.dtype = DType::kBFloat16;
  c.sparsity = 0.5;
  cases->push_back(c);
}

// Dense rows whose running max climbs across key tiles (ClimbingQkv).
void AddClimbingCases(std::vector<ParityCase>* cases) {
  ParityCase c;
  c.layout = VideoLayout(5, 16, 24, 1);
  c.heads = 2;  // one head climbing by 5 exp2 units a tile, one by 20
  c.head_dim = 128;
  c.inputs = Inputs::kClimbing;
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    c.dtype = dt;
    cases->push_back(c);
  }
}

// Rows whose running max moves across key tiles, given in permuted order:
// q, k ~ N(0, 0.1^2) and v ~ N(0, 1), then q[b, n, h, 0] = +-1 and
// k[b, n, h, 0] = slope_h * n, so that a query with q[0] = +1 gains 5 (even
// heads) or 20 (odd heads) exp2 units of score per 128 keys and one with -1
// loses as much (its first tile keeps the max). The Hopper kernel moves a
// row's max only when a tile beats it by more than 8 exp2 units: here it
// moves every other tile or every tile.
testing::Qkv ClimbingQkv(int64_t B, int64_t N, int64_t H, int64_t D, uint64_t seed) {
  testing::Qkv x = testing::RandomQkv(B, N, H, D, seed);
  for (float& e : x.q) e *= 0.1f;
  for (float& e : x.k) e *= 0.1f;
  std::mt19937_64 rng(seed);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t h = 0; h < H; ++h) {
        const double per_tile = h % 2 == 0 ? 5.0 : 20.0;  // exp2 units per 128 keys
        const double slope = per_tile / 128 / std::log2(std::exp(1.0)) * std::sqrt(double(D));
        const int64_t row = ((b * N + n) * H + h) * D;
        x.q[row] = rng() % 2 == 0 ? 1.0f : -1.0f;
        x.k[row] = static_cast<float>(slope * static_cast<double>(n));
      }
    }
  }
  return x;
}

class CpuRunner final : public Runner {
 public:
  explicit CpuRunner(const cpu::KernelSet& kernels) : backend_(kCpuThreads, &kernels) {}
  AttentionBackend& backend() override { return backend_; }
  Status Forward(const ForwardArgs& host) override { return backend_.Forward(host); }
  Status PredictMask(const MaskArgs& host) override { return backend_.PredictMask(host); }
  Status GatherRows(const void* src, void* dst, const int64_t* index, int64_t outer, int64_t rows,
                    int64_t row_bytes) override {
    return backend_.GatherRows(src, dst, index, outer, rows, row_bytes, nullptr);
  }

 private:
  CpuBackend backend_;
};

std::vector<Variant> BuildVariants() {
  std::vector<Variant> variants;
  for (const cpu::KernelSet* kernels : cpu::CompiledKernels()) {
    Variant v;
    v.name = std::string("cpu-") + kernels->isa;
    v.make = [kernels]() -> StatusOr<std::unique_ptr<Runner>> {
      if (!cpu::CpuRuns(*kernels)) {
        return UnavailableError(std::string("this CPU lacks the ") + kernels->isa +
                                " instructions");
      }
      return std::unique_ptr<Runner>(std::make_unique<CpuRunner>(*kernels));
    };
    // cpu_backend.cc: head dims 1..256, blocks up to 256; any dtype and stride.
    v.documented = [](const ParityCase& c) { return c.head_dim <= 256 && c.block_size <= 256; };
    variants.push_back(std::move(v));
  }
  for (Variant& v : CudaVariants()) variants.push_back(std::move(v));
  return variants;
}

}  // namespace

std::string CaseName(const ParityCase& c) {
  const TokenLayout& l = c.layout;
  std::ostringstream s;
  s << DTypeName(c.dtype) << "_D" << c.head_dim << "_b" << c.batch << "h" << c.heads << "_"
    << l.frames << "x" << l.height << "x" << l.width << "_sink" << l.sink_frames;
  if (l.text_tokens > 0) {
    s << "_text" << l.text_tokens
      << (l.text_placement == TextPlacement::kBefore ? "before" : "after");
  }
  if (c.window) s << "_win" << c.window->t << "x" << c.window->h << "x" << c.window->w;
  s << "_bs" << c.block_size << "_s" << static_cast<int>(std::lround(c.sparsity * 100));
  if (c.kept_mass > 0) s << "_mass" << std::lround(c.kept_mass * 1000);
  if (c.inputs == Inputs::kConstant) s << "_ties";
  if (c.inputs == Inputs::kClimbing) s << "_climbing";
  return s.str();
}

const std::vector<ParityCase>& ForwardCases() {
  static const std::vector<ParityCase> cases = [] {
    std::vector<ParityCase> all;
    AddCpuHeritageCases(&all);
    AddGpuHeritageCases(&all);
    AddWindowAndTextCases(&all);
    AddClimbingCases(&all);
    return all;
  }();
  return cases;
}

const std::vector<ParityCase>& MaskCases() {
  static const std::vector<ParityCase> cases = [] {
    std::vector<ParityCase> all;
    ParityCase c;
    c.layout = VideoLayout(9, 16, 24, 1);  // 27 blocks: one score tile per head, partly past nb
    c.batch = 2;
    c.heads = 3;
    c.head_dim = 128;
    c.dtype = DType::kBFloat16;
    for (double s : {0.5, 0.8, 0.9}) {
      c.sparsity = s;
      all.push_back(c);
    }
    c.inputs = Inputs::kConstant;  // ties everywhere: both backends pick the lower index
    c.head_dim = 64;
    for (double s : {0.5, 0.9}) {
      c.sparsity = s;
      all.push_back(c);
    }
    c.inputs = Inputs::kStructured;
    c.layout = VideoLayout(5, 16, 16, 1, 77);  // fp16, a text block
    c.heads = 2;
    c.dtype = DType::kFloat16;
    c.sparsity = 0.8;
    all.push_back(c);
    c.layout = VideoLayout(21, 30, 52, 1);  // W1: 257 blocks, 5 x 5 score tiles
    c.batch = 1;
    c.head_dim = 128;
    c.dtype = DType::kBFloat16;
    c.sparsity = 0.9;
    all.push_back(c);
    c.layout = VideoLayout(5, 8, 12, 1, 20);  // CPU block sizes
    c.window = WindowShape{2, 4, 4};
    c.block_size = 32;
    c.batch = 2;
    c.head_dim = 16;
    c.dtype = DType::kFloat32;
    c.sparsity = 0.75;
    all.push_back(c);
    // Mass-targeted rows keep uneven counts: W1's grid, a text block, ties.
    c = ParityCase{};
    c.layout = VideoLayout(21, 30, 52, 1);
    c.head_dim = 128;
    c.heads = 2;
    c.dtype = DType::kBFloat16;
    c.sparsity = 0.5;
    for (double m : {0.5, 0.9, 0.99}) {
      c.kept_mass = m;
      all.push_back(c);
    }
    c.layout = VideoLayout(5, 16, 16, 1, 77);
    c.batch = 2;
    c.dtype = DType::kFloat16;
    c.kept_mass = 0.8;
    all.push_back(c);
    c.inputs = Inputs::kConstant;  // every row one tie: the lowest indices, equal counts
    c.head_dim = 64;
    c.kept_mass = 0.5;
    all.push_back(c);
    return all;
  }();
  return cases;
}

HostTensor HostTensor::From(const std::vector<float>& x, DType dtype, int64_t b, int64_t n,
                            int64_t h, int64_t d) {
  HostTensor t{dtype, b, n, h, d, {}, {}};
  if (dtype == DType::kFloat32) {
    t.f32 = x;
  } else {
    t.half.resize(x.size());
    for (size_t i = 0; i < x.size(); ++i) t.half[i] = FloatToHalf(x[i], dtype);
  }
  return t;
}

double HostTensor::At(int64_t i) const {
  return dtype == DType::kFloat32 ? f32[i] : HalfToFloat(half[i], dtype);
}

TensorView HostTensor::view() const {
  const void* data = dtype == DType::kFloat32 ? static_cast<const void*>(f32.data())
                                              : static_cast<const void*>(half.data());
  return TensorView::Contiguous(const_cast<void*>(data), dtype, batch, tokens, heads, head_dim);
}

StatusOr<CaseData> BuildCase(const ParityCase& c) {
  CaseData data;
  data.c = c;
  const WindowShape window = c.window.value_or(DefaultWindow(c.layout));
  RAINSERVE_ASSIGN_OR_RETURN(data.plan, AttentionPlan::Build(c.layout, window, c.block_size));
  const int64_t B = c.batch, N = data.plan.tokens(), H = c.heads, D = c.head_dim;
  const uint64_t seed = 1234 + static_cast<uint64_t>(N * 7 + D * 3 + B + H);
  if (c.inputs == Inputs::kClimbing) {
    testing::Qkv x = ClimbingQkv(B, N, H, D, seed);  // already in permuted order
    data.q = HostTensor::From(x.q, c.dtype, B, N, H, D);
    data.k = HostTensor::From(x.k, c.dtype, B, N, H, D);
    data.v = HostTensor::From(x.v, c.dtype, B, N, H, D);
  } else {
    testing::Qkv x = testing::StructuredQkv(c.layout, B, H, D, seed);
    if (c.inputs == Inputs::kConstant) {
      std::fill(x.q.begin(), x.q.end(), 0.5f);
      std::fill(x.k.begin(), x.k.end(), -0.25f);
    }
    const TokenPermutation& perm = data.plan.permutation;
    data.q = HostTensor::From(testing::Permuted(perm, x.q, B, H, D), c.dtype, B, N, H, D);
    data.k = HostTensor::From(testing::Permuted(perm, x.k, B, H, D), c.dtype, B, N, H, D);
    data.v = HostTensor::From(testing::Permuted(perm, x.v, B, H, D), c.dtype, B, N, H, D);
  }
  data.scale = 1.0f / std::sqrt(static_cast<float>(D));

  const int64_t nb = data.plan.num_blocks();
  if (c.sparsity <= 0.0) {
    data.mask = DenseBlockMask(B, H, nb);
    return data;
  }
  data.mask.Resize(B, H, nb, nb);
  int64_t kept = 0;
  CpuBackend predictor(kCpuThreads);
  RAINSERVE_RETURN_IF_ERROR(predictor.PredictMask(HostMaskArgs(data, &data.mask, &kept)));
  return data;
}

Expected ComputeExpected(const CaseData& data) {
  Expected e;
  const TensorView q = data.q.view(), k = data.k.view(), v = data.v.view();
  const BlockTableView blocks = data.plan.blocks.view();
  ThreadPool pool(0);  // one thread per core: the reference dominates the suite's time
  ReferenceAttention(q, k, v, blocks, data.mask.view(), data.scale, &e.out, &e.lse, &pool);
  std::vector<float> naive, naive_lse;
  NaiveAttention(q, k, v, blocks, data.mask.view(), data.scale, data.c.dtype, &naive, &naive_lse,
                 &pool);
  for (size_t i = 0; i < e.out.size(); ++i) {
    e.naive_out_error = std::max(e.naive_out_error, std::abs(naive[i] - e.out[i]));
  }
  for (size_t i = 0; i < e.lse.size(); ++i) {
    e.naive_lse_error = std::max(e.naive_lse_error, std::abs(naive_lse[i] - e.lse[i]));
  }
  const bool fp32 = data.c.dtype == DType::kFloat32;
  e.out_bound = 2.0 * e.naive_out_error + (fp32 ? 2e-6 : 0.0);
  e.lse_bound = 2.0 * e.naive_lse_error + (fp32 ? 2e-6 : 1e-4);
  return e;
}

Measured Measure(const HostTensor& out, const std::vector<float>& lse, const Expected& expected) {
  Measured m;
  for (int64_t i = 0; i < out.numel(); ++i) {
    const double got = out.At(i);
    if (std::isnan(got)) {
      ++m.unwritten_out;
    } else {
      m.out_error = std::max(m.out_error, std::abs(got - expected.out[i]));
    }
  }
  for (size_t i = 0; i < lse.size(); ++i) {
    if (std::isnan(lse[i])) {
      ++m.unwritten_lse;
    } else {
      m.lse_error = std::max(m.lse_error, std::abs(lse[i] - expected.lse[i]));
    }
  }
  return m;
}

ForwardArgs HostForwardArgs(const CaseData& data, HostTensor* out, std::vector<float>* lse) {
  ForwardArgs args;
  args.q = data.q.view();
  args.k = data.k.view();
  args.v = data.v.view();
  args.out = out != nullptr ? out->view() : args.q;
  args.lse = lse != nullptr ? lse->data() : nullptr;
  args.blocks = data.plan.blocks.view();
  args.mask = data.mask.view();
  args.scale = data.scale;
  return args;
}

MaskArgs HostMaskArgs(const CaseData& data, BlockMask* mask, int64_t* kept) {
  MaskArgs args;
  args.q = data.q.view();
  args.k = data.k.view();
  args.blocks = data.plan.blocks.view();
  args.scale = data.scale;
  args.sparsity = data.c.sparsity;
  args.kept_mass = data.c.kept_mass;
  args.counts = mask->counts.data();
  args.indices = mask->indices.data();
  args.kept = kept;
  return args;
}

std::string CompareMasks(const CaseData& data, const BlockMask& want, const BlockMask& got,
                         bool exact) {
  const int64_t nb = data.plan.num_blocks(), D = data.c.head_dim;
  const int64_t rows = data.c.batch * data.c.heads * nb;
  // Pooled means ([B, H, nb, D]) to judge a difference as a near-tie.
  std::vector<float> pq(static_cast<size_t>(rows * D)), pk(pq.size());
  PoolBlocks(data.q.view(), data.plan.blocks.view(), pq.data());
  PoolBlocks(data.k.view(), data.plan.blocks.view(), pk.data());
  int64_t differing = 0;
  for (int64_t row = 0; row < rows; ++row) {
    const int32_t* a = want.indices.data() + row * nb;
    const int32_t* b = got.indices.data() + row * nb;
    const int32_t na = want.counts[row], nb_got = got.counts[row];
    std::ostringstream where;
    where << "row " << row << " (b, h, query block = " << row / (data.c.heads * nb) << ", "
          << row / nb % data.c.heads << ", " << row % nb << "): ";
    if (nb_got < 1 || nb_got > nb || !std::is_sorted(b, b + nb_got) ||
        std::adjacent_find(b, b + nb_got) != b + nb_got) {
      return where.str() + "not an ascending list of distinct kept blocks";
    }
    const std::set<int32_t> sa(a, a + na), sb(b, b + nb_got);
    if (sa == sb) continue;
    if (exact) return where.str() + "differs from the CPU mask on exact ties";
    ++differing;
    auto score = [&](int32_t j) {
      const int64_t bh = row / nb, qb = row % nb;
      double dot = 0;
      for (int64_t d = 0; d < D; ++d) {
        dot += double(pq[(bh * nb + qb) * D + d]) * pk[(bh * nb + j) * D + d];
      }
      return dot;
    };
    // Every block kept by one mask only must tie (within 1e-3) with one kept
    // by the other only: pair them by score.
    std::vector<double> only_a, only_b;
    for (int32_t j : sa) if (!sb.count(j)) only_a.push_back(score(j));
    for (int32_t j : sb) if (!sa.count(j)) only_b.push_back(score(j));
    // A mass-targeted row may keep one block more or less where its mass
    // meets kept_mass within the two backends' rounding of the scores.
    const bool one_more = std::includes(sa.begin(), sa.end(), sb.begin(), sb.end()) ||
                          std::includes(sb.begin(), sb.end(), sa.begin(), sa.end());
    if (data.c.kept_mass > 0 && one_more && std::abs(na - nb_got) == 1) continue;
    if (only_a.size() != only_b.size()) return where.str() + "keeps a different number of blocks";
    std::sort(only_a.begin(), only_a.end());
    std::sort(only_b.begin(), only_b.end());
    for (size_t i = 0; i < only_a.size(); ++i) {
      if (std::abs(only_a[i] - only_b[i]) > 1e-3 * (1.0 + std::abs(only_a[i]))) {
        return where.str() + "keeps a block whose score is not a near-tie of the CPU's choice";
      }
    }
  }
  if (differing > rows / 100) {
    return std::to_string(differing) + " of " + std::to_string(rows) + " rows differ (max 1%)";
  }
  return "";
}

const std::vector<Variant>& AllVariants() {
  static const std::vector<Variant> variants = BuildVariants();
  return variants;
}

bool CudaDocumented(const ParityCase& c) {
  return c.dtype != DType::kFloat32 && (c.head_dim == 64 || c.head_dim == 128) &&
         c.block_size == 128;
}

}  // namespace rainserve::attention::parity
