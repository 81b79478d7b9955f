"""Each method's values for a run: ``${hparams:key}`` (conf/hparams/<method>.yaml, the rule in
docs/hyperparameters.md), its learning-rate grid, and the adaptive methods' initial budget r0."""
from __future__ import annotations

import math

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
    """The learning rates ``lr_search=true`` trains side by side: the method's grid for this task."""
    return [float(x) for x in hparams_of(cfg).grid]


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
    return _root_.task.get(key, default)


def initial_budget(method_cfg, r: int) -> int:
    """r0 of the adaptive methods (dora, adalora): ``method.initial_budget``, else ceil(1.5 r) (Appendix E)."""
    r0 = method_cfg.get("initial_budget")
    r0 = int(r0) if r0 is not None else math.ceil(1.5 * r)
    if r0 < r:
        raise ConfigError(f"method.initial_budget={r0} is below the final budget budget.r={r}; "
                          "the initial budget must be >= the final one")
    return r0
