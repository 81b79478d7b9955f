"""Bottleneck adapters shared by ``houlsby`` and ``pfeiffer``.

An adapter is a small residual MLP on a sub-layer's output (Houlsby et al., 2019, Eq. / Fig. 2):

    a(h) = h + W_up act(W_down h + b_down) + b_up,   W_down: m x d, W_up: d x m,

with bottleneck size m << d. W_down keeps nn.Linear's default (Kaiming-uniform) initialisation;
W_up and b_up start at exactly zero, so a(h) = h at initialisation and the wrapped model computes
the same function as the pre-trained one (tests check the logits are equal).

Placement: the adapter wraps the sub-layer's output projection, ``out = a(dense(x))``, i.e. it
acts *before* the sub-layer's dropout, residual connection and LayerNorm, as in Houlsby et al.
Only the adapters and the task head train; the LayerNorms stay frozen (the parameter counts of
the paper's Table 2, 1.20M / 0.31M and 1.19M / 0.30M, are adapters only). ``export`` writes the
trained tensors as safetensors plus a JSON placement (PEFT has no bottleneck-adapter format).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..models import find_targets
from .base import Method, freeze_all_but_head
from .layers import RunLinear

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class BottleneckAdapter(nn.Module):
    """h + up_k(act(down_k(h))) for run k; up is zero-initialised, so every run starts as the identity."""

    def __init__(self, d: int, m: int, activation: str = "relu", device=None, runs: int = 1):
        super().__init__()
        self.down = RunLinear(runs, d, m, device=device)
        self.act = ACTIVATIONS[activation]()
        self.up = RunLinear(runs, m, d, device=device)
        for k in range(runs):
            self.reset_run(k, None)

    def reset_run(self, k: int, generator) -> None:
        """down: nn.Linear's own init (Kaiming-uniform, a = sqrt(5)); up: zero."""
        self.down.reset_run(k, generator)
        with torch.no_grad():
            self.up.weight[k].zero_()
            self.up.bias[k].zero_()

    def forward(self, h):
        return h + self.up(self.act(self.down(h)))


class AdapterLinear(nn.Module):
    """A frozen nn.Linear followed by a bottleneck adapter on its output: a(base(x))."""

    def __init__(self, base: nn.Linear, m: int, activation: str, runs: int = 1):
        super().__init__()
        self.base = base
        self.adapter = BottleneckAdapter(base.out_features, m, activation, device=base.weight.device, runs=runs)

    def forward(self, x):
        return self.adapter(self.base(x))


def adapter_params(d: int, m: int) -> int:
    """Parameters of one adapter: down (d*m + m) + up (m*d + d)."""
    return 2 * d * m + m + d


class BottleneckAdapters(Method):
    """Adapters after the matrices whose paper type is in ``positions`` (attn_out, ffn_down).

    Bottleneck m = ``method.bottleneck`` if set, else ``method.bottleneck_per_rank * budget.r``.
    """

    name = "adapters"
    positions: tuple[str, ...] = ()

    def bottleneck(self) -> int:
        m = self.cfg.get("bottleneck")
        if m is None:
            m = int(self.cfg.bottleneck_per_rank) * int(self.budget.r)
        if int(m) < 1:
            raise ConfigError(f"method.bottleneck must be >= 1 (got {m}); set method.bottleneck or "
                              "method.bottleneck_per_rank to a positive number")
        return int(m)

    def wrap(self, model):
        act = str(self.cfg.get("activation", "relu"))
        if act not in ACTIVATIONS:
            raise ConfigError(f"unknown method.activation '{act}'; choose one of: {', '.join(ACTIVATIONS)}")
        m = self.bottleneck()
        freeze_all_but_head(model)
        self.m = m
        self.layers = []
        for t in find_targets(model, self.family):
            if t.matrix_type not in self.positions:
                continue
            parent_name, _, child = t.name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            new = AdapterLinear(t.module, m, act, self.runs)
            setattr(parent, child, new)
            self.layers.append((t, new))
        self.finish_wrap(model)
        return model

    def export(self, out_dir, base_name: str = "", task_type: str = "seq_cls", k: int = 0):
        """PEFT has no bottleneck adapters: write run k's trained tensors (adapters and head, named as in the
        wrapped model, without the run dimension) to ``adapter_model.safetensors`` and the placement to
        ``adapter_config.json``."""
        import json
        from pathlib import Path

        from ..results import atomic_write_text, save_tensors

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {n: p.detach().float().contiguous().cpu() for n, p in self.run_params(k).items()}
        save_tensors(tensors, out / "adapter_model.safetensors")
        config = {"format": "dynrank-bottleneck-adapter", "method": self.name, "base_model_name_or_path": base_name,
                  "task_type": task_type, **self.summary(), "modules": [t.name for t, _ in self.layers]}
        atomic_write_text(out / "adapter_config.json", json.dumps(config, indent=2))
        return out

    def summary(self, k: int = 0) -> dict:
        return {"bottleneck": self.m, "positions": list(self.positions), "n_adapters": len(self.layers),
                "activation": str(self.cfg.get("activation", "relu"))}
