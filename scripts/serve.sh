#!/usr/bin/env bash
# One command from a fresh Debian 12 clone to a running service:
# installs the Debian packages, builds, and starts rainserve-server with
# configs/server.yaml (gRPC on 127.0.0.1:50051, metrics on 127.0.0.1:9464).
# Arguments are passed to the server (see rainserve-server --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
exec build/server/rainserve-server --config configs/server.yaml "$@"
