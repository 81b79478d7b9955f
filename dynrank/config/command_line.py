"""The command line, checked before Hydra starts: unknown group choices (``check_overrides``), and the config of
every job a command would run, composed as Hydra composes it and validated (``check_command_line``).

Hydra has no public API for the argument parser (``hydra._internal.utils.get_args_parser``), the basic sweeper's
expansion of a multirun into jobs (``BasicSweeper.split_arguments``) or applying overrides to a composed config
(``ConfigLoaderImpl._apply_overrides_to_config``): these three are used from ``hydra._internal`` (hydra-core
pinned below 1.4 for that); everything else is ``hydra.compose`` and the public override parser.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import ConfigError, DynrankError
from .schema import SCHEMA, describe
from .validation import _NeedsHydra, check_writable, validate

CONF_DIR = Path(__file__).resolve().parent.parent.parent / "conf"


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


# --- the command line, checked before Hydra starts ------------------------------------------------------------

def check_command_line(argv: list[str], config_name: str = "config") -> None:
    """Compose the config of every job ``argv`` would run and ``validate`` it, before Hydra starts: a bad value
    or a mistyped key ends the command here, before any run directory is created or touched.

    Hydra's own parser reads the arguments (flags, overrides, sweeps); a multirun's jobs are its basic sweeper's
    (the config's ``hydra.sweeper.params``, then the command line's). What this cannot compose is left to Hydra,
    which reports it as it always does."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser  # private: Hydra's own argv parser has no public entry
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
            if multirun:
                jobs = _sweep(compose, parser, overrides, config_name)
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


def sweep_jobs(argv: list[str], config_name: str = "config") -> list[list[str]]:
    """The jobs of ``python -m dynrank.train -m <argv>`` (``hydra.*`` overrides left out), as ``check_command_line``
    and Hydra's basic sweeper make them. Call inside ``initialize_config_dir`` (``scripts/estimate.py``)."""
    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    overrides = [o for o in parser.parse_overrides(argv) if not o.key_or_group.startswith(("hydra.", "hydra/"))]
    return _sweep(compose, parser, overrides, config_name)


def _sweep(compose, parser, overrides: list, config_name: str) -> list[list[str]]:
    """A multirun's jobs: the config's sweep (a preset's ``hydra.sweeper.params``), then the command line's
    overrides, a later key replacing an earlier one in its place; the product with the first key outermost."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # private: no public sweep -> jobs expansion

    groups = [o.input_line for o in overrides if not o.is_sweep_override() and _is_group(o.input_line)]
    primary = compose(config_name, overrides=groups, return_hydra_config=True)
    params = [f"{k}={v}" for k, v in (primary.hydra.sweeper.get("params") or {}).items()]
    return BasicSweeper.split_arguments(parser.parse_overrides(params) + overrides, None)[0]


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

    def config(self, job: list[str]):
        """The job's config: a copy of its groups' (``base``), its key overrides applied as Hydra applies them."""
        # private: the public way, hydra.compose per job, recomposes every job from the files (slow for large sweeps)
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra.errors import HydraException

        base, _ = self.base(job)
        cfg = copy.deepcopy(base)
        try:
            ConfigLoaderImpl._apply_overrides_to_config(self.parser.parse_overrides(
                [o for o in job if not _is_group(o)]), cfg)
        except (HydraException, OmegaConfBaseException):  # e.g. a key not in the config: say which, and the closest
            _check_keys(base, job)
            raise
        return cfg

    def check(self, job: list[str]) -> None:
        cfg = self.config(job)
        base, known = self.base(job)
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
