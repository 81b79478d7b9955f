"""XSum rows from the Hub (``EdinburghNLP/xsum``) or local JSONL/CSV files.

Local layout (``data.dir=...``): ``<dir>/<split>.jsonl`` (one JSON object per line) or
``<dir>/<split>.csv`` (header row), each record with the fields ``document`` and ``summary``
(other fields, e.g. ``id``, are ignored); splits ``train``, ``validation`` (file name
``validation`` or ``dev``) and ``test``. ``<dir>`` may also be the parent of an ``xsum/`` directory.
Rows come out as ``{"document", "summary"}``.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from .. import hub
from ..errors import DataError
from .files import not_utf8

HUB = "EdinburghNLP/xsum"
SPLITS = ("train", "validation", "test")
_NAMES = {"train": ("train",), "validation": ("validation", "dev", "val"), "test": ("test",)}


def load_split(split: str, data_dir: str | None) -> list[dict]:
    if split not in SPLITS:
        raise DataError(f"unknown XSum split '{split}'; choose one of: {', '.join(SPLITS)}")
    if data_dir is None:
        return _from_hub(split)
    return from_file(find_file(split, Path(data_dir)))


def _from_hub(split: str) -> list[dict]:
    ds = hub.load_dataset(HUB, split, f"pass data.dir=/dir/with/{split}.jsonl")
    return [{"document": r["document"], "summary": r["summary"]} for r in ds]


def find_file(split: str, root: Path) -> Path:
    for d in (root, root / "xsum"):
        for name in _NAMES[split]:
            for ext in (".jsonl", ".csv"):
                if (d / f"{name}{ext}").is_file():
                    return d / f"{name}{ext}"
    raise DataError(f"missing XSum {split} file in {root}: expected {split}.jsonl or {split}.csv "
                    "with fields document, summary; fix data.dir")


def from_file(path: Path) -> list[dict]:
    try:
        rows = _jsonl(path) if path.suffix == ".jsonl" else _csv(path)
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None
    if not rows:
        raise DataError(f"{path} has no rows; fix data.dir")
    return rows


def _record(rec, path, lineno) -> dict:
    if not isinstance(rec, dict) or not isinstance(rec.get("document"), str) or not isinstance(rec.get("summary"), str):
        raise DataError(f"malformed record at {path}:{lineno}: needs string fields 'document' and 'summary'; "
                        "fix or remove that line")
    return {"document": rec["document"], "summary": rec["summary"]}


def _jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"malformed JSON at {path}:{lineno} ({e.msg}); fix or remove that line") from None
            rows.append(_record(rec, path, lineno))
    return rows


def _csv(path: Path) -> list[dict]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # news articles exceed the default 128 KiB field limit
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: a BOM before the header is not part of it
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"document", "summary"} <= set(reader.fieldnames):
            raise DataError(f"{path}: header must name the columns 'document' and 'summary' "
                            f"(found: {', '.join(reader.fieldnames or [])})")
        return [_record(rec, path, reader.line_num) for rec in reader]
