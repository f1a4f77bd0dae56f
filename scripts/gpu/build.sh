#!/usr/bin/env bash
# Run on the GPU machine (Ubuntu 24.04, CUDA 13, PyTorch's LibTorch, no
# package registry): unpacks .deps/debs (from scripts/gpu/fetch_debs.sh) into
# /opt/sys and builds RainServe with RAINSERVE_ENABLE_CUDA=ON into build-gpu.
#
#   scripts/gpu/build.sh [extra cmake args]
#   source scripts/gpu/env.sh   # for running the binaries afterwards
# RAINSERVE_BUILD_TARGETS="a b" builds only those targets; RAINSERVE_KEEP_GOING=1
# builds every target it can when one fails to compile.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu/env.sh

if [ ! -f /opt/sys/.unpacked ]; then
  mkdir -p /opt/sys
  for f in .deps/debs/*.deb; do dpkg -x "$f" /opt/sys; done
  touch /opt/sys/.unpacked
fi

torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
build_dir=${RAINSERVE_BUILD_DIR:-build-gpu}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DRAINSERVE_ENABLE_CUDA=ON \
  -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" \
  -DCMAKE_PREFIX_PATH="$torch_prefix;/opt/sys/usr" \
  -DProtobuf_PROTOC_EXECUTABLE=/opt/sys/usr/bin/protoc \
  -DProtobuf_LIBRARY=/opt/sys/usr/lib/x86_64-linux-gnu/libprotobuf.so \
  -DProtobuf_INCLUDE_DIR=/opt/sys/usr/include \
  -DCMAKE_CUDA_ARCHITECTURES=90a \
  -DRAINSERVE_WITH_VIDEO=OFF \
  "$@"
cmake --build "$build_dir" -j "${RAINSERVE_JOBS:-16}" ${RAINSERVE_BUILD_TARGETS:+--target $RAINSERVE_BUILD_TARGETS} \
  ${RAINSERVE_KEEP_GOING:+-- -k 0}
