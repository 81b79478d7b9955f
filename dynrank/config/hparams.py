"""Each method's values for a run: ``${hparams:key}`` (conf/hparams/<method>.yaml, the rule in
docs/hyperparameters.md), its learning-rate grid, and the adaptive methods' initial budget r0."""
from __future__ import annotations

import json
import math

from omegaconf import OmegaConf

from ..errors import ConfigError


def hparams_of(cfg):
    """The method's hyperparameters for this task: ``conf/hparams/<method>.yaml`` under the task's name."""
    h = cfg.get("hparams") or {}
    task = cfg.task.name
    if task not in h:
        raise ConfigError(f"conf/hparams/{cfg.method.name}.yaml has no entry for task '{task}'; add one "
                          f"(lr and grid, with their source) or set train.lr=...")
    return h[task]


def lr_grid(cfg) -> list[float]:
    """The learning rates ``lr_search=true`` trains side by side: the method's grid for this task
    (``hparams.<task>.grid``), each rate once and > 0; anything else is a ``ConfigError`` naming the key."""
    from .run_identity import lr_tag
    from .schema import conforms

    key = f"hparams.{cfg.task.name}.grid"
    grid = hparams_of(cfg).get("grid")
    grid = OmegaConf.to_container(grid, resolve=True) if OmegaConf.is_config(grid) else grid
    if grid is None:
        raise ConfigError(f"lr_search=true trains the rates of {key}, which is not set (conf/hparams/"
                          f"{cfg.method.name}.yaml, or an override removed it); set {key}=[<lr>,...] or drop "
                          "lr_search=true")
    if not conforms("list of number > 0", grid):
        raise ConfigError(f"{key} must be a list of numbers > 0 (got {json.dumps(grid, default=str)})")
    if not grid:
        raise ConfigError(f"{key}=[] lists no learning rate; list the rates to search (e.g. {key}=[2e-4,4e-4]), "
                          "or drop lr_search=true")
    tags = [lr_tag(x) for x in grid]  # one run id per rate: rates equal as a run id names them are one rate
    if twice := sorted({t for t in tags if tags.count(t) > 1}, key=float):
        raise ConfigError(f"{key} lists learning rate {', '.join(twice)} more than once (got "
                          f"{json.dumps(grid)}); list each rate once")
    return [float(x) for x in grid]


def run_grid(cfg) -> list[tuple[int, float | None]]:
    """The (seed, lr) of each run one job trains: ``seeds=[...]`` x (``lr_search=true``: the method's lr grid; else
    None: the configured rate), lr-major. ``dynrank.train.runs_of`` makes them; ``scripts/estimate.py`` counts them."""
    seeds = [int(s) for s in cfg.seeds] if cfg.get("seeds") else [int(cfg.seed)]
    lrs = lr_grid(cfg) if cfg.get("lr_search") else [None]
    return [(seed, lr) for lr in lrs for seed in seeds]


# conf/hparams/<method>.yaml: the entry whose values hold for every task of the method (a task's own entry beats it)
ALL_TASKS = "all_tasks"


def _method_value_resolver(key: str, default=None, *, _root_):
    """``${hparams:epochs}``: the method's value under the run's protocol where its file has an entry for it (e.g.
    lora.yaml's ``paper_code``: the DoRA authors' own LoRA), else its own value for this task (conf/hparams/
    <method>.yaml under the task's name), else the method's value for every task (under ``all_tasks``), else the
    task's (the DoRA paper's Table 8), else ``default``. The learning rate never falls back: every method has its
    own."""
    protocol = _root_.get("protocol")
    section = (_root_.get("hparams") or {}).get(protocol.get("name")) if protocol is not None else None
    if section is not None and key in section:
        return section[key]
    h = hparams_of(_root_)
    if key in h:
        return h[key]
    if key == "lr":
        raise ConfigError(f"conf/hparams/{_root_.method.name}.yaml gives no lr for task '{_root_.task.name}'")
    every = _root_.hparams.get(ALL_TASKS) or {}
    if key in every:
        return every[key]
    value = _root_.task.get(key, default)
    # a list or dict default (``${hparams:adam_betas,[0.9,0.999]}``) as a config node: a plain Python list cannot
    # stand in a config's place (``OmegaConf.resolve``, ``--cfg job --resolve``: UnsupportedValueType)
    return OmegaConf.create(value) if isinstance(value, (list, dict)) else value


def initial_budget(method_cfg, r: int) -> int:
    """r0 of the adaptive methods (dora, adalora): ``method.initial_budget``, else ceil(1.5 r) (Appendix E)."""
    r0 = method_cfg.get("initial_budget")
    r0 = int(r0) if r0 is not None else math.ceil(1.5 * r)
    if r0 < r:
        raise ConfigError(f"method.initial_budget={r0} is below the final budget budget.r={r}; "
                          "the initial budget must be >= the final one")
    return r0
