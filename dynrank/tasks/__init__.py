"""Tasks: data, model head, batching and evaluation. ``build(cfg, tokenizer)`` picks one by family."""
from __future__ import annotations

import importlib

from ..errors import ConfigError

FAMILIES = {"glue": "glue", "squad": "squad", "xsum": "xsum"}


def build(cfg, tokenizer):
    family = cfg.task.get("family")
    if family not in FAMILIES:
        raise ConfigError(f"task '{cfg.task.name}' has unknown family '{family}'; known: {', '.join(FAMILIES)}")
    module = importlib.import_module(f"{__name__}.{FAMILIES[family]}")
    return module.TASK(cfg, tokenizer)
