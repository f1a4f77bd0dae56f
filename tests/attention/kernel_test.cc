// CPU block-sparse flash attention against the float64 reference, for every
// instruction-set build this CPU runs.
//
// Tolerance (derived, FlashAttention-style): the kernel's max abs error
// against the float64 reference may be at most twice that of a naive
// same-precision implementation (NaiveAttention: fp32 arithmetic, scores,
// probabilities and output rounded to the input precision), plus 2e-6 of
// slack for fp32 runs whose naive error is itself at rounding level. The
// kernel keeps scores and probabilities in fp32 and rounds only its output,
// so it sits well inside that bound for bf16/fp16; for fp32 its exp2
// polynomial (relative error ~1.2e-7) adds error of the same order as fp32
// rounding.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <sstream>

#include "attention/bf16.h"
#include "attention/config.h"
#include "attention/cpu/cpu_backend.h"
#include "attention/mask.h"
#include "attention/reference.h"
#include "attention/testing/inputs.h"

namespace rainserve::attention {
namespace {

std::vector<const cpu::KernelSet*> AvailableKernels() {
  std::vector<const cpu::KernelSet*> sets = {&cpu::GenericKernels()};
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    sets.push_back(&cpu::Avx2Kernels());
  }
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")) {
    sets.push_back(&cpu::Avx512Kernels());
  }
#endif
  return sets;
}

struct Case {
  int64_t t, h, w, sink, text;
  int64_t heads, head_dim, block;
  DType dtype;
  double sparsity;
  int64_t batch;
};

std::string Describe(const Case& c) {
  std::ostringstream s;
  s << c.batch << "x" << c.t << "x" << c.h << "x" << c.w << " sink=" << c.sink << " text=" << c.text
    << " H=" << c.heads << " D=" << c.head_dim << " block=" << c.block << " "
    << DTypeName(c.dtype) << " sparsity=" << c.sparsity;
  return s.str();
}

// Input storage in the case's dtype.
struct Storage {
  std::vector<float> f32;
  std::vector<uint16_t> half;
  void* data() { return f32.empty() ? static_cast<void*>(half.data()) : f32.data(); }
};

Storage Convert(const std::vector<float>& x, DType dtype) {
  Storage s;
  if (dtype == DType::kFloat32) {
    s.f32 = x;
  } else {
    s.half.resize(x.size());
    for (size_t i = 0; i < x.size(); ++i) s.half[i] = FloatToHalf(x[i], dtype);
  }
  return s;
}

void RunCase(const Case& c) {
  SCOPED_TRACE(Describe(c));
  TokenLayout l;
  l.frames = c.t;
  l.height = c.h;
  l.width = c.w;
  l.sink_frames = c.sink;
  l.text_tokens = c.text;
  l.text_placement = c.text > 0 ? TextPlacement::kAfter : TextPlacement::kNone;
  auto plan = AttentionPlan::Build(l, DefaultWindow(l), c.block);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  const int64_t B = c.batch, N = l.total_tokens(), H = c.heads, D = c.head_dim;
  const int64_t nb = plan->num_blocks();

  testing::Qkv x = testing::StructuredQkv(l, B, H, D, 1234 + D + c.t);
  Storage q = Convert(testing::Permuted(plan->permutation, x.q, B, H, D), c.dtype);
  Storage k = Convert(testing::Permuted(plan->permutation, x.k, B, H, D), c.dtype);
  Storage v = Convert(testing::Permuted(plan->permutation, x.v, B, H, D), c.dtype);
  const TensorView qv = TensorView::Contiguous(q.data(), c.dtype, B, N, H, D);
  const TensorView kv = TensorView::Contiguous(k.data(), c.dtype, B, N, H, D);
  const TensorView vv = TensorView::Contiguous(v.data(), c.dtype, B, N, H, D);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));

  BlockMask mask = DenseBlockMask(B, H, nb);
  if (c.sparsity > 0) {
    CpuBackend predictor(2);
    int64_t kept = 0;
    MaskArgs margs{qv, kv, plan->blocks.view(), scale, c.sparsity,
                   mask.counts.data(), mask.indices.data(), &kept};
    ASSERT_TRUE(predictor.PredictMask(margs).ok());
    ASSERT_LT(kept, B * H * nb * nb) << "a sparse case should skip something";
  }

  std::vector<double> ref, ref_lse;
  ReferenceAttention(qv, kv, vv, plan->blocks.view(), mask.view(), scale, &ref, &ref_lse);
  std::vector<float> naive, naive_lse;
  NaiveAttention(qv, kv, vv, plan->blocks.view(), mask.view(), scale, c.dtype, &naive, &naive_lse);
  double naive_err = 0, naive_lse_err = 0;
  for (size_t i = 0; i < ref.size(); ++i) naive_err = std::max(naive_err, std::abs(naive[i] - ref[i]));
  for (size_t i = 0; i < ref_lse.size(); ++i) {
    naive_lse_err = std::max(naive_lse_err, std::abs(naive_lse[i] - ref_lse[i]));
  }
  const double slack = c.dtype == DType::kFloat32 ? 2e-6 : 0.0;
  const double tol = 2.0 * naive_err + slack;
  const double lse_tol = 2.0 * naive_lse_err + 2e-6;

  for (const cpu::KernelSet* kernels : AvailableKernels()) {
    SCOPED_TRACE(kernels->isa);
    CpuBackend backend(2, kernels);
    // Poison the outputs: every element must be written.
    Storage out = Convert(std::vector<float>(ref.size(), std::nanf("")), c.dtype);
    std::vector<float> lse(ref_lse.size(), std::nanf(""));
    ForwardArgs args;
    args.q = qv;
    args.k = kv;
    args.v = vv;
    args.out = TensorView::Contiguous(out.data(), c.dtype, B, N, H, D);
    args.lse = lse.data();
    args.blocks = plan->blocks.view();
    args.mask = mask.view();
    args.scale = scale;
    ASSERT_TRUE(backend.Supports(args, c.block).ok());
    ASSERT_TRUE(backend.Forward(args).ok());
    double err = 0, lse_err = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      const double got = LoadAsFloat(out.data(), c.dtype, static_cast<int64_t>(i));
      ASSERT_FALSE(std::isnan(got)) << "output element " << i << " not written";
      err = std::max(err, std::abs(got - ref[i]));
    }
    for (size_t i = 0; i < lse.size(); ++i) {
      ASSERT_FALSE(std::isnan(lse[i])) << "lse element " << i << " not written";
      lse_err = std::max(lse_err, std::abs(lse[i] - ref_lse[i]));
    }
    EXPECT_LE(err, tol) << "naive same-precision error " << naive_err;
    EXPECT_LE(lse_err, lse_tol) << "naive lse error " << naive_lse_err;
  }
}

TEST(CpuKernelTest, DenseMatchesReferenceFp32HeadDims) {
  for (int64_t d : {64, 128, 40, 33}) {
    RunCase({3, 8, 11, 0, 0, 2, d, 128, DType::kFloat32, 0.0, 1});  // N = 264: partial blocks
  }
}

TEST(CpuKernelTest, SparseMatchesReferenceWithSinkAndText) {
  for (double s : {0.5, 0.9}) {
    RunCase({5, 8, 12, 1, 20, 2, 64, 32, DType::kFloat32, s, 2});
    RunCase({5, 8, 12, 1, 0, 2, 128, 64, DType::kFloat32, s, 1});
  }
}

TEST(CpuKernelTest, BFloat16AndFloat16Inputs) {
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    RunCase({3, 8, 11, 1, 0, 2, 64, 32, dt, 0.0, 1});
    RunCase({5, 8, 12, 1, 9, 2, 128, 32, dt, 0.8, 2});
    RunCase({2, 6, 10, 0, 0, 1, 72, 16, dt, 0.5, 1});
  }
}

TEST(CpuKernelTest, ImageLayoutAndTinySequences) {
  RunCase({1, 9, 23, 0, 0, 2, 64, 128, DType::kFloat32, 0.0, 1});  // T = 1, one partial block
  RunCase({1, 16, 20, 0, 0, 2, 64, 16, DType::kFloat32, 0.7, 1});
  RunCase({1, 1, 1, 0, 0, 1, 8, 16, DType::kFloat32, 0.0, 1});     // a single token
}

TEST(CpuKernelTest, UnsupportedHeadDimIsAnError) {
  CpuBackend backend(1);
  ForwardArgs args;
  args.q.head_dim = 300;
  const Status s = backend.Supports(args, 128);
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
  EXPECT_NE(s.message().find("head_dim"), std::string::npos);
}

TEST(CpuKernelTest, SelectedKernelSetIsTheBestAvailable) {
  EXPECT_STREQ(cpu::SelectKernels().isa, AvailableKernels().back()->isa);
  EXPECT_GT(cpu::SelectKernels().fma_peak_gflops(0.01), 0.1);
}

}  // namespace
}  // namespace rainserve::attention
