"""Which runs of one command train as one stacked model, and how many runs one model holds (``train.max_stack``).

``auto`` on a GPU: as many runs as the GPU's free memory holds at a measured peak memory per padded token of a
stacked bf16 step (the slope of the peak between 1 and 5 runs stacked, the task family's, times the method's factor),
each run's batch at the task's longest (``train.batch_size`` x (``task.max_length`` + ``task.max_target_length``)),
at most ``MAX_AUTO``. Elsewhere (a CPU, whose memory this does not model): ``STACK_TOKENS`` padded tokens a step.
"""
from __future__ import annotations

import torch

from .device import fast_path, pick_device
from .methods import method_class

STACK_TOKENS = 65_536  # without a GPU: at most this many padded tokens in a stacked step
MAX_AUTO = 16  # runs, at most, in one model by ``auto``: a table cell's 5 seeds x 3 learning rates fit
MEMORY_SHARE = 0.8  # of the free memory at the start, for the stack's steps (the rest: evaluation, fragmentation)
MIB_PER_TOKEN = {  # peak MiB per padded token of a stacked step (bf16, CUDA graphs), 1 -> 5 runs of dora
    "glue": 0.47,   # bench-NVIDIA_H200-20261204-1556.json, L=128 x 32: 2,261 -> 9,916 MiB at 4,096 -> 20,480 tokens
    "squad": 0.38,  # seq2seq-NVIDIA_H100_80GB_HBM3-20261207-1430.json: 3,153 -> 12,560 MiB at 5,376 -> 30,080
    "xsum": 0.31,   # the same file, BART-base: 5,329 -> 22,228 MiB at 13,184 -> 68,480 tokens; packed steps
                    # (seq2seq-NVIDIA_H200-20261207-1859.json): 0.31 MiB a row (DoRA), 0.25 (LoRA); a packed
                    # batch's rows can reach the padded count (every document at 768), so it is budgeted the same
}
METHOD_FACTOR = {"dora_wd": 1.7}  # bench-NVIDIA_H200-20261204-1556.json: dora_wd 0.80 MiB a token, dora 0.47
FULL_PARAMETERS = 124.6e6  # RoBERTa-base's, its head included (README, Methods: 124,647,170)
# A run's own weights where every weight trains (stacked full fine-tuning, RoBERTa-base): its parameters x 18 bytes
# (fp32 weight, gradient and AdamW's two moments, and the step's bf16 copy), on top of its activations
STATE_MIB = {"full": FULL_PARAMETERS * 18 / 2**20}


def stacking(cfg, device) -> bool:
    """Whether the runs of ``cfg``'s cell train as one model on ``device``: the method stacks and ``train.stack``
    (resolved with the rest of the fast path, ``device.fast_path``) says so."""
    return method_class(cfg.method.name).stacks_on(str(cfg.model.family)) and fast_path(cfg, device)["stack"]


def stack_size(cfg, free_mib: float | None = None) -> int:
    """The most runs one model stacks: ``train.max_stack``, or (``auto``) as many as ``free_mib`` MiB of GPU memory
    hold (None: the free memory of ``train.device`` where it is a GPU, else ``STACK_TOKENS``' bound). E.g. on an
    80 GB GPU: GLUE at 32 x 128, 16 runs (the cap); SQuAD at 16 x 384, 16; XSum's LoRA at 64 x (768 + 64), 3."""
    size = cfg.train.get("max_stack", "auto")
    if size is not None and size != "auto":
        return int(size)
    tokens = int(cfg.train.batch_size) * (int(cfg.task.max_length) + int(cfg.task.get("max_target_length") or 0))
    if free_mib is None:
        device = pick_device(str(cfg.train.device))
        if device.type != "cuda":
            return max(1, STACK_TOKENS // tokens)
        free_mib = torch.cuda.mem_get_info(device)[0] / 2**20
    per_run = tokens * MIB_PER_TOKEN.get(str(cfg.task.family), max(MIB_PER_TOKEN.values()))
    per_run = per_run * METHOD_FACTOR.get(cfg.method.name, 1.0) + STATE_MIB.get(cfg.method.name, 0.0)
    return max(1, min(MAX_AUTO, int(MEMORY_SHARE * free_mib // per_run)))


def stacks(runs: list) -> list[list]:
    """The runs (``resume.Run``) grouped into stacks: each group trains as one model (``train.stack``: ``auto`` on a
    GPU for a method that stacks, ``true`` on any device, ``false`` never; at most ``stack_size`` runs per stack),
    runs resumed from different points (epoch, batch) in different stacks. A group of one is a run alone."""
    cfg = runs[0].cfg
    if not stacking(cfg, pick_device(str(cfg.train.device))):
        return [[r] for r in runs]
    size = stack_size(cfg)
    by_point: dict[tuple[int, int], list] = {}
    for r in runs:
        by_point.setdefault((r.start_epoch, r.start_batch), []).append(r)
    return [group[i:i + size] for group in by_point.values() for i in range(0, len(group), size)]
