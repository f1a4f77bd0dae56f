#!/usr/bin/env bash
# On the GPU machine: build, run the GPU tests, the UMT5 parity check against
# transformers and the whole-pipeline benchmark of the embedded model in bf16.
#   scripts/gpu/pipeline_check.sh
# Results go to bench/results/ (and copies, with logs, to $OUT or ./gpu-out).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-gpu-out}
mkdir -p "$out"
start=$(date +%s)
scripts/gpu/build.sh > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
source scripts/gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

ctest --test-dir build-gpu --output-on-failure -L gpu > "$out/ctest_gpu.log" 2>&1
echo "gpu tests rc=$?"; grep -E "tests passed|Failed|FAILED|Passed|mean \|" "$out/ctest_gpu.log" | tail -12

# UMT5 vs transformers (fp32, same random weights and inputs), CPU and GPU.
for dev in cpu cuda; do
  build-gpu/tools/umt5_dump "$out/umt5-$dev" --device "$dev" > "$out/umt5_dump_$dev.log" 2>&1
  python3 bench/parity/umt5_parity.py "$out/umt5-$dev" --device "$dev" \
    --json "$out/umt5_parity_$dev.json" 2>&1 | tail -6
done
python3 - "$out" <<'PY'
import json, sys, datetime
out = sys.argv[1]
rows = []
for dev in ("cpu", "cuda"):
    try:
        r = json.load(open(f"{out}/umt5_parity_{dev}.json")); r["device"] = dev; rows.append(r)
    except OSError:
        pass
gpu = open(f"{out}/gpu.txt").read().split(",")[0].strip()
json.dump({"benchmark": "umt5_parity", "date": datetime.date.today().isoformat(), "machine": gpu,
           "command": "build-gpu/tools/umt5_dump DIR --device D && python3 bench/parity/umt5_parity.py DIR --device D",
           "rows": rows}, open("bench/results/umt5_parity.json", "w"), indent=2)
PY

# The embedded model end to end on the GPU (bf16) and, as the baseline of
# the same run, dense attention.
build-gpu/bench/wan_pipeline_bench --model models/wan-tiny --device cuda:0 --dtype bf16 \
  --threads 8 --reps 3 --sparsities 0,0.5,0.8 --machine "$(cut -d, -f1 "$out/gpu.txt")" \
  --out bench/results/wan_tiny_gpu.json 2>&1 | tail -5
cp bench/results/umt5_parity.json bench/results/wan_tiny_gpu.json "$out/" 2>/dev/null
echo "total: $(( $(date +%s) - start )) s"
