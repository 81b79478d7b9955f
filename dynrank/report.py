"""The paper's tables from our runs: ``python -m dynrank.report [--store results/runs] [--out results/tables]
[--protocol auto|standard|paper_code] [--strict]``; ``--select-lr`` prints the learning-rate grids instead.

Reads every results JSON of the store (``results.load_runs``; unreadable files are skipped with a warning,
``--strict`` refuses them: exit 2), groups the runs by (model, task, method, budget, variant) and aggregates
each paper number over seeds. The selection rules (``dynrank.selection``) are applied here, at report time,
to the per-epoch history of each run:

  * which runs make a cell: the config-hash group with the most runs; within it the one learning rate
    ("fixed") or the best of several ("tuned", marked ‡: the best mean selection metric over seeds);
  * the number per run, under the cell's rule (``--protocol``; auto: the protocol its runs were trained
    under): ``standard`` reads every metric off the best dev epoch, ``paper_code`` takes each metric's own
    maximum after pruning ended. GLUE ``results["metric"]`` (CoLA Matthews, STS-B Pearson, MNLI matched
    accuracy, others accuracy) x100, SQuAD ``exact`` / ``f1`` and XSum ``rouge1`` / ``rouge2`` / ``rougeL`` as
    stored (already percentages); Table 9: mean of ``time_per_epoch_s`` / 60 and ``peak_gpu_memory_mib``;
  * per cell: mean and standard deviation over the seeds (standard: sample, ddof=1; paper_code: population,
    ddof=0; none with one seed), and the number of seeds n. A cell with fewer seeds than the paper's (5;
    Table 9: 1) carries a dagger; a cell without runs is missing ("—" in Markdown/LaTeX, empty in CSV), never 0.
  * the paper's number beside ours (``dynrank.paper``), and the difference ours - paper where the table is of
    the paper's model (RoBERTa-base; Table 4: BART-base); for another model (``--model minilm``) the paper's
    number is a reference only, without a difference.
  * Avg (Table 2): the mean of the row's task means, only when every task has runs (else missing);
    its n is the smallest n of the row.

Writes ``<out>/tableN.md``, ``tableN.csv`` (one line per cell, full precision, with the cell's ``lr``,
``lr_source`` and ``selection``), ``tableN.tex`` for
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
from .config import check_writable
from .errors import ConfigError
from .results import atomic_write_text, load_runs
from . import paired as stats
from .selection import (AUTO, JOINT, LR_CHOICES, PAPER_CODE, PER_METRIC, PROTOCOLS, RULES, Choice, Rule, choose,
                        for_metric, lr_text)

log = logging.getLogger("dynrank.report")

GLUE_TASKS = ("rte", "mrpc", "stsb", "cola", "sst2", "qnli", "qqp", "mnli")
GLUE_LABELS = {"rte": "RTE", "mrpc": "MRPC", "stsb": "STS-B", "cola": "CoLA", "sst2": "SST-2", "qnli": "QNLI",
               "qqp": "QQP", "mnli": "MNLI"}
TABLES = ("table2", "table3", "table4", "table5", "table6", "table9")
DEFAULT_MODEL = {"table4": "bart_base"}  # every other table: roberta_base
PAPER_SEEDS = 5
DAGGER = "†"
TUNED = "‡"  # the cell's learning rate was tuned (the best of several); unmarked: one fixed rate
MISSING = "—"
# Metric keys we read; the first one present in a run's dev metrics is used.
SQUAD_KEYS = {"em": ("exact", "exact_match", "em"), "f1": ("f1",)}
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")

Run = dict
Value = Callable[[Run, Rule], "float | None"]  # one run's number under a selection rule


def paper_model(table: str) -> str:
    """The model the paper's numbers in ``table`` are of."""
    return DEFAULT_MODEL.get(table, "roberta_base")


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
    protocol: str = AUTO     # the report's --protocol (auto: each cell by its runs' training protocol)
    lr_choice: str = JOINT   # the report's --lr-choice: one rate per cell, or per metric under paper_code
    paired: dict = field(default_factory=dict)  # (row number, column key) -> paired.Paired against the reference row

    @property
    def compares(self) -> bool:
        """Whether ours and the paper's numbers are of one model (a difference means something)."""
        return self.model == paper_model(self.name)


@dataclass
class Cell:
    n: int = 0
    seeds: tuple = ()
    mean: float | None = None
    std: float | None = None
    paper: float | None = None
    variant: str | None = None
    devices: tuple = ()
    lr: str = ""             # the runs' learning rate(s), as in the run ids
    lr_source: str = ""      # "fixed" | "tuned" (any of the cell's tasks tuned) | "" (no runs)
    n_lrs: int = 0           # the rates the choice was made among (the largest over the cell's tasks)
    selection: str = ""      # the selection rule(s) of the cell's runs

    @property
    def diff(self) -> float | None:
        return None if self.mean is None or self.paper is None else self.mean - self.paper


# --- values of one run ---------------------------------------------------------------------------
def _finite(v):
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def dev_metric(keys: Sequence[str] | None = None, scale: float = 1.0) -> Value:
    """The dev value of the first key present, as the rule selects it (``None``: the run's own ``metric``)."""

    def value(run, rule):
        v = rule.value(run, keys)
        return None if v is None else v * scale

    return value


def minutes_per_epoch(run, rule=None):
    t = [x for x in run.get("time_per_epoch_s") or [] if _finite(x)]
    return statistics.fmean(t) / 60 if t else None


def peak_memory(run, rule=None):
    v = run.get("peak_gpu_memory_mib")
    return float(v) if _finite(v) else None


def adapter_params_m(run, rule=None):
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
    return Table("table2", "Table 2: GLUE dev, x100", model, ("budget", "method"),
                 _budget_rows(index, "table2", model, GLUE_TASKS), cols, avg=True, paper_avg_key="avg",
                 notes=["metric per task: CoLA Matthews corr., STS-B Pearson, MNLI matched accuracy, "
                        "the others accuracy (the run's `metric`)",
                        PARAMS_NOTE])


def table3(index, model) -> Table:
    cols = [_params_column(("squad_v1", "squad_v2"))]
    for t, name in (("squad_v1", "SQuAD v1.1"), ("squad_v2", "SQuAD v2.0")):
        cols.append(Column(f"{t}_em", f"{name} EM", t, dev_metric(SQUAD_KEYS["em"]), f"{t}_em"))
        cols.append(Column(f"{t}_f1", f"{name} F1", t, dev_metric(SQUAD_KEYS["f1"]), f"{t}_f1"))
    return Table("table3", "Table 3: SQuAD dev EM / F1", model, ("budget", "method"),
                 _budget_rows(index, "table3", model, ("squad_v1", "squad_v2")), cols,
                 notes=["metric keys read: EM = `exact` (else `exact_match`, `em`), F1 = `f1` (paper_code: "
                        "`<key>@paper_code` where stored); values as stored (percentages)", PARAMS_NOTE,
                        SQUAD_PAPER_CODE_NOTE])


def table4(index, model) -> Table:
    cols = [_params_column(("xsum",))] + [Column(k, {"rouge1": "R-1", "rouge2": "R-2", "rougeL": "R-L"}[k], "xsum",
                                              dev_metric((k,)), k) for k in ROUGE_KEYS]
    return Table("table4", "Table 4: XSum ROUGE-1/2/L", model, ("budget", "method"),
                 _budget_rows(index, "table4", model, ("xsum",)), cols,
                 notes=["metric keys read: `rouge1`, `rouge2`, `rougeL` (paper_code: `<key>@paper_code` where "
                        "stored); values as stored (percentages)", PARAMS_NOTE])


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


SQUAD_PAPER_CODE_NOTE = ("cells under selection `paper_code` include the authors' SQuAD scoring defect (every window "
                         "scored, their evaluation loop pairing ids with the wrong windows' golds; docs/tasks.md): a "
                         "perfect model scores EM 96.96 / F1 96.97 there on v1.1 dev, 100 / 100 under `standard`")
PARAMS_NOTE = ("Params (M): our trainable parameters without the task head (results `params.adapter`, "
               "after pruning for DoRA), beside the paper's trainable-parameter column")

BUILDERS = {"table2": table2, "table3": table3, "table4": table4, "table5": table5, "table6": table6,
            "table9": table9}


# --- aggregation -----------------------------------------------------------------------------------
def index_runs(runs: list[Run]) -> dict[tuple, list[Run]]:
    """(model, task, method, budget, variant) -> every run of that cell (all seeds, rates, config hashes)."""
    index: dict[tuple, list] = defaultdict(list)
    for r in runs:
        try:
            int(r["seed"])
            index[r["model"], r["task"], r["method"], r["budget"], r.get("variant") or None].append(r)
        except (KeyError, TypeError, ValueError):
            log.warning("skipping a results file without model/task/method/budget/seed: %s", r.get("run_id"))
    return dict(index)


def cell_name(key: tuple) -> str:
    model, task, method, budget, variant = key
    return f"{model}/{task}/{method}-{budget}" + (f"-{variant}" if variant else "")


def choose_all(index, protocol: str = AUTO) -> dict[tuple, Choice]:
    """The runs of every cell (``selection.choose``), warning once per cell about what was left out."""
    choices = {}
    for key, runs in index.items():
        c = choose(runs, protocol)
        if c is None:
            continue
        if c.other_hashes:
            others = ", ".join(f"{h or 'no hash (older files)'} ({n} runs)" for h, n in sorted(
                c.other_hashes.items(), key=lambda hn: str(hn[0])))
            log.warning("%s: runs under several config hashes; using %s (%d runs), leaving out %s",
                        cell_name(key), c.config_hash or "no hash (older files)",
                        sum(len(p.runs) for p in c.grid), others)
        if protocol == AUTO and len(c.protocols) > 1:
            log.warning("%s: runs trained under several protocols (%s); selecting by %s, the most common",
                        cell_name(key), ", ".join(f"{p} {n}" for p, n in sorted(c.protocols.items())), c.rule.name)
        choices[key] = c
    return choices


def aggregate_cell(choices: list[Choice], value: Value) -> Cell:
    """Mean and spread over seeds of the chosen runs (of one task, or of several for a plain column)."""
    vals = seed_values(choices, value)
    if not vals:
        return Cell()
    xs = [v for _, v in vals]
    runs = [r for c in choices for r in c.runs]
    return Cell(n=len(xs), seeds=tuple(s for s, _ in vals), mean=statistics.fmean(xs), std=choices[0].rule.std(xs),
                devices=tuple(sorted({str(r.get("device")) for r in runs if r.get("device")})),
                lr=" ".join(dict.fromkeys(lr_text(c.lr) for c in choices)),
                lr_source="tuned" if any(c.tuned for c in choices) else "fixed",
                n_lrs=max(len(c.grid) for c in choices),
                selection=" ".join(dict.fromkeys(c.rule.name for c in choices)))


def compute(table: Table, choices: dict[tuple, Choice]) -> dict[tuple[int, str], Cell]:
    """(row number, column key) -> Cell, including the ``avg`` column when the table has one."""
    cells = {}
    for i, row in enumerate(table.rows):
        for col in table.columns:
            variant, chosen = cell_choices(table, choices, row, col)
            cell = aggregate_cell(chosen, col.value) if chosen else Cell()
            if cell.n:
                cell.variant = variant
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
    if cell.lr_source == "tuned":
        s += "$^\\ddagger$" if latex else TUNED
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
        if table.compares:
            yield row.labels, "diff", [fmt_num(x.diff, d, latex, signed=True) for x, (_, _, d, _) in zip(c, cols)]


def _legend(table, cells) -> list[str]:
    devices = sorted({d for c in cells.values() for d in c.devices})
    marker = f"{DAGGER} fewer than {table.expected_seeds} seeds; " if table.expected_seeds > 1 else ""
    diff = ("Δ (CSV: diff) = ours - paper." if table.compares else f"paper: the paper's numbers on "
            f"{paper_model(table.name)}, a reference only (no Δ: ours are of {table.model}).")
    out = [f"ours: mean ± std over seeds (the rule below), (n=...) the number of seeds; {marker}{TUNED} learning "
           f"rate tuned; {MISSING} no runs (or the paper has no number); {diff}",
           f"model: {table.model}; runs on: {', '.join(devices) if devices else MISSING}."]
    return out + _selection_notes(cells, table.protocol) + _lr_notes(table, cells) + [_lr_choice_note(table)] \
        + table.notes


def _selection_notes(cells, protocol: str) -> list[str]:
    """Which selection rule the table's cells used (auto: each cell's runs' own protocol)."""
    used = sorted({name for c in cells.values() if c.n for name in c.selection.split()})
    if protocol != AUTO:
        used = [protocol]
    how = ("--protocol auto: each cell by the protocol its runs were trained under" if protocol == AUTO
           else f"--protocol {protocol}")
    if len(used) > 1:
        how += "; cells under several rules here: see the CSV's `selection` column"
    return [f"selection ({how}){':' if used else ': no runs.'}"] + [f"{RULES[name].note}." for name in used]


def _lr_notes(table, cells) -> list[str]:
    """Which cells had their learning rate tuned, at which rate, and which ran at one fixed rate."""
    counted = {c.key for c in table.columns if not c.plain}  # the metric cells (not Params, not Avg)
    tuned = [(table.rows[i], key, c) for (i, key), c in cells.items()
             if key in counted and c.n and c.lr_source == "tuned"]
    fixed = sum(1 for (i, key), c in cells.items() if key in counted and c.n and c.lr_source == "fixed")
    out = [f"learning rate: {TUNED} tuned = the best of several rates by mean dev metric over seeds under the "
           f"cell's rule (ties: the smaller; grids: python -m dynrank.report --select-lr); unmarked = the one "
           f"rate the runs used (the method's `lr`, conf/hparams/<method>.yaml); CSV columns lr, lr_source. "
           f"Here: {len(tuned)} tuned, {fixed} fixed (metric cells with runs)."]
    if tuned:
        rows: dict = {}
        for row, key, c in tuned:
            rows.setdefault(" ".join(row.labels), []).append(f"{key} {c.lr} (of {c.n_lrs})")
        out.append("tuned: " + "; ".join(f"{r}: {', '.join(v)}" for r, v in rows.items()) + ".")
    return out


def to_markdown(table, cells) -> str:
    cols = _columns(table)
    head = [*table.label_names, ""] + [label for _, label, _, _ in cols]
    out = [f"## {table.title}", "", "| " + " | ".join(head) + " |",
           "|" + "|".join(["---"] * (len(table.label_names) + 1) + ["---:"] * len(cols)) + "|"]
    for labels, kind, texts in _lines(table, cells):
        out.append("| " + " | ".join([*labels, {"diff": "Δ"}.get(kind, kind), *texts]) + " |")
    out += [""] + [f"- {n}" for n in _legend(table, cells)] + paired_markdown(table)
    return "\n".join(out) + "\n"


def _tex(s: str) -> str:
    return s.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("&", "\\&").replace("%", "\\%") \
        .replace("#", "\\#").replace("±", "$\\pm$").replace(DAGGER, "$^\\dagger$").replace(TUNED, "$^\\ddagger$") \
        .replace(MISSING, "--")


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
            f"\\label{{tab:{table.name}}}", "\\end{table*}"] + paired_latex(table)
    return "\n".join(out) + "\n"


CSV_FIELDS = ("table", "model", "row", "method", "budget", "variant", "column", "task", "n", "seeds", "mean", "std",
              "paper", "diff", "expected_seeds", "lr", "lr_source", "n_lrs", "selection")


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
                        num(c.paper), num(c.diff if table.compares else None), table.expected_seeds, c.lr,
                        c.lr_source, c.n_lrs or "", c.selection])
    return buf.getvalue()


# --- Figure 2 ----------------------------------------------------------------------------------------
def figure2(choices: dict[tuple, Choice], out: Path, models: set[str] | None = None) -> list[Path]:
    """Mean surviving rank per (matrix type, layer) over seeds, for every (model, task, budget) with DoRA runs
    (the runs the tables use: one config hash, one learning rate)."""
    from .rankmap import aggregate, draw_heatmap

    written = []
    for (model, task, method, budget, variant), choice in sorted(choices.items(), key=lambda kv: str(kv[0])):
        if method != "dora" or variant is not None or (models and model not in models):
            continue
        maps = [r["method_summary"]["rank_map"] for r in choice.runs
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


# --- the learning-rate search ---------------------------------------------------------------------
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
           f"; std: standard ddof=1, paper_code ddof=0); n = seeds. `*` = the chosen rate: the best mean; "
           f"ties: the smaller rate. The tables use the chosen rate's runs (marked {TUNED}).", ""]
    if not grids:
        out.append("No cell has results at several learning rates.")
    for key, c in grids:
        metric = next((r.get("metric") for p in c.grid for r in p.runs if r.get("metric")), "?")
        sc = _scale(key[1])
        out += [f"## {cell_name(key)}", "",
                f"metric `{metric}`{' x100' if sc != 1 else ''}; selection `{c.rule.name}`; config hash "
                f"{c.config_hash or '—'}; chosen lr {lr_text(c.lr)} of {len(c.grid)}", "",
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
            metric = next((r.get("metric") for r in p.runs if r.get("metric")), "")
            w.writerow([model, task, method, budget, variant or "", c.config_hash or "", c.rule.name, metric,
                        _scale(task), num(p.lr), p.n,
                        " ".join(str(int(r["seed"])) for r in p.runs if c.rule.value(r) is not None),
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


# --- the runs of a cell, per seed ----------------------------------------------------------------------------
def seed_values(choices: list[Choice], value: Value) -> list[tuple[int, float]]:
    """(seed, number) of every chosen run that has the number."""
    vals = [(int(r["seed"]), value(r, c.rule)) for c in choices for r in c.runs]
    return [(s, v) for s, v in vals if v is not None]


def cell_choices(table: Table, choices: dict[tuple, Choice], row: Row, col: Column) -> tuple:
    """``(variant, choices)`` of a cell: the first of the row's variants with numbers for the column, its choice per
    task (under ``--lr-choice per_metric`` and the paper_code rule: the column's metric's own best rate);
    ``(None, [])`` when no variant has any."""
    tasks = col.task if isinstance(col.task, tuple) else (col.task,)
    for variant in row.variants:
        chosen = [c for t in tasks if (c := choices.get((table.model, t, row.method, row.budget, variant)))]
        if table.lr_choice == PER_METRIC and not col.plain:
            chosen = [for_metric(c, lambda r, c=c: col.value(r, c.rule)) if c.rule is PAPER_CODE else c
                      for c in chosen]
        if seed_values(chosen, col.value):
            return variant, chosen
    return None, []


def _lr_choice_note(table: Table) -> str:
    if table.lr_choice == PER_METRIC:
        return ("learning rate per metric (--lr-choice per_metric): in cells under selection `paper_code` each "
                "column takes the rate with the best mean of its own metric, as the authors' Summarize_Results.py "
                "lists every configuration's mean per metric (SQuAD EM and F1, ROUGE-1/2/L apart); cells under "
                "`standard`: one rate per cell")
    return ("learning rate per cell (--lr-choice joint): one rate for every column of a cell, the best mean of the "
            "task's selection metric (--lr-choice per_metric: each metric its own, under paper_code)")


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


# --- paired comparisons with the paper's method, and the paper's claims ----------------------------------------
REFERENCE_LABELS = {"table5": ("with DEM",), "table6": ("3",)}  # dora at its defaults: DEM on, r0 = ceil(1.5 * 2)


def reference_row(table: Table, row: Row) -> Row | None:
    """The row a row is compared with: the paper's method (dora) at the same budget (tables 2-4), dora with its
    defaults (tables 5, 6); ``None`` for that row itself and in tables without one (table 9: one run per method)."""
    if table.name in REFERENCE_LABELS:
        ref = next((r for r in table.rows if r.labels == REFERENCE_LABELS[table.name]), None)
    elif table.name in ("table2", "table3", "table4"):
        ref = next((r for r in table.rows if r.method == "dora" and r.budget == row.budget), None)
    else:
        ref = None
    return None if ref is row else ref


def _metric_columns(table: Table) -> list[str]:
    return [c.key for c in table.columns if not c.plain] + (["avg"] if table.avg else [])


def series(table: Table, choices: dict[tuple, Choice], row: Row, key: str) -> dict[int, float]:
    """``{seed: number}`` of a row's cell, as the table computes it; ``avg``: per seed, the mean over the table's
    tasks, for the seeds that have all of them."""
    if key == "avg":
        parts = [series(table, choices, row, c.key) for c in table.columns if c.in_avg]
        seeds = set.intersection(*(set(p) for p in parts)) if parts else set()
        return {s: statistics.fmean(p[s] for p in parts) for s in seeds}
    col = next(c for c in table.columns if c.key == key)
    return dict(seed_values(cell_choices(table, choices, row, col)[1], col.value))


def _paper_value(table: Table, row: Row, key: str) -> float | None:
    p = (row.paper or {}).get(table.paper_avg_key if key == "avg" else
                              next(c.paper_key for c in table.columns if c.key == key))
    return float(p) if _finite(p) else None


def _paper_diff(table: Table, row: Row, ref: Row, key: str) -> float | None:
    a, b = _paper_value(table, row, key), _paper_value(table, ref, key)
    return None if a is None or b is None else round(a - b, 6)  # the paper prints 2 decimals: no float noise


def paired_comparisons(table: Table, choices: dict[tuple, Choice]) -> dict[tuple[int, str], stats.Paired]:
    """(row number, column key) -> the row minus its reference row (``reference_row``), paired by seed, with the
    paper's difference of the same two rows."""
    out = {}
    for i, row in enumerate(table.rows):
        ref = reference_row(table, row)
        if ref is None:
            continue
        for key in _metric_columns(table):
            out[i, key] = stats.paired(series(table, choices, row, key), series(table, choices, ref, key),
                                       _paper_diff(table, row, ref, key))
    return out


def _paired_lines(table: Table):
    """(labels, kind, [cell texts]) per compared row: ours minus the reference row, then the paper's difference."""
    keys = _metric_columns(table)
    for i, row in enumerate(table.rows):
        if (i, keys[0]) not in table.paired:
            continue
        ref = " ".join(reference_row(table, row).labels)
        ps = [table.paired[i, k] for k in keys]
        yield row.labels, f"ours - {ref}", [stats.text(p) for p in ps]
        yield row.labels, f"paper - {ref}", [fmt_num(p.paper, 2, signed=True) for p in ps]


MARKS_LEGEND = (f"{stats.MARKS[stats.SUPPORTED]} the interval lies on the side of 0 of the paper's difference, "
                f"{stats.MARKS[stats.CONTRADICTED]} on the other side, {stats.MARKS[stats.UNRESOLVED]} not resolved "
                f"(it contains 0, or one pair)")
PAIRED_LEGEND = (f"each row minus the reference row (dora at the same budget; Table 5: with DEM; Table 6: r0 = 3), "
                 f"paired by seed over the seeds both have: mean difference [{stats.LEVEL:.0%} interval, Student t "
                 f"over the per-seed differences] (n = pairs; one pair: no interval); the `paper` line: the same two "
                 f"rows of the paper's table; {MARKS_LEGEND}")


def paired_markdown(table: Table) -> list[str]:
    if not table.paired:
        return []
    cols = [(k, label) for k, label, _, _ in _columns(table) if k in _metric_columns(table)]
    out = ["", f"### {table.name}: paired with the paper's method", "",
           "| " + " | ".join([*table.label_names, ""] + [label for _, label in cols]) + " |",
           "|" + "|".join(["---"] * (len(table.label_names) + 1) + ["---:"] * len(cols)) + "|"]
    out += ["| " + " | ".join([*labels, kind, *texts]) + " |" for labels, kind, texts in _paired_lines(table)]
    return out + ["", f"- {PAIRED_LEGEND}."]


def paired_latex(table: Table) -> list[str]:
    if not table.paired:
        return []
    cols = [label for k, label, _, _ in _columns(table) if k in _metric_columns(table)]
    marks = {stats.MARKS[stats.SUPPORTED]: "$\\surd$", stats.MARKS[stats.CONTRADICTED]: "$\\times$",
             stats.MARKS[stats.UNRESOLVED]: "$\\sim$"}  # after _tex, which leaves these three alone
    out = ["\\begin{table*}[t]", "\\centering", "\\small",
           "\\begin{tabular}{" + "l" * (len(table.label_names) + 1) + "r" * len(cols) + "}", "\\toprule",
           " & ".join([_tex(n) for n in table.label_names] + [""] + [_tex(c) for c in cols]) + " \\\\", "\\midrule"]
    for labels, kind, texts in _paired_lines(table):
        texts = [_tex(t).translate(str.maketrans(marks)) for t in texts]
        out.append(" & ".join([_tex(x) for x in labels] + [_tex(kind)] + texts) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}",
            "\\caption{" + _tex(table.title) + ": paired with the paper's method. " + _tex(PAIRED_LEGEND) + ".}",
            f"\\label{{tab:{table.name}-paired}}", "\\end{table*}"]
    return out


PAIRED_FIELDS = ("table", "model", "row", "reference", "column", "n", "seeds", "unpaired", "mean_diff", "low", "high",
                 "paper_diff", "mark")


def paired_csv(table: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PAIRED_FIELDS)
    num = lambda v: "" if v is None else repr(float(v))  # noqa: E731  (missing: empty, never 0)
    for (i, key), p in table.paired.items():
        row = table.rows[i]
        w.writerow([table.name, table.model, " ".join(row.labels), " ".join(reference_row(table, row).labels), key,
                    p.n, " ".join(map(str, p.seeds)), " ".join(map(str, p.unpaired)), num(p.mean), num(p.low),
                    num(p.high), num(p.paper), p.mark])
    return buf.getvalue()


def _rows_of(table: Table, budget: str, methods) -> list[tuple[int, Row]]:
    return [(i, r) for i, r in enumerate(table.rows) if r.budget == budget and r.method in methods
            and r.variants == (None,)]


def claim_comparisons(claim: stats.Claim, table: Table, choices) -> list[tuple[str, str, stats.Paired]]:
    """(baseline, column, dora - baseline paired by seed) for every comparison the claim makes."""
    ref = next((r for _, r in _rows_of(table, claim.budget, ("dora",))), None)
    if ref is None:
        return []
    others = [r for _, r in _rows_of(table, claim.budget, {r.method for r in table.rows} - {"dora"})]
    out = []
    for key in claim.columns:
        if claim.versus == (stats.PEFT,):
            versus = [r for r in others if r.method in stats.PEFT_METHODS]
        elif claim.versus == (stats.BEST,):  # ours: the best baseline by our mean
            means = [(statistics.fmean(v.values()), r) for r in others if (v := series(table, choices, r, key))]
            versus = [max(means, key=lambda mr: mr[0])[1]] if means else []
        else:
            versus = [r for r in others if r.method in claim.versus]
        for r in versus:
            paper_diff = claim.paper if claim.paper is not None else _paper_diff(table, ref, r, key)
            out.append((r.method, key, stats.paired(series(table, choices, ref, key),
                                                    series(table, choices, r, key), paper_diff)))
    return out


def claims(tables: list[Table], choices) -> list[tuple[stats.Claim, list, str]]:
    """Every claim of ``paired.CLAIMS`` whose table is among ``tables``: its comparisons and its verdict."""
    by_name = {t.name: t for t in tables}
    out = []
    for claim in stats.CLAIMS:
        if claim.table in by_name:
            comps = claim_comparisons(claim, by_name[claim.table], choices)
            out.append((claim, comps, stats.verdict([p.mark for _, _, p in comps])))
    return out


def claims_markdown(found) -> str:
    out = ["# The paper's claims, tested on our runs", "",
           "Each claim as a difference dora - baseline, paired by seed (the tables' runs and rules); "
           f"{stats.LEVEL:.0%} interval, Student t; a claim over several baselines or metrics is supported only if "
           "every comparison is, contradicted if any is. Paper: the claimed difference (SQuAD/XSum: its table's).", "",
           "| claim | baseline | column | ours: dora - baseline | paper | verdict |", "|---|---|---|---:|---:|---|"]
    for claim, comps, verdict in found:
        if not comps:
            out.append(f"| {claim.sentence} | — | — | no runs | {fmt_num(claim.paper, 2, signed=True)} | — |")
        for j, (base, key, p) in enumerate(comps):
            out.append(f"| {claim.sentence if j == 0 else ''} | {base} | {key} | {stats.text(p)} | "
                       f"{fmt_num(p.paper, 2, signed=True)} | {(verdict or '—') if j == 0 else ''} |")
    return "\n".join(out + ["", f"- {MARKS_LEGEND}."]) + "\n"


CLAIM_FIELDS = ("claim", "baseline", "column", "n", "mean_diff", "low", "high", "paper_diff", "mark", "verdict")


def claims_csv(found) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CLAIM_FIELDS)
    num = lambda v: "" if v is None else repr(float(v))  # noqa: E731
    for claim, comps, verdict in found:
        for base, key, p in comps or [("", "", stats.Paired(paper=claim.paper))]:
            w.writerow([claim.sentence, base, key, p.n, num(p.mean), num(p.low), num(p.high), num(p.paper), p.mark,
                        verdict])
    return buf.getvalue()


# --- entry point ---------------------------------------------------------------------------------------
def default_model(name: str, index) -> str:
    """A table's model when ``--model`` is not given: the paper's (roberta_base; Table 4: bart_base) where the
    store holds its runs of the table's tasks, else the model with the most runs of them (e.g. minilm after the
    README's runs), else the paper's."""
    columns = BUILDERS[name](index, paper_model(name)).columns
    tasks = {t for c in columns for t in (c.task if isinstance(c.task, tuple) else (c.task,))}
    runs = defaultdict(int)
    for (m, t, *_), cell in index.items():
        if t in tasks:
            runs[m] += len(cell)
    if not runs or paper_model(name) in runs:
        return paper_model(name)
    return min(runs, key=lambda m: (-runs[m], m))


def build_tables(runs: list[Run], model: str | None = None, names: Sequence[str] = TABLES, protocol: str = AUTO,
                 lr_choice: str = JOINT):
    index = index_runs(runs)
    choices = choose_all(index, protocol)
    out = []
    for name in names:
        table = BUILDERS[name](index, model or default_model(name, index))
        table.protocol, table.lr_choice = protocol, lr_choice
        out.append((table, compute(table, choices)))
        table.paired = paired_comparisons(table, choices)
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
    if model is None and (others := sorted({r["model"] for r in runs} - tabulated)):
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
                    help="selection rule (dynrank/selection.py): standard, paper_code (the authors' code), or "
                         "auto = the protocol each cell's runs were trained under (default)")
    ap.add_argument("--select-lr", action="store_true",
                    help="print the learning-rate grid of every cell with several rates and mark the chosen one "
                         "(also <out>/lr_search.md, .csv); no tables")
    ap.add_argument("--lr-choice", default=JOINT, choices=LR_CHOICES,
                    help="joint (default): one learning rate per cell, by the task's selection metric; per_metric: "
                         "under the paper_code rule each metric's own best rate, as the authors' summary (SQuAD EM "
                         "and F1, ROUGE-1/2/L apart)")
    ap.add_argument("--strict", action="store_true",
                    help="refuse unreadable results files (exit 2) instead of skipping them with a warning")
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
        print(f"error: {len(bad)} unreadable results file{'s' if len(bad) > 1 else ''} in {a.store} (--strict): "
              f"{', '.join(str(p) for p, _ in bad)}; fix or remove them, or drop --strict to skip them",
              file=sys.stderr)
        return 2
    if a.select_lr:
        select_lr(a.store, a.out, a.model, a.protocol, runs=runs)
    else:
        report(a.store, a.out, a.model, names, figures=not a.no_figures, protocol=a.protocol, runs=runs,
               lr_choice=a.lr_choice)
    return 0


if __name__ == "__main__":
    sys.exit(main())
