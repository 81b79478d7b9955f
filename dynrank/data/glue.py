"""GLUE rows from the Hub (``nyu-mll/glue``) or a local directory.

Local layouts (``data.dir=...``):
  * the classic download: ``<dir>/<TASK>/{train,dev}.tsv`` (MNLI: ``dev_matched.tsv``,
    ``dev_mismatched.tsv``), e.g. ``glue_data/CoLA/train.tsv``;
  * the Hub's parquet files saved locally: ``<dir>/<task>/<split>-*.parquet`` (splits ``train``,
    ``validation``, MNLI ``validation_matched``/``validation_mismatched``).
``<dir>`` may be the GLUE root or the task directory itself.

Rows come out as ``{"text_a", "text_b" (or None), "label"}`` with the Hub's label ids
(e.g. MNLI entailment=0, neutral=1, contradiction=2; RTE/QNLI entailment=0, not_entailment=1).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from .. import hub
from ..errors import DataError
from .files import not_utf8


@dataclass(frozen=True)
class GlueSpec:
    dirname: str  # classic directory name
    text_a: str  # Hub column names
    text_b: str | None
    eval_splits: tuple[str, ...]  # Hub split names
    # classic TSV: header? and the columns (index or header name) of text_a, text_b, label
    tsv_header: bool
    tsv_cols: tuple
    labels: tuple[str, ...] | None = None  # string labels in TSV -> id by position; None: int/float as is


GLUE = {
    "cola": GlueSpec("CoLA", "sentence", None, ("validation",), False, (3, None, 1)),
    "sst2": GlueSpec("SST-2", "sentence", None, ("validation",), True, ("sentence", None, "label")),
    "mrpc": GlueSpec("MRPC", "sentence1", "sentence2", ("validation",), True, (3, 4, 0)),
    "qqp": GlueSpec("QQP", "question1", "question2", ("validation",), True,
                    ("question1", "question2", "is_duplicate")),
    "stsb": GlueSpec("STS-B", "sentence1", "sentence2", ("validation",), True,
                     ("sentence1", "sentence2", "score")),
    "mnli": GlueSpec("MNLI", "premise", "hypothesis", ("validation_matched", "validation_mismatched"), True,
                     ("sentence1", "sentence2", -1), ("entailment", "neutral", "contradiction")),
    "qnli": GlueSpec("QNLI", "question", "sentence", ("validation",), True,
                     ("question", "sentence", "label"), ("entailment", "not_entailment")),
    "rte": GlueSpec("RTE", "sentence1", "sentence2", ("validation",), True,
                    ("sentence1", "sentence2", "label"), ("entailment", "not_entailment")),
}

_TSV_NAMES = {"train": "train", "validation": "dev", "validation_matched": "dev_matched",
              "validation_mismatched": "dev_mismatched"}


HUB, HINT = "nyu-mll/glue", "pass data.dir=/path/to/glue_data"  # the Hub's GLUE; what to pass without it


def load_split(task: str, split: str, data_dir: str | None) -> list[dict]:
    spec = GLUE[task]
    if data_dir is None:
        return _from_hub(task, split, spec)
    return _from_local(task, split, spec, Path(data_dir))


def _from_hub(task, split, spec) -> list[dict]:
    ds = hub.load_dataset(HUB, split, HINT, name=task)
    return [{"text_a": r[spec.text_a], "text_b": r[spec.text_b] if spec.text_b else None, "label": r["label"]}
            for r in ds]


def _task_dir(task, spec, root: Path) -> Path:
    for cand in (root / spec.dirname, root / task, root / spec.dirname.lower(), root):
        if cand.is_dir() and (any(cand.glob("*.tsv")) or any(cand.glob("*.parquet"))):
            if cand == root and root.name.lower().replace("-", "") not in (task, spec.dirname.lower().replace("-", "")):
                continue
            return cand
    raise DataError(f"no GLUE {task} data under {root}: expected {root / spec.dirname}/train.tsv "
                    f"(classic layout) or {root / task}/train-*.parquet; fix data.dir")


def _from_local(task, split, spec, root: Path) -> list[dict]:
    d = _task_dir(task, spec, root)
    parquet = sorted(d.glob(f"{split}-*.parquet")) or sorted(d.glob(f"{split}.parquet"))
    if parquet:
        return _from_parquet(parquet, spec)
    tsv = d / f"{_TSV_NAMES[split]}.tsv"
    if not tsv.is_file():
        raise DataError(f"missing file {tsv} for GLUE {task} split '{split}'; fix data.dir")
    return _from_tsv(tsv, spec)


def _from_parquet(files, spec) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    texts = [c for c in (spec.text_a, spec.text_b) if c]
    for f in files:
        try:
            table = pq.read_table(f)
        except (pa.ArrowException, OSError) as e:  # truncated, not Parquet, damaged pages
            raise DataError(f"{f} is not a readable Parquet file ({type(e).__name__}: {str(e).splitlines()[0]}); "
                            "replace it (e.g. with the Hub's file again)") from None
        if missing := [c for c in (*texts, "label") if c not in table.column_names]:
            raise DataError(f"{f}: no column {', '.join(repr(c) for c in missing)} (found: "
                            f"{', '.join(table.column_names)}); is this the right file?")
        for i, r in enumerate(table.to_pylist()):
            expected = _label_error(r["label"], spec)
            if expected:
                raise DataError(f"malformed row {i} of {f}: label {r['label']!r} is not {expected}; fix the file")
            if bad := next((c for c in texts if not isinstance(r[c], str)), None):
                raise DataError(f"malformed row {i} of {f}: {bad} is {r[bad]!r}, not a string; fix the file")
            rows.append({"text_a": r[spec.text_a], "text_b": r[spec.text_b] if spec.text_b else None,
                         "label": r["label"]})
    return rows


def _lines(reader, path: Path):
    """``(line number, fields)`` of a csv reader; a line it cannot read is a ``DataError`` naming it."""
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except UnicodeDecodeError as e:
            raise not_utf8(path, e) from None
        except csv.Error as e:  # e.g. a field over csv's limit of 131,072 characters
            raise DataError(f"malformed row at {path}:{reader.line_num} ({e}); fix or remove that line") from None
        yield reader.line_num, fields


def _from_tsv(path: Path, spec) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: a BOM before the header is not part of it
        lines = _lines(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), path)
        header = next(lines, (0, []))[1] if spec.tsv_header else None
        cols = []
        for c in spec.tsv_cols:
            if isinstance(c, str):
                if c not in header:
                    raise DataError(f"{path}: header has no column '{c}' (found: {', '.join(header)}); "
                                    "is this the right file?")
                cols.append(header.index(c))
            else:
                cols.append(c)
        width = len(header) if header else None
        for lineno, fields in lines:
            if not fields or fields == [""]:
                continue
            if width is None:
                width = len(fields)
            if len(fields) != width or any(c is not None and c >= len(fields) for c in cols):
                tab = " (a tab inside a field?)" if len(fields) > width else ""
                raise DataError(f"malformed row at {path}:{lineno}: expected {width} tab-separated fields, "
                                f"got {len(fields)}{tab}; fix or remove that line")
            a, b, lab = cols
            label_text = fields[lab].strip()
            rows.append({"text_a": fields[a], "text_b": fields[b] if b is not None else None,
                         "label": _parse_label(label_text, spec, path, lineno)})
    if not rows:
        raise DataError(f"{path} has no rows; fix data.dir")
    return rows


def _parse_label(text: str, spec, path, lineno):
    try:
        if spec.labels is not None:
            return spec.labels.index(text)
        label = float(text) if spec.dirname == "STS-B" else int(text)
    except ValueError:
        label = None
    expected = _label_error(label, spec)
    if expected:  # out of range would end in the loss (IndexError) or train on nonsense (a score of 7)
        raise DataError(f"malformed row at {path}:{lineno}: label '{text}' is not {expected}; "
                        "fix or remove that line")
    return label


def _label_error(label, spec) -> str | None:
    """What a label must be, where ``label`` (a class id, or STS-B's score) is not it; None where it is."""
    if spec.dirname == "STS-B":
        ok = isinstance(label, (int, float)) and not isinstance(label, bool) and 0 <= label <= 5
        return None if ok else "a score in [0, 5]"
    names = spec.labels or ("0", "1")  # the integer-labelled tasks (CoLA, SST-2, MRPC, QQP) are binary
    ok = isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(names)
    return None if ok else ", ".join(names) if spec.labels else "0 or 1"
