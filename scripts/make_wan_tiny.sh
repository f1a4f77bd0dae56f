#!/usr/bin/env bash
# Regenerates the embedded tiny models with tools/make_wan_checkpoint
# (deterministic: the committed files are exactly what this writes):
#   models/wan-tiny     preset tiny        Wan2.1 text-to-video (the default model)
#   models/wan22-tiny   preset wan22-tiny  Wan2.2 A14B layout: two experts
#   models/ti2v-tiny    preset ti2v-tiny   Wan2.2 TI2V-5B layout: Wan2.2 VAE, image mode
#   models/i2v-tiny     preset i2v-tiny    Wan2.1 I2V layout: CLIP image encoder
#
#   scripts/make_wan_tiny.sh            rewrite every tiny model
#   scripts/make_wan_tiny.sh --check    regenerate in a temporary folder and
#                                       compare with the committed files
# RAINSERVE_BUILD_DIR picks the build folder (default build).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
models=(wan-tiny:tiny wan22-tiny:wan22-tiny ti2v-tiny:ti2v-tiny i2v-tiny:i2v-tiny)
tool=${RAINSERVE_BUILD_DIR:-build}/tools/make_wan_checkpoint
case "$tool" in /*) ;; *) tool="$root/$tool" ;; esac
[ -x "$tool" ] || RAINSERVE_BUILD_TARGET=make_wan_checkpoint scripts/build.sh >/dev/null
if [ "${1:-}" = "--check" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # Same relative paths as a run from the repository root: the tokenizer
  # model records its training input and output names.
  mkdir -p "$tmp/tools" "$tmp/models"
  ln -s "$root/tools/data" "$tmp/tools/data"
  for m in "${models[@]}"; do
    (cd "$tmp" && "$tool" --out "models/${m%%:*}" --preset "${m##*:}" \
       --corpus tools/data/tiny_corpus.txt >/dev/null)
    diff -r "$tmp/models/${m%%:*}" "models/${m%%:*}"
    echo "make_wan_tiny: models/${m%%:*} matches a fresh generation"
  done
else
  mkdir -p models
  for m in "${models[@]}"; do
    rm -rf "models/${m%%:*}"
    "$tool" --out "models/${m%%:*}" --preset "${m##*:}" --corpus tools/data/tiny_corpus.txt
    du -sh "models/${m%%:*}"
  done
fi
