"""SQuAD v1.1 / v2.0 rows from the Hub (``rajpurkar/squad``, ``rajpurkar/squad_v2``) or the official JSON files.

Local layout (``data.dir=...``): the official downloads, under ``<dir>`` or ``<dir>/<task name>``
(``squad_v1``/``squad_v2``) or ``<dir>/squad``:
  * v1.1: ``train-v1.1.json``, ``dev-v1.1.json``;
  * v2.0: ``train-v2.0.json``, ``dev-v2.0.json`` (``is_impossible`` questions have no answers).

Rows come out as ``{"id", "question", "context", "answers": [texts], "answer_starts": [char offsets]}``;
an unanswerable v2.0 question has empty lists. Dev questions keep every annotator's answer (the
official metric takes the max over them).
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import hub
from ..errors import DataError
from .files import not_utf8

HUB = {1: "rajpurkar/squad", 2: "rajpurkar/squad_v2"}
FILES = {(1, "train"): "train-v1.1.json", (1, "validation"): "dev-v1.1.json",
         (2, "train"): "train-v2.0.json", (2, "validation"): "dev-v2.0.json"}


def load_split(version: int, split: str, data_dir: str | None, task_name: str = "") -> list[dict]:
    if data_dir is None:
        return _from_hub(version, split)
    return from_json(find_file(version, split, Path(data_dir), task_name))


def _from_hub(version: int, split: str) -> list[dict]:
    ds = hub.load_dataset(HUB[version], split, f"pass data.dir=/dir/with/{FILES[version, split]}")
    return [{"id": r["id"], "question": r["question"], "context": r["context"],
             "answers": list(r["answers"]["text"]), "answer_starts": [int(s) for s in r["answers"]["answer_start"]]}
            for r in ds]


def find_file(version: int, split: str, root: Path, task_name: str = "") -> Path:
    name = FILES[version, split]
    cands = [root / name] + [root / d / name for d in (task_name, "squad", "SQuAD") if d]
    for c in cands:
        if c.is_file():
            return c
    raise DataError(f"missing SQuAD v{'1.1' if version == 1 else '2.0'} file {name} in {root} "
                    f"(also looked in {', '.join(str(c.parent) for c in cands[1:])}); fix data.dir")


def from_json(path: Path) -> list[dict]:
    """Parse an official SQuAD JSON file (``{"data": [{"paragraphs": [{"context", "qas": [...]}]}]}``)."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: a leading BOM is not JSON
            doc = json.load(f)
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON in {path}: {e}; is this an official SQuAD file?") from None
    rows = []
    try:
        for article in doc["data"]:
            for para in article["paragraphs"]:
                context = para["context"]
                for qa in para["qas"]:
                    answers = [] if qa.get("is_impossible") else qa["answers"]
                    rows.append({"id": str(qa["id"]), "question": qa["question"], "context": context,
                                 "answers": [a["text"] for a in answers],
                                 "answer_starts": [int(a["answer_start"]) for a in answers]})
    except (KeyError, TypeError, ValueError) as e:
        where = f"missing key {e}" if isinstance(e, KeyError) else str(e)
        raise DataError(f"malformed SQuAD file {path} ({where}); expected the official layout "
                        '{"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers"}]}]}]}') from None
    if not rows:
        raise DataError(f"{path} has no questions; fix data.dir")
    return rows
