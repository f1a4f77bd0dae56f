#!/usr/bin/env bash
# Run on a Debian 12 development machine: downloads the Debian packages that
# the GPU machine lacks (gRPC, protobuf, yaml-cpp, prometheus-cpp, GoogleTest,
# ...) into .deps/debs (ignored by git). scripts/gpu/build.sh unpacks them
# there. Idempotent: packages already downloaded are kept.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=.deps/debs
mkdir -p "$dest"

packages=(
  # gRPC + protobuf + their libraries
  libabsl20220623 libabsl-dev libc-ares2 libc-ares-dev libgrpc++1.51 libgrpc++-dev
  libgrpc29 libgrpc-dev libprotobuf32 libprotobuf-dev libprotobuf-lite32 libprotoc32
  protobuf-compiler protobuf-compiler-grpc libre2-9 libre2-dev libssl3 libssl-dev zlib1g-dev
  # metrics exposer
  libcivetweb1 libcivetweb-dev civetweb libcurl4 libcurl4-openssl-dev
  libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libprometheus-cpp-push1.0 prometheus-cpp-dev
  # config, json, tests
  libyaml-cpp0.7 libyaml-cpp-dev nlohmann-json3-dev libgtest-dev libgmock-dev
  # SentencePiece training (tools, tests; the server reads spiece.model itself)
  libsentencepiece0 libsentencepiece-dev
  # PNG artifacts (video encoding is off on the GPU machine), PNG/JPEG input images
  libpng16-16 libpng-dev libjpeg62-turbo libjpeg62-turbo-dev
)

missing=()
for p in "${packages[@]}"; do
  compgen -G "$dest/${p}_*.deb" >/dev/null || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  (cd "$dest" && apt-get download "${missing[@]}")
fi
echo "fetch_debs: $(ls "$dest"/*.deb | wc -l) packages, $(du -sh "$dest" | cut -f1) in $dest"
