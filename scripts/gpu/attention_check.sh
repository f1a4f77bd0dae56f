#!/usr/bin/env bash
# On the GPU machine: build, run the GPU tests (plus compute-sanitizer
# memcheck on the CUDA attention tests) and the attention benchmarks.
#   scripts/gpu/attention_check.sh [tests|bench|all] [bench workloads, default W1,W2,W3]
# Logs and results go to $OUT (or ./gpu-out when OUT is unset).
set -uo pipefail
cd "$(dirname "$0")/../.."
what=${1:-all}
workloads=${2:-W1,W2,W3}
out=${OUT:-gpu-out}
mkdir -p "$out"
start=$(date +%s)
scripts/gpu/build.sh > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
source scripts/gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

if [ "$what" = tests ] || [ "$what" = all ]; then
  ctest --test-dir build-gpu --output-on-failure -L gpu > "$out/ctest_gpu.log" 2>&1
  echo "gpu tests rc=$?"; grep -E "tests passed|Failed|FAILED|Passed" "$out/ctest_gpu.log" | tail -8
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
