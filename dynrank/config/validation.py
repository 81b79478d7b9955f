"""A composed config checked before anything is written: every value against ``SCHEMA``, then the checks that need
several keys or the disk."""
from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import ConfigError, DynrankError
from ..trackers import check_installed
from ..weights import check_model_dir
from .hparams import initial_budget, lr_grid
from .run_identity import run_id
from .schema import SCHEMA, conforms, describe


class _NeedsHydra(Exception):
    """The config reads ``${hydra:...}``, which resolves only in a Hydra job (where ``Trainer`` validates it)."""


def _resolved(cfg) -> dict:
    """The config as plain values; an interpolation that fails is a ``ConfigError`` naming the key."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        inner = e
        while inner is not None and not isinstance(inner, DynrankError):
            inner = inner.__cause__ or inner.__context__
        if inner is not None:  # raised by one of our resolvers (${hparams:...})
            raise inner from None
        if "HydraConfig was not set" in str(e):  # ${hydra:...}, checked before Hydra starts: the job checks it
            raise _NeedsHydra() from None
        key = getattr(e, "full_key", None) or "the config"
        raise ConfigError(f"cannot resolve {key}: {str(e).splitlines()[0]}") from None


def _get(values: dict, key: str):
    """``(True, value)`` at a dotted key of plain nested dicts, ``(False, None)`` where there is none."""
    node = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def validate(cfg: DictConfig) -> None:
    """Every value against ``SCHEMA`` (type and range), then the checks that need several keys or the disk."""
    values = _resolved(cfg)
    for key, rule in SCHEMA.items():
        found, value = _get(values, key)
        if found and not conforms(rule, value):
            raise ConfigError(f"{key} must be {describe(rule)} (got {_shown(value)})")
    if values.get("seeds") == []:  # else it would train seed=<k> as if seeds were unset
        raise ConfigError("seeds=[] lists no seed; list the seeds to train (e.g. seeds=[1,2,3]), or leave seeds "
                          "unset to train seed=<k>")
    if (logger := _get(values, "logger.name")[1]) is not None:
        check_installed(logger)  # logger=mlflow without mlflow: now, not after the model has loaded
    if (betas := _get(values, "train.adam_betas")[1]) is not None and len(betas) != 2:
        raise ConfigError(f"train.adam_betas must be two numbers [beta1, beta2] (got {_shown(betas)})")
    seeds = values.get("seeds") or []
    if len(set(seeds)) < len(seeds):
        twice = sorted({s for s in seeds if seeds.count(s) > 1})
        raise ConfigError(f"seeds lists seed {', '.join(map(str, twice))} more than once (got {_shown(seeds)}); "
                          "list each seed once")
    if values.get("lr_search"):
        lr_grid(cfg)  # the grid it trains: set, not empty, each rate > 0 and once
    if cfg.method.get("initial_budget") is not None:
        initial_budget(cfg.method, int(cfg.budget.r))
    (_, rank), (_, r_max) = _get(values, "method.export_rank"), _get(values, "method.r_max")
    if rank is not None and r_max is not None and rank > r_max:  # here, not after training at export time
        raise ConfigError(f"method.export_rank must be in [1, method.r_max={r_max}] (got {rank})")
    if _get(values, "results.store")[0]:
        check_writable("results.store", values["results"]["store"])
        check_name_lengths(cfg)
    if cfg.data.dir is not None and not Path(str(cfg.data.dir)).is_dir():
        raise ConfigError(f"data directory not found: {cfg.data.dir} (set data.dir to an existing directory, "
                          "or leave it unset to download from the Hub)")
    if cfg.model.path is not None and not Path(str(cfg.model.path)).exists():
        raise ConfigError(f"model directory not found: {cfg.model.path} (set model.path to a local model "
                          "directory, or leave it unset to download from the Hub)")
    if cfg.model.path is not None:
        check_model_dir(cfg.model.path)  # a truncated model.safetensors, or pickled weights only


def check_writable(key: str, path) -> None:
    """A directory that is to be written (``results.store``, Hydra's run directory): it, or its first existing
    ancestor, must be a directory this process can write to; checked before anything is trained."""
    target = Path(str(path)).absolute()
    first = next(p for p in (target, *target.parents) if p.exists())
    if not first.is_dir():
        raise ConfigError(f"{key}={path} cannot be a directory: {first} is a file; set {key} to a directory")
    if not os.access(first, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path} cannot be written: no write permission on {first}; set {key} to a "
                          "directory you can write to")


def check_name_lengths(cfg) -> None:
    """Every part of the run's path (``run_id``: the results store's directories, and the run directory's under
    ``outputs/``) must fit in a file name of the store's filesystem (255 bytes on most), so that a long ``variant``
    is refused now rather than at the first write after training."""
    store = Path(str(cfg.results.store)).absolute()
    try:
        limit = os.pathconf(next(p for p in (store, *store.parents) if p.exists()), "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    keys = ("model.id", "task.name", "variant" if cfg.get("variant") else "method.name or budget.name", "train.lr",
            "seed")  # what each part of run_id is made of
    for key, part in zip(keys, run_id(cfg).split("/")):
        if (n := len(part.encode())) > limit:
            raise ConfigError(f"{key} makes the results path part {part[:20]}... {n} bytes long, over the "
                              f"filesystem's limit of {limit} for a file name; shorten {key} by {n - limit} "
                              "characters or more")


def _shown(value) -> str:
    return repr(value) if isinstance(value, str) else json.dumps(value, default=str)
