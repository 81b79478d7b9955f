"""``python -m dynrank.report --select-lr``: the learning-rate grid of every cell with several rates, the chosen
rate marked, and under paper_code each metric's own best rate."""
from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

from ..results import load_runs
from ..results import atomic_write_text
from .aggregate import cell_name, choose_all, index_runs
from .render import MISSING, TUNED
from .selection import AUTO, PAPER_CODE, Choice, for_metric, lr_text
from .tables import GLUE_TASKS, SQUAD_KEYS, Run

LR_FIELDS = ("model", "task", "method", "budget", "variant", "config_hash", "selection", "metric", "scale", "lr",
             "n", "seeds", "mean", "std", "chosen")


def _scale(task: str) -> float:
    return 100.0 if task in GLUE_TASKS else 1.0  # as the tables: GLUE x100, SQuAD / XSum stored as percentages


def lr_grids(choices: dict[tuple, Choice], model: str | None = None) -> list[tuple[tuple, Choice]]:
    """The cells whose chosen config-hash group holds several learning rates, in a stable order."""
    return [(k, c) for k, c in sorted(choices.items(), key=lambda kv: str(kv[0]))
            if len(c.grid) > 1 and (model is None or k[0] == model)]


def lr_search_markdown(grids, protocol: str = AUTO) -> str:
    out = ["# Learning-rate search: the grid of every cell with several rates", "",
           f"Per rate: mean ± std over seeds of the task's selection metric (GLUE x100), under the cell's rule "
           f"({'--protocol auto: the protocol its runs were trained under' if protocol == AUTO else '--protocol ' + protocol}"
           f"; std: standard ddof=1, paper_code ddof=0); n = seeds. `*` = the chosen rate: the best mean over the "
           f"seeds every rate has (a cell whose rates have different seeds says which); ties: the smaller rate. The "
           f"tables use the chosen rate's runs (marked {TUNED}).", ""]
    if not grids:
        out.append("No cell has results at several learning rates.")
    for key, c in grids:
        metric = next((r.metric for p in c.grid for r in p.runs if r.metric), "?")
        sc = _scale(key[1])
        out += [f"## {cell_name(key)}", "",
                f"metric `{metric}`{' x100' if sc != 1 else ''}; selection `{c.rule.name}`; config hash "
                f"{c.config_hash or '—'}; chosen lr {lr_text(c.lr)} of {len(c.grid)}"
                + (f", compared over seeds {' '.join(map(str, c.compared))} (those every rate has)"
                   if any(p.n > len(c.compared) for p in c.grid) else ""), "",
                "| lr | mean ± std | n | chosen |", "|---:|---:|---:|:---:|"]
        for p in c.grid:
            ms = MISSING if p.mean is None else f"{p.mean * sc:.2f}" + (
                "" if p.std is None else f" ± {p.std * sc:.2f}")
            out.append(f"| {lr_text(p.lr)} | {ms} | {p.n} | {'*' if p.lr == c.lr else ''} |")
        out.append("")
    return "\n".join(out) + "\n"


def lr_search_csv(grids) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LR_FIELDS)
    num = lambda v: "" if v is None else repr(float(v))  # noqa: E731
    for (model, task, method, budget, variant), c in grids:
        for p in c.grid:
            metric = next((r.metric for r in p.runs if r.metric), "")
            w.writerow([model, task, method, budget, variant or "", c.config_hash or "", c.rule.name, metric,
                        _scale(task), num(p.lr), p.n,
                        " ".join(str(int(r.seed)) for r in p.runs if c.rule.value(r) is not None),
                        num(p.mean), num(p.std), int(p.lr == c.lr)])
    return buf.getvalue()


def select_lr(store="results/runs", out="results/tables", model: str | None = None, protocol: str = AUTO,
              runs: list[Run] | None = None) -> list[Path]:
    """Print every cell's learning-rate grid, mark the chosen rate; write ``<out>/lr_search.md`` and ``.csv``."""
    store, out = Path(store), Path(out)
    if runs is None:
        runs = load_runs(store) if store.is_dir() else []
    grids = lr_grids(choose_all(index_runs(runs), protocol), model)
    md = lr_search_markdown(grids, protocol) + per_metric_markdown(grids)
    print(md, end="")
    atomic_write_text(out / "lr_search.md", md)
    atomic_write_text(out / "lr_search.csv", lr_search_csv(grids))
    print(f"{len(grids)} cells with several learning rates -> {out / 'lr_search.md'}")
    return [out / "lr_search.md", out / "lr_search.csv"]


METRICS_OF = {"squad_v1": {"EM": SQUAD_KEYS["em"], "F1": SQUAD_KEYS["f1"]},
              "squad_v2": {"EM": SQUAD_KEYS["em"], "F1": SQUAD_KEYS["f1"]},
              "xsum": {"R-1": ("rouge1",), "R-2": ("rouge2",), "R-L": ("rougeL",)}}  # tasks with several metrics


def per_metric_markdown(grids) -> str:
    """``--select-lr`` under paper_code: each metric's own best rate (``selection.for_metric``), the choice the
    authors' summary offers, beside the one rate the tables use by default (``--lr-choice joint``)."""
    cells = [(k, c) for k, c in grids if c.rule is PAPER_CODE and k[1] in METRICS_OF]
    if not cells:
        return ""
    out = ["# Per-metric choice (selection `paper_code`; tables: `--lr-choice per_metric`)", "",
           "The authors' Summarize_Results.py lists every configuration's mean per metric, so each metric can take its "
           "own best rate. Per rate: the mean over seeds of each metric; `*` = that metric's best (ties: the smaller "
           "rate); `joint` = the one rate of `--lr-choice joint` (by the task's selection metric).", ""]
    for key, c in cells:
        metrics = METRICS_OF[key[1]]
        best = {name: for_metric(c, lambda r, keys=keys: c.rule.value(r, keys)).lr for name, keys in metrics.items()}
        out += [f"## {cell_name(key)}", "",
                "per metric: " + ", ".join(f"{name} {lr_text(lr)}" for name, lr in best.items())
                + f"; joint: {lr_text(c.lr)}", "",
                "| lr | " + " | ".join(metrics) + " | joint |", "|---:|" + "---:|" * len(metrics) + ":---:|"]
        for pt in c.grid:
            means = []
            for name, keys in metrics.items():
                vals = [v for r in pt.runs if (v := c.rule.value(r, keys)) is not None]
                mean = f"{statistics.fmean(vals):.2f}" if vals else MISSING
                means.append(mean + (" *" if pt.lr == best[name] else ""))
            out.append(f"| {lr_text(pt.lr)} | " + " | ".join(means) + f" | {'*' if pt.lr == c.lr else ''} |")
        out.append("")
    return "\n".join(out) + "\n"
