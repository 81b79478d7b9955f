"""One process at a time trains a run: ``RunLock`` holds an exclusive ``flock`` on ``<run_dir>/.lock``."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import RunInUseError

LOCK = ".lock"


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``<run_dir>/.lock`` while this process trains the run.

    A second process on the same run stops at once with ``RunInUseError`` (naming the holder's pid where
    the system tells it) instead of writing the same checkpoint and results files. The kernel drops the lock
    when the process ends, however it ends (exit, exception, kill -9): no stale lock to clean up. The file
    stays empty. Also a context manager that releases the lock on exit."""

    def __init__(self, run_dir):
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / LOCK
        self.file = open(self.path, "a")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            pid = _lock_holder(self.path)
            by = f"another process (pid {pid})" if pid else "another process"
            raise RunInUseError(f"run {run_dir} is in use by {by}; wait for it to end, or stop it, "
                                "before running it again") from None

    def release(self, tidy: bool = False) -> None:
        """``tidy``: where the run directory holds nothing but the lock (a run stopped before writing anything),
        the lock file goes too (removed while still held), so that no directory is left holding only ``.lock``."""
        if not self.file.closed:
            if tidy and os.listdir(self.path.parent) == [LOCK]:
                self.path.unlink()
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _lock_holder(path: Path) -> int | None:
    """The pid holding the flock on ``path``, from Linux's /proc/locks (``1: FLOCK ADVISORY WRITE <pid>
    <maj>:<min>:<inode> 0 EOF``); None where that cannot be read."""
    try:
        inode = str(os.stat(path).st_ino)
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 5 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == inode:
                    return int(parts[4])
    except (OSError, ValueError):
        pass
    return None
