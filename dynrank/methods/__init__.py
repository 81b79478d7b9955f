"""One file per method; each defines ``METHOD``, a subclass of ``base.Method``."""
from __future__ import annotations

import importlib

from ..config import choices
from ..errors import ConfigError


def build(cfg, family: str):
    """The method named by ``cfg.method.name``, configured with its group and the budget."""
    name = cfg.method.name
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise ConfigError(f"unknown method '{name}'; choose one of: {', '.join(choices('method'))}") from None
    return module.METHOD(cfg.method, cfg.budget, family)
