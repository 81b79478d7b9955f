"""What each table of the paper is, declaratively: its rows (the paper's, then any other method run), its
columns (a task and the number one run gives for it) and its notes; which model a table is of."""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .. import paper
from .selection import AUTO, JOINT, Rule, Run

GLUE_TASKS = ("rte", "mrpc", "stsb", "cola", "sst2", "qnli", "qqp", "mnli")
GLUE_LABELS = {"rte": "RTE", "mrpc": "MRPC", "stsb": "STS-B", "cola": "CoLA", "sst2": "SST-2", "qnli": "QNLI",
               "qqp": "QQP", "mnli": "MNLI"}
TABLES = ("table2", "table3", "table4", "table5", "table6", "table9")
DEFAULT_MODEL = {"table4": "bart_base"}  # every other table: roberta_base
PAPER_SEEDS = 5
# Metric keys we read; the first one present in a run's dev metrics is used.
SQUAD_KEYS = {"em": ("exact", "exact_match", "em"), "f1": ("f1",)}
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")

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
    ceilings: dict = field(default_factory=dict)  # (row number, column key) -> [scoring.Ceiling] (SQuAD cells)

    @property
    def compares(self) -> bool:
        """Whether ours and the paper's numbers are of one model (a difference means something)."""
        return self.model == paper_model(self.name)


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
    t = [x for x in run.time_per_epoch_s or [] if _finite(x)]
    return statistics.fmean(t) / 60 if t else None


def peak_memory(run, rule=None):
    v = run.peak_gpu_memory_mib
    return float(v) if _finite(v) else None


def adapter_params_m(run, rule=None):
    v = (run.params or {}).get("adapter")
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


SQUAD_PAPER_CODE_NOTE = ("cells of full, lora and dora under selection `paper_code` include the authors' SQuAD scoring "
                         "defect (every window scored, their evaluation loop pairing ids with other windows' golds "
                         "within a dev batch of the run's batch size; docs/tasks.md), so a perfect model scores below "
                         "100 there, the less the larger the batch: the per-cell ceilings below")
PARAMS_NOTE = ("Params (M): our trainable parameters without the task head (results `params.adapter`, "
               "after pruning for DoRA), beside the paper's trainable-parameter column")

BUILDERS = {"table2": table2, "table3": table3, "table4": table4, "table5": table5, "table6": table6,
            "table9": table9}


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
