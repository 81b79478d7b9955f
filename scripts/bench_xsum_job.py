"""One XSum job end to end through the CLI, against scripts/estimate.py's projection of the same job (issue 27,
item 4): the check of Table 4's projection.

    python scripts/bench_xsum_job.py [--method dora] [--seeds 1,2,3,4,5] [--train-docs 3200] [--eval-docs 512]
    python scripts/bench_xsum_job.py --tiny --train-docs 16 --eval-docs 4     # a CPU smoke test of this script

The model is BART-base-sized with random weights (``dynrank.bench.bart_base_config``: 6+6 layers, d_model 768,
50,265 tokens), saved once with the small shipped tokenizer (dynrank/assets/tiny_tokenizer) to a temporary
directory and loaded as ``model=bart_base model.path=<it>``: the GPU machines cannot reach the Hub, and the time
depends on the shapes, not on the weights. The data are synthetic XSum-shaped documents and summaries whose token
counts are drawn from the length model the seq2seq bench and the estimate use (``dynrank.bench.xsum_lengths``:
Narayan et al. 2018's means, an assumed log-normal shape), each word one token of the tokenizer. One command trains
``--seeds`` for one epoch of ``--train-docs`` documents (``data.max_train_samples``) with the GPU's defaults (bf16,
CUDA graphs, packed steps, runs stacked as ``train.max_stack`` allows) and evaluates ``--eval-docs`` documents
with the fast beam search (``eval.max_samples``); random weights never choose EOS, so every summary runs to 64
tokens, the longest search. The same job is then projected (``estimate.estimate`` with the newest benchmarks, or
``--seq2seq FILE`` for the seq2seq bench) and both are written to ``benchmarks/xsum-job-<device>-<date>.json``:
training (the steps' time; the graphs' measured warm-up and captures added to the projection, as its GLUE check
does) and evaluation, projected / measured.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def write_model(out: Path, tiny: bool) -> Path:
    """BART-base's architecture (``tiny``: 2+2 layers of width 32) with random weights and the shipped tokenizer."""
    import torch
    from transformers import AutoTokenizer, BartForConditionalGeneration

    from dynrank import bench
    from dynrank.models import TINY_TOKENIZER

    out.mkdir(parents=True, exist_ok=True)
    AutoTokenizer.from_pretrained(str(TINY_TOKENIZER)).save_pretrained(str(out))
    torch.manual_seed(0)
    BartForConditionalGeneration(bench.bart_base_config(tiny)).save_pretrained(str(out))
    return out


def one_token_words(tokenizer) -> list[str]:
    """Words the tokenizer encodes as one token after a space (byte-level BPE's ``Ġword`` entries) and at the start
    of a text."""
    words = sorted(w[1:] for w in tokenizer.get_vocab() if w.startswith("Ġ") and w[1:].isalpha())
    return [w for w in words if all(len(tokenizer(x, add_special_tokens=False)["input_ids"]) == 1
                                    for x in (" " + w, w))]


def write_data(root: Path, tokenizer, n_train: int, n_eval: int, max_source: int, max_target: int) -> Path:
    """``train.jsonl`` and ``validation.jsonl`` in XsumTask's layout: documents and summaries of the length model's
    token counts (specials included), words drawn from ``one_token_words``."""
    import random

    from dynrank import bench

    words = one_token_words(tokenizer)
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("validation", n_eval, 1)):
        with open(root / f"{split}.jsonl", "w") as f:
            for i, (s, t) in enumerate(bench.xsum_lengths(n, seed, max_source=max_source, max_target=max_target)):
                doc, summ = (" ".join(rng.choice(words) for _ in range(max(1, k - 2))) for k in (s, t))
                f.write(json.dumps({"id": str(i), "document": doc, "summary": summ}) + "\n")
    return root


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="dora")
    ap.add_argument("--seeds", default="1,2,3,4,5")
    ap.add_argument("--train-docs", type=int, default=3200, help="training documents of the one epoch")
    ap.add_argument("--eval-docs", type=int, default=512, help="validation documents summarised after it")
    ap.add_argument("--seq2seq", help="the scripts/bench_seq2seq.py JSON the projection reads (default: the newest "
                                      "in benchmarks/)")
    ap.add_argument("--tiny", action="store_true", help="BART of 2+2 layers of width 32 (the CPU smoke test)")
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides for the command (and its projection)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks"))
    args = ap.parse_args(argv)
    import torch
    from transformers import AutoTokenizer

    import estimate as est
    from dynrank.results import write_json

    work = Path(tempfile.mkdtemp(prefix="dynrank-xsum-job-"))
    model = write_model(work / "model", args.tiny)
    caps = (64, 16) if args.tiny else (768, 64)
    data = write_data(work / "xsum", AutoTokenizer.from_pretrained(str(model)), args.train_docs, args.eval_docs, *caps)
    seeds = args.seeds.split(",")
    job = ["task=xsum", "model=bart_base", f"method={args.method}", f"seeds=[{','.join(seeds)}]", "train.epochs=1",
           f"data.max_train_samples={args.train_docs}", f"eval.max_samples={args.eval_docs}", *args.extra]
    if args.tiny:
        job += [f"task.max_length={caps[0]}", f"task.max_target_length={caps[1]}",
                "task.generate.max_new_tokens=8"]
    command = [*job, f"model.path={model}", f"data.dir={data}", f"data.cache_dir={work / 'cache'}",
               f"results.store={work / 'store'}", f"hydra.run.dir={work / 'run'}", "train.progress=false"]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "dynrank.train", *command], cwd=work, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        sys.exit(f"error: the XSum job failed:\n{p.stderr[-3000:]}")
    runs = [json.loads(r.read_text()) for r in sorted((work / "store").rglob("seed*.json"))]
    training = runs[0].get("training") or {}

    def per_stack(value) -> float:  # the job's total: each run of a stack reports its stack's time
        return sum(value(r) / int((r.get("training") or {}).get("stacked_runs") or 1) for r in runs)

    measured_train = per_stack(lambda r: r["train_time_s"])
    measured_eval = per_stack(lambda r: sum(h.get("eval_time_s", 0.0) for h in r["epochs"]))
    setup = per_stack(lambda r: float((r.get("training") or {}).get("graph_setup_s") or 0.0))

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    report = {
        "device": device, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python scripts/bench_xsum_job.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "job": job, "model": "BART-base-sized, random weights" if not args.tiny else "tiny BART (2+2 x 32)",
        "data": f"synthetic XSum-shaped ({args.train_docs} train / {args.eval_docs} validation documents, lengths "
                f"from dynrank.bench.xsum_lengths)",
        "runs": len(runs), "stacked_runs": training.get("stacked_runs", 1), "training": training,
        "steps": runs[0]["epochs"][-1]["step"], "wall_s": wall, "measured_train_s": measured_train,
        "measured_eval_s": measured_eval, "measured_graph_setup_s": setup,
        "rougeL": [r["best"]["dev"].get("rougeL") for r in runs],  # random weights: near 0
    }
    # projected as it ran: its stacks as large as the GPU's free memory made them (the estimate would size them for
    # its own projected GPU)
    report.update(est.project_xsum_job(report, est.measured_device(Path(args.seq2seq) if args.seq2seq else None)))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
    out = Path(args.out) / f"xsum-job-{device.replace(' ', '_')}-{stamp}.json"
    write_json(out, report)
    print(json.dumps({k: v for k, v in report.items() if k not in ("estimate_notes", "job")}, indent=1))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
