#!/usr/bin/env bash
# Installs every Debian 12 package RainServe needs to build, test and run.
# Idempotent: packages already present are left alone and nothing else changes.
# Usage: scripts/install_deps.sh        (as root, or with sudo available)
set -euo pipefail

packages=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config git curl ca-certificates
  # fuzzing (scripts/fuzz.sh): clang with libFuzzer and the sanitizer runtimes
  clang libclang-rt-14-dev
  # rpc and serialisation
  libgrpc++-dev libgrpc-dev protobuf-compiler protobuf-compiler-grpc libprotobuf-dev
  # configuration, metrics, json
  libyaml-cpp-dev prometheus-cpp-dev nlohmann-json3-dev
  # tensors: LibTorch (CPU) and a fast multi-threaded BLAS for it
  libtorch-dev libopenblas0-openmp
  # tests (openssl: certificates for the TLS end-to-end tests)
  libgtest-dev libgmock-dev googletest openssl
  # tokenizer training (tools/make_wan_checkpoint and the tokenizer tests;
  # the server reads spiece.model itself), images, video
  libsentencepiece-dev sentencepiece libpng-dev libjpeg62-turbo-dev
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev
  # artifact checksums (SHA-256)
  libssl-dev
  # the Python example client (stubs are generated at build time)
  python3 python3-grpcio python3-protobuf
  # deployment checks (tests/deploy): a real Prometheus and promtool, the
  # compose-file validator (no Docker engine), YAML for the manifests
  prometheus docker-compose python3-yaml
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#packages[@]} packages already installed"
  exit 0
fi

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
echo "install_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
