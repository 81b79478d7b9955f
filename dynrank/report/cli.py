"""The paper's tables from our runs: ``python -m dynrank.report [--store results/runs] [--out results/tables]
[--protocol auto|standard|paper_code] [--strict]``; ``--select-lr`` prints the learning-rate grids instead.

What the report computes and writes: docs/reproduce.md (The report).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from ..config import check_writable
from ..errors import ConfigError
from ..results import atomic_write_text, load_runs
from . import paired as stats
from .aggregate import choose_all, compute, index_runs
from .compare import claims, paired_comparisons
from .figures import figure2
from .lr_search import select_lr
from .render import claims_csv, claims_markdown, paired_csv, to_csv, to_latex, to_markdown
from .scoring import as_scored, ceilings
from .selection import AUTO, JOINT, LR_CHOICES, PER_METRIC, PROTOCOLS
from .tables import BUILDERS, TABLES, Run, default_model


def build_tables(runs: list[Run], model: str | None = None, names: Sequence[str] = TABLES, protocol: str = AUTO,
                 lr_choice: str = JOINT):
    index = index_runs([as_scored(r) for r in runs])  # each SQuAD row scored as its number was made (scoring.py)
    choices = choose_all(index, protocol)
    out = []
    for name in names:
        table = BUILDERS[name](index, model or default_model(name, index))
        table.protocol, table.lr_choice = protocol, lr_choice
        out.append((table, compute(table, choices)))
        table.paired = paired_comparisons(table, choices)
        table.ceilings = ceilings(table, choices)
    return out, choices


def report(store="results/runs", out="results/tables", model: str | None = None, names: Sequence[str] = TABLES,
           figures: bool = True, protocol: str = AUTO, runs: list[Run] | None = None,
           lr_choice: str = JOINT) -> list[Path]:
    store, out = Path(store), Path(out)
    if runs is None:
        runs = load_runs(store) if store.is_dir() else []
    tables, choices = build_tables(runs, model, names, protocol, lr_choice)
    written, index_md = [], [f"# Tables: ours beside the paper's ({len(runs)} runs from {store})", ""]
    for table, cells in tables:
        md = to_markdown(table, cells)
        for suffix, text in ((".md", md), (".csv", to_csv(table, cells)), (".tex", to_latex(table, cells))):
            atomic_write_text(out / f"{table.name}{suffix}", text)
            written.append(out / f"{table.name}{suffix}")
        if table.paired:
            atomic_write_text(out / f"{table.name}_paired.csv", paired_csv(table))
            written.append(out / f"{table.name}_paired.csv")
        index_md.append(md)
        filled = sum(1 for (i, k), c in cells.items() if k != "avg" and c.n)
        total = sum(1 for (i, k) in cells if k != "avg")
        print(f"{table.name} ({table.model}): {filled}/{total} cells with runs -> {out / table.name}.md")
    tabulated = {table.model for table, _ in tables}
    if model is None and (others := sorted({r.model for r in runs} - tabulated)):
        print(f"note: tables of {', '.join(sorted(tabulated))} (--model not given); the store also holds runs of "
              f"{', '.join(others)}: --model <model> tabulates them")
    if figures:
        figs = figure2(choices, out, tabulated)
        for p in figs:
            if p.suffix == ".png":
                print(f"figure 2: {p}")
        written += figs
    found = claims([t for t, _ in tables], choices)
    if found:
        md = claims_markdown(found)
        atomic_write_text(out / "claims.md", md)
        atomic_write_text(out / "claims.csv", claims_csv(found))
        written += [out / "claims.md", out / "claims.csv"]
        index_md.append(md)
        print(f"claims: {sum(v == stats.SUPPORTED for _, _, v in found)} of {len(found)} supported -> "
              f"{out / 'claims.md'}")
    atomic_write_text(out / "index.md", "\n".join(index_md))
    written.append(out / "index.md")
    return written


def _warnings_to_stderr() -> None:
    """The report's and the loader's warnings as one ``warning: ...`` line each (unless logging is set up)."""
    root = logging.getLogger("dynrank")
    if not root.handlers and not logging.getLogger().handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("warning: %(message)s"))
        root.addHandler(h)
        root.setLevel(logging.WARNING)
        root.propagate = False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dynrank.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default="results/runs", help="results store to read (default: results/runs)")
    ap.add_argument("--out", default="results/tables", help="where to write the tables (default: results/tables)")
    ap.add_argument("--model", default=None,
                    help="model id of the runs to tabulate (default: the paper's, roberta_base and for Table 4 "
                         "bart_base, where the store holds its runs of the table's tasks, else the model with the "
                         "most of them; --select-lr: every model)")
    ap.add_argument("--tables", default=",".join(TABLES), help=f"comma-separated subset of {','.join(TABLES)}")
    ap.add_argument("--no-figures", action="store_true", help="skip Figure 2")
    ap.add_argument("--protocol", default=AUTO, choices=PROTOCOLS,
                    help="selection rule (dynrank/report/selection.py): standard, paper_code (the authors' code), or "
                         "auto = the protocol each cell's runs were trained under (default)")
    ap.add_argument("--select-lr", action="store_true",
                    help="print the learning-rate grid of every cell with several rates and mark the chosen one "
                         "(also <out>/lr_search.md, .csv); no tables")
    ap.add_argument("--lr-choice", default=JOINT, choices=LR_CHOICES,
                    help="joint (default): one learning rate per cell, by the task's selection metric; per_metric: "
                         "under the paper_code rule each metric's own best rate, as the authors' summary (SQuAD EM "
                         "and F1, ROUGE-1/2/L apart)")
    ap.add_argument("--strict", action="store_true",
                    help="refuse unreadable results files and duplicates of a run (exit 2) instead of skipping them "
                         "with a warning")
    a = ap.parse_args(argv)
    _warnings_to_stderr()
    names = [t.strip() for t in a.tables.split(",") if t.strip()]
    unknown = [t for t in names if t not in BUILDERS]
    if unknown:
        print(f"error: unknown table {', '.join(unknown)}; choose from {', '.join(TABLES)}", file=sys.stderr)
        return 2
    if a.lr_choice == PER_METRIC and a.protocol == "standard":
        print("error: --lr-choice per_metric is the authors' choice under paper_code; use --protocol paper_code "
              "(or auto), or drop --lr-choice", file=sys.stderr)
        return 2
    try:
        check_writable("--out", a.out)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    runs, bad = [], []
    if Path(a.store).is_dir():
        runs = load_runs(a.store, bad)
    else:
        print(f"note: results store {a.store} does not exist yet: every cell is missing", file=sys.stderr)
    if bad and a.strict:
        print(f"error: {len(bad)} results file{'s' if len(bad) > 1 else ''} in {a.store} the report cannot use "
              f"(unreadable, or a duplicate of a run; --strict): {', '.join(str(p) for p, _ in bad)}; fix or remove "
              "them, or drop --strict to skip them", file=sys.stderr)
        return 2
    if a.select_lr:
        select_lr(a.store, a.out, a.model, a.protocol, runs=[as_scored(r) for r in runs])
    else:
        report(a.store, a.out, a.model, names, figures=not a.no_figures, protocol=a.protocol, runs=runs,
               lr_choice=a.lr_choice)
    return 0
