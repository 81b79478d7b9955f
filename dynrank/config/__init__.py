"""The run's config: its identity, each method's values, what each key may hold, and the command line's checks.

* ``run_identity``: what a run computes, its hash, its home (``run_id``) and its resume key;
* ``hparams``: ``${hparams:key}`` (each method's values per task), the learning-rate grid, r0 (``initial_budget``);
* ``schema``: what each key may hold (``SCHEMA``) and its rule language;
* ``validation``: a composed config checked (``validate``: values, then the checks of several keys or the disk);
* ``command_line``: composing configs (``compose``), and every job of a command checked before Hydra starts.

Validation happens before anything is written: ``check_command_line`` composes the config of every job a command
would run and ``validate``s it before Hydra creates or touches a run directory.
"""
from omegaconf import OmegaConf

from .. import runlog  # noqa: F401  (registers ${dynrank_tty:}, train.progress's default in conf/config.yaml)
from .command_line import CONF_DIR, GROUPS, check_command_line, check_overrides, choices, compose
from .hparams import ALL_TASKS, _method_value_resolver, hparams_of, initial_budget, lr_grid, run_grid
from .run_identity import (LENGTH, NOT_IN_IDENTITY, _run_id_resolver, cell_of, config_hash, identity, lr_tag,
                           resume_key, run_id)
from .schema import SCHEMA, conforms, describe
from .validation import check_name_lengths, check_writable, validate

for _name, _fn in (("run_id", _run_id_resolver), ("hparams", _method_value_resolver)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)

__all__ = ["ALL_TASKS", "CONF_DIR", "GROUPS", "LENGTH", "NOT_IN_IDENTITY", "SCHEMA", "check_command_line",
           "check_name_lengths", "check_overrides", "check_writable", "choices", "compose", "config_hash", "conforms",
           "describe", "hparams_of", "identity", "initial_budget", "lr_grid", "lr_tag", "resume_key", "run_id",
           "validate"]
