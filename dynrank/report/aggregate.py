"""The numbers of a table: a cell's runs (``selection.choose``: one config hash, one learning rate), their
numbers per seed, and the mean and spread over seeds."""
from __future__ import annotations

import logging
import statistics
from collections import defaultdict
from dataclasses import dataclass

from ..config import cell_of
from .selection import AUTO, PAPER_CODE, PER_METRIC, Choice, choose, for_metric, lr_text
from .tables import Column, Row, Run, Table, Value, _finite

log = logging.getLogger("dynrank.report")


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


# --- aggregation -----------------------------------------------------------------------------------
def index_runs(runs: list[Run]) -> dict[tuple, list[Run]]:
    """(model, task, method, budget, variant) -> every run of that cell (all seeds, rates, config hashes)."""
    index: dict[tuple, list] = defaultdict(list)
    for r in runs:
        try:
            int(r.seed)
            if None in (r.model, r.task, r.method, r.budget):
                raise ValueError
            index[r.model, r.task, r.method, r.budget, r.variant or None].append(r)
        except (TypeError, ValueError):
            log.warning("skipping a results file without model/task/method/budget/seed: %s", r.run_id)
    return dict(index)


def cell_name(key: tuple) -> str:
    model, task, method, budget, variant = key
    return f"{model}/{task}/{cell_of(method, budget, variant)}"


def hash_text(c: Choice) -> str:
    """The config hash a cell uses and the ones it leaves out, by distinct seeds (for warnings and table notes)."""
    name = lambda h: h or "no hash (older files)"  # noqa: E731
    seeds = lambda n: f"{n} seed{'s' if n != 1 else ''}"  # noqa: E731
    others = ", ".join(f"{name(h)} ({seeds(n)})" for h, n in sorted(c.other_hashes.items(), key=lambda hn: str(hn[0])))
    mark = ", the current code's hash" if c.current else ""
    return f"using {name(c.config_hash)} ({seeds(c.seeds)}{mark}), leaving out {others}"


def choose_all(index, protocol: str = AUTO) -> dict[tuple, Choice]:
    """The runs of every cell (``selection.choose``), warning once per cell about what was left out; a cell whose
    learning rates cannot be compared (no seed at every rate) is left out, saying why."""
    choices = {}
    for key, runs in index.items():
        c = choose(runs, protocol)
        if c is None:
            continue
        if c.other_hashes:
            log.warning("%s: runs under several config hashes; %s", cell_name(key), hash_text(c))
        if protocol == AUTO and len(c.protocols) > 1:
            log.warning("%s: runs trained under several protocols (%s); selecting by %s, the most common",
                        cell_name(key), ", ".join(f"{p} {n}" for p, n in sorted(c.protocols.items())), c.rule.name)
        if c.refused:
            log.warning("%s: no learning rate chosen: %s; the cell is left out", cell_name(key), c.refused)
            continue
        if c.tuned and any(len(p.values) > len(c.compared) for p in c.grid):
            log.warning("%s: learning rates compared over the %d seed%s every rate has (%s): %s", cell_name(key),
                        len(c.compared), "s" if len(c.compared) != 1 else "", " ".join(map(str, c.compared)),
                        ", ".join(f"{lr_text(p.lr)} has {p.n}" for p in c.grid))
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
                devices=tuple(sorted({str(r.device) for r in runs if r.device})),
                lr=" ".join(dict.fromkeys(lr_text(c.lr) for c in choices)),
                lr_source="tuned" if any(c.tuned for c in choices) else "fixed",
                n_lrs=max(len(c.grid) for c in choices),
                selection=" ".join(dict.fromkeys(c.rule.name for c in choices)))


def compute(table: Table, choices: dict[tuple, Choice]) -> dict[tuple[int, str], Cell]:
    """(row number, column key) -> Cell, including the ``avg`` column when the table has one; a note on the table
    names the config hash of each cell whose runs are under several (``hash_note``)."""
    cells, several = {}, {}
    for i, row in enumerate(table.rows):
        for col in table.columns:
            variant, chosen = cell_choices(table, choices, row, col)
            for c in chosen:
                if c.other_hashes:
                    several.setdefault(f"{' '.join(row.labels)} {c.runs[0].task}", hash_text(c))
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
    if several:
        table.notes.append(hash_note(several))
    return cells


def hash_note(several: dict[str, str]) -> str:
    """The table note on cells whose runs are under several config hashes: which one each uses."""
    return ("config hash: a cell's runs are those of one config hash, the one with the most seeds (ties: the hash "
            "the current code gives their config); cells with runs under several here: "
            + "; ".join(f"{cell}: {text}" for cell, text in several.items()) + ".")


# --- the runs of a cell, per seed ----------------------------------------------------------------------------
def seed_values(choices: list[Choice], value: Value) -> list[tuple[int, float]]:
    """(seed, number) of every chosen run that has the number."""
    vals = [(int(r.seed), value(r, c.rule)) for c in choices for r in c.runs]
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
