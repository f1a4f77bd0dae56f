#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu/build.sh: the Wan2.2 checks.
#   scripts/gpu/wan22_check.sh DIFFUSERS_SRC_PARENT
# - the GPU tests of the Wan pipeline (two experts resident and offloaded);
# - the diffusers reference (bench/parity/wan_reference.py, fp32 on the CPU)
#   on models/wan22-tiny and on a two-expert checkpoint written by diffusers'
#   own save_pretrained, each compared by tools/wan_parity;
# - the expert-switch benchmark (14B experts, resident vs offloaded).
# Everything goes to $OUT (default gpu-out).
set -uo pipefail
cd "$(dirname "$0")/../.."
ref_src=$1
out=${OUT:-gpu-out}
mkdir -p "$out"
source scripts/gpu/env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
build-gpu/tests/gpu/wan_pipeline_cuda_test > "$out/wan_pipeline_cuda_test.log" 2>&1
echo "wan_pipeline_cuda_test rc=$?"; grep -E "OK|FAILED|PASSED" "$out/wan_pipeline_cuda_test.log" | tail -5
commit=${DIFFUSERS_COMMIT:-}
export PYTHONPATH="$ref_src${PYTHONPATH:+:$PYTHONPATH}"
python3 bench/parity/wan_reference.py --model models/wan22-tiny --out "$out/ref-wan22" \
  --parts transformer,pipeline --diffusers-commit "$commit" --threads 8 > "$out/ref_wan22.log" 2>&1
echo "reference wan22-tiny rc=$?"; tail -3 "$out/ref_wan22.log"
python3 bench/parity/wan_reference.py --model models/wan22-tiny --out "$out/ref-written" \
  --write-checkpoint /tmp/diffusers-written --diffusers-commit "$commit" --threads 8 \
  > "$out/ref_written.log" 2>&1
echo "reference diffusers-written rc=$?"; tail -3 "$out/ref_written.log"
build-gpu/tools/wan_parity --reference "$out/ref-wan22" --model models/wan22-tiny \
  --json "$out/parity_wan22_tiny.json" > /dev/null 2>&1
echo "parity wan22-tiny rc=$?"
build-gpu/tools/wan_parity --reference "$out/ref-written" --model /tmp/diffusers-written \
  --json "$out/parity_diffusers_written.json" > /dev/null 2>&1
echo "parity diffusers-written rc=$?"
python3 - "$out" <<'PY'
import json, sys
for name in ("parity_wan22_tiny", "parity_diffusers_written"):
    try:
        r = json.load(open(f"{sys.argv[1]}/{name}.json"))
    except OSError:
        print(name, "missing"); continue
    print(name, "ok" if r["ok"] else "NOT OK", r.get("failures"), r.get("reference_errors", {}).keys())
    for row in r["rows"]:
        print("  %-40s %-4s %.3g (tol %.3g)%s" % (row["component"], row.get("measure", ""), row["error"],
              row.get("tolerance", 0), "" if row.get("ok", True) else "  FAIL"))
PY
build-gpu/bench/wan_expert_bench --switches 3 --out "$out/wan_experts_gpu.json" 2>&1 | tail -4
