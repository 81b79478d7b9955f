"""The paper's tables from our runs: ``python -m dynrank.report [--store results/runs] [--out results/tables]``.

Reads every results JSON of the store (``results.load_runs``), groups the runs by
(model, task, method, budget, variant) and aggregates each paper number over seeds:

  * the number per run is the paper's: the best dev epoch's metric, ``results["best"]["dev"][key]``
    (the paper reports the best dev score of each run), with ``key = results["metric"]`` for GLUE
    (CoLA Matthews, STS-B Pearson, MNLI matched accuracy, others accuracy) x100, SQuAD ``exact`` / ``f1``
    and XSum ``rouge1`` / ``rouge2`` / ``rougeL`` as stored (already percentages);
    Table 9: mean of ``time_per_epoch_s`` / 60 and ``peak_gpu_memory_mib``;
  * per cell: mean and **sample** standard deviation (``statistics.stdev``, ddof=1; none with one seed)
    over the seeds, and the number of seeds n. A cell with fewer seeds than the paper's (5; Table 9: 1)
    carries a dagger; a cell without runs is missing ("—" in Markdown/LaTeX, empty in CSV), never 0.
  * the paper's number beside ours (``dynrank.paper``), and the difference ours - paper.
  * Avg (Table 2): the mean of the row's task means, only when every task has runs (else missing);
    its n is the smallest n of the row.

Writes ``<out>/tableN.md``, ``tableN.csv`` (one line per cell, full precision), ``tableN.tex`` for
N in 2, 3, 4, 5, 6, 9, an ``index.md`` with all of them, and Figure 2 aggregated over seeds:
``figure2_<model>_<task>_<budget>.png`` (+ ``.csv`` with the mean counts) for every task/budget with
DoRA runs (variant none) whose ``method_summary`` has a ``rank_map``.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from . import paper
from .results import atomic_write_text, load_runs

log = logging.getLogger("dynrank.report")

GLUE_TASKS = ("rte", "mrpc", "stsb", "cola", "sst2", "qnli", "qqp", "mnli")
GLUE_LABELS = {"rte": "RTE", "mrpc": "MRPC", "stsb": "STS-B", "cola": "CoLA", "sst2": "SST-2", "qnli": "QNLI",
               "qqp": "QQP", "mnli": "MNLI"}
TABLES = ("table2", "table3", "table4", "table5", "table6", "table9")
DEFAULT_MODEL = {"table4": "bart_base"}  # every other table: roberta_base
PAPER_SEEDS = 5
DAGGER = "†"
MISSING = "—"
# Metric keys we read; the first one present in a run's dev metrics is used.
SQUAD_KEYS = {"em": ("exact", "exact_match", "em"), "f1": ("f1",)}
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")

Run = dict
Value = Callable[[Run], "float | None"]


# --- what a table is ------------------------------------------------------------------------------
@dataclass
class Column:
    key: str                 # CSV id of the column
    label: str               # header text
    task: str | tuple        # the runs' task (a tuple: the runs of all these tasks together)
    value: Value             # the number of one run (None: the run does not have it)
    paper_key: str | None    # the paper CSV's column
    digits: int = 2
    in_avg: bool = True      # part of the Avg column (when the table has one)
    plain: bool = False      # print the mean alone (no std, n, marker): e.g. parameter counts


@dataclass
class Row:
    labels: tuple[str, ...]  # the values of the table's label columns
    method: str
    budget: str
    variants: tuple          # the runs' variant; the first one with runs is used (Table 9: "eff", then None)
    paper: dict | None


@dataclass
class Table:
    name: str
    title: str
    model: str
    label_names: tuple[str, ...]
    rows: list[Row]
    columns: list[Column]
    avg: bool = False
    paper_avg_key: str | None = None
    expected_seeds: int = PAPER_SEEDS
    notes: list[str] = field(default_factory=list)


@dataclass
class Cell:
    n: int = 0
    seeds: tuple = ()
    mean: float | None = None
    std: float | None = None
    paper: float | None = None
    variant: str | None = None
    devices: tuple = ()

    @property
    def diff(self) -> float | None:
        return None if self.mean is None or self.paper is None else self.mean - self.paper


# --- values of one run ---------------------------------------------------------------------------
def _finite(v):
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def dev_metric(keys: Sequence[str] | None = None, scale: float = 1.0) -> Value:
    """The best epoch's dev value of the first key present (``None``: the run's own ``metric``)."""

    def value(run):
        dev = (run.get("best") or {}).get("dev") or {}
        for k in (keys or (run.get("metric"),)):
            if k in dev and _finite(dev[k]):
                return float(dev[k]) * scale
        return None

    return value


def minutes_per_epoch(run):
    t = [x for x in run.get("time_per_epoch_s") or [] if _finite(x)]
    return statistics.fmean(t) / 60 if t else None


def peak_memory(run):
    v = run.get("peak_gpu_memory_mib")
    return float(v) if _finite(v) else None


def adapter_params_m(run):
    v = (run.get("params") or {}).get("adapter")
    return v / 1e6 if _finite(v) else None


def _params_m(text) -> float | None:
    if isinstance(text, str) and text.endswith("M"):
        return float(text[:-1])
    return text if _finite(text) else None


# --- the six tables ------------------------------------------------------------------------------
def _budget_rows(index, table, model, tasks, label_budget=True) -> list[Row]:
    """Paper rows (budget, method) in the paper's order, then any other (budget, method) we ran."""
    rows, seen = [], set()
    for p in paper.table(table):
        b = paper.BUDGETS[p["budget"]]
        p = dict(p, trainable_params=_params_m(p.get("trainable_params")))
        rows.append(Row((b, p["method"]), p["method"], b, (None,), p))
        seen.add((b, p["method"]))
    extra = sorted({(k[3], k[2]) for k in index if k[0] == model and k[1] in tasks and k[4] is None} - seen,
                   key=lambda bm: ({"r8": 0, "r2": 1}.get(bm[0], 2), bm[0], bm[1]))
    rows += [Row((b, m), m, b, (None,), None) for b, m in extra]
    order = {"r8": 0, "r2": 1}
    rows.sort(key=lambda r: order.get(r.budget, 2))  # stable: paper order within a budget
    return rows


def _params_column(tasks) -> Column:
    return Column("params_m", "Params (M)", tuple(tasks), adapter_params_m, "trainable_params", 2, in_avg=False,
                  plain=True)


def table2(index, model) -> Table:
    cols = [_params_column(GLUE_TASKS)] + [Column(t, GLUE_LABELS[t], t, dev_metric(None, 100.0), t) for t in GLUE_TASKS]
    return Table("table2", "Table 2: GLUE dev (best epoch), x100", model, ("budget", "method"),
                 _budget_rows(index, "table2", model, GLUE_TASKS), cols, avg=True, paper_avg_key="avg",
                 notes=["metric per task: CoLA Matthews corr., STS-B Pearson, MNLI matched accuracy, "
                        "the others accuracy (the run's `metric`)",
                        PARAMS_NOTE])


def table3(index, model) -> Table:
    cols = [_params_column(("squad_v1", "squad_v2"))]
    for t, name in (("squad_v1", "SQuAD v1.1"), ("squad_v2", "SQuAD v2.0")):
        cols.append(Column(f"{t}_em", f"{name} EM", t, dev_metric(SQUAD_KEYS["em"]), f"{t}_em"))
        cols.append(Column(f"{t}_f1", f"{name} F1", t, dev_metric(SQUAD_KEYS["f1"]), f"{t}_f1"))
    return Table("table3", "Table 3: SQuAD dev EM / F1 (best epoch by F1)", model, ("budget", "method"),
                 _budget_rows(index, "table3", model, ("squad_v1", "squad_v2")), cols,
                 notes=["metric keys read: EM = `exact` (else `exact_match`, `em`), F1 = `f1`; values as stored "
                        "(percentages)", PARAMS_NOTE])


def table4(index, model) -> Table:
    cols = [_params_column(("xsum",))] + [Column(k, {"rouge1": "R-1", "rouge2": "R-2", "rougeL": "R-L"}[k], "xsum",
                                              dev_metric((k,)), k) for k in ROUGE_KEYS]
    return Table("table4", "Table 4: XSum ROUGE-1/2/L (best epoch by ROUGE-L)", model, ("budget", "method"),
                 _budget_rows(index, "table4", model, ("xsum",)), cols,
                 notes=["metric keys read: `rouge1`, `rouge2`, `rougeL`; values as stored (percentages)", PARAMS_NOTE])


def table5(index, model) -> Table:
    rows = []
    for p in paper.table("table5"):
        variant = None if p["setting"] == "with_dem" else "nodem"
        label = "with DEM" if variant is None else "without DEM"
        rows.append(Row((label,), "dora", "r8", (variant,), p))
    cols = [Column(t, GLUE_LABELS[t], t, dev_metric(None, 100.0), t) for t in ("stsb", "cola", "sst2")]
    return Table("table5", "Table 5: DoRA with and without DEM (r=8), GLUE dev x100", model, ("setting",), rows,
                 cols, notes=["with DEM: the dora-r8 runs (the same as Table 2's); without: dora-r8-nodem"])


def table6(index, model) -> Table:
    rows = []
    for p in paper.table("table6"):
        k = int(p["initial_budget"])
        rows.append(Row((str(k),), "dora", paper.BUDGETS["low"], (f"r0-{k}",), p))
    cols = [Column(t, GLUE_LABELS[t], t, dev_metric(None, 100.0), t) for t in ("mrpc", "stsb", "sst2")]
    return Table("table6", "Table 6: DoRA initial budget r0, final budget r=2, GLUE dev x100", model,
                 ("initial budget",), rows, cols, notes=["runs: dora-r2-r0-<r0> (experiment=table6)"])


def table9(index, model) -> Table:
    rows = [Row((p["method"],), p["method"], "r8", ("eff", None), p) for p in paper.table("table9")]
    cols = [Column("minutes_per_epoch", "min / epoch", "qnli", minutes_per_epoch, "minutes_per_epoch_qnli", 2),
            Column("peak_gpu_memory_mib", "peak GPU MiB", "qnli", peak_memory, "gpu_memory_mib", 0)]
    return Table("table9", "Table 9: QNLI training time per epoch and peak GPU memory (r=8)", model, ("method",),
                 rows, cols, expected_seeds=1,
                 notes=["ours: mean over runs of (mean training time per epoch, evaluation excluded) / 60, and "
                        "torch.cuda.max_memory_allocated in MiB (missing on CPU); runs: <method>-r8-eff "
                        "(experiment=table9), else Table 2's <method>-r8 QNLI runs",
                        "paper: NVIDIA GeForce RTX 3090 (Appendix E); times compare only on the same device"])


PARAMS_NOTE = ("Params (M): our trainable parameters without the task head (results `params.adapter`, "
               "after pruning for DoRA), beside the paper's trainable-parameter column")

BUILDERS = {"table2": table2, "table3": table3, "table4": table4, "table5": table5, "table6": table6,
            "table9": table9}


# --- aggregation -----------------------------------------------------------------------------------
def index_runs(runs: list[Run]) -> dict[tuple, list[Run]]:
    """(model, task, method, budget, variant) -> runs, one per seed (the last one read wins)."""
    by_seed: dict[tuple, dict] = defaultdict(dict)
    for r in runs:
        try:
            key = (r["model"], r["task"], r["method"], r["budget"], r.get("variant") or None)
            by_seed[key][int(r["seed"])] = r
        except (KeyError, TypeError, ValueError):
            log.warning("skipping a results file without model/task/method/budget/seed: %s", r.get("run_id"))
    return {k: [v[s] for s in sorted(v)] for k, v in by_seed.items()}


def aggregate_cell(runs: list[Run], value: Value) -> Cell:
    vals = [(int(r["seed"]), value(r)) for r in runs]
    vals = [(s, v) for s, v in vals if v is not None]
    if not vals:
        return Cell()
    xs = [v for _, v in vals]
    return Cell(n=len(xs), seeds=tuple(s for s, _ in vals), mean=statistics.fmean(xs),
                std=statistics.stdev(xs) if len(xs) > 1 else None,
                devices=tuple(sorted({str(r.get("device")) for r in runs if r.get("device")})))


def compute(table: Table, index) -> dict[tuple[int, str], Cell]:
    """(row number, column key) -> Cell, including the ``avg`` column when the table has one."""
    cells = {}
    for i, row in enumerate(table.rows):
        for col in table.columns:
            cell = Cell()
            tasks = col.task if isinstance(col.task, tuple) else (col.task,)
            for variant in row.variants:
                runs = [r for t in tasks for r in index.get((table.model, t, row.method, row.budget, variant), [])]
                cell = aggregate_cell(runs, col.value)
                if cell.n:
                    cell.variant = variant
                    break
            if row.paper is not None and col.paper_key is not None:
                p = row.paper.get(col.paper_key)
                cell.paper = float(p) if _finite(p) else None
            cells[i, col.key] = cell
        if table.avg:
            parts = [cells[i, c.key] for c in table.columns if c.in_avg]
            avg = Cell()
            if parts and all(c.n for c in parts):
                avg = Cell(n=min(c.n for c in parts), mean=statistics.fmean(c.mean for c in parts))
            if row.paper is not None and table.paper_avg_key:
                p = row.paper.get(table.paper_avg_key)
                avg.paper = float(p) if _finite(p) else None
            cells[i, "avg"] = avg
    return cells


# --- rendering -------------------------------------------------------------------------------------
def _columns(table) -> list[tuple[str, str, int, bool]]:
    """(key, label, digits, plain) of every printed column."""
    out = [(c.key, c.label, c.digits, c.plain) for c in table.columns]
    if table.avg:
        out.append(("avg", "Avg", 2, False))
    return out


def fmt_ours(cell: Cell, digits: int, expected: int, latex: bool = False, plain: bool = False) -> str:
    if cell.mean is None:
        return "--" if latex else MISSING
    if plain:
        return f"{cell.mean:.{digits}f}"
    pm = " $\\pm$ " if latex else " ± "
    s = f"{cell.mean:.{digits}f}"
    if cell.std is not None:
        s += f"{pm}{cell.std:.{digits}f}"
    s += f" (n={cell.n})"
    if cell.n < expected:
        s += "$^\\dagger$" if latex else DAGGER
    return s


def fmt_num(v, digits: int, latex: bool = False, signed: bool = False) -> str:
    if v is None:
        return "--" if latex else MISSING
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _lines(table, cells, latex=False):
    """(labels, kind, [cell texts]) for every row: ours, paper, difference."""
    cols = _columns(table)
    for i, row in enumerate(table.rows):
        c = [cells[i, k] for k, _, _, _ in cols]
        yield row.labels, "ours", [fmt_ours(x, d, table.expected_seeds, latex, plain)
                                   for x, (_, _, d, plain) in zip(c, cols)]
        yield row.labels, "paper", [fmt_num(x.paper, d, latex) for x, (_, _, d, _) in zip(c, cols)]
        yield row.labels, "diff", [fmt_num(x.diff, d, latex, signed=True) for x, (_, _, d, _) in zip(c, cols)]


def _legend(table, cells) -> list[str]:
    devices = sorted({d for c in cells.values() for d in c.devices})
    marker = f"{DAGGER} fewer than {table.expected_seeds} seeds; " if table.expected_seeds > 1 else ""
    out = [f"ours: mean ± sample std (ddof=1) over seeds, (n=...) the number of seeds; {marker}{MISSING} no runs "
           f"(or the paper has no number); Δ (CSV: diff) = ours - paper.",
           f"model: {table.model}; runs on: {', '.join(devices) if devices else MISSING}."]
    return out + table.notes


def to_markdown(table, cells) -> str:
    cols = _columns(table)
    head = [*table.label_names, ""] + [label for _, label, _, _ in cols]
    out = [f"## {table.title}", "", "| " + " | ".join(head) + " |",
           "|" + "|".join(["---"] * (len(table.label_names) + 1) + ["---:"] * len(cols)) + "|"]
    for labels, kind, texts in _lines(table, cells):
        out.append("| " + " | ".join([*labels, {"diff": "Δ"}.get(kind, kind), *texts]) + " |")
    out += [""] + [f"- {n}" for n in _legend(table, cells)]
    return "\n".join(out) + "\n"


def _tex(s: str) -> str:
    return s.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("&", "\\&").replace("%", "\\%") \
        .replace("#", "\\#").replace("±", "$\\pm$").replace(DAGGER, "$^\\dagger$").replace(MISSING, "--")


def to_latex(table, cells) -> str:
    cols = _columns(table)
    nl = len(table.label_names) + 1
    out = ["% " + table.title + f" (model {table.model}); generated by python -m dynrank.report",
           "\\begin{table*}[t]", "\\centering", "\\small",
           "\\begin{tabular}{" + "l" * nl + "r" * len(cols) + "}", "\\toprule",
           " & ".join([_tex(n) for n in table.label_names] + [""] + [_tex(lab) for _, lab, _, _ in cols]) + " \\\\",
           "\\midrule"]
    for j, (labels, kind, texts) in enumerate(_lines(table, cells, latex=True)):
        if kind == "ours" and j:
            out.append("\\midrule")
        first = kind == "ours"
        lab = [_tex(x) if first else "" for x in labels]
        out.append(" & ".join(lab + [{"diff": "$\\Delta$"}.get(kind, kind)] + texts) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}",
            "\\caption{" + _tex(table.title) + f" (model {_tex(table.model)}). "
            + " ".join(_tex(n) for n in _legend(table, cells)) + "}",
            f"\\label{{tab:{table.name}}}", "\\end{table*}"]
    return "\n".join(out) + "\n"


CSV_FIELDS = ("table", "model", "row", "method", "budget", "variant", "column", "task", "n", "seeds", "mean", "std",
              "paper", "diff", "expected_seeds")


def to_csv(table, cells) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    tasks = {c.key: " ".join(c.task) if isinstance(c.task, tuple) else c.task for c in table.columns}
    num = lambda v: "" if v is None else repr(float(v))  # noqa: E731  (missing: empty, never 0)
    for i, row in enumerate(table.rows):
        for key, _, _, _ in _columns(table):
            c = cells[i, key]
            variant = c.variant if c.n else row.variants[0]
            w.writerow([table.name, table.model, " ".join(row.labels), row.method, row.budget, variant or "", key,
                        tasks.get(key, ""), c.n, " ".join(map(str, c.seeds)), num(c.mean), num(c.std),
                        num(c.paper), num(c.diff), table.expected_seeds])
    return buf.getvalue()


# --- Figure 2 ----------------------------------------------------------------------------------------
def figure2(index, out: Path, models: set[str] | None = None) -> list[Path]:
    """Mean surviving rank per (matrix type, layer) over seeds, for every (model, task, budget) with DoRA runs."""
    from .rankmap import aggregate, draw_heatmap

    written = []
    for (model, task, method, budget, variant), runs in sorted(index.items(), key=lambda kv: str(kv[0])):
        if method != "dora" or variant is not None or (models and model not in models):
            continue
        maps = [r["method_summary"]["rank_map"] for r in runs
                if isinstance(r.get("method_summary"), dict) and r["method_summary"].get("rank_map")]
        if not maps:
            continue
        try:
            agg = aggregate(maps)
        except ValueError as e:
            log.warning("figure 2 for %s/%s/%s skipped: %s", model, task, budget, e)
            continue
        stem = out / f"figure2_{model}_{task}_{budget}"
        vals = [v for row in agg["counts"] for v in row if v is not None]
        title = (f"DoRA {model} / {task} / {budget}: surviving components, mean of {agg['runs']} seed"
                 f"{'s' if agg['runs'] > 1 else ''}\n({statistics.fmean(vals):.2f} per matrix on average)")
        written.append(draw_heatmap(agg["counts"], agg["rows"], agg["cols"], stem.with_suffix(".png"), title))
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["matrix_type", *agg["cols"]])
        for name, row in zip(agg["rows"], agg["counts"]):
            w.writerow([name, *["" if v is None else repr(float(v)) for v in row]])
        atomic_write_text(stem.with_suffix(".csv"), buf.getvalue())
        written.append(stem.with_suffix(".csv"))
    return written


# --- entry point ---------------------------------------------------------------------------------------
def build_tables(runs: list[Run], model: str | None = None, names: Sequence[str] = TABLES):
    index = index_runs(runs)
    out = []
    for name in names:
        table = BUILDERS[name](index, model or DEFAULT_MODEL.get(name, "roberta_base"))
        out.append((table, compute(table, index)))
    return out, index


def report(store="results/runs", out="results/tables", model: str | None = None, names: Sequence[str] = TABLES,
           figures: bool = True) -> list[Path]:
    store, out = Path(store), Path(out)
    runs = load_runs(store) if store.is_dir() else []
    tables, index = build_tables(runs, model, names)
    written, index_md = [], [f"# Tables: ours beside the paper's ({len(runs)} runs from {store})", ""]
    for table, cells in tables:
        md = to_markdown(table, cells)
        for suffix, text in ((".md", md), (".csv", to_csv(table, cells)), (".tex", to_latex(table, cells))):
            atomic_write_text(out / f"{table.name}{suffix}", text)
            written.append(out / f"{table.name}{suffix}")
        index_md.append(md)
        filled = sum(1 for (i, k), c in cells.items() if k != "avg" and c.n)
        total = sum(1 for (i, k) in cells if k != "avg")
        print(f"{table.name} ({table.model}): {filled}/{total} cells with runs -> {out / table.name}.md")
    if figures:
        figs = figure2(index, out, {model} if model else None)
        for p in figs:
            if p.suffix == ".png":
                print(f"figure 2: {p}")
        written += figs
    atomic_write_text(out / "index.md", "\n".join(index_md))
    written.append(out / "index.md")
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dynrank.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default="results/runs", help="results store to read (default: results/runs)")
    ap.add_argument("--out", default="results/tables", help="where to write the tables (default: results/tables)")
    ap.add_argument("--model", default=None,
                    help="model id of the runs to tabulate (default: roberta_base; Table 4: bart_base)")
    ap.add_argument("--tables", default=",".join(TABLES), help=f"comma-separated subset of {','.join(TABLES)}")
    ap.add_argument("--no-figures", action="store_true", help="skip Figure 2")
    a = ap.parse_args(argv)
    names = [t.strip() for t in a.tables.split(",") if t.strip()]
    unknown = [t for t in names if t not in BUILDERS]
    if unknown:
        print(f"error: unknown table {', '.join(unknown)}; choose from {', '.join(TABLES)}", file=sys.stderr)
        return 2
    if not Path(a.store).is_dir():
        print(f"note: results store {a.store} does not exist yet: every cell is missing", file=sys.stderr)
    report(a.store, a.out, a.model, names, figures=not a.no_figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
