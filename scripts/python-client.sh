#!/usr/bin/env bash
# Runs the Python example client (examples/python/rainserve_client.py) with
# an interpreter that has grpcio and with the stubs generated at build time on
# PYTHONPATH. Arguments go to the client (--help lists them).
#
# The interpreter: $RAINSERVE_PYTHON if set, else Debian's /usr/bin/python3
# (python3-grpcio, installed by scripts/install_deps.sh), else the first
# python3 on PATH; the first of these that imports grpc and protobuf is used,
# so a version manager's python3 earlier on PATH does not break it. The stubs:
# $RAINSERVE_BUILD_DIR/examples/python/gen (default build/).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build_dir="${RAINSERVE_BUILD_DIR:-$root/build}"
stubs="$build_dir/examples/python/gen"
if [[ ! -f "$stubs/rainserve/v1/generation_pb2.py" ]]; then
  echo "python-client.sh: no Python stubs in $stubs: build first (scripts/build.sh)" >&2
  exit 2
fi
for python in "${RAINSERVE_PYTHON:-}" /usr/bin/python3 "$(command -v python3 || true)"; do
  [[ -n "$python" && -x "$python" ]] || continue
  if "$python" -c 'import grpc, google.protobuf' 2>/dev/null; then
    export PYTHONPATH="$stubs${PYTHONPATH:+:$PYTHONPATH}"
    exec "$python" "$root/examples/python/rainserve_client.py" "$@"
  fi
done
echo "python-client.sh: no python3 with grpcio and protobuf found: install Debian's" \
     "python3-grpcio python3-protobuf (scripts/install_deps.sh), or set RAINSERVE_PYTHON" >&2
exit 2
