#!/usr/bin/env bash
# Regenerates the embedded default model models/wan-tiny with tools/make_wan_checkpoint
# (deterministic: the committed files are exactly what this writes).
#   scripts/make_wan_tiny.sh            rewrite models/wan-tiny
#   scripts/make_wan_tiny.sh --check    regenerate in a temporary folder and
#                                       compare with the committed files
# RAINSERVE_BUILD_DIR picks the build folder (default build).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
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
  (cd "$tmp" && "$tool" --out models/wan-tiny --preset tiny --corpus tools/data/tiny_corpus.txt >/dev/null)
  diff -r "$tmp/models/wan-tiny" models/wan-tiny
  echo "make_wan_tiny: models/wan-tiny matches a fresh generation"
else
  rm -rf models/wan-tiny
  mkdir -p models
  "$tool" --out models/wan-tiny --preset tiny --corpus tools/data/tiny_corpus.txt
  du -sh models/wan-tiny
fi
