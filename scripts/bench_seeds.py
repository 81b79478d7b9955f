"""Several runs of one cell on one GPU: wall time of N seeds (``seeds=[...]``; with ``--lr-search`` every rate of the
method's grid for each seed) in one process against one run.

    python scripts/bench_seeds.py [--epochs 80] [--method dora] [--seeds 1,2,3,4,5] [--data DIR] [--tokenizer DIR]
    python scripts/bench_seeds.py --task mrpc --epochs 30 --lr-search --minilm DIR    # 3 rates x 5 seeds

Both commands go through the real CLI (``python -m dynrank.train``) with its defaults on a GPU (the fast path, and
the runs of the second stacked into one model: ``train.stack=auto``; ``--extra train.stack=false`` trains them side
by side instead), ``--task`` (rte) with the paper's hyperparameters (batch 16, 80 epochs
unless --epochs says otherwise, each method's own lr), on real GLUE RTE (``--data``: a GLUE directory with
``RTE/``, by default ``../shared/data/glue``; 2,490 train / 277 dev pairs). The encoder is BERT-base-sized
(12 layers x 768, the cost of RoBERTa-base) with random weights, written once to a temporary directory with
the WordPiece tokenizer of ``--tokenizer`` (all-MiniLM-L6-v2's, 30,522 tokens: RTE pairs are 67 tokens on
average with it, as with RoBERTa's BPE), and loaded as ``model=minilm model.path=<that directory>``: the Hub
is not reachable on the GPU machines, and the timing depends on the shapes, not on the weights. Without RTE
in ``--data`` an RTE-shaped synthetic set is written instead (premises of about 40 words, hypotheses of about
9, drawn from CoLA's vocabulary); without ``--tokenizer`` the model is ``model=tiny`` grown to 12 x 768 with
the small shipped tokenizer (about 107 tokens per RTE pair). Writes ``benchmarks/seeds-<device>-<date>.json``
with both wall times, their ratio and what was run.
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
SHARED = Path(__file__).resolve().parents[2] / "shared"


def write_base_sized_model(out: Path, tokenizer_dir: Path) -> Path:
    """A BERT-base-sized encoder (RoBERTa-base's cost: 12 x 768, FFN 3,072) with random weights, saved with the
    tokenizer of ``tokenizer_dir``, so the CLI loads it as a local model directory."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out))
    import torch

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok))).save_pretrained(str(out))
    return out


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


class Timed:
    """``python -m dynrank.train <args>`` started now in a subprocess (on ``gpu`` if given); ``wait()`` -> wall s.

    Its stderr goes to ``log`` (a file, not a pipe: a pipe nobody reads while the other run is awaited fills up and
    stalls the run); a failed run ends the script with the log's tail, after stopping the runs in ``others``."""

    def __init__(self, args: list[str], cwd: Path, log: Path, gpu: str | None = None):
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        self.args, self.log = args, log
        self.t0 = time.time()
        with open(log, "w") as err:
            self.p = subprocess.Popen([sys.executable, "-m", "dynrank.train", *args], cwd=cwd, env=env,
                                      stdout=subprocess.DEVNULL, stderr=err)

    def wait(self, others: tuple["Timed", ...] = ()) -> float:
        self.p.wait()
        dt = time.time() - self.t0
        if self.p.returncode != 0:
            for o in others:
                o.p.kill()
            sys.exit(f"error: {' '.join(self.args)} failed:\n{self.log.read_text()[-3000:]}")
        return dt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--method", default="dora")
    ap.add_argument("--task", default="rte", help="a GLUE task in --data (rte: also its synthetic stand-in)")
    ap.add_argument("--seeds", default="1,2,3,4,5")
    ap.add_argument("--lr-search", action="store_true", help="the several-run command trains the method's lr grid "
                                                            "for every seed (lr_search=true)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks"))
    ap.add_argument("--tiny", action="store_true", help="the 2-layer tiny model (a CPU smoke test of this script)")
    ap.add_argument("--data", default=str(SHARED / "data/glue"), help="a GLUE directory with RTE/ (else synthetic)")
    ap.add_argument("--tokenizer", help="a WordPiece tokenizer directory (e.g. all-MiniLM-L6-v2) for the "
                                        "BERT-base-sized encoder; without it, model=tiny grown to 12 x 768")
    ap.add_argument("--minilm", help="the real all-MiniLM-L6-v2 directory: real weights (runs that must learn; dev "
                                     "accuracy reported), instead of the BERT-base-sized random encoder")
    ap.add_argument("--gpus", help="two GPU indices, e.g. 0,1: the one-seed and the side-by-side runs at the same "
                                   "time, one on each (same GPU model), instead of one after the other on one GPU")
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides for both commands")
    args = ap.parse_args(argv)
    import torch

    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(tempfile.mkdtemp(prefix="dynrank-seeds-"))
    from dynrank.data.glue import GLUE

    real = (Path(args.data) / GLUE[args.task].dirname / "train.tsv").is_file()
    if not real and args.task != "rte":
        sys.exit(f"error: no {GLUE[args.task].dirname}/train.tsv in --data {args.data}")
    data = Path(args.data).resolve() if real else write_rte_like(work / "glue")
    if args.tiny:
        model, model_text = ["model=tiny"], "model=tiny"
    elif args.minilm:
        model = ["model=minilm", f"model.path={Path(args.minilm).resolve()}"]
        model_text = f"all-MiniLM-L6-v2, real weights ({args.minilm})"
    elif args.tokenizer:
        model = ["model=minilm", f"model.path={write_base_sized_model(work / 'model', Path(args.tokenizer))}"]
        model_text = f"BERT-base-sized, random weights, tokenizer of {args.tokenizer}"
    else:
        model, model_text = BASE, "model=tiny grown to 12 x 768"
    common = [f"task={args.task}", f"method={args.method}", *model, f"data.dir={data}",
              f"train.epochs={args.epochs}", "train.progress=false", *args.extra]
    one_args = [*common, f"seed={seeds[0]}", f"results.store={work / 'one'}", f"hydra.run.dir={work / 'one_run'}",
                f"data.cache_dir={work / 'cache_one'}"]
    all_args = [*common, f"seeds=[{','.join(map(str, seeds))}]", f"results.store={work / 'all'}",
                f"hydra.run.dir={work / 'all_run' / 'x'}", f"data.cache_dir={work / 'cache_all'}",
                *(["lr_search=true"] if args.lr_search else [])]
    gpus = args.gpus.split(",") if args.gpus else None
    if gpus:  # both at once, one per GPU
        one = Timed(one_args, work, work / "one.log", gpus[0])
        all_ = Timed(all_args, work, work / "all.log", gpus[1])
        t_one = one.wait(others=(all_,))
        print(f"one seed: {t_one:.1f}s (GPU {gpus[0]} is free again)", flush=True)
        t_all = all_.wait()
    else:
        t_one = Timed(one_args, work, work / "one.log").wait()
        print(f"one seed: {t_one:.1f}s", flush=True)
        t_all = Timed(all_args, work, work / "all.log").wait()
    runs = [json.loads(r.read_text()) for r in sorted((work / "all").rglob("seed*.json"))]
    stacked = max(r.get("training", {}).get("stacked_runs", 1) for r in runs)
    how = f"stacked ({stacked} runs per model)" if stacked > 1 else "side by side"
    print(f"one run: {t_one:.1f}s; {len(runs)} runs {how}: {t_all:.1f}s  (ratio {t_all / t_one:.2f})", flush=True)
    one = json.loads(next((work / "one").rglob("seed*.json")).read_text())
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    report = {
        "device": device, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python scripts/bench_seeds.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "method": args.method, "task": args.task, "epochs": args.epochs, "seeds": seeds,
        "lr_search": args.lr_search, "runs": len(runs), "stacked_runs": stacked, "overrides": common,
        "data": f"real GLUE {args.task.upper()} ({args.data})" if real else "RTE-shaped synthetic",
        "model": model_text,
        "gpus": f"one seed on GPU {gpus[0]}, the side-by-side run on GPU {gpus[1]}, at the same time" if gpus
        else "one GPU, one run after the other",
        "wall_one_seed_s": t_one, "wall_all_seeds_s": t_all, "ratio": t_all / t_one,
        "results_files": len(runs),
        "seed1_best_alone": one["best"], "seed1_best_side_by_side": runs[0]["best"],
        "best_side_by_side": {f"{r['seed']}@{r['lr']:g}" if args.lr_search else r["seed"]: r["best"] for r in runs},
        "time_per_epoch_s_one_seed": one["time_per_epoch_s"],
        "train_time_s_one_seed": one.get("train_time_s"),
        "train_time_s_side_by_side": max(r.get("train_time_s") or 0 for r in runs),
        "training": runs[0].get("training"),  # the fast path's parts as the runs used them (packed, stacked, ...)
        "training_one_seed": one.get("training"),  # and as the run alone did (its graphs and their set-up time)
    }
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
    out = Path(args.out) / f"seeds-{device.replace(' ', '_')}-{stamp}.json"
    from dynrank.results import write_json

    write_json(out, report)
    print(json.dumps({k: v for k, v in report.items() if k not in ("overrides", "time_per_epoch_s_one_seed")}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
