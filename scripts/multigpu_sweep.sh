#!/usr/bin/env bash
# The issue-13 measurement: one sweep of 4 jobs (4 methods, each training seeds=[1,2,3] in one process) over
# all GPUs of the host with hydra/launcher=local_gpus, against the same sweep on one GPU (basic launcher,
# CUDA_VISIBLE_DEVICES=0). nvidia-smi samples every GPU once a second in the background. Writes to $DEST
# (default benchmarks/): multigpu-<device>-<date>.json (wall times, results count, the GPU each run claimed,
# GPU utilisation per GPU, the command) and the nvidia-smi samples, smi-<mode>.csv.
#
#   scripts/multigpu_sweep.sh [extra overrides...]           # e.g. train.bf16=true train.cuda_graphs=true
#   MODE=ngpu scripts/multigpu_sweep.sh ...   # only the sweep over all GPUs (MODE=1gpu: only the one-GPU sweep;
#                                             # default both, the all-GPU sweep first)
# Needs: hydra-joblib-launcher (pip install -e '.[launchers]'), MRPC in $GLUE (default ../shared/data/glue),
# the MiniLM weights in $DYNRANK_MINILM (default ../shared/models/all-MiniLM-L6-v2), nvidia-smi.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${MODE:-both}
GLUE=${GLUE:-../shared/data/glue}
DEST=${DEST:-benchmarks}
WORK=${WORK:-$(mktemp -d /tmp/multigpu.XXXXXX)}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export DYNRANK_GPU_LOCKS=$WORK/locks
python3 -c "import hydra_plugins.hydra_joblib_launcher" 2>/dev/null \
  || { echo "error: hydra-joblib-launcher is not installed (pip install -e '.[launchers]')" >&2; exit 2; }
mkdir -p "$DEST" "$WORK"
nvidia-smi -L
SWEEP=(model=minilm task=mrpc method=lora,dora,adalora,full "seeds=[1,2,3]" "data.dir=$GLUE"
       train.progress=false "$@")

run() {  # run <mode> <CUDA_VISIBLE_DEVICES or ""> <launcher>: one sweep, timed, nvidia-smi sampling meanwhile
  local mode=$1 gpus=$2 launcher=$3
  nvidia-smi --query-gpu=timestamp,index,uuid,utilization.gpu,memory.used --format=csv,noheader,nounits \
    -l 1 > "$DEST/smi-$mode.csv" &
  local smi=$! t0 t1
  t0=$(date +%s.%N)
  env ${gpus:+CUDA_VISIBLE_DEVICES=$gpus} python3 -m dynrank.train -m "$launcher" "${SWEEP[@]}" \
    "results.store=$WORK/store-$mode" "hydra.sweep.dir=$WORK/multirun-$mode" > "$WORK/$mode.log" 2>&1 \
    || { tail -40 "$WORK/$mode.log"; kill $smi; exit 1; }
  t1=$(date +%s.%N)
  kill $smi; wait $smi 2>/dev/null || true
  echo "$mode $(python3 -c "print(round($t1 - $t0, 1))")" >> "$WORK/walls"
  echo "$mode: $(tail -1 "$WORK/walls" | cut -d' ' -f2) s, $(find "$WORK/store-$mode" -name 'seed*.json' | wc -l) results files"
}

if [[ $MODE == both || $MODE == ngpu ]]; then run ngpu "${CUDA_VISIBLE_DEVICES:-}" hydra/launcher=local_gpus; fi
if [[ $MODE == both || $MODE == 1gpu ]]; then
  first=${CUDA_VISIBLE_DEVICES:-0}; run 1gpu "${first%%,*}" hydra/launcher=basic
fi

python3 - "$WORK" "$DEST" "$*" <<'EOF'
"""Summary: wall time per sweep, the results files (each must load and hold a best dev score), which GPU
each run used, and how busy each GPU was (share of nvidia-smi samples above 10% utilisation, mean, peak)."""
import csv, json, subprocess, sys, time
from collections import defaultdict
from pathlib import Path

work, dest, extra = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
out = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "extra_overrides": extra,
       "command": "python -m dynrank.train -m model=minilm task=mrpc method=lora,dora,adalora,full seeds=[1,2,3]",
       "gpus": subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.splitlines(), "sweeps": {}}
for line in (work / "walls").read_text().split("\n"):
    if not line:
        continue
    mode, wall = line.split()
    runs = []
    for f in sorted((work / f"store-{mode}").rglob("seed*.json")):
        r = json.loads(f.read_text())  # a damaged file fails here
        runs.append({"run_id": r["run_id"], "best": r["best"]["dev"][r["metric"]], "device": r["device"],
                     "gpu": r.get("gpu"), "wall_time_s": round(r["wall_time_s"], 1)})
    util = defaultdict(list)
    for row in csv.reader(open(dest / f"smi-{mode}.csv")):
        util[row[1].strip()].append(float(row[3]))
    out["sweeps"][mode] = {
        "launcher": "hydra/launcher=local_gpus" if mode == "ngpu" else "basic, CUDA_VISIBLE_DEVICES=0",
        "wall_s": float(wall), "results_files": len(runs),
        "gpus_claimed": sorted({str((r["gpu"] or {}).get("claimed")) for r in runs}),
        "gpu_uuids": sorted({str((r["gpu"] or {}).get("uuid")) for r in runs}),
        "utilisation": {g: {"busy_share": round(sum(u > 10 for u in v) / len(v), 2),
                            "mean": round(sum(v) / len(v), 1), "max": max(v)} for g, v in util.items()},
        "runs": runs}
s = out["sweeps"]
if "ngpu" in s and "1gpu" in s:
    out["speedup"] = round(s["1gpu"]["wall_s"] / s["ngpu"]["wall_s"], 2)
device = (out["gpus"][0].split(":")[1].split("(")[0].strip().replace(" ", "_") if out["gpus"] else "cpu")
path = dest / f"multigpu-{len(out['gpus'])}x{device}-{time.strftime('%Y%m%d-%H%M')}.json"
path.write_text(json.dumps(out, indent=1) + "\n")
print(json.dumps({m: {k: v for k, v in x.items() if k != "runs"} for m, x in s.items()}, indent=1))
print("speedup:", out.get("speedup"), "| written:", path)
EOF
