#!/usr/bin/env python
"""``make demo``: a run that visibly learns on a CPU in about 2 minutes, its dev accuracy beside the majority class's.

    python scripts/demo.py [hydra overrides...]

Runs ``python -m dynrank.train experiment=demo <overrides>`` (conf/experiment/demo.yaml: LoRA on MiniLM,
1 epoch on 6,000 SST-2 sentences, the whole SST-2 dev set), then prints one line: the run's dev accuracy and
the majority-class baseline's (the train set's most frequent label answered for every dev sentence). Running
it again prints the line of the finished run at once (``train.resume=false`` trains it again).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def compose(overrides: list[str]):
    """The config ``python -m dynrank.train experiment=demo <overrides>`` runs with."""
    from dynrank import config

    return config.compose(["experiment=demo", *overrides])


def rows(cfg, split: str, limit) -> list[dict]:
    """The rows of ``split`` the run used: the first ``limit`` (``data.max_*_samples``), all where it is null."""
    from dynrank.data import glue

    return glue.load_split(cfg.task.name, split, cfg.data.dir)[:limit]


def summary(cfg) -> str:
    from dynrank.config import run_id
    from dynrank.results import store_path

    res = json.loads(store_path(cfg.results.store, run_id(cfg)).read_text())
    from dynrank.metrics.glue import majority_class

    dev = [r["label"] for r in rows(cfg, "validation", cfg.data.max_eval_samples)]
    train = [r["label"] for r in rows(cfg, "train", cfg.data.max_train_samples)]
    majority = majority_class(cfg.task.name, train, dev)["accuracy"]
    return (f"demo: {cfg.task.name} dev accuracy {res['final']['dev']['accuracy']:.3f} vs majority class "
            f"{majority:.3f} ({cfg.method.name} on {cfg.model.id}, {res['final']['epoch']} epoch(s) on "
            f"{len(train):,} training sentences, {len(dev):,} dev sentences; run directory and results: the lines above)")


def main(argv: list[str]) -> int:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    rc = subprocess.run([sys.executable, "-m", "dynrank.train", "experiment=demo", *argv], env=env).returncode
    if rc != 0:
        return rc
    print(summary(compose(argv)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
