#!/usr/bin/env bash
# On the GPU machine: build, then the FP8 linear layers (pipelines/wan/wan_fp8.h):
# their GPU test (wan_fp8_cuda_test, with compute-sanitizer memcheck on the
# kernel rows), the fused-ops CUDA test they extend, and the step benchmark's
# FP8 rows (fp8 vs bf16 steps at W1 and W2x1, the linear layers alone).
#   scripts/gpu/fp8_check.sh [tests|bench|all]
# Logs go to $OUT (or ./gpu-out when OUT is unset); the step benchmark runs
# every mode (the FP8 rows beside their bf16 baselines) into
# bench/results/wan_step_gpu.json.
set -uo pipefail
cd "$(dirname "$0")/../.."
what=${1:-all}
out=${OUT:-gpu-out}
mkdir -p "$out"
start=$(date +%s)
RAINSERVE_BUILD_TARGETS="wan_fp8_cuda_test wan_ops_cuda_test wan_step_bench" \
  scripts/gpu/build.sh > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
source scripts/gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

if [ "$what" = tests ] || [ "$what" = all ]; then
  build-gpu/tests/gpu/wan_fp8_cuda_test > "$out/fp8_test.log" 2>&1
  echo "wan_fp8_cuda_test rc=$?"; grep -E "OK|FAILED|cosine|path|Failure|error" "$out/fp8_test.log" | tail -30
  build-gpu/tests/gpu/wan_ops_cuda_test > "$out/ops_test.log" 2>&1
  echo "wan_ops_cuda_test rc=$?"; grep -E "PASSED|FAILED" "$out/ops_test.log" | tail -5
  compute-sanitizer --tool memcheck --error-exitcode 9 build-gpu/tests/gpu/wan_fp8_cuda_test \
    --gtest_filter='*Quantize*:*Fp8Linear*' > "$out/fp8_memcheck.log" 2>&1
  echo "memcheck rc=$?"; grep -E "ERROR SUMMARY|PASSED|FAILED" "$out/fp8_memcheck.log" | tail -4
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  build-gpu/bench/wan_step_bench --steps 5 --out bench/results/wan_step_gpu.json 2>&1 |
    tee "$out/step_bench.log"
  cp bench/results/wan_step_gpu.json "$out/"
fi
echo "total: $(( $(date +%s) - start )) s"
