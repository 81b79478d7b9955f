"""Each table's rows against the paper's method (dora) paired by seed, and the paper's claims tested on the runs
(the statistics: ``paired``)."""
from __future__ import annotations

import statistics
from typing import NamedTuple

from . import paired as stats
from .aggregate import cell_choices, seed_values
from .selection import Choice
from .tables import Row, Table, _finite

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


def _rows_of(table: Table, budget: str, methods) -> list[tuple[int, Row]]:
    return [(i, r) for i, r in enumerate(table.rows) if r.budget == budget and r.method in methods
            and r.variants == (None,)]


class Comparison(NamedTuple):
    """One comparison of a claim: dora - ``baseline`` on ``column``, paired by seed. ``extra``: a method the paper's
    table does not have at that budget, shown beside the claim and left out of its verdict."""
    baseline: str
    column: str
    paired: stats.Paired
    extra: bool = False


def _best(table: Table, choices, rows: list[Row], key: str) -> list[Row]:
    """The row with the best mean over seeds of ``key`` among ``rows`` (ours), as a list of one (none: no runs)."""
    means = [(statistics.fmean(v.values()), r) for r in rows if (v := series(table, choices, r, key))]
    return [max(means, key=lambda mr: mr[0])[1]] if means else []


def claim_comparisons(claim: stats.Claim, table: Table, choices) -> list[Comparison]:
    """Every comparison the claim makes (dora - baseline paired by seed), then, for ``BEST``, the best of the methods
    the paper does not have at that budget beside it (``extra``; no paper difference to test)."""
    ref = next((r for _, r in _rows_of(table, claim.budget, ("dora",))), None)
    if ref is None:
        return []
    others = [r for _, r in _rows_of(table, claim.budget, {r.method for r in table.rows} - {"dora"})]
    own = [r for r in others if r.paper is not None]  # the paper's own rows at this budget
    out = []
    for key in claim.columns:
        extras = []
        if claim.versus == (stats.PEFT,):
            versus = [r for r in own if r.method in stats.PEFT_METHODS]
        elif claim.versus == (stats.BEST,):  # the paper's claim is over its own rows: their best by our mean
            versus = _best(table, choices, own, key)
            extras = _best(table, choices, [r for r in others if r.paper is None], key)
        else:
            versus = [r for r in own if r.method in claim.versus]
        for r in versus:
            paper_diff = claim.paper if claim.paper is not None else _paper_diff(table, ref, r, key)
            out.append(Comparison(r.method, key, stats.paired(series(table, choices, ref, key),
                                                              series(table, choices, r, key), paper_diff)))
        out += [Comparison(r.method, key, stats.paired(series(table, choices, ref, key),
                                                       series(table, choices, r, key)), extra=True) for r in extras]
    return out


def claims(tables: list[Table], choices) -> list[tuple[stats.Claim, list[Comparison], str]]:
    """Every claim of ``paired.CLAIMS`` whose table is among ``tables``: its comparisons and its verdict (over the
    paper's own rows; extras are shown, not judged)."""
    by_name = {t.name: t for t in tables}
    out = []
    for claim in stats.CLAIMS:
        if claim.table in by_name:
            comps = claim_comparisons(claim, by_name[claim.table], choices)
            out.append((claim, comps, stats.verdict([c.paired.mark for c in comps if not c.extra])))
    return out
