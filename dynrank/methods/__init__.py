"""One file per method; each defines ``METHOD``, a subclass of ``base.Method``."""
from __future__ import annotations

import importlib

from ..config import choices
from ..errors import ConfigError


def method_class(name: str):
    """The class of the method ``name`` (``dynrank/methods/<name>.py``'s ``METHOD``)."""
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise ConfigError(f"unknown method '{name}'; choose one of: {', '.join(choices('method'))}") from None
    return module.METHOD


def names(stacks: bool | None = None) -> list[str]:
    """The methods of the config group (conf/method/), sorted; ``stacks=True``: those that train several runs as one
    model (``base.Method.stacks``, on the RoBERTa models the tests build; full fine-tuning stacks on RoBERTa only,
    ``Full.stacks_on``). Tests and scripts take their methods from here, so a
    new method is tested stacked and on the GPU without editing a list."""
    return [m for m in choices("method") if stacks is None or method_class(m).stacks == stacks]


def build(cfg, family: str, runs: int = 1):
    """The method named by ``cfg.method.name``, configured with its group and the budget, for ``runs`` stacked
    runs (``base.Method``: the run dimension)."""
    return method_class(cfg.method.name)(cfg.method, cfg.budget, family, runs)
