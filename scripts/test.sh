#!/usr/bin/env bash
# One command from a fresh Debian 12 clone to a tested build: installs the
# Debian packages, builds, and runs every test suite with ctest. Tests that
# need a GPU skip themselves on machines without one.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
ctest --test-dir build --output-on-failure -j "$(nproc)"
