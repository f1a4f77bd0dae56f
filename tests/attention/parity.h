// The cross-backend attention parity suite, in the style of llama.cpp's
// test-backend-ops: one list of cases, every backend and kernel variant this
// build has (the CPU instruction-set builds, the CUDA Hopper and mma.sync
// kernels), and one comparison against the float64 reference that every
// (case, variant) pair goes through. parity_test.cc holds the tests; the CUDA
// variants live in parity_cuda.cc (parity_no_cuda.cc in builds without CUDA),
// so a CPU-only run exercises the same cases and comparison code as a GPU run.
//
// Tolerance (FlashAttention's rule): a variant's max abs error against the
// float64 reference may be at most twice that of NaiveAttention (the same
// masked attention in fp32 arithmetic with scores, probabilities and output
// rounded to the input precision), plus a slack of 2e-6 for fp32 outputs,
// where both errors sit at rounding level. LSE: twice the naive LSE error plus
// 2e-6 (fp32) or 1e-4 (bf16/fp16 inputs; the GPU kernels' exp2 is approximate).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "attention/backend.h"
#include "attention/config.h"
#include "attention/mask.h"
#include "common/status.h"

namespace rainserve::attention::parity {

// How a case's q, k, v are drawn.
enum class Inputs {
  kStructured,  // testing::StructuredQkv: attention local in space and time
  kConstant,    // q = 0.5 and k = -0.25 everywhere: every mask row one big tie
  kClimbing,    // scores that climb from key tile to key tile (ClimbingQkv)
};

struct ParityCase {
  TokenLayout layout;
  std::optional<WindowShape> window;  // unset: DefaultWindow(layout)
  int64_t block_size = 128;
  int64_t batch = 1, heads = 1, head_dim = 64;
  DType dtype = DType::kFloat32;
  double sparsity = 0.0;  // 0: the dense mask; else predicted by the CPU backend
  Inputs inputs = Inputs::kStructured;
  double kept_mass = 0.0;  // > 0: the mass-targeted selection (sparsity unused but > 0)
};

// A gtest-safe name, e.g. "bfloat16_D128_b2h1_4x32x32_sink1_text7after_bs128_s50"
// (sparsity in percent; "_win2x4x8" when the case sets a window).
std::string CaseName(const ParityCase& c);

// Forward cases: partial blocks, head dims, dtypes, sparsities, sink frames,
// text before and after the video, windows, block sizes, batch elements with
// their own masks. Each runs on every variant whose Supports() accepts it.
const std::vector<ParityCase>& ForwardCases();
// Mask-prediction cases (sparsity > 0), up to W1's 257 blocks, and exact ties;
// top-k and mass-targeted.
const std::vector<ParityCase>& MaskCases();

// A host [B, N, H, D] tensor in one dtype, contiguous.
struct HostTensor {
  DType dtype = DType::kFloat32;
  int64_t batch = 0, tokens = 0, heads = 0, head_dim = 0;
  std::vector<float> f32;      // float32 storage
  std::vector<uint16_t> half;  // bfloat16 / float16 storage

  // x: [B, N, H, D] floats, rounded to dtype.
  static HostTensor From(const std::vector<float>& x, DType dtype, int64_t b, int64_t n,
                         int64_t h, int64_t d);
  int64_t numel() const { return batch * tokens * heads * head_dim; }
  double At(int64_t i) const;
  TensorView view() const;
};

// A case ready to run: the plan, permuted inputs in the case's dtype and the
// mask every variant's forward uses (so a forward row compares kernels alone).
struct CaseData {
  ParityCase c;
  AttentionPlan plan;
  HostTensor q, k, v;  // permuted with plan.permutation
  float scale = 1.0f;
  BlockMask mask;      // the CPU backend's prediction, or dense
};
StatusOr<CaseData> BuildCase(const ParityCase& c);

// The float64 reference of a case and the error bounds derived from the
// naive same-precision run.
struct Expected {
  std::vector<double> out;  // [B, N, H, D]
  std::vector<double> lse;  // [B, H, N]
  double naive_out_error = 0, naive_lse_error = 0;
  double out_bound = 0, lse_bound = 0;
};
Expected ComputeExpected(const CaseData& data);

// A variant's errors against Expected; NaN outputs count as unwritten.
struct Measured {
  double out_error = 0, lse_error = 0;
  int64_t unwritten_out = 0, unwritten_lse = 0;
};
Measured Measure(const HostTensor& out, const std::vector<float>& lse, const Expected& expected);

// Host ForwardArgs over `data` writing into `out` and `lse` (both null: args
// for asking Supports()). Host buffers are at least 16-byte aligned, as the
// CUDA backend's Supports() asks of device ones.
ForwardArgs HostForwardArgs(const CaseData& data, HostTensor* out, std::vector<float>* lse);
// Host MaskArgs over `data` writing into `mask` and `kept`.
MaskArgs HostMaskArgs(const CaseData& data, BlockMask* mask, int64_t* kept);

// Compares `got` with the CPU mask `want` of the same inputs. Rows may differ
// only where key blocks' pooled scores tie to within 1e-3 (relative; the GPU
// scores in a different fp32 order), in at most 1% of the rows; `exact`
// allows no difference. Returns a description of the first violation, or "".
std::string CompareMasks(const CaseData& data, const BlockMask& want, const BlockMask& got,
                         bool exact);

// One backend variant with the memory it computes in. Every call takes and
// returns HOST memory: the CPU runner hands the pointers to the backend, the
// CUDA runner copies them to the device, runs on the default stream, waits
// and copies the outputs back.
class Runner {
 public:
  virtual ~Runner() = default;
  virtual AttentionBackend& backend() = 0;
  virtual Status Forward(const ForwardArgs& host) = 0;
  virtual Status PredictMask(const MaskArgs& host) = 0;
  // dst[o][i] = src[o][index[i]] for `outer` groups of `rows` rows of `row_bytes`.
  virtual Status GatherRows(const void* src, void* dst, const int64_t* index, int64_t outer,
                            int64_t rows, int64_t row_bytes) = 0;
};

struct Variant {
  std::string name;  // the backend's Name(): "cpu-avx2", "cuda-mma", ...
  bool gpu = false;
  // The runner, or the reason this variant cannot run here (the test skips).
  std::function<StatusOr<std::unique_ptr<Runner>>()> make;
  // The documented envelope: a case inside it that Supports() refuses fails.
  std::function<bool(const ParityCase&)> documented;
};

// The CPU kernel sets this binary holds, then CudaVariants().
const std::vector<Variant>& AllVariants();
// The CUDA Hopper and mma.sync kernels (parity_cuda.cc), or the same names
// skipping with "built without CUDA" (parity_no_cuda.cc).
std::vector<Variant> CudaVariants();
// What the CUDA backend documents: bf16/fp16, head dim 64 or 128, block 128.
bool CudaDocumented(const ParityCase& c);

}  // namespace rainserve::attention::parity
