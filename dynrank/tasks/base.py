"""What the training loop needs from a task."""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch


class Task:
    task_type = "seq_cls"  # PEFT task type for exports: seq_cls | qa | seq2seq
    metric = "accuracy"  # the number the paper's table reports (higher is better)

    def __init__(self, cfg, tokenizer):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.name = cfg.task.name
        self.metric = cfg.task.metric

    def build_model(self):
        raise NotImplementedError

    def train_set(self):
        raise NotImplementedError

    def eval_sets(self) -> dict:
        raise NotImplementedError

    def collate(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def evaluate(self, model, eval_sets, device, amp) -> dict[str, float]:
        """Dev metrics of ``model`` on ``eval_sets`` (as returned by ``eval_sets()``)."""
        raise NotImplementedError


@contextmanager
def evaluating(model):
    """Eval mode (no dropout) for the block; the model's previous mode comes back afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def limit(rows: list, n) -> list:
    return rows if n is None else rows[: int(n)]
