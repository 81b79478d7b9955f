"""A command's runs: one (``run``), or several of one cell in one process (``seeds=[...]``, ``lr_search=true``:
``run_side_by_side``), stacked into one model or side by side.

On a GPU the runs of a method that stacks train as ONE model (``trainer.Trainer`` with R runs: one set of kernels for
all of them, ``train.stack``; full fine-tuning too on RoBERTa, each weight one per run); full fine-tuning on BART
and BERT (``Full.stacks_on``), a CPU by default, or ``train.stack=false`` train them side by side: one ``Trainer``
per run, stepped in turn, each on its own CUDA stream and with its own random state. Runs resumed from different
points (epochs, or batches within one) form different stacks, also stepped side by side.

A run whose loss turns NaN stops alone (``Run.diverged``): the runs beside it, in its stack or side by side, finish,
and the command then ends with the error. However a command ends, its runs stay whole: SIGTERM checkpoints every run
where it stands and ends the command (``preempt``); an error, Ctrl-C or a full disk leaves each run at its last
checkpoint, and no directory behind that holds nothing (``resume.remove_if_empty``).
"""
from __future__ import annotations

import errno
import logging
import os
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path

import torch
from omegaconf import OmegaConf

from . import preempt
from .config import run_id
from .config.run_identity import _flat
from .errors import ConfigError, TrainingError
from .trainer import Trainer, progress
from .resume import Run, remove_if_empty
from .stacking import stacks
from .step import GraphedStep

log = logging.getLogger("dynrank")
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)  # a store made read-only (or remounted so) while runs train


def run(cfg, run_dir, on_start=None) -> dict:
    """Train ``cfg.method`` on ``cfg.task``; returns the results dict (also written to disk).

    ``on_start(run_dirs)`` is called with the directories of the runs to train once they are set up and about to
    train (the CLI writes Hydra's files and opens the logs then)."""
    results = run_side_by_side([cfg], [run_dir], on_start=on_start)
    return results[0] if results else {}


def run_side_by_side(cfgs: list, run_dirs: list, on_start=None) -> list[dict]:
    """Train the runs ``cfgs`` (one cell: they differ in seed and learning rate) in one process; returns each run's
    results, in order (a run skipped as done: what its results file holds, or {}).

    Each run is a full, independent run (own initialisation, data order, learning rate and schedule, clipping,
    optimizer and method state, checkpoint and results file, exactly as ``run`` with its config); the runs share
    the tokenised data. ``run_dirs[i]`` is run i's directory. ``on_start`` as in ``run``."""
    _one_cell(cfgs)
    try:
        with preempt.handled():
            return _open_and_train(cfgs, run_dirs, on_start)
    except BaseException as e:
        for c, run_dir in zip(cfgs, run_dirs):
            remove_if_empty(run_dir, run_id(c))
        if isinstance(e, OSError) and e.errno in DISK_FULL:  # e.g. after the whole training, at the results
            where = f" writing {e.filename}" if e.filename else ""
            raise TrainingError(f"no space left on the device{where}; free some and run the command again: it "
                                "continues from the last checkpoint and completes the runs") from None
        if isinstance(e, OSError) and e.errno in READ_ONLY and _under(e.filename, cfgs[0].results.store):
            raise TrainingError(f"the results store {cfgs[0].results.store} cannot be written ({e.strerror}: "
                                f"{e.filename}); the runs are safe in their run directories: make the store "
                                "writable and run the command again, which completes them") from None
        raise


def _under(path, directory) -> bool:
    return path is not None and Path(os.path.abspath(path)).is_relative_to(os.path.abspath(str(directory)))


def _open_and_train(cfgs: list, run_dirs: list, on_start) -> list[dict]:
    with ExitStack() as stack:  # each run's lock and TensorBoard writers, released however training ends
        runs, shared = [], None
        for c, run_dir in zip(cfgs, run_dirs):
            run = Run(c, run_dir, shared)
            shared = run.shared  # the data, loaded once (every run checks its results store against it)
            runs.append(run)
            stack.callback(run.close)
        for run in (r for r in runs if r.export_only):  # finished: only its adapter is asked for
            Trainer([run], shared, logs=False).export_adapter(0, run)
        todo = [r for r in runs if not r.skip]
        if todo:
            trainers = [Trainer(group, shared) for group in stacks(todo)]
            for t in trainers:
                stack.callback(t.close_logs)
            if on_start:
                on_start([r.run_dir for r in todo])
            _train_side_by_side(trainers)
        failed = [r for r in runs if r.failed]  # (stopped by a NaN loss, now or in an earlier attempt)
        if failed:
            raise TrainingError(failed[0].failed if len(failed) == 1 else f"{len(failed)} runs stopped: "
                                + "; ".join(f"{r.run_dir}: {r.failed}" for r in failed))
        return [r.results for r in runs]


def _one_cell(cfgs: list) -> None:
    """The runs of one command share their data, model and every setting but the seed and the learning rate
    (``dynrank.train.runs_of``): they train on the first one's data and settings, so runs that differ in more are
    refused rather than trained silently as the first."""
    def rest(c) -> dict:
        flat = _flat(OmegaConf.to_container(c, resolve=False))
        return {k: v for k, v in flat.items() if k not in ("seed", "train.lr")}

    first = rest(cfgs[0])
    for c in cfgs[1:]:
        other = rest(c)
        if differ := sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k)):
            raise ConfigError(f"runs trained in one process must differ only in seed and train.lr; these differ in "
                              f"{', '.join(differ[:6])} too: train them apart")


def _train_side_by_side(trainers: list[Trainer]) -> None:
    dev, several = trainers[0].device, len(trainers) > 1
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with preempt.deferred():  # a SIGTERM is honoured at the checks below: every run checkpointed where it stands
        for epoch in range(min(t.start_epoch for t in trainers), max(t.epochs for t in trainers)):
            active = [t for t in trainers if t.start_epoch <= epoch < t.epochs and t.active()]  # (NaN: stopped)
            if not active:
                continue
            plans = []
            for t in active:  # per-epoch tensors are made on the trainer's own stream (no cross-stream race)
                with _on(t.stream):
                    plans.append(t.begin_epoch(epoch))
            steps = max(len(p) for p in plans)
            first = trainers[0]
            for i in progress(first.cfg, range(min(t.batch for t in active), steps), epoch, first.epochs):
                for t, plan in zip(active, plans):
                    if t.batch <= i < len(plan) and t.active():  # (resumed within this epoch: from its batch)
                        with _on(t.stream), _own_rng(t, several):
                            t.train_step(i, plan[i])
                            if t.checkpoint_due():
                                t.checkpoint()
                if preempt.requested():
                    _stop(trainers)
            for t in active:
                with _on(t.stream), _own_rng(t, several):
                    t.end_epoch()
            if preempt.requested():
                _stop(trainers)
    for t in (t for t in trainers if t.active()):
        with _on(t.stream), _own_rng(t, several):
            t.finish()


def _stop(trainers: list[Trainer]) -> None:
    """SIGTERM: each run checkpointed at its step (within an epoch: resumed exactly there), then the command ends."""
    for t in trainers:
        with _on(t.stream), _own_rng(t, len(trainers) > 1):
            t.checkpoint()
    for t in (t for t in trainers if t.active()):
        log.warning("SIGTERM: checkpoint at epoch %d, batch %d (step %d) of %s", t.epoch + 1, t.batch, t.step,
                    ", ".join(str(r.run_dir) for _, r in t.active()))
    raise preempt.Preempted("SIGTERM: every run was checkpointed where it stood; run the command again to continue")


def _on(stream):
    return torch.cuda.stream(stream) if stream is not None else nullcontext()


@contextmanager
def _own_rng(t, several: bool):
    """Each trainer draws from its own generator state, as if it ran alone (nothing to swap for one): what is not
    keyed by the run (every dropout mask is: dynrank/dropout.py; e.g. BART's LayerDrop draw, which it makes even
    at layerdrop 0).

    Not for the CUDA generator when steps are CUDA graphs: captured graphs hold on to the generator's
    state, so swapping it would break them; the trainers then share one CUDA generator (which no training step
    draws from: the dropout masks are keyed)."""
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
