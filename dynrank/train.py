"""Entry point: ``python -m dynrank.train task=cola method=dora [budget=r2] [seed=3]``.

Only wires: Hydra composes ``conf/``, ``loop.run`` trains. A user error (unknown task or method,
missing data, malformed rows, NaN loss...) ends with one line ``error: ...`` and exit status 2.
"""
from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from . import config  # noqa: F401  (registers the ${run_id:} resolver used by conf/config.yaml)
from . import gpus  # (registers ${dynrank_gpus:}, used by conf/hydra/launcher/local_gpus.yaml)
from .errors import DynrankError

log = logging.getLogger("dynrank")


def _fail(e: DynrankError):
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from .loop import run

    try:
        gpus.claim_if_asked()  # hydra/launcher=local_gpus: this job's own GPU, before CUDA starts
        if cfg.get("seeds"):
            results = _run_seeds(cfg)
        else:
            results = run(cfg, HydraConfig.get().runtime.output_dir)
    except DynrankError as e:
        _fail(e)
    if results:
        return results["best"]["dev"].get(results["metric"])
    return None


def _run_seeds(cfg) -> dict:
    """``seeds=[1,2,3]``: one process trains the seeds side by side; each gets the run directory a
    single run with that seed would get (``outputs/<model>/<task>/<method>-<budget>/seed<k>``)."""
    from pathlib import Path

    from .config import run_id
    from .loop import run_seeds

    root = Path(HydraConfig.get().runtime.output_dir)
    base = root.parents[len(Path(run_id(cfg)).parts) - 1]  # strip this run's own <model>/.../seed<k>

    def run_dir_of(seed: int) -> Path:
        c = cfg.copy()
        c.seed = seed
        return base / run_id(c)

    all_results = run_seeds(cfg, [int(s) for s in cfg.seeds], run_dir_of)
    return all_results[0] if all_results else {}


def cli() -> None:
    try:
        config.check_overrides(sys.argv[1:])
    except DynrankError as e:
        _fail(e)
    main()


if __name__ == "__main__":
    cli()
