#!/usr/bin/env python
"""Summarise a proxy run (scripts/proxy_glue.sh): per task and method, the dev metric over seeds beside the
majority-class baseline of the same dev set, and whether any seed collapsed to it.

    python scripts/proxy_summary.py [store] [--data ../shared/data/glue] [--out results/proxy/summary.md]

A run "collapsed" when its best dev epoch is no better than predicting one class for every example
(CoLA: Matthews <= 0; MRPC: accuracy <= the majority class's; STS-B: Pearson <= 0.1, a constant or
near-constant score). The number per run is the best epoch's (``dynrank.report.selection`` rule ``standard``) and,
beside it, the mean under rule ``paper_code`` (dora/adalora: the best epoch after pruning ended).
"""
from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from dynrank.config import choices
from dynrank.data.glue import load_split
from dynrank.metrics.glue import majority_class
from dynrank.results import load_runs
from dynrank.report.selection import PAPER_CODE, STANDARD

METHODS = choices("method")


def majority(task: str, data_dir: str) -> dict[str, float]:
    """Dev metrics of predicting the train set's majority class for every example (``glue.majority_class``)."""
    labels = {split: [r["label"] for r in load_split(task, split, data_dir)] for split in ("train", "validation")}
    return majority_class(task, labels["train"], labels["validation"])


def collapsed(task: str, value: float, base: dict) -> bool:
    if task == "cola":
        return value <= 0.0
    if task == "stsb":
        return value <= 0.1
    return value <= base["accuracy"] + 1e-9


def summarise(store: str, data_dir: str) -> str:
    runs = load_runs(store)
    cells = defaultdict(list)
    for r in runs:
        cells[(r.task, r.method)].append(r)
    lines = ["| task | metric | method | lr | epochs | seeds | best epoch, mean ± std | per seed | paper_code mean "
             "| majority class | collapsed |",
             "|---|---|---|---:|---:|---:|---:|---|---:|---:|---|"]
    for task in sorted({t for t, _ in cells}):
        base = majority(task, data_dir)
        for method in [m for m in METHODS if (task, m) in cells]:
            rs = sorted(cells[(task, method)], key=lambda r: r.seed)
            metric = rs[0].metric
            vals = [STANDARD.value(r) for r in rs]
            paper = statistics.fmean(PAPER_CODE.value(r) for r in rs)
            mean = statistics.fmean(vals)
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            lrs = sorted({r.config["train"]["lr"] for r in rs})
            n_coll = sum(collapsed(task, v, base) for v in vals)
            lines.append(f"| {task} | {metric} | {method} | {', '.join(f'{x:g}' for x in lrs)} | "
                         f"{rs[0].config['train']['epochs']} | {len(rs)} | {100 * mean:.2f} ± {100 * std:.2f} | "
                         f"{' '.join(f'{100 * v:.1f}' for v in vals)} | {100 * paper:.2f} | {100 * base[metric]:.2f} | "
                         f"{'**' + str(n_coll) + ' of ' + str(len(vals)) + '**' if n_coll else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", nargs="?", default="results/proxy/runs")
    ap.add_argument("--data", default="../shared/data/glue")
    ap.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = ap.parse_args(argv)
    table = summarise(args.store, args.data)
    print(table, end="")
    if args.out:
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
