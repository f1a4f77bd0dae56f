#!/usr/bin/env bash
# Configures and builds RainServe into ./build (Release, Ninja, ccache).
# Extra arguments go to CMake's configure step, e.g. -DRAINSERVE_SANITIZE=ON.
# RAINSERVE_BUILD_DIR picks the folder, RAINSERVE_BUILD_TARGET the targets
# (one, or several separated by spaces).
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${RAINSERVE_BUILD_DIR:-build}
jobs=${RAINSERVE_JOBS:-$(nproc)}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build "$build_dir" -j "$jobs" ${RAINSERVE_BUILD_TARGET:+--target $RAINSERVE_BUILD_TARGET}
