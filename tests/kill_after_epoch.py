"""``python tests/kill_after_epoch.py N <args>``: ``python -m dynrank.train <args>`` that dies like ``kill -9`` right
after epoch N's checkpoints (the tests' crash; ``conftest.cli(..., kill_after_epoch=N)``)."""
import os
import runpy
import sys

from dynrank import trainer

N = int(sys.argv.pop(1))
end_epoch = trainer.Trainer.end_epoch


def end_epoch_then_die(self):
    end_epoch(self)
    if self.epoch + 1 == N:
        os._exit(137)


trainer.Trainer.end_epoch = end_epoch_then_die
runpy.run_module("dynrank.train", run_name="__main__", alter_sys=True)  # as python -m (Hydra finds conf/ from it)
