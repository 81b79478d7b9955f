"""Bottleneck adapters shared by ``houlsby`` and ``pfeiffer``.

An adapter is a small residual MLP on a sub-layer's output (Houlsby et al., 2019, Eq. / Fig. 2):

    a(h) = h + W_up act(W_down h + b_down) + b_up,   W_down: m x d, W_up: d x m,

with bottleneck size m << d. W_down keeps nn.Linear's default (Kaiming-uniform) initialisation;
W_up and b_up start at exactly zero, so a(h) = h at initialisation and the wrapped model computes
the same function as the pre-trained one (tests check the logits are equal).

Placement (``method.placement``), in a sub-layer's output block (RoBERTa/BERT: dense, dropout, LayerNorm of the sum
with the sub-layer's input x), h = dropout(dense(x')):
- ``source`` (the default): where the sources put it. Houlsby (AdapterHub ``DoubleSeqBnConfig``, the LoRA
  repository's Adpt^H): LN(a(h) + x), after the dropout. Pfeiffer (AdapterHub ``SeqBnConfig``: original_ln_before,
  residual_before_ln; the LoRA repository's Adpt^P): LN(W_up act(W_down LN(h + x)) + h + x), the adapter reading the
  layer-normed stream (the same LayerNorm twice, as there). ``SublayerAdapter``.
- ``before_dropout``: a(dense(x')), before the sub-layer's dropout, residual and LayerNorm (dynrank's first
  placement; the only one for BART, whose layers add the residual inline). ``AdapterLinear``.
Only the adapters and the task head train; the LayerNorms stay frozen (the parameter counts of
the paper's Table 2, 1.20M / 0.31M and 1.19M / 0.30M, are adapters only). The initialisation (up zero, so the
wrapped model starts as the pre-trained one) is kept from Houlsby et al.'s near-identity; the LoRA repository's
Adpt^H keeps nn.Linear's. ``export`` writes the trained tensors as safetensors plus a JSON placement (PEFT has no
bottleneck-adapter format).
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

    def delta(self, h):
        """W_up act(W_down h + b_down) + b_up: what the adapter adds."""
        return self.up(self.act(self.down(h)))

    def forward(self, h):
        return h + self.delta(h)


class SublayerAdapter(nn.Module):
    """A RoBERTa/BERT sub-layer output block (``RobertaSelfOutput``, ``RobertaOutput``: dense, dropout, LayerNorm)
    with the adapter where the sources put it: after the dropout; Pfeiffer's on the layer-normed stream."""

    def __init__(self, block: nn.Module, m: int, activation: str, runs: int, pfeiffer: bool):
        super().__init__()
        self.dense, self.dropout, self.LayerNorm = block.dense, block.dropout, block.LayerNorm
        self.pfeiffer = pfeiffer
        self.adapter = BottleneckAdapter(self.dense.out_features, m, activation, self.dense.weight.device, runs)

    def forward(self, hidden_states, input_tensor):
        h = self.dropout(self.dense(hidden_states))
        if self.pfeiffer:  # LN(f(LN(h + x)) + h + x)
            return self.LayerNorm(self.adapter.delta(self.LayerNorm(h + input_tensor)) + h + input_tensor)
        return self.LayerNorm(self.adapter(h) + input_tensor)  # LN(a(h) + x)


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
    pfeiffer = False  # source placement: the adapter reads LN(h + x) (Pfeiffer) or h (Houlsby)

    def bottleneck(self) -> int:
        m = self.cfg.bottleneck
        if m is None:
            m = int(self.cfg.bottleneck_per_rank) * int(self.budget.r)
        return int(m)  # >= 1: both keys' ranges are config.schema's

    def wrap(self, model):
        act, placement = str(self.cfg.activation), str(self.cfg.placement)  # their choices: config.SCHEMA
        if placement == "source" and self.family == "bart":
            raise ConfigError("method.placement=source is built for RoBERTa/BERT sub-layers; BART's layers add the "
                              "residual inline: set method.placement=before_dropout")
        m = self.bottleneck()
        freeze_all_but_head(model)
        self.m, self.placement = m, placement
        self.layers = []
        for t in find_targets(model, self.family):
            if t.matrix_type not in self.positions:
                continue
            parent_name, _, child = t.name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            if placement == "source":  # the whole output block: dense, dropout, LayerNorm
                owner_name, _, block_name = parent_name.rpartition(".")
                new = SublayerAdapter(parent, m, act, self.runs, self.pfeiffer)
                setattr(model.get_submodule(owner_name), block_name, new)
            else:
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
                "activation": str(self.cfg.activation), "placement": self.placement}
