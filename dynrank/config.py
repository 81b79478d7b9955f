"""Config helpers: the run identity (where results and checkpoints go) and validation."""
from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def run_id(cfg) -> str:
    """``<model>/<task>/<method>-<budget>[-<variant>]/seed<k>``: one run, one place."""
    cell = f"{cfg.method.name}-{cfg.budget.name}"
    if cfg.get("variant"):
        cell += f"-{cfg.variant}"
    return f"{cfg.model.id}/{cfg.task.name}/{cell}/seed{cfg.seed}"


def _run_id_resolver(*, _root_):
    return run_id(_root_)


if not OmegaConf.has_resolver("run_id"):
    OmegaConf.register_new_resolver("run_id", _run_id_resolver)


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def check_overrides(argv: list[str]) -> None:
    """Reject unknown config-group choices (task=..., method=...) with one clear line.

    Hydra's own message for this spans several lines and a hint about stack traces; users
    mostly mistype a task or method name, so say it plainly before Hydra starts.
    """
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key in ("task", "method", "model", "budget", "experiment"):
            known = choices(key)
            for v in value.split(","):
                if v and v not in known:
                    raise ConfigError(f"unknown {key} '{v}'; choose one of: {', '.join(known)}")


def initial_budget(method_cfg, r: int) -> int:
    """r0 of the adaptive methods (dora, adalora): ``method.initial_budget``, else ceil(1.5 r) (Appendix E)."""
    r0 = method_cfg.get("initial_budget")
    r0 = int(r0) if r0 is not None else math.ceil(1.5 * r)
    if r0 < r:
        raise ConfigError(f"method.initial_budget={r0} is below the final budget budget.r={r}; "
                          "the initial budget must be >= the final one")
    return r0


def validate(cfg: DictConfig) -> None:
    """Checks that need the composed config."""
    if cfg.train.epochs is None or int(cfg.train.epochs) < 1:
        raise ConfigError(f"train.epochs must be >= 1 (got {cfg.train.epochs})")
    if int(cfg.train.batch_size) < 1:
        raise ConfigError(f"train.batch_size must be >= 1 (got {cfg.train.batch_size})")
    if cfg.budget.r < 1:
        raise ConfigError(f"budget.r must be >= 1 (got {cfg.budget.r})")
    if cfg.method.get("initial_budget") is not None:
        initial_budget(cfg.method, int(cfg.budget.r))
    if cfg.data.dir is not None and not Path(str(cfg.data.dir)).is_dir():
        raise ConfigError(f"data directory not found: {cfg.data.dir} (set data.dir to an existing directory, "
                          "or leave it unset to download from the Hub)")
    if cfg.model.path is not None and not Path(str(cfg.model.path)).exists():
        raise ConfigError(f"model directory not found: {cfg.model.path} (set model.path to a local model "
                          "directory, or leave it unset to download from the Hub)")
