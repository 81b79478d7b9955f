"""Tokenise once, cache on disk, pad per batch.

Encoded splits are stored as ``.npz`` (token ids concatenated + offsets) under ``data.cache_dir``,
keyed by a hash of the tokenizer, the task, the split, the max length and the source files, so a
sweep over methods and seeds tokenises each split only once.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError


def fingerprint(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def tokenizer_id(tokenizer) -> str:
    vocab = tokenizer.get_vocab()
    return fingerprint(type(tokenizer).__name__, getattr(tokenizer, "name_or_path", ""), len(vocab),
                       sorted(vocab.items())[:: max(1, len(vocab) // 500)])


def source_id(data_dir, *names) -> list:
    """Sizes and mtimes of the local source files (so an edited file is re-tokenised).

    Only as deep as the readers look (``<dir>/<file>``, ``<dir>/<task>/<file>``): ``data.dir=/`` costs a
    glance, not a walk of the whole disk; a directory that cannot be read is a ``DataError``."""
    if data_dir is None:
        return ["hub", *names]
    out = []
    root = Path(data_dir)
    try:
        for p in sorted([*root.glob("*"), *root.glob("*/*")]):
            if p.suffix in (".tsv", ".parquet", ".json", ".jsonl", ".csv") and p.is_file():
                st = p.stat()
                out.append((str(p), st.st_size, st.st_mtime_ns))
    except OSError as e:
        raise DataError(f"cannot read {e.filename or root} under data.dir={data_dir} ({e.strerror}); "
                        "point data.dir at the data directory") from None
    return out


class Encoded(torch.utils.data.Dataset):
    """Variable-length token-id lists plus per-example fields (labels, ids...)."""

    def __init__(self, columns: dict[str, list]):
        self.columns = columns
        self.n = len(next(iter(columns.values())))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.columns.items()}

    def lengths(self) -> list[int]:
        return [len(x) for x in self.columns["input_ids"]]

    def padded(self, indices, pad_id: int, multiple: int = 1, column: str = "input_ids"):
        """``pad_batch``'s ``input_ids`` and ``attention_mask`` for the examples ``indices``, gathered at once from a
        flat copy of the column (built on first use): a stacked step's batch of several runs costs one gather, not
        a Python loop over its examples."""
        if getattr(self, "_flat", None) is None:
            rows = self.columns[column]
            self._flat = torch.tensor([t for x in rows for t in x], dtype=torch.long)
            lengths = torch.tensor([len(x) for x in rows], dtype=torch.long)
            self._lens, self._starts = lengths, torch.cumsum(lengths, 0) - lengths
        idx = torch.as_tensor(indices, dtype=torch.long)
        lens = self._lens[idx]
        width = -(-int(lens.max()) // multiple) * multiple
        pos = torch.arange(width)
        mask = pos.unsqueeze(0) < lens.unsqueeze(1)
        at = (self._starts[idx].unsqueeze(1) + pos).clamp_(max=max(len(self._flat) - 1, 0))
        ids = torch.where(mask, self._flat[at], torch.full_like(at, pad_id))
        return {"input_ids": ids, "attention_mask": mask.long()}

    def digest(self, *extra) -> str:
        """SHA-256 over every column (and ``extra``, JSON-able): equal exactly when the examples are equal."""
        h = hashlib.sha256()
        for name in sorted(self.columns):
            v = self.columns[name]
            h.update(name.encode() + b"\0")
            if v and isinstance(v[0], (list, np.ndarray)) and _integers(v[0]):
                h.update(np.fromiter(map(len, v), dtype=np.int64, count=len(v)).tobytes())
                h.update(np.fromiter(itertools.chain.from_iterable(v), dtype=np.int64).tobytes())
            else:
                h.update(json.dumps(v, default=_plain).encode())
        for e in extra:
            h.update(json.dumps(e, sort_keys=True, default=_plain).encode())
        return h.hexdigest()

    # -- disk format --------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        arrays = {}
        for k, v in self.columns.items():
            if v and isinstance(v[0], (list, np.ndarray)):
                arrays[f"{k}.flat"] = np.concatenate([np.asarray(x, dtype=np.int64) for x in v]) if v else np.zeros(0)
                arrays[f"{k}.offsets"] = np.cumsum([0] + [len(x) for x in v])
            else:
                arrays[k] = np.asarray(v)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "Encoded":
        z = np.load(path, allow_pickle=False)
        cols = {}
        for k in z.files:
            if k.endswith(".flat"):
                name = k[:-5]
                flat, off = z[k], z[f"{name}.offsets"]
                cols[name] = [flat[off[i]:off[i + 1]].tolist() for i in range(len(off) - 1)]
            elif not k.endswith(".offsets"):
                cols[k] = z[k].tolist()
        return cls(cols)


def _integers(x) -> bool:
    return all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in x)


def _plain(o):
    return o.tolist() if hasattr(o, "tolist") else str(o)


def cached(cache_dir, key: str, build) -> Encoded:
    """Load ``<cache_dir>/<key>.npz`` or build it with ``build()`` and store it."""
    if cache_dir is None:
        return build()
    path = Path(os.path.expanduser(str(cache_dir))) / f"{key}.npz"
    if path.exists():
        try:
            return Encoded.load(path)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt
    enc = build()
    try:
        enc.save(path)
    except OSError:
        pass  # a read-only cache directory only costs time
    return enc


def pad_batch(batch: list[dict], pad_id: int, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Dynamic padding: pad to the longest sequence of this batch (rounded up to ``multiple``, which bounds
    the number of distinct shapes a compiled model sees), not to the max length."""
    out = {}
    width = max(len(b["input_ids"]) for b in batch)
    width = -(-width // multiple) * multiple
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.as_tensor(b["input_ids"])
        mask[i, :n] = 1
    out["input_ids"], out["attention_mask"] = ids, mask
    return out
