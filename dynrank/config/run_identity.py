"""A run's identity: what it computes (``identity``), its hash, where it lives (``run_id``) and what its checkpoint
must match to be resumed (``resume_key``)."""
from __future__ import annotations

import hashlib
import json

from omegaconf import OmegaConf


# Keys that do not change what a run computes (speed, logging, paths, bookkeeping): left out of its identity.
# ``train.lr`` and ``seed`` are left out of the hash because they are readable parts of the path.
NOT_IN_IDENTITY = {
    "": ("seed", "seeds", "lr_search", "variant", "results", "hparams", "protocol", "launcher", "hydra",
         "logger"),
    "train": ("lr", "resume", "extend", "skip_done", "progress", "log_every", "eval_batch_size", "num_workers",
              "export", "device", "compile", "cuda_graphs", "pad_to_multiple", "pack", "stack", "max_stack",
              "checkpoint_every", "keep_checkpoint"),
    "data": ("dir", "cache_dir"),
    "eval": ("beam_search",),  # the fast beam search generates generate()'s summaries
    "model": ("path",),
}


# Keys added after runs were made, left out where their value changes nothing, so that those runs keep their hash:
# ``train.no_decay`` (issue 30) spares some parameters weight decay, which matters only with weight decay > 0.
def _inert(section: str, values: dict) -> tuple[str, ...]:
    if section == "train" and (values.get("no_decay") in (None, "none") or not values.get("weight_decay")):
        return ("no_decay",)
    return ()


# A run's length: part of what it computes and of where it lives (``run_id``), but not of what its checkpoint must
# match (``resume_key``): ``train.extend=true`` continues a shorter run of the same config to more epochs. So is
# ``train.extend=true`` itself (``identity``): an extended run is another run than one trained for its length from
# the start, with a home of its own.
LENGTH = {"train": ("epochs",), "task": ("epochs",)}


def identity(cfg, length: bool = True) -> dict:
    """What a run computes: the resolved config without the keys of ``NOT_IN_IDENTITY`` (and, ``length=False``,
    without its length: ``LENGTH``).

    The protocol group is left out as a whole: its training-time parts reach a run through the keys that read
    them (``method.kaiming_a``, ``task.train_windows``); the rest only picks epochs at report time. A run extended
    from a shorter one (``train.extend=true``) counts it with its length (``extend: true``; false is left out, so
    that no other run's hash changes)."""
    c = cfg.copy()
    c.seed = 0  # interpolations of the seed (dylora's method.seed) must not make seeds differ here
    out = {}
    for key in c:
        if key in NOT_IN_IDENTITY[""]:
            continue
        val = OmegaConf.to_container(c[key], resolve=True) if OmegaConf.is_config(c[key]) else c[key]
        if isinstance(val, dict):
            left_out = NOT_IN_IDENTITY.get(key, ()) + (() if length else LENGTH.get(key, ())) + _inert(key, val)
            val = {k: v for k, v in val.items() if k not in left_out}
        out[key] = val
    if length and c.train.get("extend"):
        out["train"]["extend"] = True
    return out


def _hash(obj) -> str:
    """8 hex digits of SHA-256 over ``obj`` as canonical JSON."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def config_hash(cfg, schedule: list | None = None) -> str:
    """What a run computed, for its results file (the report averages only runs of one hash): ``identity(cfg)``,
    its length included; for a run extended to more epochs also its ``schedule`` (the epochs each segment was
    planned for, ``[{"epochs": 1, "from_step": 0}, {"epochs": 3, "from_step": 27}]``), so that it never counts as a
    run trained for its final length from the start."""
    ident = identity(cfg)
    if schedule and len(schedule) > 1:
        ident["schedule"] = schedule
    return _hash(ident)


def lr_tag(lr) -> str:
    """``2e-3``, ``2.5e-3``, ``1e-5``: the learning rate as a short, exact path part."""
    mantissa, exp = f"{float(lr):.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exp)}"


def cell_of(method: str, budget: str, variant: str | None = None) -> str:
    """``<method>-<budget>[-<variant>]``: a cell of a table (its runs differ by seed and lr), as run ids, the
    results store, the estimate and the report name it."""
    return f"{method}-{budget}" + (f"-{variant}" if variant else "")


def run_id(cfg) -> str:
    """``<model>/<task>/<method>-<budget>[-<variant>]/lr<lr>-<hash>/seed<k>``: one run, one place.

    Every key that changes results is in it: the learning rate readably, everything else (epochs, batch size,
    method options, data subsets...) through ``config_hash``; two runs that would compute different things never
    share a directory or a results file. (A run extended from a shorter one, ``train.extend=true``, has a home of its
    own, beside the run of its length trained from the start; its results file's ``config_hash`` also covers its
    ``schedule``.)"""
    cell = cell_of(cfg.method.name, cfg.budget.name, cfg.get("variant"))
    return f"{cfg.model.id}/{cfg.task.name}/{cell}/lr{lr_tag(cfg.train.lr)}-{config_hash(cfg)}/seed{cfg.seed}"


def resume_key(cfg) -> dict:
    """What a checkpoint must have been made with to be resumed: the run's identity without its length, with its
    seed and learning rate, as flat ``{"method.alpha": 8, ...}`` so that a refusal can name the keys that differ."""
    ident = identity(cfg, length=False)
    ident["seed"] = int(cfg.seed)
    ident.setdefault("train", {})["lr"] = float(cfg.train.lr)
    return _flat(ident)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _run_id_resolver(*, _root_):
    return run_id(_root_)
