"""The device a run trains on and the fast path's settings resolved for it; the seeds of every generator."""
from __future__ import annotations

import random

import numpy as np
import torch

from .errors import TrainingError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("train.device=cuda but no GPU is visible; use train.device=cpu")
    return torch.device(name)


def fast_path(cfg, device: torch.device) -> dict:
    """The fast path's settings resolved for ``device``: ``train.bf16``, ``train.cuda_graphs``, ``train.stack``,
    ``train.pack`` (``auto``: on a GPU, unless ``train.exact``: packed steps, ``dynrank.packing``)
    (``auto``: on a GPU, unless ``train.exact``; ``stack=true`` stacks on a CPU too) and ``train.pad_to_multiple`` (``auto``: on a GPU a multiple that bounds the number of
    padded lengths, and so of CUDA graphs, to 16 per length budget: 8 for GLUE's 128 tokens; 1 on a CPU)."""
    t = cfg.train
    gpu = device.type == "cuda" and not bool(t.get("exact", False))

    def choice(key):
        v = t.get(key, False)
        return gpu if v == "auto" else bool(v)

    pad = t.get("pad_to_multiple", 1)
    if pad == "auto":
        pad = max(8, -(-int(cfg.task.max_length) // 16 // 8) * 8) if gpu else 1
    return {"bf16": choice("bf16") and device.type == "cuda", "cuda_graphs": choice("cuda_graphs")
            and device.type == "cuda", "stack": choice("stack"), "pad_to_multiple": int(pad), "pack": choice("pack")}
