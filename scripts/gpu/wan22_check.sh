#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu/build.sh: the Wan2.2 / image-to-video checks.
#   scripts/gpu/wan22_check.sh DIFFUSERS_SRC_PARENT [MODEL...]
# - the GPU tests of the Wan pipeline (two experts resident and offloaded) and
#   of the fused ops (per-frame timesteps, image attention);
# - the diffusers reference (bench/parity/wan_reference.py, fp32 on the CPU)
#   on each embedded model (default: wan22-tiny ti2v-tiny i2v-tiny) and on a
#   two-expert checkpoint written by diffusers' own save_pretrained
#   (MODEL "diffusers-written"), and on presets of tools/make_wan_checkpoint
#   that are not embedded (e.g. i2v22-tiny, written there), each compared by
#   tools/wan_parity;
# - the expert-switch benchmark (14B experts, resident vs offloaded) when
#   RAINSERVE_EXPERT_BENCH=1.
# $OUT (default gpu-out) gets parity_<model>.json, fixtures.tar (the
# reference outputs, for tests/pipelines/data/) and logs.tar.
set -uo pipefail
cd "$(dirname "$0")/../.."
ref_src=$1
shift
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(wan22-tiny ti2v-tiny i2v-tiny)
out=${OUT:-gpu-out}
work=$(mktemp -d)
mkdir -p "$out" "$work/logs" "$work/fixtures"
source scripts/gpu/env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
for t in wan_pipeline_cuda_test wan_ops_cuda_test; do
  build-gpu/tests/gpu/$t > "$work/logs/$t.log" 2>&1
  echo "$t rc=$?"; grep -E "FAILED|PASSED" "$work/logs/$t.log" | tail -3
done
export PYTHONPATH="$ref_src${PYTHONPATH:+:$PYTHONPATH}"
for m in "${models[@]}"; do
  args=(--model "models/$m")
  model_dir="models/$m"
  if [ "$m" = diffusers-written ]; then
    args=(--model models/wan22-tiny --write-checkpoint "$work/diffusers-written")
    model_dir="$work/diffusers-written"
  elif [ ! -d "models/$m" ]; then  # a preset that is not embedded (i2v22-tiny)
    (mkdir -p "$work/models/tools" && ln -sfn "$PWD/tools/data" "$work/models/tools/data" &&
     cd "$work/models" && "$OLDPWD/build-gpu/tools/make_wan_checkpoint" --out "$m" --preset "$m" \
       > /dev/null)
    args=(--model "$work/models/$m")
    model_dir="$work/models/$m"
  fi
  python3 bench/parity/wan_reference.py "${args[@]}" --out "$work/fixtures/$m" \
    --diffusers-commit "${DIFFUSERS_COMMIT:-}" --threads 8 > "$work/logs/ref_$m.log" 2>&1
  echo "reference $m rc=$?"; grep -E "FAILED|Error" "$work/logs/ref_$m.log" | head -5
  rm -f "$work/fixtures/$m/wan_reference_f64.safetensors"
  build-gpu/tools/wan_parity --reference "$work/fixtures/$m" --model "$model_dir" \
    --json "$out/parity_$m.json" > /dev/null 2>&1
  echo "parity $m rc=$?"
done
python3 - "$out" "${models[@]}" <<'PY'
import json, sys
for m in sys.argv[2:]:
    try:
        r = json.load(open(f"{sys.argv[1]}/parity_{m}.json"))
    except OSError:
        print(m, "missing"); continue
    print(m, "ok" if r["ok"] else "NOT OK", r.get("failures"), list(r.get("reference_errors", {})))
    for row in r["rows"]:
        print("  %-36s %-4s %.3g (tol %.3g)%s" % (row["component"], row.get("measure", ""),
              row["error"], row.get("tolerance", 0), "" if row.get("ok", True) else "  FAIL"))
PY
if [ "${RAINSERVE_EXPERT_BENCH:-0}" = 1 ]; then
  build-gpu/bench/wan_expert_bench --switches 3 --out "$out/wan_experts_gpu.json" 2>&1 | tail -3
fi
tar -C "$work/fixtures" -cf "$out/fixtures.tar" .
tar -C "$work/logs" -cf "$out/logs.tar" .
