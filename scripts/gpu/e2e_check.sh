#!/usr/bin/env bash
# On the GPU machine: a full-size Wan2.1-T2V-1.3B-configuration checkpoint
# (random weights, bf16, sharded) written by tools/make_wan_checkpoint, served
# by rainserve-server on cuda:0, and W1-shaped requests (832x480, 81 frames,
# CFG) sent through gRPC by rainserve-cli: dense (LibTorch SDPA: the
# pipeline's dense mode on CUDA), RainFusion2.0
# 0.8 and 0.9 with the first-frame sink. Output format raw RGB (no encoder
# on the GPU build; writes bench/results/e2e_service_gpu.json) or the
# undecoded latents (no VAE; bench/results/e2e_service_gpu_latents.json).
#   scripts/gpu/e2e_check.sh [steps, default 10] [raw|latents, default raw]
set -uo pipefail
cd "$(dirname "$0")/../.."
steps=${1:-10}
format=${2:-raw}
result_file=bench/results/e2e_service_gpu.json
[ "$format" = latents ] && result_file=bench/results/e2e_service_gpu_latents.json
out=${OUT:-gpu-out}
mkdir -p "$out"
work=$(mktemp -d)
start=$(date +%s)
RAINSERVE_BUILD_TARGETS="make_wan_checkpoint rainserve-server rainserve-cli" \
  scripts/gpu/build.sh > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
source scripts/gpu/env.sh
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)

t0=$(date +%s.%N)
build-gpu/tools/make_wan_checkpoint --preset 1.3b --device cuda:0 --shard-gb 2 \
  --out "$work/wan-1.3b" 2>&1 | tail -2
ckpt_seconds=$(python3 -c "import time; print(round(time.time() - $t0, 1))")
du -sh "$work/wan-1.3b"/* | tee "$out/ckpt_sizes.txt"

cat > "$work/server.yaml" <<YAML
server:
  listen_address: "127.0.0.1:0"
  metrics_address: "127.0.0.1:0"
  drain_timeout_seconds: 30
models:
  - name: wan-1.3b
    path: $work/wan-1.3b
    device: cuda:0
    dtype: bf16
    threads: 8
    defaults: {width: 832, height: 480, num_frames: 81, steps: $steps, guidance_scale: 5.0}
YAML
build-gpu/server/rainserve-server --config "$work/server.yaml" --port-file "$work/ports.json" \
  > "$out/server.log" 2>&1 &
pid=$!
for _ in $(seq 600); do
  grep -q "ready in\|failed to load" "$out/server.log" 2>/dev/null && break
  sleep 0.5
done
grep "ready in\|failed to load" "$out/server.log"
port=$(python3 -c "import json; print(json.load(open('$work/ports.json'))['grpc_port'])")
host_peak_kb=$(grep VmHWM /proc/$pid/status | awk '{print $2}')
gpu_used_mb=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)

cli="build-gpu/tools/rainserve-cli --target 127.0.0.1:$port generate --model wan-1.3b --json --format $format --seed 1"
prompt="a paper boat drifts down a rainy street, cinematic"
$cli --prompt "$prompt" --steps 2 --out "$work/warm" > /dev/null   # warm-up
for mode in dense "0.8" "0.9"; do
  if [ "$mode" = dense ]; then flags="--attention dense"; else flags="--sparsity $mode --sink-frames 1"; fi
  $cli --prompt "$prompt" $flags --out "$work/run" > "$out/run_$mode.json" || echo "run $mode failed"
  rm -f "$work"/run*
done
kill -TERM $pid; wait $pid; echo "server exit: $?"

python3 - "$out" "$gpu" "$ckpt_seconds" "$host_peak_kb" "$gpu_used_mb" "$steps" "$format" \
  "$result_file" <<'PY'
import json, sys, datetime, re
out, gpu, ckpt_s, host_kb, gpu_mb, steps, fmt, result_file = sys.argv[1:]
log = open(f"{out}/server.log").read()
m = re.search(r"ready in ([0-9.]+) s", log)
def secs(d):
    return float(str(d).rstrip("s")) if d else 0.0
rows = []
for mode in ("dense", "0.8", "0.9"):
    try:
        r = json.load(open(f"{out}/run_{mode}.json"))
    except Exception as e:
        rows.append({"mode": mode, "error": str(e)}); continue
    res, t = r["result"], r["result"]["timings"]
    stages = secs(t.get("text_encode")) + secs(t.get("denoise")) + secs(t.get("decode"))
    steps_stats = res.get("steps", [])
    per_step = sorted(secs(s.get("duration")) for s in steps_stats)
    rows.append({
        "mode": mode, "impl": "torch_sdpa" if mode == "dense" else "rainserve_sparse",
        "sparsity": 0.0 if mode == "dense" else float(mode), "sink_frames": 0 if mode == "dense" else 1,
        "realized_sparsity": res.get("realized_sparsity", 0.0),
        "seconds_per_step_median": per_step[len(per_step) // 2] if per_step else None,
        "seconds_per_step_min": per_step[0] if per_step else None,
        "seconds_per_step_max": per_step[-1] if per_step else None,
        "seconds_text_encode": secs(t.get("text_encode")), "seconds_denoise": secs(t.get("denoise")),
        "seconds_decode": secs(t.get("decode")), "seconds_encode": secs(t.get("encode")),
        "seconds_server_total": secs(t.get("total")), "seconds_client": r["client_seconds"],
        "service_overhead_share": (r["client_seconds"] - stages) / r["client_seconds"],
        "peak_gpu_bytes": int(res.get("peak_memory_bytes", 0)),
    })
dense = next((x for x in rows if x["mode"] == "dense" and "error" not in x), None)
for x in rows:
    if dense and "error" not in x and x is not dense:
        x["speedup_step_vs_sdpa"] = dense["seconds_per_step_median"] / x["seconds_per_step_median"]
        x["speedup_request_vs_sdpa"] = dense["seconds_client"] / x["seconds_client"]
result = {"benchmark": "e2e_service_gpu", "date": datetime.date.today().isoformat(), "machine": gpu,
          "command": f"scripts/gpu/e2e_check.sh {steps} {fmt}",
          "request": {"width": 832, "height": 480, "frames": 81, "steps": int(steps),
                      "guidance_scale": 5.0, "output_format": fmt, "dtype": "bf16"},
          "checkpoint": {"preset": "1.3b", "write_seconds": float(ckpt_s),
                         "load_seconds": float(m.group(1)) if m else None,
                         "server_peak_host_rss_bytes": int(host_kb) * 1024,
                         "gpu_memory_used_after_load_bytes": int(gpu_mb) * 1024 * 1024},
          "rows": rows}
json.dump(result, open(result_file, "w"), indent=2)
print(json.dumps(result, indent=1))
PY
cp "$result_file" "$out/"
rm -rf "$work"
echo "total: $(( $(date +%s) - start )) s"
