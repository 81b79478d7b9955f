"""Which differences the runs support: paired comparisons over seeds, and the paper's claims as numbers
(docs/reproduce.md: The report, Paired with the paper's method).

A method is compared with the paper's method (dora) paired by seed (two runs of one seed share the data order and
the initialisation of what both train): the mean of the differences d_s = method_s - reference_s over the seeds both
have, with its 95% Student-t interval (mean ± t_{0.975, n-1} · sd / sqrt(n)); one pair: no interval. ``mark``
against the paper's own difference: ``supported`` (the interval lies wholly on its side of 0), ``contradicted``
(wholly on the other), ``not resolved`` (it contains 0, or one pair), ``degenerate`` (every pair has the same
difference: sd 0, a zero-width "interval" that is no interval, scipy's t interval is undefined there; e.g. both runs
stuck at constant predictions), ``""`` (nothing to test). A degenerate comparison gives no verdict.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy.stats import t as student_t

LEVEL = 0.95
SUPPORTED, CONTRADICTED, UNRESOLVED = "supported", "contradicted", "not resolved"
DEGENERATE = "degenerate"  # every seed the same difference: sd 0, no interval, no verdict
MARKS = {SUPPORTED: "✓", CONTRADICTED: "✗", UNRESOLVED: "~", DEGENERATE: "∅", "": ""}


@dataclass(frozen=True)
class Paired:
    """``method - reference`` over the seeds both have."""
    n: int = 0                    # pairs (seeds both sides have)
    seeds: tuple = ()
    unpaired: tuple = ()          # seeds only one side has
    mean: float | None = None     # mean difference
    low: float | None = None      # the 95% interval (None: fewer than two pairs, or degenerate)
    high: float | None = None
    paper: float | None = None    # the paper's difference, same rows
    mark: str = ""                # supported | contradicted | not resolved | degenerate | "" (nothing to test)

    @property
    def degenerate(self) -> bool:
        return self.mark == DEGENERATE


def zero_variance(diffs: list[float]) -> bool:
    """Two or more differences, all the same (within 1e-9, float noise of metrics read off two runs): the spread is
    0 and a t interval is undefined (scipy's ``t.interval`` gives nan)."""
    return len(diffs) >= 2 and all(math.isclose(d, diffs[0], rel_tol=1e-9, abs_tol=1e-9) for d in diffs)


def interval(diffs: list[float], level: float = LEVEL) -> tuple[float | None, float | None]:
    """The Student-t interval of the mean of ``diffs``; ``(None, None)`` for fewer than two, or zero variance."""
    n = len(diffs)
    if n < 2 or zero_variance(diffs):
        return None, None
    half = student_t.ppf(0.5 + level / 2, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    m = statistics.fmean(diffs)
    return m - half, m + half


def mark(low: float | None, high: float | None, paper: float | None, n: int) -> str:
    """Where the interval lies against the sign of the paper's difference (module docstring)."""
    if n == 0 or paper is None or paper == 0:
        return ""
    if low is None:
        return UNRESOLVED
    sign = 1 if paper > 0 else -1
    if sign * low > 0 and sign * high > 0:
        return SUPPORTED
    if sign * low < 0 and sign * high < 0:
        return CONTRADICTED
    return UNRESOLVED


def paired(method: dict[int, float], reference: dict[int, float], paper: float | None = None) -> Paired:
    """``method - reference`` paired by seed (``{seed: value}`` each), with the paper's difference ``paper``."""
    seeds = tuple(sorted(set(method) & set(reference)))
    unpaired = tuple(sorted(set(method) ^ set(reference)))
    diffs = [method[s] - reference[s] for s in seeds]
    if not diffs:
        return Paired(unpaired=unpaired, paper=paper)
    low, high = interval(diffs)
    m = DEGENERATE if zero_variance(diffs) else mark(low, high, paper, len(diffs))
    return Paired(len(diffs), seeds, unpaired, statistics.fmean(diffs), low, high, paper, m)


def text(p: Paired, digits: int = 2) -> str:
    """``-0.84 [-1.50, -0.18] ✓ (n=5)``; one pair: ``+0.40 (n=1, no interval) ~``; every pair the same difference:
    ``+0.40 (n=5, zero variance: no interval) ∅``; no pair: ``—``."""
    if not p.n:
        return "—"
    s = f"{p.mean:+.{digits}f}"
    if p.low is not None:
        s += f" [{p.low:+.{digits}f}, {p.high:+.{digits}f}] (n={p.n})"
    elif p.degenerate:
        s += f" (n={p.n}, zero variance: no interval)"
    else:
        s += f" (n={p.n}, no interval)"
    return s + (f" {MARKS[p.mark]}" if p.mark else "")


# --- the paper's claims (§5.1, Table 2-4 discussion) as numbers ------------------------------------------------
@dataclass(frozen=True)
class Claim:
    """``dora - each of versus`` on ``column`` of ``table`` at ``budget`` is positive (by ``paper`` where given):
    the paper's sentence, tested on our runs paired by seed. ``versus``: method names, or ``BEST`` (the best of the
    paper's own baseline rows at that budget by our mean, the paper's by its own; methods the paper does not have,
    e.g. dylora and dora_wd, are shown beside as extras and left out of the verdict), or ``PEFT`` (every PEFT
    baseline with a row in the paper's table)."""
    sentence: str
    table: str
    budget: str
    columns: tuple[str, ...]
    versus: tuple[str, ...]
    paper: float | None = None


BEST, PEFT = "best baseline", "every PEFT baseline"
PEFT_METHODS = ("bitfit", "houlsby", "pfeiffer", "lora", "adalora")

CLAIMS = (
    Claim("GLUE average: DoRA over LoRA by 0.84 (r=8)", "table2", "r8", ("avg",), ("lora",), 0.84),
    Claim("GLUE average: DoRA over LoRA by 0.88 (r=2)", "table2", "r2", ("avg",), ("lora",), 0.88),
    Claim("GLUE average: DoRA over AdaLoRA by 0.59 (r=8)", "table2", "r8", ("avg",), ("adalora",), 0.59),
    Claim("GLUE average: DoRA over AdaLoRA by 0.45 (r=2)", "table2", "r2", ("avg",), ("adalora",), 0.45),
    Claim("CoLA: DoRA over the best baseline by 1.48 (r=8)", "table2", "r8", ("cola",), (BEST,), 1.48),
    Claim("CoLA: DoRA over the best baseline by 1.73 (r=2)", "table2", "r2", ("cola",), (BEST,), 1.73),
    Claim("SQuAD: DoRA over every PEFT baseline (r=8)", "table3", "r8",
          ("squad_v1_em", "squad_v1_f1", "squad_v2_em", "squad_v2_f1"), (PEFT,)),
    Claim("SQuAD: DoRA over every PEFT baseline (r=2)", "table3", "r2",
          ("squad_v1_em", "squad_v1_f1", "squad_v2_em", "squad_v2_f1"), (PEFT,)),
    Claim("XSum: DoRA over every PEFT baseline (r=8)", "table4", "r8", ("rouge1", "rouge2", "rougeL"), (PEFT,)),
    Claim("XSum: DoRA over every PEFT baseline (r=2)", "table4", "r2", ("rouge1", "rouge2", "rougeL"), (PEFT,)),
)


def verdict(marks: list[str]) -> str:
    """A claim made of several comparisons: supported if every one is, contradicted if any is, else degenerate (no
    verdict) if any comparison is degenerate, else not resolved; ``""`` when none could be tested."""
    tested = [m for m in marks if m]
    if not tested:
        return ""
    if any(m == CONTRADICTED for m in tested):
        return CONTRADICTED
    if any(m == DEGENERATE for m in tested):
        return DEGENERATE
    return SUPPORTED if len(tested) == len(marks) and all(m == SUPPORTED for m in tested) else UNRESOLVED
