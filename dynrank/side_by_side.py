"""A command's runs: one (``run``), or several of one cell in one process (``seeds=[...]``, ``lr_search=true``:
``run_side_by_side``), stacked into one model or side by side.

On a GPU the runs of a method that stacks train as ONE model (``loop.Trainer`` with R runs: one set of kernels for
all of them, ``train.stack``); full fine-tuning, whose every weight differs per run, a CPU by default, or
``train.stack=false`` train them side by side: one ``Trainer`` per run, stepped in turn, each on its own CUDA stream
and with its own random state. Runs resumed from different epochs form different stacks, also stepped side by side.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager, nullcontext

import torch

from .errors import TrainingError
from .loop import Run, Trainer, load_data, pick_device, progress
from .methods import method_class
from .step import GraphedStep


def run(cfg, run_dir, on_start=None) -> dict:
    """Train ``cfg.method`` on ``cfg.task``; returns the results dict (also written to disk).

    ``on_start()`` is called once the run is set up and about to train (the CLI writes Hydra's files then)."""
    results = run_side_by_side([cfg], [run_dir], on_start=on_start)
    return results[0] if results else {}


def run_side_by_side(cfgs: list, run_dirs: list, on_start=None) -> list[dict]:
    """Train the runs ``cfgs`` (one cell: they differ in seed and learning rate) in one process; returns each run's
    results, in order (a run skipped as done: what its results file holds, or {}).

    Each run is a full, independent run (own initialisation, data order, learning rate and schedule, clipping,
    optimizer and method state, checkpoint and results file, exactly as ``run`` with its config); the runs share
    the tokenised data. ``run_dirs[i]`` is run i's directory. ``on_start`` as in ``run``."""
    with ExitStack() as locks:  # each run's lock, released however training ends
        runs, shared = [], None
        for c, run_dir in zip(cfgs, run_dirs):
            run = Run(c, run_dir, shared)
            shared = run.shared or shared  # loaded by a finished run to check it
            runs.append(run)
            if not run.skip:
                locks.callback(run.close)
        todo = [r for r in runs if not r.skip]
        if todo:
            shared = shared or load_data(todo[0].cfg)
            trainers = [Trainer(group, shared) for group in stacks(todo)]
            if on_start:
                on_start()
            _train_side_by_side(trainers)
        failed = [r for r in todo if r.failed]
        if failed:
            raise TrainingError(failed[0].failed if len(failed) == 1 else f"{len(failed)} runs stopped: "
                                + "; ".join(f"{r.run_dir}: {r.failed}" for r in failed))
        return [r.results for r in runs]


STACK_TOKENS = 65_536  # train.max_stack=auto: at most this many padded tokens in a stacked step (about 32 GB of
# activations for RoBERTa-base: a dora step of 5 x 32 x 128 tokens peaked at 9.9 GB on an H200)


def stack_size(cfg) -> int:
    """The most runs one model stacks: ``train.max_stack``, or (``auto``) as many as keep a step's batch within
    ``STACK_TOKENS`` padded tokens at the task's longest (GLUE at 32 x 128: 16 runs; SQuAD at 16 x 384: 10;
    XSum at 64 x (768 + 64): 1, its own batch is that large already)."""
    size = cfg.train.get("max_stack", "auto")
    if size is not None and size != "auto":
        return int(size)
    length = int(cfg.task.max_length) + int(cfg.task.get("max_target_length") or 0)
    return max(1, STACK_TOKENS // (int(cfg.train.batch_size) * length))


def stacks(runs: list[Run]) -> list[list[Run]]:
    """The runs grouped into stacks: each group trains as one model (``train.stack``: ``auto`` on a GPU for a method
    that stacks, ``true`` on any device, ``false`` never; at most ``stack_size`` runs per stack), runs resumed
    from different epochs in different stacks. A group of one is a run alone."""
    cfg = runs[0].cfg
    mode = cfg.train.get("stack", "auto")
    gpu = pick_device(str(cfg.train.device)).type == "cuda" and not cfg.train.get("exact", False)
    if not method_class(cfg.method.name).stacks or not (gpu if mode == "auto" else bool(mode)):
        return [[r] for r in runs]
    size = stack_size(cfg)
    by_epoch: dict[int, list[Run]] = {}
    for r in runs:
        by_epoch.setdefault(r.start_epoch, []).append(r)
    return [group[i:i + size] for group in by_epoch.values() for i in range(0, len(group), size)]


def _train_side_by_side(trainers: list[Trainer]) -> None:
    dev = trainers[0].device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for epoch in range(min(t.start_epoch for t in trainers), max(t.epochs for t in trainers)):
        active = [t for t in trainers if t.start_epoch <= epoch < t.epochs]
        plans = []
        for t in active:  # per-epoch tensors are made on the trainer's own stream (no cross-stream race)
            with _on(t.stream):
                plans.append(t.begin_epoch(epoch))
        steps = max(len(p) for p in plans)
        first = trainers[0]
        for i in progress(first.cfg, range(steps), epoch, first.epochs):
            for t, plan in zip(active, plans):
                if i < len(plan):
                    with _on(t.stream), _own_rng(t, len(trainers) > 1):
                        t.train_step(i, plan[i])
        for t in active:
            with _on(t.stream), _own_rng(t, len(trainers) > 1):
                t.end_epoch()
    for t in trainers:
        with _on(t.stream), _own_rng(t, len(trainers) > 1):
            t.finish()


def _on(stream):
    return torch.cuda.stream(stream) if stream is not None else nullcontext()


@contextmanager
def _own_rng(t, several: bool):
    """Each trainer draws dropout masks from its own generator state, as if it ran alone (nothing to swap for one).

    Not for the CUDA generator when steps are CUDA graphs: captured graphs hold on to the generator's
    state, so swapping it would break them; the trainers then share one CUDA dropout stream (each run is
    still a correct run of its seed, but its dropout masks differ from the same seed run alone)."""
    if not several:
        yield
        return
    cuda = t.device.type == "cuda" and not isinstance(t.stepper, GraphedStep)
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
