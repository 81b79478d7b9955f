"""Stacked runs against the same runs side by side: do the dev scores agree within seed noise?

    python scripts/stack_check.py STACKED_STORE SIDE_STORE [--out stack_check.md]
    python scripts/stack_check.py PACKED_STORE PADDED_STORE --labels packed,padded   # any two ways of training

Both stores hold the same cells (task, method, learning rate, seeds) trained once with ``train.stack=true`` and
once with ``train.stack=false``. Stacking computes each run's step as the run alone would, except the dropout masks
(drawn for the whole stack) and GPU rounding, so per cell the best dev scores of the two should differ by no more than
seed noise. Per cell: mean ± std over seeds of each, the mean difference, and Welch's 95% interval for it; a cell
whose interval excludes 0 is flagged. Writes a Markdown table (``--out``) and prints it. ``--labels`` names the two
stores in the table (any two ways of training the same cells: ``train.pack=true`` against ``false``).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dynrank.results import RunResults, load_runs  # noqa: E402


def best(run: RunResults) -> float:
    return 100 * float(run.best["dev"][run.metric])


def cells(store) -> dict:
    out = defaultdict(dict)
    for r in load_runs(store):
        out[(r.task, r.method, r.lr)][r.seed] = (best(r), (r.training or {}).get("stacked_runs", 1))
    return out


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean difference a - b and its 95% interval (Welch-Satterthwaite; t quantile from scipy)."""
    from scipy import stats

    d = statistics.mean(a) - statistics.mean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return d, d, d
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    t = stats.t.ppf(0.975, dof)
    return d, d - t * se, d + t * se


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stacked")
    ap.add_argument("side")
    ap.add_argument("--out")
    ap.add_argument("--labels", default="stacked,side by side", help="the two stores' names in the table")
    args = ap.parse_args(argv)
    first, second = args.labels.split(",")
    stacked, side = cells(args.stacked), cells(args.side)
    lines = [f"| task | method | lr | {first} (runs per model) | {second} | difference [95% interval] | |",
             "|---|---|---:|---|---|---|---|"]
    flagged = 0
    for key in sorted(stacked.keys() & side.keys()):
        a = [v for v, _ in stacked[key].values()]
        b = [v for v, _ in side[key].values()]
        if len(a) < 2 or len(b) < 2:
            continue
        d, lo, hi = welch(a, b)
        out = lo > 0 or hi < 0
        flagged += out
        k = max(n for _, n in stacked[key].values())
        lines.append(f"| {key[0]} | {key[1]} | {key[2]:g} | {statistics.mean(a):.2f} ± {statistics.stdev(a):.2f} "
                     f"(n={len(a)}, {k}) | {statistics.mean(b):.2f} ± {statistics.stdev(b):.2f} (n={len(b)}) | "
                     f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}] | {'outside noise' if out else 'within noise'} |")
    lines += ["", f"{len(lines) - 2} cells; {flagged} with a 95% interval that excludes 0 (at 95%, about 1 in 20 "
                  "such cells by chance)."]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
