#!/usr/bin/env bash
# One command from a fresh Debian 12 clone to a tested build: installs the
# Debian packages, builds, and runs every test suite with ctest. Tests that
# need a GPU skip themselves on machines without one.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
ctest --test-dir build --output-on-failure -j "$(nproc)"

# The common, attention, server and SentencePiece suites again under
# AddressSanitizer and UndefinedBehaviorSanitizer: scripts/asan.sh (its own
# build-asan, only the targets those suites need).
scripts/asan.sh

# Fuzzers (ASan + UBSan, clang) on their corpora plus a short fuzzing run each;
# a separate build-fuzz that compiles only what they link (scripts/fuzz.sh).
scripts/fuzz.sh

# The CUDA kernels are torch-free and must compile with this machine's nvcc
# even without a GPU, so a broken kernel cannot land.
nvcc_path=$(command -v nvcc || true)
[ -z "$nvcc_path" ] && [ -x /usr/local/cuda/bin/nvcc ] && nvcc_path=/usr/local/cuda/bin/nvcc
if [ -n "$nvcc_path" ]; then
  RAINSERVE_BUILD_DIR=build-cuda-check \
    RAINSERVE_BUILD_TARGET="rainserve_attention_cuda rainserve_pipelines_cuda" \
    scripts/build.sh -DRAINSERVE_ENABLE_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc_path" \
    -DRAINSERVE_BUILD_TESTS=OFF -DRAINSERVE_BUILD_BENCH=OFF
else
  echo "test.sh: no nvcc on this machine; skipping the CUDA compile check"
fi
