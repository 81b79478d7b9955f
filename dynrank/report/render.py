"""A table as Markdown, LaTeX and CSV: ours beside the paper's, the legend and notes under it, and the paired
comparisons and claims (``compare``) as tables of their own."""
from __future__ import annotations

import csv
import io

from . import paired as stats
from .aggregate import Cell
from .compare import Comparison, _metric_columns, reference_row
from .scoring import ceiling_notes
from .selection import AUTO, PER_METRIC, RULES
from .tables import Table, paper_model

DAGGER = "†"
TUNED = "‡"  # the cell's learning rate was tuned (the best of several); unmarked: one fixed rate
MISSING = "—"


# --- a table ---------------------------------------------------------------------------------------
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
        + table.notes + ceiling_notes(table)


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
              "paper", "diff", "expected_seeds", "lr", "lr_source", "n_lrs", "selection", "scoring", "ceiling")


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
            ceils = table.ceilings.get((i, key), [])  # SQuAD cells: the scoring read and a perfect model's score
            w.writerow([table.name, table.model, " ".join(row.labels), row.method, row.budget, variant or "", key,
                        tasks.get(key, ""), c.n, " ".join(map(str, c.seeds)), num(c.mean), num(c.std),
                        num(c.paper), num(c.diff if table.compares else None), table.expected_seeds, c.lr,
                        c.lr_source, c.n_lrs or "", c.selection,
                        " ".join(x.scoring + (f" batch {x.batch}" if x.batch else "") for x in ceils),
                        " ".join(num(x.value) for x in ceils)])
    return buf.getvalue()


def _lr_choice_note(table: Table) -> str:
    if table.lr_choice == PER_METRIC:
        return ("learning rate per metric (--lr-choice per_metric): in cells under selection `paper_code` each "
                "column takes the rate with the best mean of its own metric, as the authors' Summarize_Results.py "
                "lists every configuration's mean per metric (SQuAD EM and F1, ROUGE-1/2/L apart); cells under "
                "`standard`: one rate per cell")
    return ("learning rate per cell (--lr-choice joint): one rate for every column of a cell, the best mean of the "
            "task's selection metric (--lr-choice per_metric: each metric its own, under paper_code)")


# --- the paired comparisons and the claims ---------------------------------------------------------
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
                f"(it contains 0, or one pair), {stats.MARKS[stats.DEGENERATE]} degenerate: every seed gives the same "
                f"difference (zero variance, e.g. both runs stuck at constant predictions), so there is no interval "
                f"and no verdict: the spread over seeds says nothing about the difference")
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
             stats.MARKS[stats.UNRESOLVED]: "$\\sim$", stats.MARKS[stats.DEGENERATE]: "$\\emptyset$"}
    # (after _tex, which leaves these four alone)
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


def claims_markdown(found) -> str:
    out = ["# The paper's claims, tested on our runs", "",
           "Each claim as a difference dora - baseline, paired by seed (the tables' runs and rules); "
           f"{stats.LEVEL:.0%} interval, Student t; a claim over several baselines or metrics is supported only if "
           "every comparison is, contradicted if any is, degenerate (no verdict) if a comparison has zero variance. "
           "Paper: the claimed difference (SQuAD/XSum: its table's).", "",
           "| claim | baseline | column | ours: dora - baseline | paper | verdict |", "|---|---|---|---:|---:|---|"]
    for claim, comps, verdict in found:
        if not comps:
            out.append(f"| {claim.sentence} | — | — | no runs | {fmt_num(claim.paper, 2, signed=True)} | — |")
        for j, c in enumerate(comps):
            out.append(f"| {claim.sentence if j == 0 else ''} | {_baseline(c)} | {c.column} | {stats.text(c.paired)} | "
                       f"{fmt_num(c.paired.paper, 2, signed=True)} | {(verdict or '—') if j == 0 else ''} |")
    return "\n".join(out + ["", f"- {MARKS_LEGEND}.", f"- {CLAIMS_BASELINES}."]) + "\n"


CLAIMS_BASELINES = ("the baselines of a claim are the paper's own rows at that budget (Table 2 r=8: full, bitfit, "
                    "houlsby, pfeiffer, lora, adalora; r=2: houlsby, pfeiffer, lora, adalora), \"the best baseline\" "
                    "the best of them by our mean; a method the paper does not have (dylora, dora_wd) is shown "
                    "beside as `(extra)`, the best of them, with no paper difference and outside the verdict")


def _baseline(c) -> str:
    return f"{c.baseline} (extra)" if c.extra else c.baseline


CLAIM_FIELDS = ("claim", "baseline", "column", "n", "mean_diff", "low", "high", "paper_diff", "mark", "verdict",
                "extra")


def claims_csv(found) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CLAIM_FIELDS)
    num = lambda v: "" if v is None else repr(float(v))  # noqa: E731
    for claim, comps, verdict in found:
        for c in comps or [Comparison("", "", stats.Paired(paper=claim.paper))]:
            p = c.paired
            w.writerow([claim.sentence, c.baseline, c.column, p.n, num(p.mean), num(p.low), num(p.high), num(p.paper),
                        p.mark, "" if c.extra else verdict, "yes" if c.extra else ""])
    return buf.getvalue()
