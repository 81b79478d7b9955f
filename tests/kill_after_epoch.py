"""``python tests/kill_after_epoch.py N <args>``: ``python -m dynrank.train <args>`` that dies like ``kill -9`` right
after epoch N's checkpoints (the tests' crash; ``conftest.cli(..., kill_after_epoch=N)``, which also calls
``die_after_epoch`` in its forked runs)."""
import os
import runpy
import sys

from dynrank import trainer


def die_after_epoch(n: int) -> None:
    """From now on the trainer exits with status 137 right after epoch ``n``'s checkpoints (what was printed so far
    flushed: a killed process's pipes keep what it wrote)."""
    end_epoch = trainer.Trainer.end_epoch

    def end_epoch_then_die(self):
        end_epoch(self)
        if self.epoch + 1 == n:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(137)

    trainer.Trainer.end_epoch = end_epoch_then_die


if __name__ == "__main__":
    die_after_epoch(int(sys.argv.pop(1)))
    runpy.run_module("dynrank.train", run_name="__main__", alter_sys=True)  # as python -m (Hydra finds conf/ from it)
