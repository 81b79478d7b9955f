"""Entry point: ``python -m dynrank.train task=cola method=dora [budget=r2] [seed=3]``.

Only wires: Hydra composes ``conf/``, ``driver.run`` trains. A user error (unknown task or method,
missing data, malformed rows, NaN loss...) ends with one line ``error: ...`` and exit status 2; SIGTERM
(``preempt``) with one line and 143, Ctrl-C with one line and 130, each run at its last checkpoint.
The config of every job is checked before Hydra starts (``config.check_command_line``), and Hydra's
``.hydra/`` files are written only once a run has started (``_save_hydra_files``): a command that fails
leaves every run directory as it was.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from . import config  # noqa: F401  (registers the ${run_id:} resolver used by conf/config.yaml)
from . import gpus  # (registers ${dynrank_gpus:}, used by conf/hydra/launcher/local_gpus.yaml)
from . import runlog  # (registers ${dynrank_log:}, used by conf/hydra/job_logging/dynrank.yaml)
from .errors import DynrankError
from .preempt import EXIT_CODE as PREEMPTED, Preempted

log = logging.getLogger("dynrank")
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C ended


def _fail(e: DynrankError):
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


def guarded(work):
    """``work()``, its user errors, SIGTERM and Ctrl-C each one line on stderr and an exit status, no traceback."""
    try:
        return work()
    except DynrankError as e:
        _fail(e)
    except Preempted as e:
        print(f"stopped: {e}", file=sys.stderr, flush=True)
        sys.exit(PREEMPTED)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C): each run is at its last checkpoint; run the command again to continue",
              file=sys.stderr, flush=True)
        sys.exit(INTERRUPTED)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from .driver import run

    def work():
        if cfg.get("seeds") or cfg.get("lr_search"):
            with runlog.per_run(HydraConfig.get().runtime.output_dir) as logs:  # each run directory its own log
                gpus.claim_if_asked()  # hydra/launcher=local_gpus: this job's own GPU, before CUDA starts
                return _run_side_by_side(cfg, logs)
        gpus.claim_if_asked()
        return run(cfg, HydraConfig.get().runtime.output_dir, on_start=lambda _: _save_hydra_files(cfg))

    results = guarded(work)
    if results:
        return results["best"]["dev"].get(results["metric"])
    return None


def runs_of(cfg) -> list[DictConfig]:
    """The runs one process trains side by side: ``seeds=[...]`` x (``lr_search=true``: the method's lr grid)."""
    from .config import run_grid

    out = []
    for seed, lr in run_grid(cfg):
        c = cfg.copy()
        c.seed = seed
        if lr is not None:
            c.train.lr = lr
        out.append(c)
    return out


def _run_side_by_side(cfg, logs: runlog.RunLogs) -> dict:
    """One process, several runs (own streams on a GPU); each run gets the directory a single run with its
    seed and lr would get (``outputs/<run id>``), or ``<hydra.run.dir>/<run id>`` when that was set by hand, and in
    it, once it is about to train, its log (``logs``) and Hydra's files (its own config). Hydra's own directory
    (the default seed's run's, as ``hydra.run.dir`` names it) is removed unless it is one of the runs' or was set by
    hand: a command's jobs (``-m 'seeds=[1,2],[3]'``) share nothing, and no directory is named after a run it does
    not train."""
    from .config import run_id
    from .resume import remove_if_empty
    from .driver import run_side_by_side

    root = Path(HydraConfig.get().runtime.output_dir)
    own = Path(run_id(cfg)).parts
    base = root.parents[len(own) - 1] if root.parts[-len(own):] == own else root
    cfgs = runs_of(cfg)
    dirs = [base / run_id(c) for c in cfgs]
    if base != root and root not in dirs:
        remove_if_empty(root, run_id(cfg))  # (made by Hydra at job start, holding nothing)
    config_of = {d: c for d, c in zip(dirs, cfgs)}

    def on_start(trained: list) -> None:
        for d in trained:
            _save_hydra_files(config_of[d], d)
        logs.open(trained)

    all_results = run_side_by_side(cfgs, dirs, on_start=on_start)
    return all_results[0] if all_results else {}


def _save_hydra_files(cfg, run_dir=None) -> None:
    """Hydra's ``<output dir>/.hydra/{config,hydra,overrides}.yaml`` (``run_dir``: in that run's directory, with
    its own config), written once the run has started rather than at job start (``hydra.output_subdir: null`` in
    conf/config.yaml): a command that stops with an error (a run in use, changed data, a damaged checkpoint) leaves a
    finished run's ``.hydra/`` as it was."""
    from omegaconf import OmegaConf

    from .results import atomic_write_text

    hydra_cfg = HydraConfig.instance().cfg
    if hydra_cfg.hydra.output_subdir is not None:  # set on the command line: Hydra wrote them at job start
        return
    out = Path(run_dir or hydra_cfg.hydra.runtime.output_dir) / ".hydra"
    files = {"config.yaml": cfg, "hydra.yaml": hydra_cfg, "overrides.yaml": hydra_cfg.hydra.overrides.task}
    for name, node in files.items():
        atomic_write_text(out / name, OmegaConf.to_yaml(node))


def cli() -> None:
    def work():
        config.check_overrides(sys.argv[1:])
        config.check_command_line(sys.argv[1:])  # every job's config, before Hydra creates or touches a directory
        main()

    guarded(work)  # (Ctrl-C while Hydra starts, too)


if __name__ == "__main__":
    cli()
