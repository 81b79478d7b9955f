"""One log file and one TensorBoard stream per attempt at a run, never a step twice.

An attempt is one command that works on a run: the first, a resume after a kill, an extension to more epochs,
a start-over (``train.resume=false``). Its log is the first free name of ``train.log``, ``train.2.log``,
``train.3.log``... in the run directory: Hydra's file handler asks ``${dynrank_log:<run dir>}``
(conf/hydra/job_logging/dynrank.yaml) and opens the file only when the first line is written, so a command
refused before it logs anything (a run in use, a bad value) leaves no file.

TensorBoard: each attempt writes its own event file in ``<run dir>/tb/``, and each checkpoint lists the event files
its history was logged in (``tb_files``). Before an attempt starts, ``tb/`` is made to agree with the checkpoint on
disk (``settle``): files it does not list are removed (a killed attempt's that never checkpointed), and events after
its step are cut out of the others (``trim``: what a killed attempt logged after it, which is trained again). A
start-over (``train.resume=false``) leaves the earlier events in place until its own first checkpoint replaces that
one (``keep_only``): killed before it, the run is as it was, its events included. Every tag then has each step
once, whatever TensorBoard version reads the directory (a start-over's first steps are shown beside the old ones
until its first checkpoint).

A command that trains several runs (``seeds=[...]``, ``lr_search=true``) writes the log in each run directory it
trains instead of Hydra's (``per_run``).

``${dynrank_tty:}`` (``train.progress``'s default): a progress bar only where stderr is a terminal, never in a log.
"""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

TB_DIR = "tb"


def log_file(run_dir) -> str:
    """The first free ``train.log``, ``train.2.log``, ... in ``run_dir``: this attempt's log."""
    run_dir = Path(run_dir)
    n = 1
    while (run_dir / _log_name(n)).exists():
        n += 1
    return str(run_dir / _log_name(n))


def _log_name(n: int) -> str:
    return "train.log" if n == 1 else f"train.{n}.log"


class RunLogs(logging.Handler):
    """The log of a command that trains several runs (``seeds=[...]``, ``lr_search=true``), in each run directory it
    trains (``log_file``), as a run alone's is in its own: its lines are held until the runs are about to train
    (``open``), then written to each, so that a command refused before writes no file and a run it does not train
    (finished already, refused) gets none."""

    def __init__(self, formatter: logging.Formatter | None):
        super().__init__()
        self.setFormatter(formatter)
        self.held: list[logging.LogRecord] | None = []
        self.files: list[logging.FileHandler] = []

    def open(self, run_dirs) -> None:
        self.files = [logging.FileHandler(log_file(d), delay=True, encoding="utf-8") for d in run_dirs]
        for f in self.files:
            f.setFormatter(self.formatter)
            for record in self.held or []:
                f.handle(record)
        self.held = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.held is not None:
            self.held.append(record)
        for f in self.files:
            f.handle(record)

    def close(self) -> None:
        for f in self.files:
            f.close()
        super().close()


@contextmanager
def per_run(output_dir):
    """While a command trains several runs: Hydra's log file handler, which would write the log in the Hydra
    directory (``hydra.runtime.output_dir``: the directory of the default seed's run, ``seed1``, whatever the seeds
    trained), is replaced by ``RunLogs`` (yielded: ``open`` it with the run directories it trains). Where logging
    has no such handler (``hydra/job_logging`` set otherwise), the command's log is left as it is."""
    root = logging.getLogger()
    hydra_files = [h for h in root.handlers if isinstance(h, logging.FileHandler)
                   and Path(h.baseFilename).parent == Path(output_dir).absolute()]
    logs = RunLogs(hydra_files[0].formatter if hydra_files else None)
    if not hydra_files:
        yield logs
        return
    for h in hydra_files:
        root.removeHandler(h)
        h.close()
    root.addHandler(logs)
    try:
        yield logs
    finally:
        root.removeHandler(logs)
        logs.close()


def on_terminal() -> bool:
    """Whether stderr is a terminal: ``train.progress``'s default (``${dynrank_tty:}``), so that a progress bar,
    redrawn many times a second, shows on a terminal and never floods a log file (Slurm, nohup, ``2>&1``)."""
    return sys.stderr is not None and sys.stderr.isatty()


for _name, _fn in (("dynrank_log", log_file), ("dynrank_tty", on_terminal)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)


def tensorboard(run_dir, resumed: bool):
    """A ``SummaryWriter`` on ``<run dir>/tb`` for an attempt (``tb/`` settled to the checkpoint on disk already).
    Returns the writer (None where tensorboard is not installed) and the event files this attempt's checkpoints
    list: those in place if it continues that checkpoint (``resumed``), and its own."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional at run time
        return None, []
    tb = Path(run_dir) / TB_DIR
    kept = event_files(tb)
    writer = SummaryWriter(log_dir=str(tb))
    return writer, (kept if resumed else []) + sorted(set(event_files(tb)) - set(kept))


def writers(run_dir, resumed: bool, cfg):
    """What an attempt logs its scalars to: TensorBoard (``tensorboard``) and the tracker of ``cfg.logger``
    (``dynrank/trackers.py``: mlflow, wandb, csv), behind one writer (None where neither is there), and the event
    files its checkpoints list."""
    from .trackers import open_tracker

    tb, files = tensorboard(run_dir, resumed)
    tracker = open_tracker(cfg, run_dir, resumed)
    return (Writer(tb, tracker) if tb is not None or tracker is not None else None), files


class Writer:
    """``add_scalar``, ``flush`` and ``close`` as a ``SummaryWriter`` has them, to TensorBoard and the tracker;
    ``results(results)`` after ``close``: the run's final results to the tracker, which then ends its run."""

    def __init__(self, tb, tracker):
        self.tb, self.tracker = tb, tracker

    def add_scalar(self, tag: str, value, step: int) -> None:
        for w in (self.tb, self.tracker):
            if w is not None:
                w.add_scalar(tag, value, step)

    def flush(self) -> None:
        for w in (self.tb, self.tracker):
            if w is not None:
                w.flush()

    def close(self) -> None:
        for w in (self.tb, self.tracker):
            if w is not None:
                w.close()

    def results(self, results: dict) -> None:
        if self.tracker is not None:
            self.tracker.results(results)


def event_files(tb_dir) -> list[str]:
    return sorted(p.name for p in Path(tb_dir).glob("events.out.tfevents.*"))


def settle(tb_dir, checkpoint) -> None:
    """``tb_dir`` as the checkpoint on disk (its ``checkpoint.State``; None: none) left it: the event files it lists
    (every file, for a checkpoint from before they were listed; none without a checkpoint), with their events up to
    its step."""
    step = checkpoint.step if checkpoint else 0
    listed = checkpoint.extra.tb_files if checkpoint else []
    if listed is not None:
        keep_only(tb_dir, listed)
    trim(tb_dir, step)


def keep_only(tb_dir, files: list[str]) -> None:
    """Remove the event files of ``tb_dir`` that are not in ``files`` (after a checkpoint that lists ``files``)."""
    for name in set(event_files(tb_dir)) - set(files):
        (Path(tb_dir) / name).unlink(missing_ok=True)


def trim(tb_dir, start_step: int) -> None:
    """Cut the events with a step after ``start_step`` out of every event file in ``tb_dir`` (rewritten
    atomically, byte for byte otherwise); a file left with nothing but its header is removed."""
    files = sorted(Path(tb_dir).glob("events.out.tfevents.*"))
    if not files:
        return
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    for path in files:
        records = list(RawEventFileLoader(str(path)).Load())
        keep = [r for r in records if Event.FromString(r).step <= start_step]
        if len(keep) == len(records):
            continue
        if all(Event.FromString(r).HasField("file_version") for r in keep):
            path.unlink()
            continue
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            writer = RecordWriter(f)
            for r in keep:
                writer.write(r)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
