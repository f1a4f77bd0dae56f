// The cross-backend attention parity suite (parity.h): every case on every
// backend and kernel variant, against the float64 reference.
//
//   build/tests/attention/attention_parity_test                     all rows
//   ... --gtest_filter='*/cuda_*'                                   GPU rows only
//   ... --gtest_filter='*/cpu_avx2_*'                               one variant
// Test names are <variant>_<case>; a variant that cannot run here (no GPU,
// an instruction set this CPU lacks, a build without CUDA) skips with the
// reason (with RAINSERVE_REQUIRE_GPU=1 in the environment a GPU variant
// fails instead), and so does a case outside a variant's Supports(). A
// refusal of a case inside the variant's documented envelope fails.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <optional>
#include <set>
#include <tuple>

#include "attention/cpu/flash_kernel.h"
#include "attention/testing/inputs.h"
#include "tests/attention/parity.h"

namespace rainserve::attention::parity {
namespace {

std::string VariantId(const Variant& v) {
  std::string id = v.name;
  for (char& ch : id) ch = ch == '-' ? '_' : ch;
  return id;
}

// A built case and, once a forward row asks, its float64 expectation.
struct Prepared {
  const ParityCase* source = nullptr;
  CaseData data;
  std::optional<Expected> expected;
};

// The case last built, reused while the tests walk its variants (they run
// case by case, variant by variant).
StatusOr<Prepared*> Prepare(const ParityCase& c) {
  static std::unique_ptr<Prepared> cached;
  if (cached == nullptr || cached->source != &c) {
    cached.reset();
    RAINSERVE_ASSIGN_OR_RETURN(CaseData data, BuildCase(c));
    cached = std::make_unique<Prepared>();
    cached->source = &c;
    cached->data = std::move(data);
  }
  return cached.get();
}

// A test of one variant: SetUp makes its runner or skips with the reason.
template <typename Param>
class VariantFixture : public ::testing::TestWithParam<Param> {
 protected:
  virtual size_t variant_index() const = 0;
  const Variant& variant() const { return AllVariants()[variant_index()]; }

  void SetUp() override {
    StatusOr<std::unique_ptr<Runner>> made = variant().make();
    if (!made.ok()) {
      const char* require = std::getenv("RAINSERVE_REQUIRE_GPU");
      ASSERT_FALSE(variant().gpu && require != nullptr && std::string(require) == "1")
          << variant().name << " cannot run and RAINSERVE_REQUIRE_GPU=1: "
          << made.status().ToString();
      GTEST_SKIP() << variant().name << ": " << made.status().message();
    }
    runner_ = std::move(made).value();
    EXPECT_EQ(std::string(runner_->backend().Name()), variant().name)
        << "the backend runs another kernel than the one selected";
  }

  // Sets *out to the built case when the variant's Supports() accepts it;
  // otherwise skips the test, or fails it when the case lies inside the
  // variant's documented envelope, and leaves *out null.
  void PrepareSupported(const ParityCase& c, Prepared** out) {
    *out = nullptr;
    StatusOr<Prepared*> prepared = Prepare(c);
    ASSERT_TRUE(prepared.ok()) << prepared.status().ToString();
    const CaseData& data = (*prepared)->data;
    const Status s = runner_->backend().Supports(HostForwardArgs(data, nullptr, nullptr),
                                                 c.block_size);
    if (!s.ok()) {
      ASSERT_FALSE(variant().documented(c))
          << variant().name << " refuses a case it documents: " << s.ToString();
      GTEST_SKIP() << s.message();
    }
    *out = *prepared;
  }

  std::unique_ptr<Runner> runner_;
};

using CaseAndVariant = std::tuple<size_t, size_t>;

// Every (case, variant) pair of `cases`, case by case, named <variant>_<case>.
auto Rows(const std::vector<ParityCase>& cases) {
  return ::testing::Combine(::testing::Range<size_t>(0, cases.size()),
                            ::testing::Range<size_t>(0, AllVariants().size()));
}
std::string RowName(const std::vector<ParityCase>& cases, const CaseAndVariant& row) {
  return VariantId(AllVariants()[std::get<1>(row)]) + "_" + CaseName(cases[std::get<0>(row)]);
}

// ---- Forward: every case on every variant, the mask fixed by the CPU. ----

class ForwardParityTest : public VariantFixture<CaseAndVariant> {
  size_t variant_index() const override { return std::get<1>(GetParam()); }
};

TEST_P(ForwardParityTest, MatchesFloat64ReferenceWithinTwiceNaiveError) {
  Prepared* prepared = nullptr;
  PrepareSupported(ForwardCases()[std::get<0>(GetParam())], &prepared);
  if (prepared == nullptr) return;
  const CaseData& data = prepared->data;
  if (!prepared->expected) prepared->expected = ComputeExpected(data);
  const Expected& expected = *prepared->expected;

  // Outputs poisoned with NaN: every element must be written.
  HostTensor out = HostTensor::From(std::vector<float>(expected.out.size(), std::nanf("")),
                                    data.c.dtype, data.q.batch, data.q.tokens, data.q.heads,
                                    data.q.head_dim);
  std::vector<float> lse(expected.lse.size(), std::nanf(""));
  const Status status = runner_->Forward(HostForwardArgs(data, &out, &lse));
  ASSERT_TRUE(status.ok()) << status.ToString();

  const Measured m = Measure(out, lse, expected);
  std::printf("    max error %.3g (bound %.3g), lse %.3g (bound %.3g)\n", m.out_error,
              expected.out_bound, m.lse_error, expected.lse_bound);
  EXPECT_EQ(m.unwritten_out, 0) << "output elements not written";
  EXPECT_EQ(m.unwritten_lse, 0) << "lse elements not written";
  EXPECT_LE(m.out_error, expected.out_bound)
      << "naive same-precision error " << expected.naive_out_error;
  EXPECT_LE(m.lse_error, expected.lse_bound)
      << "naive same-precision lse error " << expected.naive_lse_error;
}

INSTANTIATE_TEST_SUITE_P(AllVariants, ForwardParityTest, Rows(ForwardCases()),
                         [](const ::testing::TestParamInfo<CaseAndVariant>& info) {
                           return RowName(ForwardCases(), info.param);
                         });

// ---- Mask prediction: every variant's mask against the CPU backend's. ----

class MaskParityTest : public VariantFixture<CaseAndVariant> {
  size_t variant_index() const override { return std::get<1>(GetParam()); }
};

TEST_P(MaskParityTest, EqualsCpuMaskUpToNearTies) {
  Prepared* prepared = nullptr;
  PrepareSupported(MaskCases()[std::get<0>(GetParam())], &prepared);
  if (prepared == nullptr) return;
  const CaseData& data = prepared->data;

  BlockMask got;
  got.Resize(data.c.batch, data.c.heads, data.plan.num_blocks(), data.plan.num_blocks());
  int64_t kept = -1;
  const Status status = runner_->PredictMask(HostMaskArgs(data, &got, &kept));
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(kept, got.kept()) << "the kept total disagrees with the mask";
  const bool exact = data.c.inputs == Inputs::kConstant;
  EXPECT_EQ(CompareMasks(data, data.mask, got, exact), "");
}

INSTANTIATE_TEST_SUITE_P(AllVariants, MaskParityTest, Rows(MaskCases()),
                         [](const ::testing::TestParamInfo<CaseAndVariant>& info) {
                           return RowName(MaskCases(), info.param);
                         });

// ---- Per variant: permutation, refusals. ----

class VariantTest : public VariantFixture<size_t> {
  size_t variant_index() const override { return GetParam(); }
};

TEST_P(VariantTest, GatherRowsEqualsHostPermutationBothWays) {
  auto plan = AttentionPlan::Build(testing::VideoLayout(7, 13, 29, 1, 5), WindowShape{2, 8, 8});
  ASSERT_TRUE(plan.ok());
  const TokenPermutation& perm = plan->permutation;
  const int64_t N = plan->tokens();
  // 240-byte rows in 2 groups (a [2, N, 3, 40] bf16 tensor: the 16-byte
  // path) and 12-byte rows (a [N, 3] fp32 table: the byte path).
  for (const auto& [outer, row_bytes] : {std::pair<int64_t, int64_t>{2, 240}, {1, 12}}) {
    SCOPED_TRACE(row_bytes);
    std::vector<uint8_t> x(static_cast<size_t>(outer * N * row_bytes));
    std::iota(x.begin(), x.end(), uint8_t{7});
    std::vector<uint8_t> want(x.size()), permuted(x.size()), back(x.size());
    ApplyPermutation(perm, x.data(), want.data(), outer, row_bytes);
    Status s = runner_->GatherRows(x.data(), permuted.data(), perm.gather.data(), outer, N,
                                   row_bytes);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(permuted, want);
    s = runner_->GatherRows(permuted.data(), back.data(), perm.scatter.data(), outer, N, row_bytes);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(back, x);
  }
}

TEST_P(VariantTest, RefusesInputsOutsideItsEnvelopeNamingTheField) {
  struct Refusal {
    DType dtype;
    int64_t head_dim, block_size;
    const char* needle;
  };
  const std::vector<Refusal> cpu = {
      {DType::kFloat32, 300, 128, "head_dim must be in [1, 256]"},
      {DType::kFloat32, 64, 512, "block_size must be <= 256"}};
  const std::vector<Refusal> gpu = {
      {DType::kFloat32, 64, 128, "dtype must be bfloat16 or float16"},
      {DType::kBFloat16, 96, 128, "head_dim must be 64 or 128"},
      {DType::kBFloat16, 64, 64, "block_size must be 128"}};
  const std::vector<Refusal>& refusals = variant().gpu ? gpu : cpu;
  for (const Refusal& r : refusals) {
    ForwardArgs args;
    args.q = TensorView::Contiguous(nullptr, r.dtype, 1, 128, 1, r.head_dim);
    args.k = args.v = args.out = args.q;
    args.blocks.num_blocks = 1;
    const Status s = runner_->backend().Supports(args, r.block_size);
    EXPECT_EQ(s.code(), StatusCode::kUnimplemented) << r.needle;
    EXPECT_NE(s.message().find(r.needle), std::string::npos) << s.ToString();
  }
}

INSTANTIATE_TEST_SUITE_P(AllVariants, VariantTest,
                         ::testing::Range<size_t>(0, AllVariants().size()),
                         [](const ::testing::TestParamInfo<size_t>& info) {
                           return VariantId(AllVariants()[info.param]);
                         });

// ---- The variant list and the case list themselves. ----

TEST(KernelSelectionTest, CpuDefaultIsTheFastestSetThisCpuRunsAndTheEnvironmentPicksAnother) {
  const std::vector<const cpu::KernelSet*> available = cpu::AvailableKernels();
  ASSERT_FALSE(available.empty());
  EXPECT_STREQ(available.front()->isa, "generic");
  for (const cpu::KernelSet* set : available) EXPECT_TRUE(cpu::CpuRuns(*set)) << set->isa;
  EXPECT_EQ(&cpu::SelectKernels(), available.back());
  EXPECT_GT(cpu::SelectKernels().fma_peak_gflops(0.01), 0.1);
  ASSERT_EQ(setenv("RAINSERVE_CPU_ISA", "generic", 1), 0);
  EXPECT_STREQ(cpu::SelectKernels().isa, "generic");
  ASSERT_EQ(unsetenv("RAINSERVE_CPU_ISA"), 0);
}

TEST(KernelSelectionTest, EveryCompiledKernelSetAndBothCudaKernelsAreVariants) {
  std::set<std::string> names;
  for (const Variant& v : AllVariants()) names.insert(v.name);
  EXPECT_EQ(names.size(), AllVariants().size()) << "duplicate variant names";
  for (const cpu::KernelSet* set : cpu::CompiledKernels()) {
    EXPECT_TRUE(names.count(std::string("cpu-") + set->isa)) << set->isa;
  }
  EXPECT_TRUE(names.count("cuda-sm90"));
  EXPECT_TRUE(names.count("cuda-mma"));
}

// The case list covers what the suite claims, with rows every backend runs.
TEST(ParityCasesTest, CoverEveryAxisOnCpuAndGpu) {
  std::set<DType> dtypes;
  std::set<int64_t> block_sizes, gpu_head_dims;
  bool partial = false, dense = false, sparse = false, sink = false, text_before = false,
       text_after = false, window = false, gpu_sparse = false, gpu_dense = false;
  for (const ParityCase& c : ForwardCases()) {
    const TokenLayout& l = c.layout;
    dtypes.insert(c.dtype);
    block_sizes.insert(c.block_size);
    partial |= l.windowed_tokens() % c.block_size != 0 || l.total_tokens() < c.block_size;
    dense |= c.sparsity == 0;
    sparse |= c.sparsity > 0;
    sink |= l.sink_frames > 0;
    text_before |= l.text_placement == TextPlacement::kBefore;
    text_after |= l.text_placement == TextPlacement::kAfter;
    window |= c.window.has_value();
    if (CudaDocumented(c)) {
      gpu_head_dims.insert(c.head_dim);
      gpu_sparse |= c.sparsity > 0;
      gpu_dense |= c.sparsity == 0;
    }
  }
  EXPECT_EQ(dtypes.size(), 3u);
  EXPECT_EQ(block_sizes, (std::set<int64_t>{16, 32, 64, 128}));
  EXPECT_EQ(gpu_head_dims, (std::set<int64_t>{64, 128}));
  EXPECT_TRUE(partial && dense && sparse && sink && text_before && text_after && window);
  EXPECT_TRUE(gpu_sparse && gpu_dense);
}

// Batch elements get their own masks (classifier-free guidance's halves):
// the batch-2 sparse cases must really differ between elements, or a kernel
// that read batch 0's mask for every element would pass.
TEST(ParityCasesTest, BatchElementsOfSparseCasesHaveDifferentMasks) {
  int64_t sparse_batched = 0, differing = 0;
  for (const ParityCase& c : ForwardCases()) {
    if (c.batch < 2 || c.sparsity <= 0 || c.layout.total_tokens() < 4 * c.block_size) continue;
    StatusOr<CaseData> data = BuildCase(c);
    ASSERT_TRUE(data.ok()) << data.status().ToString();
    const BlockMask& m = data->mask;
    const size_t half = m.indices.size() / static_cast<size_t>(c.batch);
    ++sparse_batched;
    differing += !std::equal(m.indices.begin(), m.indices.begin() + half,
                             m.indices.begin() + half) ||
                 !std::equal(m.counts.begin(), m.counts.begin() + m.counts.size() / c.batch,
                             m.counts.begin() + m.counts.size() / c.batch);
  }
  EXPECT_GE(sparse_batched, 10);
  EXPECT_EQ(differing, sparse_batched);
}

}  // namespace
}  // namespace rainserve::attention::parity
