"""Stopping on SIGTERM (a scheduler's preemption, ``kill``): every run checkpointed where it stands, then exit 143.

While runs train (``deferred``: their steps, evaluations and epoch checkpoints), SIGTERM only sets a flag; the loop
checks it after every step and after every epoch's end, checkpoints each run of the command at its step (within an
epoch: the batches done, resumed exactly there) and raises ``Preempted``. Elsewhere (setup, the final evaluation and
results files), and at a second SIGTERM, ``Preempted`` is raised at once: the last checkpoint stands, as after a
kill. The CLI then exits with 143 (128 + SIGTERM, the code a shell gives a process SIGTERM ended). Ctrl-C (SIGINT)
stays Python's ``KeyboardInterrupt``, at once; the CLI exits with 130.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

EXIT_CODE = 128 + signal.SIGTERM


class Preempted(BaseException):
    """SIGTERM ended the command. Not an ``Exception``: no ``except Exception`` on the way may swallow it."""


class _State:
    deferring = False  # inside ``deferred``: a SIGTERM is a request, honoured at the loop's next check
    requested = False


def _on_sigterm(signum, frame) -> None:
    if _State.deferring and not _State.requested:
        _State.requested = True
        return
    raise Preempted("SIGTERM outside the training steps, or a second one: stopped at once, each run at its last "
                    "checkpoint; run the command again to continue")


@contextmanager
def handled():
    """SIGTERM handled as above while the block runs (signals are the main thread's; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if before is None else before)  # (None: set outside Python)
        _State.deferring = _State.requested = False


@contextmanager
def deferred():
    """Inside: a SIGTERM waits for the loop's next check (``requested``)."""
    _State.deferring = True
    try:
        yield
    finally:
        _State.deferring = False


def requested() -> bool:
    return _State.requested
