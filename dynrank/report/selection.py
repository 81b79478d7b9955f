"""The report's selection rules apart from its formatting: which number a run contributes, how seeds spread, and which
learning rate a table cell's runs come from (docs/reproduce.md: Evaluation protocols, Learning-rate search).

Every results file holds the dev metrics of every epoch, so a rule is a report-time choice, read from the protocol's
file (conf/protocol/<name>.yaml: ``best_epoch``, ``metric_max``, ``std_ddof``; ``Rule``). ``standard``: every metric
off the best epoch by the task's selection metric, sample std (ddof=1). ``paper_code`` (the authors'
``Summarize_Results.py``): each metric's own maximum over the epochs after pruning ended (dora; every epoch for the
other methods), ``<key>@paper_code`` where stored, population std (ddof=0). One seed: no spread.

``choose``: a cell's runs are the config-hash group with the most distinct seeds (ties: the current code's hash), at
one rate ("fixed") or the best of several by their means over the seeds they share ("tuned", the smaller rate on a
tie); ``for_metric``: under paper_code, each metric its own best rate.
"""
from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from ..config import lr_tag
from ..results import RunResults, run_lr

PAPER_SUFFIX = "@paper_code"
AUTO = "auto"

Run = RunResults


# --- one run's number -------------------------------------------------------------------------------
def _num(dev: dict, key) -> float | None:
    v = dev.get(key) if isinstance(dev, dict) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def epochs_of(run: Run) -> list[dict]:
    """The run's per-epoch history; a file without one: its best epoch alone (all that is known of it)."""
    hist = [h for h in run.epochs or [] if isinstance(h, dict) and isinstance(h.get("dev"), dict)]
    if hist:
        return hist
    best = run.best or {}
    return [best] if isinstance(best, dict) and isinstance(best.get("dev"), dict) else []


def best_epoch(run: Run, epochs: list[dict] | None = None) -> dict | None:
    """The epoch with the highest selection metric (the first of equals) over ``epochs`` (None: all epochs)."""
    scored = [(v, h) for h in (epochs_of(run) if epochs is None else epochs)
              if (v := _num(h["dev"], run.metric)) is not None]
    return max(scored, key=lambda vh: vh[0])[1] if scored else None


# The methods whose runs the authors' Summarize_Results.py cuts at 'prune finished': the marker is logged by their
# Adaptive_Lora (DoRA) alone; AdaLoRA also prunes (it has a pruning_end_step) but is not in their code.
AFTER_PRUNING = ("dora",)


def candidate_epochs(run: Run) -> list[dict]:
    """paper_code: for a method of ``AFTER_PRUNING`` the epochs ending at or after its ``pruning_end_step`` (the
    budget allocation is final); for every other method (adalora included) all epochs."""
    hist = epochs_of(run)
    end = run.pruning_end_step
    if end is None or run.method not in AFTER_PRUNING:
        return hist
    return [h for h in hist if isinstance(h.get("step"), (int, float)) and h["step"] >= end]


# --- the rules --------------------------------------------------------------------------------------
# What a conf/protocol/<name>.yaml says of the report (its keys best_epoch, metric_max, std_ddof), in the notes' words
EPOCHS = {"all": "all epochs",
          "after_pruning": "the epochs after pruning ended (dora; other methods, adalora included: all epochs)"}
JOINT_NOTE = ("the best dev epoch over {epochs} by the task's metric (GLUE: the column's metric; SQuAD: F1; XSum: "
              "ROUGE-L), every number read off that epoch")
SPREAD = {1: "sample std over seeds (ddof=1)", 0: "population std over seeds (ddof=0, numpy.std)"}
SOURCES = {"paper_code": " (the authors' Summarize_Results.py)"}  # a protocol's origin, for its note
VARIANTS = {"paper_code": "the authors' metric variant"}  # the protocols whose `<key>@<name>` the tasks store


@dataclass(frozen=True)
class Rule:
    """A protocol's selection rule (docs/reproduce.md: Evaluation protocols), as its conf/protocol file says:
    ``best_epoch`` (``all``; ``after_pruning``: ``candidate_epochs``), ``metric_max`` (``joint``: every metric off
    the best epoch by the run's selection metric; ``per_metric``: each metric's own maximum) and ``std_ddof``. A
    run's ``<key>@<name>`` is read where stored (paper_code: the authors' SQuAD windows, ROUGE without stemming)."""
    name: str
    best_epoch: str = "all"
    metric_max: str = "joint"
    ddof: int = 1                                               # of the spread over seeds

    def value(self, run: Run, keys: Sequence[str] | None = None) -> float | None:
        """The run's number for the first of ``keys`` it has (``None``: the run's own selection metric)."""
        keys = tuple(keys) if keys else (run.metric,)
        epochs = candidate_epochs(run) if self.best_epoch == "after_pruning" else epochs_of(run)
        if self.metric_max == "joint":
            epochs = [best] if (best := best_epoch(run, epochs)) is not None else []
        for k in keys:
            variant = k + "@" + self.name
            if vals := [v for h in epochs if (v := _num(h["dev"], variant if variant in h["dev"] else k)) is not None]:
                return max(vals)
        return None

    def std(self, xs: Sequence[float]) -> float | None:
        if len(xs) < 2:
            return None
        return statistics.stdev(xs) if self.ddof == 1 else statistics.pstdev(xs)

    @property
    def note(self) -> str:
        """One line for the tables' notes."""
        epochs = EPOCHS[self.best_epoch]
        how = JOINT_NOTE.format(epochs=epochs) if self.metric_max == "joint" else \
            f"each metric's own maximum over {epochs}"
        variant = f", {VARIANTS[self.name]} (`<key>@{self.name}`) where stored" if self.name in VARIANTS else ""
        return f"selection `{self.name}`{SOURCES.get(self.name, '')}: {how}{variant}; ± = {SPREAD[self.ddof]}"


def load_rules(protocol_dir: Path | None = None) -> dict[str, Rule]:
    """Every protocol's rule, as conf/protocol/<name>.yaml says it (editing a file changes the report)."""
    from omegaconf import OmegaConf

    from ..config import CONF_DIR

    files = sorted((protocol_dir or CONF_DIR / "protocol").glob("*.yaml"))
    rules = [OmegaConf.load(f) for f in files]
    return {p.name: Rule(p.name, str(p.best_epoch), str(p.metric_max), int(p.std_ddof)) for p in rules}


RULES = load_rules()
STANDARD, PAPER_CODE = RULES["standard"], RULES["paper_code"]
PROTOCOLS = (AUTO, *RULES)


def trained_under(run: Run) -> str:
    """The protocol a run was trained under (files from before protocols existed: standard)."""
    p = run.protocol
    return p if p in RULES else STANDARD.name


# --- the learning rate of a cell ----------------------------------------------------------------------
def lr_text(lr: float | None) -> str:
    """``4e-4``, ``2.5e-3``: as in the run ids; ``?`` for a file without a rate."""
    return "?" if lr is None else lr_tag(lr)


@dataclass
class LrPoint:
    """One learning rate of a cell: its runs (one per seed) and their selection metric."""
    lr: float | None
    runs: list[Run]
    values: list[float]          # the selection metric of the runs that have one
    mean: float | None = None
    std: float | None = None

    @property
    def n(self) -> int:
        return len(self.values)


@dataclass
class Choice:
    """The runs a cell is made of, and why."""
    runs: list[Run]              # the chosen lr's runs, one per seed, by seed
    lr: float | None
    source: str                  # "fixed" (one rate in the group) | "tuned" (the best of several)
    rule: Rule
    grid: list[LrPoint]          # every rate of the chosen group, ascending
    config_hash: str | None
    other_hashes: dict = field(default_factory=dict)   # hash -> distinct seeds, the groups left out
    protocols: dict = field(default_factory=dict)      # trained-under protocol -> runs of the chosen group
    seeds: int = 0               # distinct seeds of the chosen config-hash group
    current: bool = False        # several hashes: the chosen one is what the current code gives its runs' config
    compared: tuple = ()         # tuned: the seeds the rates were compared over (those every rate has)
    refused: str = ""            # why no rate could be picked (the cell is left out)

    @property
    def tuned(self) -> bool:
        return self.source == "tuned"


def _one_per_seed(runs: list[Run]) -> list[Run]:
    by_seed = {}
    for r in runs:  # one file per run: load_runs skips duplicates
        by_seed[int(r.seed)] = r
    return [by_seed[s] for s in sorted(by_seed)]


def _best(means: list[float | None]) -> int:
    """The index of the best mean over rates in ascending order: a later rate wins only if strictly better, so ties
    go to the smaller rate; ``None`` (no value) never wins."""
    best = 0
    for i, m in enumerate(means):
        if m is not None and (means[best] is None or (m > means[best] and not math.isclose(
                m, means[best], rel_tol=1e-12, abs_tol=1e-12))):
            best = i
    return best


def _best_shared(grid: list[LrPoint], score: Callable[[Run], "float | None"]) -> tuple[int | None, tuple]:
    """The best rate by its mean of ``score`` over the seeds every rate with a value has (a rate of one seed, a
    killed search, is compared with the others on that seed alone), and those seeds; ``(None, ())`` when the rates
    share no seed (nothing to compare them on)."""
    scored = [{int(r.seed): v for r in p.runs if (v := score(r)) is not None} for p in grid]
    having = [set(s) for s in scored if s]
    shared = set.intersection(*having) if having else set()
    if len(having) > 1 and not shared:
        return None, ()
    return _best([statistics.fmean(s[k] for k in shared) if s else None for s in scored]), tuple(sorted(shared))


def current_hash(run: Run) -> str | None:
    """The config hash the current code gives the run's recorded config (``results["config"]``, resolved) and
    schedule: equal to its ``config_hash`` unless the code that trained it hashed configs otherwise. The keys of
    the method's file that interpolate the seed (``${seed}``: dylora's ``method.seed``) count at seed 0, as
    ``config.identity`` counts them."""
    from omegaconf import OmegaConf

    from ..config import CONF_DIR, config_hash

    recorded = run.config
    if not isinstance(recorded, dict) or not isinstance(recorded.get("method"), dict):
        return None
    try:
        cfg = OmegaConf.create(recorded)
        method = CONF_DIR / "method" / f"{run.method}.yaml"
        for key, value in (OmegaConf.to_container(OmegaConf.load(method)).items() if method.is_file() else ()):
            if value == "${seed}" and key in cfg.method:
                cfg.method[key] = 0
        return config_hash(cfg, run.schedule)
    except Exception:  # noqa: BLE001 - a recorded config the current code cannot read is not the current code's
        return None


def choose(runs: list[Run], protocol: str = AUTO) -> Choice | None:
    """The config-hash group with the most distinct seeds (ties: the hash the current code gives its runs' config,
    ``current_hash``; then the first hash in sorted order), then its rule (``auto``: the protocol most of the group
    was trained under) and its learning rate: the only one ("fixed"), or the one with the best mean selection
    metric over the seeds every rate has ("tuned"; ties: the smaller). Rates that share no seed are not compared:
    the choice is ``refused``."""
    if not runs:
        return None
    groups: dict = defaultdict(list)
    for r in runs:
        groups[r.config_hash].append(r)
    seeds = {h: len({int(r.seed) for r in g}) for h, g in groups.items()}
    current = {h for h, g in groups.items() if h is not None and current_hash(g[0]) == h} if len(groups) > 1 \
        else set()
    main = min(groups, key=lambda h: (-seeds[h], h not in current, h is None, str(h)))
    group = groups[main]
    protocols = Counter(trained_under(r) for r in group)
    rule = RULES[protocols.most_common(1)[0][0] if protocol == AUTO else protocol]

    by_lr: dict = defaultdict(list)
    for r in group:
        by_lr[run_lr(r)].append(r)
    grid = []
    for lr in sorted(by_lr, key=lambda x: (x is None, x or 0.0)):
        rs = _one_per_seed(by_lr[lr])
        vals = [v for r in rs if (v := rule.value(r)) is not None]
        grid.append(LrPoint(lr, rs, vals, statistics.fmean(vals) if vals else None, rule.std(vals)))
    best, compared = _best_shared(grid, rule.value)
    refused = "" if best is not None else (
        "no seed has runs at every learning rate (" + "; ".join(
            f"{lr_text(p.lr)}: seed{'s' if len(p.runs) > 1 else ''} {', '.join(str(int(r.seed)) for r in p.runs)}"
            for p in grid) + "), so the rates cannot be compared; train the missing seeds")
    chosen = grid[best or 0]
    return Choice(runs=chosen.runs if not refused else [], lr=chosen.lr,
                  source="tuned" if len(grid) > 1 else "fixed", rule=rule, grid=grid, config_hash=main,
                  other_hashes={h: seeds[h] for h in groups if h != main}, protocols=dict(protocols),
                  seeds=seeds[main], current=main in current, compared=compared, refused=refused)


# --- one rate per metric (the authors' summary) -------------------------------------------------------------
JOINT, PER_METRIC = "joint", "per_metric"
LR_CHOICES = (JOINT, PER_METRIC)


def for_metric(choice: Choice, score: Callable[[Run], "float | None"]) -> Choice:
    """The rate the authors' ``Summarize_Results.py`` would report for one metric: it lists every configuration's
    mean per metric, so SQuAD EM and F1, ROUGE-1/2/L can each come from their own best configuration. Among the
    choice's rates (its config-hash group), the one with the best mean of ``score`` (one run's number for that
    metric) over the seeds every rate has, ties to the smaller; a choice of one rate is returned as it is."""
    if len(choice.grid) < 2:
        return choice
    best, compared = _best_shared(choice.grid, score)
    if best is None:  # no seed with the metric at every rate: the joint choice stands
        return choice
    return replace(choice, runs=choice.grid[best].runs, lr=choice.grid[best].lr, compared=compared)
