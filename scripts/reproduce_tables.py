#!/usr/bin/env python
"""Run the paper's table presets that have not run yet, then write the tables (``make reproduce-tables``).

    python scripts/reproduce_tables.py [--tables all|table2,table5,...|smoke] [--dry-run] [--no-report]
                                       [--out results/tables] [hydra overrides...]

Each table is one or two Hydra multirun presets (conf/experiment/); every preset runs as
``python -m dynrank.train -m experiment=<preset> train.skip_done=true <overrides>``, so a run whose
results file exists returns at once and an interrupted sweep picks up where it stopped (a run killed
mid-way resumes from its last epoch checkpoint). The overrides go to every preset: they narrow the
grid (``task=cola seeds=[1,2]``: command-line values replace the preset's values), change the
setup (``model=tiny data.dir=... train.epochs=1``) or pick a launcher (``hydra/launcher=submitit_slurm``).
A preset that fails does not stop the others; the report runs on whatever finished, and the exit
status is 1 if any preset failed.

Then ``python -m dynrank.report`` writes results/tables/ (``--model`` from a ``model=...`` override,
``--store`` from a ``results.store=...`` override).

``--tables smoke``: the CPU smoke preset (conf/experiment/smoke.yaml: MiniLM on real SST-2, 1 epoch on 1,024
sentences, full/bitfit/lora/dora, seeds 1-2), with its own store and tables (results/smoke/runs,
results/smoke/tables; results/tables/ is left alone):
    python scripts/reproduce_tables.py --tables smoke
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dynrank.config.presets import BY_TABLE, ORDER  # noqa: E402

PRESETS = {**BY_TABLE, "smoke": ["smoke"]}
ALL = ORDER
SMOKE_STORE = "results/smoke/runs"  # conf/experiment/smoke.yaml's results.store
SMOKE_TABLES = "results/smoke/tables"
SMOKE_MODEL = "minilm"  # conf/experiment/smoke.yaml's model


def _override(overrides, key):
    """The value of ``key=value`` among the overrides (last one wins), or None."""
    val = None
    for o in overrides:
        k, sep, v = o.partition("=")
        if sep and k.lstrip("+~") == key:
            val = v
    return val


def parse(argv):
    ap = argparse.ArgumentParser(prog="python scripts/reproduce_tables.py",
                                 description=__doc__.split("\n\n")[0],
                                 epilog="Anything else (key=value) is a Hydra override passed to every preset.")
    ap.add_argument("--tables", default="all",
                    help=f"comma-separated: all (= {','.join(ALL)}), any of {','.join(PRESETS)} (default: all)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--no-report", action="store_true", help="only run the presets")
    ap.add_argument("--out", default=None,
                    help=f"report directory (default: results/tables; --tables smoke: {SMOKE_TABLES})")
    args, overrides = ap.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-") or "=" not in o]
    if bad:
        ap.error(f"not a Hydra override (key=value): {' '.join(bad)}")
    tables = []
    for t in (x.strip() for x in args.tables.split(",")):
        if not t:
            continue
        if t == "all":
            tables += ALL
        elif t in PRESETS:
            tables.append(t)
        else:
            ap.error(f"unknown table '{t}'; choose from all, {', '.join(PRESETS)}")
    return args, list(dict.fromkeys(tables)), overrides


SOURCE_KEYS = ("experiment", "task", "model", "data")  # what decides a job's model and data sources


def check_sources(presets: list[str], overrides: list[str]) -> None:
    """The models and Hub datasets of every job of ``presets`` checked once, before the first preset runs: where the
    Hub does not answer (or ``HF_HUB_OFFLINE=1``) and one is not cached, a ``DynrankError`` in seconds instead of
    the same error from every preset after it has composed its jobs. Each distinct (task, model, data) is composed
    once; the other keys of a job (methods, seeds, ...) load nothing."""
    from hydra import compose, initialize_config_dir

    from dynrank import hub
    from dynrank.config import CONF_DIR
    from dynrank.config.command_line import sweep_jobs
    from dynrank.data import hub_dataset

    models, datasets = [], {}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        jobs = dict.fromkeys(  # in the presets' order (a set's order changes with PYTHONHASHSEED: so would the error)
            tuple(o for o in job if o.split("=", 1)[0].lstrip("+~").split(".")[0].split("/")[0] in SOURCE_KEYS)
            for preset in presets for job in sweep_jobs([f"experiment={preset}", *overrides]))
        for job in jobs:
            cfg = compose("config", overrides=list(job))
            if not cfg.model.get("tiny"):
                models.append(hub.model_source(cfg.model))
            if cfg.data.dir is None:
                repo_id, hint = hub_dataset(cfg.task)
                datasets.setdefault(repo_id, hint)
    hub.check_sources(models, datasets)


def main(argv=None) -> int:
    args, tables, overrides = parse(sys.argv[1:] if argv is None else argv)
    if not args.dry_run:
        from dynrank.errors import DynrankError

        try:
            check_sources([p for t in tables for p in PRESETS[t]], overrides)
        except DynrankError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    failed = []
    for table in tables:
        for preset in PRESETS[table]:
            cmd = [sys.executable, "-m", "dynrank.train", "-m", f"experiment={preset}", "train.skip_done=true",
                   *overrides]
            print(f"[reproduce-tables] {table}: {shlex.join(cmd[1:])}", flush=True)
            if args.dry_run:
                continue
            rc = subprocess.run(cmd, env=env).returncode
            if rc != 0:
                print(f"[reproduce-tables] preset {preset} failed (exit {rc}); going on with the others",
                      file=sys.stderr, flush=True)
                failed.append(preset)

    if not args.no_report:
        smoke = tables == ["smoke"]
        store = _override(overrides, "results.store") or (SMOKE_STORE if smoke else "results/runs")
        model = _override(overrides, "model") or (SMOKE_MODEL if smoke else None)
        out = args.out or (SMOKE_TABLES if smoke else "results/tables")
        report = [sys.executable, "-m", "dynrank.report", "--store", store, "--out", out]
        if model and "," not in model:
            report += ["--model", model]
        print(f"[reproduce-tables] report: {shlex.join(report[1:])}", flush=True)
        if not args.dry_run:
            rc = subprocess.run(report, env=env).returncode
            if rc != 0:
                failed.append("report")
    if failed:
        print(f"[reproduce-tables] failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
