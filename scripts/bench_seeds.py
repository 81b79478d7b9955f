"""Several seeds on one GPU: wall time of N seeds side by side (``seeds=[...]``) against one seed.

    python scripts/bench_seeds.py [--epochs 80] [--method dora] [--seeds 1,2,3,4,5]

Both runs go through the real CLI (``python -m dynrank.train``) with the fast path on
(``train.bf16=true train.cuda_graphs=true``), task=rte with the paper's hyperparameters (batch 16,
lr 2e-3, 80 epochs unless --epochs says otherwise), on a RoBERTa-base-sized encoder with random weights
(``model=tiny`` grown to 12 layers x 768, with the small shipped tokenizer: the Hub is not reachable on the
GPU machines). RTE itself is not available offline, so the script writes an RTE-shaped data set in the
classic layout (2,490 train / 277 dev pairs; premises of about 40 words, hypotheses of about 9, drawn
from CoLA's vocabulary): the timing depends on the shapes, not on the words. Writes
``benchmarks/seeds-<device>-<date>.json`` with both wall times and their ratio.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASE = ["model=tiny", "model.tiny.hidden_size=768", "model.tiny.num_hidden_layers=12",
        "model.tiny.num_attention_heads=12", "model.tiny.intermediate_size=3072"]


def write_rte_like(root: Path, seed: int = 0) -> Path:
    words = []
    cola = Path(__file__).resolve().parents[2] / "shared/data/glue/CoLA/train.tsv"
    if cola.exists():
        with open(cola) as f:
            for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                words += row[3].split()
    words = words or [f"word{i}" for i in range(5000)]
    rng = random.Random(seed)

    def sent(mean, sd, lo, hi):
        n = max(lo, min(hi, int(rng.gauss(mean, sd))))
        return " ".join(rng.choice(words) for _ in range(n))

    d = root / "RTE"
    d.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 2490), ("dev", 277)):
        with open(d / f"{split}.tsv", "w") as f:
            f.write("index\tsentence1\tsentence2\tlabel\n")
            for i in range(n):
                label = "entailment" if rng.random() < 0.5 else "not_entailment"
                f.write(f"{i}\t{sent(40, 20, 6, 110)}\t{sent(9, 4, 3, 30)}\t{label}\n")
    return root


def timed(args: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "dynrank.train", *args], cwd=cwd, env=env, capture_output=True, text=True)
    dt = time.time() - t0
    if p.returncode != 0:
        sys.exit(f"error: {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    return dt, p


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--method", default="dora")
    ap.add_argument("--seeds", default="1,2,3,4,5")
    ap.add_argument("--out", default=str(ROOT / "benchmarks"))
    ap.add_argument("--tiny", action="store_true", help="the 2-layer tiny model (a CPU smoke test of this script)")
    ap.add_argument("--extra", nargs="*", default=["train.bf16=true", "train.cuda_graphs=true", "train.pad_to_multiple=16"])
    args = ap.parse_args(argv)
    import torch

    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(tempfile.mkdtemp(prefix="dynrank-seeds-"))
    data = write_rte_like(work / "glue")
    common = ["task=rte", f"method={args.method}", *(["model=tiny"] if args.tiny else BASE), f"data.dir={data}", f"data.cache_dir={work / 'cache'}",
              f"train.epochs={args.epochs}", "train.progress=false", *args.extra]
    t_one, _ = timed([*common, f"seed={seeds[0]}", f"results.store={work / 'one'}", f"hydra.run.dir={work / 'one_run'}"],
                     work)
    print(f"one seed: {t_one:.1f}s", flush=True)
    t_all, _ = timed([*common, f"seeds=[{','.join(map(str, seeds))}]", f"results.store={work / 'all'}",
                      f"hydra.run.dir={work / 'all_run' / 'x'}"], work)
    print(f"{len(seeds)} seeds side by side: {t_all:.1f}s  (ratio {t_all / t_one:.2f})", flush=True)
    runs = sorted((work / "all").rglob("seed*.json"))
    one = json.loads(next((work / "one").rglob("seed*.json")).read_text())
    same = json.loads(runs[0].read_text())
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    report = {
        "device": device, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python scripts/bench_seeds.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "method": args.method, "epochs": args.epochs, "seeds": seeds, "overrides": common,
        "wall_one_seed_s": t_one, "wall_all_seeds_s": t_all, "ratio": t_all / t_one,
        "results_files": len(runs),
        "seed1_best_alone": one["best"], "seed1_best_side_by_side": same["best"],
        "time_per_epoch_s_one_seed": one["time_per_epoch_s"],
    }
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
    out = Path(args.out) / f"seeds-{device.replace(' ', '_')}-{stamp}.json"
    from dynrank.results import write_json

    write_json(out, report)
    print(json.dumps({k: v for k, v in report.items() if k not in ("overrides", "time_per_epoch_s_one_seed")}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
