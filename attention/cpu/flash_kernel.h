// Inner loops of the CPU flash-attention kernel, compiled once per instruction
// set (flash_kernel_{avx512,avx2,generic}.cc include flash_kernel_impl.h with
// different compiler flags) and picked at run time by SelectKernels().
// CpuBackend takes any set this CPU runs; the parity suite
// (tests/attention/parity_test.cc) runs every one of AvailableKernels().
#pragma once

#include <cstdint>
#include <vector>

namespace rainserve::attention::cpu {

// One query block against its kept key blocks, all in fp32.
struct RowProblem {
  // q: [rows][dp], already multiplied by scale * log2(e), zero in columns >= D.
  const float* q = nullptr;
  int64_t rows = 0;         // query rows in this block (<= block size)
  int64_t dp = 0;           // head dim padded to a multiple of lanes()
  int64_t bsp = 0;          // key block capacity padded to a multiple of lanes()
  // Packed key/value blocks: block id i lives at packed + i * slot_floats as
  //   kt: [dp][bsp]   (K transposed, zero padded)
  //   vp: [bsp][dp]   (V, zero padded), at kt + dp * bsp
  const float* packed = nullptr;
  int64_t slot_floats = 0;
  int32_t num_blocks = 0;
  const int32_t* block_ids = nullptr;   // [num_blocks] packed slot of each kept key block
  const int32_t* block_lens = nullptr;  // [num_blocks] tokens in that key block
  // Scratch and results.
  float* s = nullptr;   // [rows][bsp] scores / probabilities
  float* o = nullptr;   // out: [rows][dp] unnormalised output
  float* m = nullptr;   // out: [rows] running max (log2 units)
  float* l = nullptr;   // out: [rows] running sum of exp2(s - m)
};

struct KernelSet {
  const char* isa;  // "avx512", "avx2", "generic"
  int lanes;        // floats per vector: pad dp and bsp to this
  // Runs the online-softmax loop over the row's kept blocks.
  void (*attend_row)(const RowProblem& p);
  // Measures one thread's peak fp32 FMA rate (GFLOP/s) over ~`seconds`.
  double (*fma_peak_gflops)(double seconds);
};

const KernelSet& GenericKernels();
#if defined(__x86_64__)
const KernelSet& Avx2Kernels();
const KernelSet& Avx512Kernels();
#endif

// Every set built into this binary, slowest first: generic, then on x86-64
// avx2 and avx512.
std::vector<const KernelSet*> CompiledKernels();

// Whether this CPU has the instructions `set` was compiled for.
bool CpuRuns(const KernelSet& set);

// The compiled sets this CPU runs, slowest first (generic always).
std::vector<const KernelSet*> AvailableKernels();

// The set CpuBackend uses by default: the last (fastest) of
// AvailableKernels(); RAINSERVE_CPU_ISA=generic|avx2|avx512 in the environment
// picks another available one (benchmarks).
const KernelSet& SelectKernels();

}  // namespace rainserve::attention::cpu
