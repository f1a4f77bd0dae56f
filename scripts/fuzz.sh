#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang (ASan + UBSan) into
# ./build-fuzz and runs each one for a bounded time after replaying its corpus.
# Fails on any crash, leak, timeout or sanitizer report; the input that
# triggered it is left in build-fuzz/artifacts/<name>/.
#
#   scripts/fuzz.sh                  every fuzzer, RAINSERVE_FUZZ_SECONDS (30) each
#   scripts/fuzz.sh mask config      only these
# RAINSERVE_BUILD_DIR picks the folder, RAINSERVE_JOBS the build parallelism.
# New inputs a run finds stay in build-fuzz/corpus/<name>/; copy the
# interesting ones into tests/fuzz/corpus/<name>/ by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${RAINSERVE_BUILD_DIR:-build-fuzz}
seconds=${RAINSERVE_FUZZ_SECONDS:-30}
jobs=${RAINSERVE_JOBS:-$(nproc)}
fuzzers=("$@")
if [ ${#fuzzers[@]} -eq 0 ]; then
  fuzzers=(config request mask image tokenizer safetensors safetensors_index)
fi

# clang and libFuzzer are in the package list.
command -v clang++ >/dev/null || scripts/install_deps.sh

# Only what the fuzzers link is built (tests/fuzz/CMakeLists.txt lists it).
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DRAINSERVE_FUZZ=ON \
  -DRAINSERVE_BUILD_TESTS=OFF -DRAINSERVE_BUILD_BENCH=OFF -DRAINSERVE_WITH_VIDEO=OFF
targets=()
for f in "${fuzzers[@]}"; do targets+=(--target "fuzz_$f"); done
cmake --build "$build_dir" -j "$jobs" "${targets[@]}"

# Leaks count as failures; UBSan reports abort (-fno-sanitize-recover).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export RAINSERVE_SOURCE_DIR=$PWD

failed=()
for f in "${fuzzers[@]}"; do
  seeds=tests/fuzz/corpus/$f
  work=$build_dir/corpus/$f
  artifacts=$build_dir/artifacts/$f
  mkdir -p "$work" "$artifacts"
  echo "fuzz.sh: fuzz_$f for ${seconds}s ($(find "$seeds" -type f | wc -l) seeds)"
  # New inputs go to the first folder (the scratch copy); seeds are only read.
  if ! "$build_dir/tests/fuzz/fuzz_$f" "$work" "$seeds" \
      -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -max_len=65536 \
      -artifact_prefix="$artifacts/" -print_final_stats=1 2>"$build_dir/fuzz_$f.log"; then
    tail -n 60 "$build_dir/fuzz_$f.log" >&2
    failed+=("$f")
  else
    grep -E "^(Done|stat::number_of_executed_units)" "$build_dir/fuzz_$f.log" || true
  fi
done

if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz.sh: FAILED: ${failed[*]} (inputs in $build_dir/artifacts/)" >&2
  exit 1
fi
echo "fuzz.sh: ${#fuzzers[@]} fuzzers ran ${seconds}s each without a finding"
