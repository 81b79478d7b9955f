"""One GPU per job on a host with several GPUs (``hydra/launcher=local_gpus``).

The preset runs the sweep's jobs in ``n_jobs`` = number of visible GPUs joblib worker processes and sets
``DYNRANK_CLAIM_GPU=1`` for its jobs. At the start of each job ``claim_if_asked`` then takes one GPU
that no other dynrank process on this host holds (an exclusive, non-blocking ``flock`` on
``<lock dir>/gpu<id>.lock``) and narrows ``CUDA_VISIBLE_DEVICES`` to it before torch initialises CUDA:
the job sees exactly one GPU, as ``cuda:0``.

The lock is held for the life of the process. joblib reuses a worker for later jobs, and a process
that has initialised CUDA cannot move to another GPU, so a reused worker keeps its GPU (claiming
again returns the same one). The OS releases the lock when the worker exits, crashes included.

No GPU free (more workers than GPUs, or a new worker replacing one that is still exiting): the job
waits, polling, until a GPU is released. Two sweeps started on the same host by the same user share
the lock directory: the second queues behind the first instead of piling onto the same GPUs.
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from .errors import DynrankError

log = logging.getLogger("dynrank")

ASK_ENV = "DYNRANK_CLAIM_GPU"      # "1": claim a GPU at the start of the job (set by the local_gpus preset)
LOCKS_ENV = "DYNRANK_GPU_LOCKS"    # lock directory; default <tmp>/dynrank-gpus-<uid>

_held: tuple[str, int] | None = None  # (GPU id, locked file descriptor) of this process


class GpuBusy(DynrankError):
    pass


def visible_gpus() -> list[str]:
    """The GPU ids a job may take: the entries of ``CUDA_VISIBLE_DEVICES`` when it is set (indices or
    UUIDs, as the user wrote them), else ``0 .. n-1`` for the n GPUs torch sees. torch counts through
    NVML, which does not initialise CUDA, so ``CUDA_VISIBLE_DEVICES`` can still be narrowed afterwards."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def count_gpus() -> int:
    """``${dynrank_gpus:}``: the preset's ``n_jobs``, one job per visible GPU (at least 1: a host
    without GPUs runs the jobs one after another, on the CPU)."""
    return max(len(visible_gpus()), 1)


if not OmegaConf.has_resolver("dynrank_gpus"):
    OmegaConf.register_new_resolver("dynrank_gpus", count_gpus)


def lock_dir() -> Path:
    return Path(os.environ.get(LOCKS_ENV) or Path(tempfile.gettempdir()) / f"dynrank-gpus-{os.getuid()}")


def _lock_file(locks: Path, gpu: str) -> Path:
    return locks / f"gpu{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu)}.lock"


def _try_lock(path: Path) -> int | None:
    """Exclusive lock on ``path`` without waiting: the open descriptor, or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a user wondering why a job waits
    return fd


def _holders(locks: Path, ids: list[str]) -> str:
    def pid(g):
        try:
            return _lock_file(locks, g).read_text().strip() or "?"
        except OSError:
            return "?"

    return ", ".join(f"GPU {g}: pid {pid(g)}" for g in ids)


def claim(ids: list[str] | None = None, locks: Path | None = None, poll_s: float = 2.0,
          timeout_s: float | None = None) -> str | None:
    """Take one free GPU of ``ids`` (default: ``visible_gpus()``) for the rest of this process, make it
    the only visible one, and return its id; None when no GPU is visible (the job runs on the CPU).
    Waits while all are taken; ``timeout_s`` (None: no limit) ends the wait with ``GpuBusy``."""
    global _held
    if _held is not None:  # a reused worker: its GPU since its first job
        log.info("gpu claim: GPU %s (this worker's since an earlier job)", _held[0])
        return _held[0]
    ids = visible_gpus() if ids is None else list(ids)
    if not ids:
        log.info("gpu claim: no GPU visible; this job runs on the CPU")
        return None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise DynrankError("cannot claim a GPU: CUDA is already initialised in this process")
    locks = Path(locks) if locks is not None else lock_dir()
    locks.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    waiting = False
    while True:
        for gpu in ids:
            fd = _try_lock(_lock_file(locks, gpu))
            if fd is not None:
                _held = (gpu, fd)
                os.environ["CUDA_VISIBLE_DEVICES"] = gpu
                log.info("gpu claim: GPU %s (of %s; lock %s)", gpu, ",".join(ids), _lock_file(locks, gpu))
                return gpu
        if deadline is not None and time.monotonic() >= deadline:
            raise GpuBusy(f"no free GPU after {timeout_s:g} s ({_holders(locks, ids)}; locks in {locks})")
        if not waiting:
            log.info("gpu claim: all GPUs taken (%s); waiting for one", _holders(locks, ids))
            waiting = True
        time.sleep(poll_s)


def claim_if_asked() -> str | None:
    """Called first thing in every job: claims a GPU only under ``DYNRANK_CLAIM_GPU=1`` (the local_gpus
    preset), so runs under any other launcher, on one GPU or on the CPU, are unchanged."""
    if os.environ.get(ASK_ENV) == "1":
        return claim()
    return None


def identity(device) -> dict | None:
    """For the results file: which GPU this run used (the claimed id, the visible list, the device UUID),
    so a sweep over several GPUs can be checked afterwards; None for a CPU run without a claim."""
    claimed = _held[0] if _held is not None else None
    if device.type != "cuda" and claimed is None:
        return None
    uuid = None
    if device.type == "cuda":
        import torch

        uuid = str(getattr(torch.cuda.get_device_properties(device), "uuid", "")) or None
    return {"claimed": claimed, "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "uuid": uuid}
