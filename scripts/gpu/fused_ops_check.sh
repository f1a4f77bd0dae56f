#!/usr/bin/env bash
# On the GPU machine: build, then the fused element-wise kernels of the Wan
# block (pipelines/wan/cuda/fused_ops.cu): their parity tests and the CUDA forward
# test (wan_ops_cuda_test, with compute-sanitizer memcheck on the kernel
# rows), the CPU Wan suites, and the benchmarks: per op against the ATen ops
# (wan_ops_gpu_bench) and whole denoising steps, fused and not (wan_step_bench).
#   scripts/gpu/fused_ops_check.sh [tests|bench|all]
# Logs go to $OUT (or ./gpu-out when OUT is unset); results to bench/results/.
set -uo pipefail
cd "$(dirname "$0")/../.."
what=${1:-all}
out=${OUT:-gpu-out}
mkdir -p "$out"
start=$(date +%s)
RAINSERVE_BUILD_TARGETS="wan_ops_cuda_test wan_pipeline_cuda_test wan_ops_test wan_transformer_test
  wan_ops_gpu_bench wan_step_bench" \
  scripts/gpu/build.sh > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
source scripts/gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

if [ "$what" = tests ] || [ "$what" = all ]; then
  ctest --test-dir build-gpu --output-on-failure -R 'wan_ops|wan_transformer_test|wan_pipeline_cuda' \
    > "$out/ctest.log" 2>&1
  echo "tests rc=$?"; grep -E "tests passed|Failed|FAILED|Passed|fused " "$out/ctest.log" | tail -12
  compute-sanitizer --tool memcheck --error-exitcode 9 build-gpu/tests/gpu/wan_ops_cuda_test \
    --gtest_filter='WanOpsCudaTest.*-*Transformer*' > "$out/memcheck.log" 2>&1
  echo "memcheck rc=$?"; grep -E "ERROR SUMMARY|PASSED|FAILED" "$out/memcheck.log" | tail -4
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  build-gpu/bench/wan_ops_gpu_bench --reps 30 --out bench/results/wan_ops_gpu.json 2>&1 |
    tee "$out/ops_bench.log"
  build-gpu/bench/wan_step_bench --steps 5 --out bench/results/wan_step_gpu.json 2>&1 |
    tee "$out/step_bench.log"
  cp bench/results/wan_ops_gpu.json bench/results/wan_step_gpu.json "$out/"
fi
echo "total: $(( $(date +%s) - start )) s"
