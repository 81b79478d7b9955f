"""One log file and one TensorBoard stream per attempt at a run, never a step twice.

An attempt is one command that works on a run: the first, a resume after a kill, an extension to more epochs,
a start-over (``train.resume=false``). Its log is the first free name of ``train.log``, ``train.2.log``,
``train.3.log``... in the run directory: Hydra's file handler asks ``${dynrank_log:<run dir>}``
(conf/hydra/job_logging/dynrank.yaml) and opens the file only when the first line is written, so a command
refused before it logs anything (a run in use, a bad value) leaves no file.

TensorBoard: each attempt writes its own event file in ``<run dir>/tb/``. Before it starts, the events that
earlier attempts wrote after the step it starts from are cut out of their files (``trim``): the rest of an
epoch that a killed attempt did not checkpoint, which is trained again, or everything when the run starts over.
Every tag then has each step once, whatever TensorBoard version reads the directory.

``${dynrank_tty:}`` (``train.progress``'s default): a progress bar only where stderr is a terminal, never in a log.
"""
from __future__ import annotations

import os
import sys
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


def on_terminal() -> bool:
    """Whether stderr is a terminal: ``train.progress``'s default (``${dynrank_tty:}``), so that a progress bar,
    redrawn many times a second, shows on a terminal and never floods a log file (Slurm, nohup, ``2>&1``)."""
    return sys.stderr is not None and sys.stderr.isatty()


for _name, _fn in (("dynrank_log", log_file), ("dynrank_tty", on_terminal)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)


def tensorboard(run_dir, start_step: int):
    """A ``SummaryWriter`` on ``<run dir>/tb`` for an attempt that starts after ``start_step`` optimizer steps;
    the events of earlier attempts after that step are cut first. None where tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional at run time
        return None
    tb = Path(run_dir) / TB_DIR
    trim(tb, start_step)
    return SummaryWriter(log_dir=str(tb))


def trim(tb_dir, start_step: int) -> None:
    """Cut the events with a step after ``start_step`` out of every event file in ``tb_dir`` (rewritten
    atomically, byte for byte otherwise); a file left with nothing but its header is removed."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    for path in sorted(Path(tb_dir).glob("events.out.tfevents.*")):
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
