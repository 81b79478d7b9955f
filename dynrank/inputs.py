"""What a stack trains on: the data shared by its runs (``load_data``; ``data_identity``, what checkpoints record)
and each run's batches of an epoch (``batches``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import tasks
from .device import fast_path, pick_device
from .models import load_tokenizer


def batches(dataset, batch_size: int, seed: int, epoch: int, group_by_length: bool):
    """Shuffled index batches for one epoch; the order depends only on (seed, epoch): resumable."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(dataset), generator=g).tolist()
    if group_by_length:  # sort within chunks of 50 batches, then shuffle the batches
        lengths = dataset.lengths()
        chunk = batch_size * 50
        order = [i for s in range(0, len(order), chunk)
                 for i in sorted(order[s:s + chunk], key=lambda j: -lengths[j])]
    out = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        perm = torch.randperm(len(out), generator=g).tolist()
        out = [out[i] for i in perm]
    return out


@dataclass(frozen=True)
class CellData:
    """What every run of a cell trains and is evaluated on, loaded once per process (``load_data``)."""

    task: Any  # ``tasks.base.Task``: the task's model, batches, losses and evaluation (the tokenizer inside)
    train_set: Any  # the encoded training examples
    eval_sets: dict  # name -> the encoded evaluation examples (GLUE dev, MNLI's two, SQuAD's windows, XSum's)
    identity: dict  # ``data_identity``: what checkpoints and results files record, and resume checks


def load_data(cfg) -> CellData:
    """Tokenizer, task and encoded data: the same for every run of a cell (shared by the runs of one process)."""
    tokenizer = load_tokenizer(cfg.model)
    task = tasks.build(cfg, tokenizer)
    task.pad_to_multiple = fast_path(cfg, pick_device(str(cfg.train.device)))["pad_to_multiple"]
    train_set, eval_sets = task.train_set(), task.eval_sets()
    return CellData(task, train_set, eval_sets, data_identity(train_set, eval_sets))


def data_identity(train_set, eval_sets: dict) -> dict:
    """The data a run trains and is evaluated on, as its checkpoints record it: per split the number of
    examples and a digest of the encoded examples and, for SQuAD and XSum, of the references (so resuming on
    edited or cut data is refused)."""
    out = {"train": {"examples": len(train_set), "sha256": train_set.digest()}}
    for name, ds in eval_sets.items():
        features = getattr(ds, "features", ds)
        out[name] = {"examples": len(features), "sha256": features.digest(getattr(ds, "rows", None))}
    return out
