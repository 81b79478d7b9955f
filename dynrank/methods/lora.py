"""LoRA (Hu et al., 2022), the paper's Eq. 5: W = W0 + (alpha / r) B A.

A (r x d_in) Kaiming-uniform (``method.kaiming_a``: sqrt(5) as nn.Linear and PEFT under the standard protocol,
0 as the authors' ``Fixed_Lora_Linear`` under ``protocol=paper_code``), B (d_out x r) zero, dropout on the adapter's input; applied to the
query, key, value, attention-output, FFN-up and FFN-down matrices of every layer with r = budget.r.
On RoBERTa-base: r=8 -> 1,327,104 adapter parameters, r=2 -> 331,776 (paper: 1.33M / 0.33M).
Forward and parameterisation equal HF PEFT's ``LoraLayer`` (tests check it).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..export import merged_delta, save_peft_lora
from .base import Method, freeze_all_but_head, replace_targets


def add_low_rank(h: torch.Tensor, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                 scale: float | torch.Tensor = 1.0, align: int | None = None) -> torch.Tensor:
    """h + scale * (x A^T) B^T: the low-rank update of every LoRA-family layer, x = dropout(input).

    The same number as ``h + F.linear(F.linear(x, A), B) * scale``, but the scale goes onto the small B
    (d_out x r) instead of a pass over the (tokens x d_out) output, and the add is fused into the GEMM
    (addmm): on a GPU that saves three full passes over the activations per adapted matrix.

    On a GPU the rank is padded with zero components to a multiple of ``align`` (8): a GEMM whose rank
    side is not a multiple of 8 bf16 elements (16 bytes) misses cuBLAS's aligned kernels, which made
    DoRA's r0 = 12 ~5% slower per step than a padded 16 (benchmarks/README.md). The padded components
    are zeros in A and B: they add nothing, and their slice of the gradient is dropped. On CPU
    (``align`` 1) nothing is padded.
    """
    r = A.shape[0]
    align = align or (8 if x.is_cuda else 1)
    R = -(-r // align) * align
    Bt = (B * scale).t()  # (r, d_out)
    if R != r:
        if torch.is_autocast_enabled(x.device.type):  # cast before padding (autocast would cast anyway)
            dtype = torch.get_autocast_dtype(x.device.type)
            A, Bt = A.to(dtype), Bt.to(dtype)
        A, Bt = F.pad(A, (0, 0, 0, R - r)), F.pad(Bt, (0, 0, 0, R - r))
    t = F.linear(x, A)
    d = h.shape[-1]
    out = torch.addmm(h.reshape(-1, d), t.reshape(-1, R), Bt)
    return out.view(h.shape)


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float, kaiming_a: float = math.sqrt(5)):
        super().__init__()
        self.base = base
        self.r = r
        self.scaling = alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=kaiming_a)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        return add_low_rank(self.base(x), self.dropout(x), self.lora_A, self.lora_B, self.scaling)

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        self.base.weight += merged_delta(self.lora_A, self.lora_B, self.scaling).to(self.base.weight.dtype)
        return self.base


class LoRA(Method):
    name = "lora"
    layer = LoRALinear  # dora_wd swaps in its own layer with the same (base, r, alpha, dropout) signature

    def wrap(self, model):
        freeze_all_but_head(model)
        r, alpha, p = int(self.budget.r), float(self.cfg.alpha), float(self.cfg.dropout)
        a = float(self.cfg.get("kaiming_a", math.sqrt(5)))
        self.layers = replace_targets(model, self.family, lambda t: self.layer(t.module, r, alpha, p, a))
        self.model = model
        return model

    def adapters(self) -> dict[str, dict]:
        """Per adapted module, what export.save_peft_lora writes (PEFT's scaling alpha / r = ours)."""
        return {t.name: {"A": m.lora_A, "B": m.lora_B, "alpha": m.scaling * m.r} for t, m in self.layers}

    def export(self, out_dir, base_name: str = "", task_type: str = "seq_cls"):
        return save_peft_lora(out_dir, self.model, base_name, task_type, self.adapters())


METHOD = LoRA
