"""Config helpers: the run identity (where results and checkpoints go), each method's learning rate, validation.

Validation happens before anything is written: ``check_command_line`` composes the config of every job a command
would run and checks it (``validate``: each value against ``SCHEMA``, then the checks that need several keys or
the disk) before Hydra creates or touches a run directory.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import runlog  # noqa: F401  (registers ${dynrank_tty:}, train.progress's default in conf/config.yaml)
from .errors import ConfigError, DynrankError
from .weights import check_model_dir

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


# Keys that do not change what a run computes (speed, logging, paths, bookkeeping): left out of its identity.
# ``train.lr`` and ``seed`` are left out of the hash because they are readable parts of the path.
NOT_IN_IDENTITY = {
    "": ("seed", "seeds", "lr_search", "variant", "results", "hparams", "protocol", "launcher", "hydra"),
    "train": ("lr", "resume", "extend", "skip_done", "progress", "log_every", "eval_batch_size", "num_workers",
              "export", "device", "compile", "cuda_graphs", "pad_to_multiple", "stack", "max_stack",
              "checkpoint_every", "keep_checkpoint"),
    "data": ("dir", "cache_dir"),
    "model": ("path",),
}


# A run's length: part of what it computes and of where it lives (``run_id``), but not of what its checkpoint must
# match (``resume_key``): ``train.extend=true`` continues a shorter run of the same config to more epochs.
LENGTH = {"train": ("epochs",), "task": ("epochs",)}


def identity(cfg, length: bool = True) -> dict:
    """What a run computes: the resolved config without the keys of ``NOT_IN_IDENTITY`` (and, ``length=False``,
    without its length: ``LENGTH``).

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
            left_out = NOT_IN_IDENTITY.get(key, ()) + (() if length else LENGTH.get(key, ()))
            val = {k: v for k, v in val.items() if k not in left_out}
        out[key] = val
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


def run_id(cfg) -> str:
    """``<model>/<task>/<method>-<budget>[-<variant>]/lr<lr>-<hash>/seed<k>``: one run, one place.

    Every key that changes results is in it: the learning rate readably, everything else (epochs, batch size,
    method options, data subsets...) through ``config_hash``; two runs that would compute different things never
    share a directory or a results file. (A run extended from a shorter one, ``train.extend=true``, lives in the
    home of its final length; its results file's ``config_hash`` also covers its ``schedule``.)"""
    cell = f"{cfg.method.name}-{cfg.budget.name}"
    if cfg.get("variant"):
        cell += f"-{cfg.variant}"
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


# conf/hparams/<method>.yaml: the entry whose values hold for every task of the method (a task's own entry beats it)
ALL_TASKS = "all_tasks"


def _method_value_resolver(key: str, default=None, *, _root_):
    """``${hparams:epochs}``: the method's own value for this task (conf/hparams/<method>.yaml under the task's
    name), else the method's value for every task (under ``all_tasks``), else the task's (the DoRA paper's
    Table 8), else ``default``. The learning rate never falls back: every method has its own."""
    h = hparams_of(_root_)
    if key in h:
        return h[key]
    if key == "lr":
        raise ConfigError(f"conf/hparams/{_root_.method.name}.yaml gives no lr for task '{_root_.task.name}'")
    every = _root_.hparams.get(ALL_TASKS) or {}
    if key in every:
        return every[key]
    return _root_.task.get(key, default)


for _name, _fn in (("run_id", _run_id_resolver), ("hparams", _method_value_resolver)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)


def compose(overrides: list[str]):
    """The config ``python -m dynrank.train <overrides>`` runs with, composed outside a Hydra job (scripts, tests;
    ``${hydra:...}`` values do not resolve there)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")  # task, method, ...


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
        if key in GROUPS:
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


# --- what each key may hold ------------------------------------------------------------------------------------
# Read "<key> must be <rule>": int or number (with a bound or a range), bool, str, tag (a name for the results
# path: letters, digits, '.', '_', '-', no '..'), device (auto, cpu, cuda, cuda:<n>), "list of <rule>", each
# possibly "or null" or "or auto". Keys of other tasks and methods than the run's are simply absent.
SCHEMA = {
    "seed": "int >= 0",
    "seeds": "list of int >= 0 or null",
    "lr_search": "bool",
    "variant": "tag or null",
    "data.dir": "str or null",
    "data.cache_dir": "str or null",
    "data.max_train_samples": "int >= 1 or null",
    "data.max_eval_samples": "int >= 1 or null",
    "train.lr": "number > 0",
    "train.epochs": "int >= 1",
    "train.batch_size": "int >= 1",
    "train.eval_batch_size": "int >= 1",
    "train.weight_decay": "number >= 0",
    "train.warmup_ratio": "number in [0, 1)",
    "train.max_grad_norm": "number > 0 or null",
    "train.schedule": "str",                   # linear | constant: checked where the scheduler is made
    "train.adam_betas": "list of number in [0, 1)",
    "train.adam_eps": "number > 0",
    "train.label_smoothing": "number in [0, 1)",
    "train.exact": "bool",
    "train.bf16": "bool or auto",
    "train.compile": "bool",
    "train.cuda_graphs": "bool or auto",
    "train.pad_to_multiple": "int >= 1 or auto",
    "train.stack": "bool or auto",
    "train.max_stack": "int >= 1 or null",
    "train.device": "device",
    "train.group_by_length": "bool",
    "train.num_workers": "int >= 0",
    "train.log_every": "int >= 1",
    "train.resume": "bool",
    "train.extend": "bool",
    "train.skip_done": "bool",
    "train.progress": "bool",
    "train.export": "bool",
    "train.checkpoint_every": "int >= 1 or null",
    "train.keep_checkpoint": "str",            # last | none: checked in validate
    "eval.max_samples": "int >= 1 or null",
    "results.store": "str",
    "budget.name": "tag",
    "budget.r": "int >= 1",
    "model.id": "tag",
    "model.path": "str or null",
    "model.tiny.hidden_size": "int >= 1",
    "model.tiny.num_hidden_layers": "int >= 1",
    "model.tiny.num_attention_heads": "int >= 1",
    "model.tiny.intermediate_size": "int >= 1",
    "task.name": "tag",
    "task.num_labels": "int >= 1",
    "task.max_length": "int >= 1",
    "task.batch_size": "int >= 1",
    "task.epochs": "int >= 1",
    "task.reg_coef": "number >= 0",
    "task.pruning_interval": "int >= 1",
    "task.doc_stride": "int >= 1",
    "task.max_answer_length": "int >= 1",
    "task.n_best": "int >= 1",
    "task.null_threshold": "number",
    "task.max_target_length": "int >= 1",
    "task.version_2_with_negative": "bool",
    "task.generate.num_beams": "int >= 1",
    "task.generate.max_new_tokens": "int >= 1",
    "task.generate.no_repeat_ngram_size": "int >= 0",
    "task.generate.early_stopping": "bool",
    "task.generate.length_penalty": "number",
    "method.name": "tag",
    "method.alpha": "number > 0",
    "method.dropout": "number in [0, 1)",
    "method.initial_budget": "int >= 1 or null",
    "method.warmup_frac": "number in [0, 1]",
    "method.final_frac": "number in [0, 1]",
    "method.tinit_fraction": "number in [0, 1]",
    "method.tfinal_fraction": "number in [0, 1]",
    "method.beta": "number in [0, 1)",
    "method.beta1": "number in [0, 1)",
    "method.beta2": "number in [0, 1)",
    "method.eps": "number > 0",
    "method.kaiming_a": "number",
    "method.dem": "bool",
    "method.reg_coef": "number >= 0",
    "method.orth_reg_weight": "number >= 0",
    "method.pruning_interval": "int >= 1",
    "method.deltaT": "int >= 1",
    "method.bottleneck": "int >= 1 or null",
    "method.bottleneck_per_rank": "int >= 1",
    "method.r_min": "int >= 1",
    "method.r_max": "int >= 1",
    "method.eval_ranks": "list of int >= 1",
    "method.export_rank": "int >= 1 or null",
    "method.seed": "int >= 0",
    "protocol.lora_kaiming_a": "number",
    "protocol.std_ddof": "int in [0, 1]",
}


def conforms(rule: str, value) -> bool:
    """Whether ``value`` (as composed and resolved: YAML/Hydra types) satisfies ``rule`` (a ``SCHEMA`` entry)."""
    if rule.endswith(" or null"):
        return value is None or conforms(rule[: -len(" or null")], value)
    if rule.endswith(" or auto"):
        return value == "auto" or conforms(rule[: -len(" or auto")], value)
    if rule.startswith("list of "):
        return isinstance(value, list) and all(conforms(rule[len("list of "):], v) for v in value)
    kind, _, bound = rule.partition(" ")
    if kind in ("bool", "str"):
        return isinstance(value, {"bool": bool, "str": str}[kind])
    if kind == "tag":
        return isinstance(value, str) and bool(re.fullmatch(r"[A-Za-z0-9._-]+", value)) and ".." not in value
    if kind == "device":
        return isinstance(value, str) and bool(re.fullmatch(r"auto|cpu|cuda(:\d+)?", value))
    if isinstance(value, bool) or not isinstance(value, int if kind == "int" else (int, float)):
        return False
    return math.isfinite(value) and _within(value, bound)


def _within(x, bound: str) -> bool:
    """``>= 1``, ``> 0``, ``in [0, 1)``; empty: any."""
    if not bound:
        return True
    op, _, rest = bound.partition(" ")
    if op == "in":
        lo, hi = (float(v) for v in rest[1:-1].split(","))
        return (lo <= x if rest[0] == "[" else lo < x) and (x <= hi if rest[-1] == "]" else x < hi)
    b = float(rest)
    return {">=": x >= b, ">": x > b, "<=": x <= b, "<": x < b}[op]


def describe(rule: str) -> str:
    """A rule in words: ``int >= 1 or null`` -> ``an integer >= 1, or null``."""
    if rule.endswith(" or null"):
        return describe(rule[: -len(" or null")]) + ", or null"
    if rule.endswith(" or auto"):
        return describe(rule[: -len(" or auto")]) + ", or auto"
    if rule.startswith("list of "):
        return "a list of " + describe(rule[len("list of "):]).split(" ", 1)[1].replace("integer", "integers")
    kind, _, bound = rule.partition(" ")
    words = {"int": "an integer", "number": "a number", "bool": "true or false", "str": "a string",
             "tag": "a name of letters, digits, '.', '_', '-' (no path separator, no '..')",
             "device": "auto, cpu, cuda or cuda:<n>"}[kind]
    return f"{words} {bound}" if bound else words


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
    (_, schedule), (_, betas) = _get(values, "train.schedule"), _get(values, "train.adam_betas")
    if schedule is not None and schedule not in ("linear", "constant"):
        raise ConfigError(f"train.schedule must be linear or constant (got {_shown(schedule)})")
    if (keep := _get(values, "train.keep_checkpoint")[1]) not in (None, "last", "none"):
        raise ConfigError(f"train.keep_checkpoint must be last or none (got {_shown(keep)})")
    if betas is not None and len(betas) != 2:
        raise ConfigError(f"train.adam_betas must be two numbers [beta1, beta2] (got {_shown(betas)})")
    seeds = values.get("seeds") or []
    if len(set(seeds)) < len(seeds):
        twice = sorted({s for s in seeds if seeds.count(s) > 1})
        raise ConfigError(f"seeds lists seed {', '.join(map(str, twice))} more than once (got {_shown(seeds)}); "
                          "list each seed once")
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


# --- the command line, checked before Hydra starts ------------------------------------------------------------

def check_command_line(argv: list[str], config_name: str = "config") -> None:
    """Compose the config of every job ``argv`` would run and ``validate`` it, before Hydra starts: a bad value
    or a mistyped key ends the command here, before any run directory is created or touched.

    Hydra's own parser reads the arguments (flags, overrides, sweeps); a multirun's jobs are its basic sweeper's
    (the config's ``hydra.sweeper.params``, then the command line's). What this cannot compose is left to Hydra,
    which reports it as it always does."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, MissingConfigException

    args, unknown = get_args_parser().parse_known_args(argv)
    if unknown or args.help or args.hydra_help or args.cfg or args.info or args.shell_completion \
            or args.config_path or args.config_dir or args.experimental_rerun:
        return
    config_name = args.config_name or config_name
    parser = OverridesParser.create()
    everything = _parsed(parser, args.overrides)
    overrides = [o for o in everything if not o.key_or_group.startswith(("hydra.", "hydra/"))]
    multirun = args.multirun or any(o.key_or_group == "hydra.mode" and str(o.value()) == "MULTIRUN" for o in everything)
    for o in everything:
        if o.is_sweep_override() and not multirun:  # Hydra: "Ambiguous value", 6 lines
            key, _, values = o.input_line.partition("=")
            raise ConfigError(f"{o.input_line} gives several values: add -m to run one job per value, or write "
                              f"{key}=[{values}] for a list")
        if o.key_or_group == ("hydra.sweep.dir" if multirun else "hydra.run.dir") and "${" not in o.input_line:
            check_writable(o.key_or_group, o.value())
        if o.key_or_group == "hydra.job.chdir" and o.value() not in (False, None, "false"):
            raise ConfigError(f"{o.input_line} is not supported: relative paths (data.dir, results.store, "
                              "model.path, ...) are read from the directory you launch in, and every run has its own "
                              "directory already (outputs/<run id>); drop hydra.job.chdir")
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            if hydra_groups := [o.input_line for o in everything if o.key_or_group.startswith("hydra/")]:
                compose(config_name, overrides=hydra_groups, return_hydra_config=True)  # e.g. hydra/launcher=...
            if multirun:  # the preset's sweep (an experiment's hydra.sweeper.params), then the command line's
                groups = [o.input_line for o in overrides if not o.is_sweep_override() and _is_group(o.input_line)]
                primary = compose(config_name, overrides=groups, return_hydra_config=True)
                params = [f"{k}={v}" for k, v in (primary.hydra.sweeper.get("params") or {}).items()]
                jobs = BasicSweeper.split_arguments(parser.parse_overrides(params) + overrides, None)[0]
            else:
                jobs = [[o.input_line for o in overrides]]
            composer = _Jobs(compose, parser, config_name)
            for job in jobs:
                try:
                    composer.check(job)
                except DynrankError as e:
                    swept = [o for o in job if not all(o in other for other in jobs)]
                    raise type(e)(f"{e} (in the job {' '.join(swept)})" if swept else str(e)) from None
    except MissingConfigException as e:  # a config group's option that does not exist (hydra/launcher=...)
        group, _, name = str(e.missing_cfg_file).rpartition("/")
        options = f"; choose one of: {', '.join(e.options)}" if e.options else ""
        raise ConfigError(f"unknown {group} '{name}'{options}" if group else str(e).splitlines()[0]) from None
    except (HydraException, OmegaConfBaseException):  # Hydra reports these as it always does
        return


def _parsed(parser, overrides: list[str]) -> list:
    """Hydra's overrides; one it cannot parse is a ``ConfigError`` naming it (Hydra's own message is 4 lines)."""
    from hydra.errors import OverrideParseException

    out = []
    for line in overrides:
        try:
            out += parser.parse_overrides([line])
        except OverrideParseException as e:
            raise ConfigError(f"cannot parse {line!r}: {str(e).splitlines()[0]}; write key=value (quote values "
                              "with spaces or special characters, e.g. key='a b'), see "
                              "https://hydra.cc/docs/advanced/override_grammar/basic/") from None
    return out


class _Jobs:
    """Composes jobs as Hydra does (the config groups' defaults, then the key overrides), each group choice once:
    a sweep of hundreds of jobs over a few tasks and methods is checked in seconds."""

    def __init__(self, compose, parser, config_name: str):
        self.compose, self.parser, self.config_name, self.bases = compose, parser, config_name, {}

    def base(self, job: list[str]):
        """The config of the job's group choices, and its dotted keys (what its groups give)."""
        groups = tuple(o for o in job if _is_group(o))
        if groups not in self.bases:
            base = self.compose(self.config_name, overrides=list(groups))
            self.bases[groups] = base, set(_keys(base))
        return self.bases[groups]

    def check(self, job: list[str]) -> None:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra.errors import HydraException

        base, known = self.base(job)
        cfg = copy.deepcopy(base)
        try:
            ConfigLoaderImpl._apply_overrides_to_config(self.parser.parse_overrides(
                [o for o in job if not _is_group(o)]), cfg)
        except (HydraException, OmegaConfBaseException):  # e.g. a key not in the config: say which, and the closest
            _check_keys(base, job)
            raise
        if any(o.startswith("+") for o in job):  # '+key=' adds a key: one that nothing reads is a typo
            _check_keys(base, job)
        _check_required(known, cfg, job)
        try:
            validate(cfg)
        except _NeedsHydra:
            pass


def _is_group(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return "/" in key or ("." not in key and (CONF_DIR / key).is_dir())


def _check_keys(base, job: list[str]) -> None:
    """Every key a job sets must be a key of its config (``base``: as its config groups compose it)."""
    known = sorted(_keys(base))
    for o in job:
        if _is_group(o):
            continue
        written = o.split("=", 1)[0]
        key = written.lstrip("+~")
        if key in known:
            if written.startswith("+") and not written.startswith("++"):
                raise ConfigError(f"{key} exists already: write {o[1:]} (without the '+')")
            continue
        parent, _, leaf = key.rpartition(".")
        siblings = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent]
        close = ([f"{parent}.{c}" for c in difflib.get_close_matches(leaf, siblings, n=1)] if parent in known
                 else difflib.get_close_matches(key, known, n=1))
        hint = (f"did you mean {close[0]}?" if close else
                f"the keys {f'under {parent} ' if parent else ''}are: {', '.join(siblings)}" if siblings else
                "see conf/config.yaml and conf/<group>/<name>.yaml for the keys")
        raise ConfigError(f"unknown key {key}; {hint}")


def _check_required(known: set, cfg, job: list[str]) -> None:
    """A key of ``SCHEMA`` that the job's config groups give (``known``: their keys) must still be there after its
    overrides (``~train.epochs`` deletes one, ``train=5`` replaces the keys under it)."""
    for key, rule in SCHEMA.items():
        if key not in known or _has(cfg, key):
            continue
        by = sorted((o for o in job if not _is_group(o)
                     and (key == (k := o.split("=", 1)[0].lstrip("+~")) or key.startswith(k + "."))),
                    key=lambda o: not o.startswith("~"))  # ~key deletes; key=value replaces what is under key
        shown = (by[0].split("=", 1)[0] if by[0].startswith("~") else by[0]) if by else "the command"
        raise ConfigError(f"{key} is needed ({describe(rule)}), but {shown} removes it; "
                          f"drop that override, or set {key}=<value>")


def _has(cfg, key: str) -> bool:
    node = cfg
    for part in key.split("."):
        if not OmegaConf.is_dict(node) or part not in node.keys():
            return False
        node = node._get_node(part)
    return True


def _keys(cfg, prefix: str = ""):
    """Every dotted key of a config, inner nodes included, without resolving anything."""
    for k in cfg.keys():
        yield prefix + str(k)
        node = cfg._get_node(k)
        if OmegaConf.is_dict(node):
            yield from _keys(node, f"{prefix}{k}.")
