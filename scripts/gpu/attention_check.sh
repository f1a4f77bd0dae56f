#!/usr/bin/env bash
# On the GPU machine: build the attention targets, run the attention tests
# and the attention benchmarks.
#   scripts/gpu/attention_check.sh [tests|bench|all] [bench workloads, default W1,W2,W3]
#   scripts/gpu/attention_check.sh quality [workloads, default W1,W2,wan-tiny]
# quality: the mass-targeted mode against top-k at equal realized density
# (bench/attention_quality_bench.cc -> bench/results/quality_gpu.json).
# Tests: the parity suite (every case on the CPU kernel sets and on both CUDA
# flash kernels, Hopper and mma.sync, which the suite selects itself; a GPU
# row that cannot run fails here instead of skipping), the at::Tensor adapter
# on CUDA tensors with the default kernel and again with RAINSERVE_FLASH_KERNEL=mma,
# and compute-sanitizer memcheck over the GPU rows.
# Logs and results go to $OUT (or ./gpu-out when OUT is unset).
set -uo pipefail
cd "$(dirname "$0")/../.."
what=${1:-all}
default_workloads=W1,W2,W3
targets="attention_parity_test attention_torch_cuda_test attention_gpu_bench"
if [ "$what" = quality ]; then
  default_workloads=W1,W2,wan-tiny
  targets=attention_quality_bench
fi
workloads=${2:-$default_workloads}
out=${OUT:-gpu-out}
mkdir -p "$out"
start=$(date +%s)
RAINSERVE_BUILD_TARGETS="$targets" scripts/gpu/build.sh > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
source scripts/gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

if [ "$what" = tests ] || [ "$what" = all ]; then
  # Counts, and the names of failed tests (skipped GPU rows: cases outside a kernel's envelope).
  summary() { grep -E "^\[  (PASSED|SKIPPED) +\] [0-9]+ test|^\[  FAILED  \]" "$1" | head -40; }
  tests=build-gpu/tests/attention
  RAINSERVE_REQUIRE_GPU=1 $tests/attention_parity_test > "$out/attention_parity_test.log" 2>&1
  echo "parity suite rc=$?"; summary "$out/attention_parity_test.log"
  echo "GPU rows run: $(grep -cE '^\[       OK \] .*/cuda_' "$out/attention_parity_test.log")"
  $tests/attention_torch_cuda_test > "$out/attention_torch_cuda_test.log" 2>&1
  echo "adapter tests rc=$?"; summary "$out/attention_torch_cuda_test.log"
  RAINSERVE_FLASH_KERNEL=mma $tests/attention_torch_cuda_test \
    > "$out/attention_torch_cuda_test_mma.log" 2>&1
  echo "adapter tests (mma) rc=$?"; summary "$out/attention_torch_cuda_test_mma.log"
  compute-sanitizer --tool memcheck --error-exitcode 9 $tests/attention_parity_test \
    --gtest_filter='*/cuda_*_2x8x8_*:*/cuda_*_6x10x14_*:*MaskParityTest*/cuda_*:*VariantTest*/cuda_*' \
    > "$out/memcheck.log" 2>&1
  echo "memcheck (parity GPU rows) rc=$?"; grep -E "ERROR SUMMARY" "$out/memcheck.log" | tail -2
  compute-sanitizer --tool memcheck --error-exitcode 9 $tests/attention_torch_cuda_test \
    > "$out/memcheck_adapter.log" 2>&1
  echo "memcheck (adapter) rc=$?"; grep -E "ERROR SUMMARY" "$out/memcheck_adapter.log" | tail -2
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  mkdir -p gpu-masks
  build-gpu/bench/attention_gpu_bench --workloads "$workloads" --reps 20 \
    --out bench/results/attention_gpu.json --mask-dir gpu-masks 2>&1 | tee "$out/bench.log"
  PYTHONUNBUFFERED=1 python3 bench/flex_attention_bench.py gpu-masks \
    bench/results/attention_gpu_flex.json 2>&1 | tee "$out/flex.log" | grep -v Warning
  cp bench/results/attention_gpu.json bench/results/attention_gpu_flex.json "$out/"
fi
if [ "$what" = quality ]; then
  build-gpu/bench/attention_quality_bench --workloads "$workloads" \
    --out bench/results/quality_gpu.json 2>&1 | tee "$out/quality.log"
  cp bench/results/quality_gpu.json "$out/"
fi
echo "total: $(( $(date +%s) - start )) s"
