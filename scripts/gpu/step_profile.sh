#!/usr/bin/env bash
# On the GPU machine: where the time of one W1 denoising step goes, kernel by
# kernel. Runs one profiled forward of wan_step_bench under ncu (kernel
# durations only, clocks not locked) and sums the durations by kernel name.
#   scripts/gpu/step_profile.sh [mode, default rainserve_sparse_0.8_sink1]
# Prints the table; the raw CSV and the table go to $OUT (or ./gpu-out).
# Read the shares, not the sums: ncu runs each kernel alone after flushing the
# caches, and the first profiled layer's GEMMs read several times slower than
# the rest (the clock ramps up again after the synchronisation before the
# range), so the total exceeds the step time (656 ms for a 493 ms step).
set -uo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-rainserve_sparse_0.8_sink1}
out=${OUT:-gpu-out}
mkdir -p "$out"
start=$(date +%s)
RAINSERVE_BUILD_TARGETS="wan_step_bench" scripts/gpu/build.sh > "$out/build.log" 2>&1 ||
  { tail -40 "$out/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
source scripts/gpu/env.sh
ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum --csv \
  build-gpu/bench/wan_step_bench --steps 1 --only "$mode" --profile 1 \
  > "$out/profile_$mode.csv" 2> "$out/profile_$mode.err"
echo "ncu rc=$?"
python3 - "$out/profile_$mode.csv" <<'PY' | tee "$out/profile_$mode.txt"
import csv, collections, sys
rows = [l for l in open(sys.argv[1]) if l.startswith('"')]
total, count = collections.Counter(), collections.Counter()
for r in csv.DictReader(rows):
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    value = float(r["Metric Value"].replace(",", ""))
    unit = r["Metric Unit"]
    scale = {"ns": 1e-6, "nsecond": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0, "msecond": 1.0,
             "s": 1e3, "second": 1e3}[unit]
    name = r["Kernel Name"].split("(")[0][:90]
    total[name] += value * scale
    count[name] += 1
grand = sum(total.values())
print(f"{'ms':>9} {'share':>6} {'calls':>6}  kernel")
for name, ms in total.most_common(30):
    print(f"{ms:9.2f} {100 * ms / grand:5.1f}% {count[name]:6d}  {name}")
print(f"{grand:9.2f} total over {sum(count.values())} kernels")
PY
echo "total: $(( $(date +%s) - start )) s"
