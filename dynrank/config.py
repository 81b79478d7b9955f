"""Config helpers: the run identity (where results and checkpoints go), each method's learning rate, validation."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


# Keys that do not change what a run computes (speed, logging, paths, bookkeeping): left out of its identity.
# ``train.lr`` and ``seed`` are left out of the hash because they are readable parts of the path.
NOT_IN_IDENTITY = {
    "": ("seed", "seeds", "lr_search", "variant", "results", "hparams", "protocol", "launcher", "hydra"),
    "train": ("lr", "resume", "skip_done", "progress", "log_every", "eval_batch_size", "num_workers", "export",
              "device", "compile", "cuda_graphs", "pad_to_multiple"),
    "data": ("dir", "cache_dir"),
    "model": ("path",),
}


def identity(cfg) -> dict:
    """What a run computes: the resolved config without the keys of ``NOT_IN_IDENTITY``.

    The protocol group is left out as a whole: its training-time parts reach a run through the keys that read
    them (``method.kaiming_a``, ``task.train_windows``); the rest only picks epochs at report time."""
    c = cfg.copy()
    c.seed = 0  # interpolations of the seed (dylora's method.seed) must not make seeds differ here
    out = {}
    for key in c:
        if key in NOT_IN_IDENTITY[""]:
            continue
        val = OmegaConf.to_container(c[key], resolve=True) if OmegaConf.is_config(c[key]) else c[key]
        if isinstance(val, dict):
            val = {k: v for k, v in val.items() if k not in NOT_IN_IDENTITY.get(key, ())}
        out[key] = val
    return out


def config_hash(cfg) -> str:
    """8 hex digits of SHA-256 over ``identity(cfg)`` (canonical JSON)."""
    text = json.dumps(identity(cfg), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def lr_tag(lr) -> str:
    """``2e-3``, ``2.5e-3``, ``1e-5``: the learning rate as a short, exact path part."""
    mantissa, exp = f"{float(lr):.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exp)}"


def run_id(cfg) -> str:
    """``<model>/<task>/<method>-<budget>[-<variant>]/lr<lr>-<hash>/seed<k>``: one run, one place.

    Every key that changes results is in it: the learning rate readably, everything else (epochs, batch size,
    method options, data subsets...) through ``config_hash``; two runs that would compute different things
    never share a directory or a results file."""
    cell = f"{cfg.method.name}-{cfg.budget.name}"
    if cfg.get("variant"):
        cell += f"-{cfg.variant}"
    return f"{cfg.model.id}/{cfg.task.name}/{cell}/lr{lr_tag(cfg.train.lr)}-{config_hash(cfg)}/seed{cfg.seed}"


def _run_id_resolver(*, _root_):
    return run_id(_root_)


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


def _method_value_resolver(key: str, default=None, *, _root_):
    """``${hparams:epochs}``: the method's own value for this task (conf/hparams/<method>.yaml), else the task's
    (the DoRA paper's Table 8), else ``default``. The learning rate never falls back: every method has its own."""
    h = hparams_of(_root_)
    if key in h:
        return h[key]
    if key == "lr":
        raise ConfigError(f"conf/hparams/{_root_.method.name}.yaml gives no lr for task '{_root_.task.name}'")
    return _root_.task.get(key, default)


for _name, _fn in (("run_id", _run_id_resolver), ("hparams", _method_value_resolver)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)


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
