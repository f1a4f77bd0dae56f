#!/usr/bin/env bash
# On the GPU machine: build the attention targets, run the CUDA attention
# tests (the Hopper kernel, then the mma.sync kernel's dense rows; plus
# compute-sanitizer memcheck) and the attention benchmarks.
#   scripts/gpu/attention_check.sh [tests|bench|all] [bench workloads, default W1,W2,W3]
# Logs and results go to $OUT (or ./gpu-out when OUT is unset).
set -uo pipefail
cd "$(dirname "$0")/../.."
what=${1:-all}
workloads=${2:-W1,W2,W3}
out=${OUT:-gpu-out}
mkdir -p "$out"
start=$(date +%s)
RAINSERVE_BUILD_TARGETS="attention_cuda_test attention_gpu_bench" \
  scripts/gpu/build.sh > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
source scripts/gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

if [ "$what" = tests ] || [ "$what" = all ]; then
  build-gpu/tests/gpu/attention_cuda_test > "$out/attention_cuda_test.log" 2>&1
  echo "attention tests rc=$?"; grep -E "^\[  (PASSED|FAILED)|FAILED \]" "$out/attention_cuda_test.log" | tail -8
  RAINSERVE_FLASH_KERNEL=mma build-gpu/tests/gpu/attention_cuda_test \
    --gtest_filter='*Dense*:*Unsupported*' > "$out/attention_cuda_test_mma.log" 2>&1
  echo "attention tests (mma) rc=$?"; grep -E "^\[  (PASSED|FAILED)|FAILED \]" "$out/attention_cuda_test_mma.log" | tail -4
  compute-sanitizer --tool memcheck --error-exitcode 9 build-gpu/tests/gpu/attention_cuda_test \
    --gtest_filter='*Permutation*:*Dense*:*GpuMask*:*Unsupported*' > "$out/memcheck.log" 2>&1
  echo "memcheck rc=$?"; grep -E "ERROR SUMMARY|PASSED|FAILED" "$out/memcheck.log" | tail -4
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  mkdir -p gpu-masks
  build-gpu/bench/attention_gpu_bench --workloads "$workloads" --reps 20 \
    --out bench/results/attention_gpu.json --mask-dir gpu-masks 2>&1 | tee "$out/bench.log"
  PYTHONUNBUFFERED=1 python3 bench/flex_attention_bench.py gpu-masks \
    bench/results/attention_gpu_flex.json 2>&1 | tee "$out/flex.log" | grep -v Warning
  cp bench/results/attention_gpu.json bench/results/attention_gpu_flex.json "$out/"
fi
echo "total: $(( $(date +%s) - start )) s"
