"""Several runs of one task side by side in one process (``seeds=[...]``, ``lr_search=true``): each a full
``loop.Trainer`` of its own, stepped in turn, each on its own CUDA stream and with its own random state.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager, nullcontext

import torch

from .loop import Trainer
from .step import GraphedStep


def run_side_by_side(cfgs: list, run_dirs: list, on_start=None) -> list[dict]:
    """Train several runs of one task side by side in one process (``seeds=[1,2,3,4,5]``, ``lr_search=true``).

    Each run is a full, independent run (own model, adapters, optimizer, data order, checkpoint and
    results file, exactly as ``run`` with its config); the runs share the tokenised data, and on a GPU
    each run's steps go to its own CUDA stream, so the many small kernels of several runs overlap
    instead of queueing. ``run_dirs[i]`` is run i's directory. ``on_start`` as in ``run``.
    """
    with ExitStack() as locks:  # each run's lock, released however training ends
        trainers, shared = [], None
        for c, run_dir in zip(cfgs, run_dirs):
            t = Trainer(c, run_dir, shared)
            shared = getattr(t, "shared", shared)  # loaded by a run in training, or by a finished one to check it
            if not t.skip:
                locks.enter_context(t.lock)
                trainers.append(t)
        if not trainers:
            return []
        if on_start:
            on_start()
        return _train_side_by_side(trainers)


def _train_side_by_side(trainers: list) -> list[dict]:
    dev = trainers[0].device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for epoch in range(min(t.start_epoch for t in trainers), max(t.epochs for t in trainers)):
        active = [t for t in trainers if t.start_epoch <= epoch < t.epochs]
        plans = []
        for t in active:  # per-epoch tensors are made on the seed's own stream (no cross-stream race)
            with _on(t.stream):
                plans.append(t.begin_epoch(epoch))
        for i in range(max(len(p) for p in plans)):
            for t, plan in zip(active, plans):
                if i < len(plan):
                    with _on(t.stream), _own_rng(t):
                        t.train_step(i, plan[i])
        for t in active:
            with _on(t.stream), _own_rng(t):
                t.end_epoch()
    return [t.finish() for t in trainers]


def _on(stream):
    return torch.cuda.stream(stream) if stream is not None else nullcontext()


@contextmanager
def _own_rng(t):
    """Each seed draws dropout masks from its own generator state, as if it ran alone.

    Not for the CUDA generator when steps are CUDA graphs: captured graphs hold on to the generator's
    state, so swapping it would break them; the seeds then share one CUDA dropout stream (each run is
    still a correct run of its seed, but its dropout masks differ from the same seed run alone)."""
    cuda = t.device.type == "cuda" and not isinstance(t.stepper, GraphedStep)
    if not hasattr(t, "rng"):
        t.rng = (torch.get_rng_state(), torch.cuda.get_rng_state(t.device) if cuda else None)
    outer = (torch.get_rng_state(), torch.cuda.get_rng_state(t.device) if cuda else None)
    torch.set_rng_state(t.rng[0])
    if cuda:
        torch.cuda.set_rng_state(t.rng[1], t.device)
    try:
        yield
    finally:
        t.rng = (torch.get_rng_state(), torch.cuda.get_rng_state(t.device) if cuda else None)
        torch.set_rng_state(outer[0])
        if cuda:
            torch.cuda.set_rng_state(outer[1], t.device)
