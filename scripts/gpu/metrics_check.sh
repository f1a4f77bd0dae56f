#!/usr/bin/env bash
# On the GPU machine: starts rainserve-server with wan-tiny on cuda:0, runs
# one request and prints the device metrics (CUDA memory, NVML utilisation).
set -uo pipefail
cd "$(dirname "$0")/../.."
RAINSERVE_BUILD_TARGETS="rainserve-server rainserve-cli" scripts/gpu/build.sh > /dev/null 2>&1 ||
  { echo "build failed"; exit 1; }
source scripts/gpu/env.sh
work=$(mktemp -d)
cat > "$work/server.yaml" <<YAML
server: {listen_address: "127.0.0.1:0", metrics_address: "127.0.0.1:0"}
models:
  - {name: wan-tiny, path: $PWD/models/wan-tiny, device: "cuda:0", dtype: bf16}
YAML
build-gpu/server/rainserve-server --config "$work/server.yaml" --port-file "$work/ports.json" \
  > "$work/server.log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "ready in" "$work/server.log" 2>/dev/null && break; sleep 0.2; done
grpc=$(python3 -c "import json; print(json.load(open('$work/ports.json'))['grpc_port'])")
metrics=$(python3 -c "import json; print(json.load(open('$work/ports.json'))['metrics_port'])")
build-gpu/tools/rainserve-cli --target 127.0.0.1:$grpc generate --prompt "a boat" --format raw \
  --out "$work/out" 2>/dev/null | tail -1
python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$metrics/metrics').read().decode())" | grep -E "^rainserve_device|^rainserve_request_peak"
kill -TERM $pid; wait $pid; echo "server exit: $?"
rm -rf "$work"
