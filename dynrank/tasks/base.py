"""What the training loop needs from a task."""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch


class Task:
    task_type = "seq_cls"  # PEFT task type for exports: seq_cls | qa | seq2seq
    metric = "accuracy"  # the number the paper's table reports (higher is better)
    packs = False  # train batches can be packed (``packed_batch``, dynrank/packing.py)

    def __init__(self, cfg, tokenizer):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.name = cfg.task.name
        self.metric = cfg.task.metric
        pad = cfg.train.get("pad_to_multiple", 1)  # "auto": inputs.load_data sets it for the device (device.fast_path)
        self.pad_to_multiple = pad if isinstance(pad, int) else 1  # batches are padded to a multiple of it

    def build_model(self):
        raise NotImplementedError

    def train_set(self):
        raise NotImplementedError

    def eval_sets(self) -> dict:
        raise NotImplementedError

    def collate(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def batch(self, dataset, indices: list[int]) -> dict[str, torch.Tensor]:
        """The batch of ``dataset``'s examples ``indices`` (a stacked step: every run's, run-major)."""
        return self.collate([dataset[j] for j in indices])

    def train_batch(self, dataset, per_run: tuple[list[int], ...], packed: bool) -> dict[str, torch.Tensor]:
        """A training step's batch of every run (``per_run[k]``: run k's example indices): packed where the task
        packs and ``packed`` (``train.pack``), else padded (``batch``), run-major either way."""
        if packed and self.packs:
            return self.packed_batch(dataset, per_run)
        return self.batch(dataset, [j for run in per_run for j in run])

    def packed_batch(self, dataset, per_run) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def position_offset(self) -> int:
        """The position id of a sequence's first token: RoBERTa's count from padding_idx + 1, BERT's from 0."""
        return self.tokenizer.pad_token_id + 1 if self.cfg.model.family == "roberta" else 0

    def check_positions(self, model) -> None:
        """Refuse a ``task.max_length`` past the model's position embeddings (a longer sequence would index past
        them: a CUDA assert or an IndexError deep in the embedding)."""
        n = getattr(model.config, "max_position_embeddings", None)
        if n is None:
            return
        room = n - self.position_offset() if self.cfg.model.family == "roberta" else n
        if int(self.cfg.task.max_length) > room:
            from ..errors import ConfigError
            raise ConfigError(f"task.max_length={self.cfg.task.max_length} is longer than the {room} positions of "
                              f"model={self.cfg.model.id}; set task.max_length={room} or less")

    def run_losses(self, model, batch: dict[str, torch.Tensor], runs: int) -> torch.Tensor:
        """The task loss of each of ``runs`` stacked runs (R,): ``batch`` holds their batches concatenated, run-major
        (``collate`` of run 0's examples, then run 1's, ...); each run's loss is the mean over its own examples, as
        the model's own loss of that run alone."""
        raise NotImplementedError

    def evaluate(self, model, eval_sets, device, amp, runs: int = 1) -> list[dict[str, float]]:
        """Dev metrics of each of ``runs`` stacked runs of ``model`` on ``eval_sets`` (as returned by
        ``eval_sets()``): every dev batch goes to all runs at once (``repeat_runs``)."""
        raise NotImplementedError


def repeat_runs(batch: dict[str, torch.Tensor], runs: int) -> dict[str, torch.Tensor]:
    """The same batch for each of ``runs`` stacked runs, run-major (evaluation: the dev set is every run's)."""
    if runs == 1:
        return batch
    return {k: v.repeat(runs, *[1] * (v.dim() - 1)) for k, v in batch.items()}


def mean_per_run(per_example: torch.Tensor, runs: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(R,) means of per-example (or per-token) losses over each run's rows; ``valid``: a mask of what counts (the
    ``ignore_index`` of torch's losses), the mean then over the valid entries of each run."""
    per = per_example.reshape(runs, -1)
    if valid is None:
        return per.mean(1)
    return per.sum(1) / valid.reshape(runs, -1).sum(1)


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
