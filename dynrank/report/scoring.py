"""How each Table 3 row's SQuAD number was made, and what a perfect model scores under that scoring (issue 30).

The paper's SQuAD rows come from two kinds of code. The DoRA authors' code (github.com/MIkumikumi0116/DoRA
@235e21f) can train three of them, its ``Finetune_Type_Enum``: ``Full_Finetune`` (full), ``Fixed_Lora`` (lora) and
``Adaptive_Lora`` (dora); it scores every dev window through an evaluation loop that pairs ids with other windows'
golds within a dev batch of the run's own batch size (``DataLoader(dev_dataset, batch_size=self.config.batch_size)``;
``dynrank.metrics.squad.paper_code_references``). It has no BitFit, adapter or AdaLoRA, so those rows were made with
other code, and each source there scores per question with the official script's logic (AdaLoRA's
``NLG_QA`` ``run_qa.py`` and AdapterHub's question-answering example: HF ``postprocess_qa_predictions`` and the
``squad`` / ``squad_v2`` metric; BitFit's code has no SQuAD). So, read under the ``paper_code`` rule, a cell of
``AUTHORS_CODE`` takes the authors' scores (``<key>@paper_code``) at its runs' batch, and every other cell (the other
paper rows, and methods the paper does not have: dylora, dora_wd) the official scores (``as_scored`` drops the
authors' variants from those runs before any selection, so the learning rate is chosen on them too).

``ceilings``: per cell, the scoring its number is read under and a perfect model's score there: 100 / 100 under the
official script; under the authors' loop what the runs stored (``ceiling_exact@paper_code``: 96.96 EM on v1.1 dev at
batch 16, 94.49 at 48 with MiniLM's tokenizer, ``tests/test_squad.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .aggregate import cell_choices
from .selection import PAPER_CODE, PAPER_SUFFIX, epochs_of
from .tables import Run, Table, _finite

SQUAD_TASKS = ("squad_v1", "squad_v2")
AUTHORS_CODE = ("full", "lora", "dora")  # the SQuAD rows the DoRA authors' code trained (module docstring)
OFFICIAL, AUTHORS = "official script", "the authors' loop"
CEILING_KEYS = {"em": "ceiling_exact", "f1": "ceiling_f1"}  # <key>@paper_code as tasks/squad.py stores them


def scored_by_authors(run: Run) -> bool:
    return run.task in SQUAD_TASKS and run.method in AUTHORS_CODE


def as_scored(run: Run) -> Run:
    """The run as its row's number was made: a SQuAD run of a method outside ``AUTHORS_CODE`` without the authors'
    metric variants (``<key>@paper_code``), so every rule reads the official scores; any other run as it is."""
    if run.task not in SQUAD_TASKS or scored_by_authors(run):
        return run

    def official(holder):
        if not isinstance(holder, dict) or not isinstance(holder.get("dev"), dict):
            return holder
        return dict(holder, dev={k: v for k, v in holder["dev"].items() if not k.endswith(PAPER_SUFFIX)})

    epochs = [official(h) for h in run.epochs] if isinstance(run.epochs, list) else run.epochs
    return replace(run, best=official(run.best), final=official(run.final), epochs=epochs)


@dataclass(frozen=True)
class Ceiling:
    """A perfect model's score under the scoring a cell's number is read with."""
    scoring: str                   # OFFICIAL | AUTHORS
    batch: int | None = None       # the authors' loop: the dev batch (the runs' train.batch_size)
    value: float | None = None     # None: not stored (runs from before the ceiling was)

    def text(self) -> str:
        if self.scoring == OFFICIAL:
            return f"{self.value:.2f} ({OFFICIAL})"
        value = "not stored (runs from before issue 30)" if self.value is None else f"{self.value:.2f}"
        return f"{value} ({AUTHORS}, batch {self.batch if self.batch is not None else '?'})"


def _run_ceiling(run: Run, rule, metric: str) -> Ceiling:
    """One run's scoring and ceiling for ``metric`` (em / f1): the authors' loop where the rule reads the authors'
    scores and the run has them, else the official script (100)."""
    if rule is not PAPER_CODE or not any(("exact" + PAPER_SUFFIX) in h["dev"] for h in epochs_of(run)):
        return Ceiling(OFFICIAL, value=100.0)
    batch = rule.value(run, ("batch",))
    if batch is None:  # a run from before batch@paper_code was stored: its config's batch is the one it scored at
        batch = ((run.config or {}).get("train") or {}).get("batch_size")
    value = rule.value(run, (CEILING_KEYS[metric],))
    return Ceiling(AUTHORS, int(batch) if _finite(batch) else None, value)


def ceilings(table: Table, choices) -> dict[tuple[int, str], list[Ceiling]]:
    """(row number, column key) -> the distinct ceilings of the cell's runs (one, unless its runs differ), for the
    SQuAD EM / F1 columns with runs."""
    out = {}
    for i, row in enumerate(table.rows):
        for col in table.columns:
            if col.plain or col.task not in SQUAD_TASKS:
                continue
            metric = col.key.rsplit("_", 1)[1]
            _, chosen = cell_choices(table, choices, row, col)
            found = {_run_ceiling(r, c.rule, metric) for c in chosen for r in c.runs}
            if found:
                out[i, col.key] = sorted(found, key=lambda c: (c.scoring, c.batch or 0, c.value or 0.0))
    return out


def ceiling_notes(table: Table) -> list[str]:
    """One note line: every SQuAD cell's perfect-model ceiling, grouped by (column, ceiling)."""
    if not table.ceilings:
        return []
    labels = {c.key: c.label for c in table.columns}
    groups: dict = {}
    for (i, key), found in table.ceilings.items():
        groups.setdefault((key, "; ".join(c.text() for c in found)), []).append(" ".join(table.rows[i].labels))
    parts = [f"{labels[key]} {text}: {', '.join(rows)}" for (key, text), rows in groups.items()]
    return ["perfect-model ceiling per cell (what a model stating every gold answer scores under the scoring the "
            "cell is read with; SQuAD rows the authors' code trained, " + ", ".join(AUTHORS_CODE) + ", under "
            "`paper_code` by their evaluation loop at the runs' batch, every other row by the official script, as "
            "its number was made: dynrank/report/scoring.py): " + "; ".join(parts)]
