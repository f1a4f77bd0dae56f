#!/usr/bin/env bash
# Builds the common, attention and server test suites (and rainserve-server,
# which the server suites start as a child process), the input-image decoder
# suite and the SentencePiece tokenizer suite with AddressSanitizer and
# UndefinedBehaviorSanitizer (-DRAINSERVE_SANITIZE=ON) into ./build-asan and
# runs them with ctest. The server suites run the embedded wan-tiny model end
# to end (tokenizer, text encoder, transformer, VAE), so the model code runs
# instrumented too. Any sanitizer report fails the test it occurs in: UBSan
# aborts (-fno-sanitize-recover), ASan halts on the first error, and
# LeakSanitizer checks every process at exit, the server children included.
# docs/security.md ("Sanitizers") says what this covers and what it leaves out.
#
#   scripts/asan.sh                  build, then ctest -L 'common|attention|server|tokenizer|image'
#   scripts/asan.sh -R e2e_test      extra arguments go to ctest
# RAINSERVE_BUILD_DIR picks the folder, RAINSERVE_JOBS the build parallelism.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${RAINSERVE_BUILD_DIR:-build-asan}
jobs=${RAINSERVE_JOBS:-$(nproc)}

# RelWithDebInfo: reports name files and lines. No benchmarks, only the
# targets behind the selected labels (tests/*/CMakeLists.txt).
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DRAINSERVE_SANITIZE=ON -DRAINSERVE_BUILD_BENCH=OFF
targets=(common_test server_config_test attention_core_test attention_parity_test attention_torch_test
         rainserve-server server_test job_manager_test generation_service_test
         model_manager_test metrics_http_test e2e_test e2e_models_test cli_process_test image_request_test
         rainserve_python_stubs sentencepiece_test image_ops_test image_decoder_test)
cmake --build "$build_dir" -j "$jobs" --target "${targets[@]}"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

ctest --test-dir "$build_dir" --output-on-failure -j "$jobs" \
  -L 'common|attention|server|tokenizer|image' "$@"
