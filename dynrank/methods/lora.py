"""LoRA (Hu et al., 2022), the paper's Eq. 5: W = W0 + (alpha / r) B A.

A (r x d_in) Kaiming-uniform (``method.kaiming_a``: sqrt(5) as nn.Linear and PEFT under the standard protocol,
0 as the authors' ``Fixed_Lora_Linear`` under ``protocol=paper_code``), B (d_out x r) zero, dropout on the adapter's
input; applied to the query, key, value, attention-output, FFN-up and FFN-down matrices of every layer with
r = budget.r. On RoBERTa-base: r=8 -> 1,327,104 adapter parameters, r=2 -> 331,776 (paper: 1.33M / 0.33M).
Forward and parameterisation equal HF PEFT's ``LoraLayer`` (tests check it). Every tensor has the run dimension
first (``layers.LowRankLinear``).
"""
from __future__ import annotations

import math

import torch

from ..export import merged_delta, save_peft_lora
from .base import Method, freeze_all_but_head, replace_targets
from .layers import LowRankLinear, add_low_rank, init_slice, kaiming

__all__ = ["LoRA", "LoRALinear", "add_low_rank"]


class LoRALinear(LowRankLinear):
    """W0 x + (alpha / r) B_k A_k dropout(x): A Kaiming-uniform(a), B zero."""

    def __init__(self, base, runs: int, r: int, alpha: float, dropout: float, kaiming_a: float = math.sqrt(5)):
        super().__init__(base, runs, r, alpha / r, dropout)
        self.kaiming_a = kaiming_a
        self.reset_runs()

    def reset_run(self, k, generator):
        init_slice(self.lora_A[k], kaiming(self.kaiming_a, generator))
        with torch.no_grad():
            self.lora_B[k].zero_()

    @torch.no_grad()
    def merge(self, k: int = 0):
        self.base.weight += merged_delta(self.lora_A[k], self.lora_B[k], self.scaling).to(self.base.weight.dtype)
        return self.base


class LoRA(Method):
    name = "lora"
    layer = LoRALinear  # dora_wd swaps in its own layer with the same (base, runs, r, alpha, dropout, a) signature
    kaiming_a = math.sqrt(5)  # A's init where the method's YAML sets none (dora_wd: nn.Linear's and PEFT's)

    def wrap(self, model):
        freeze_all_but_head(model)
        r, alpha, p = int(self.budget.r), float(self.cfg.alpha), float(self.cfg.dropout)
        a = float(self.cfg.kaiming_a if "kaiming_a" in self.cfg else self.kaiming_a)
        self.layers = replace_targets(model, self.family, lambda t: self.layer(t.module, self.runs, r, alpha, p, a))
        self.finish_wrap(model)
        return model

    def adapters(self, k: int = 0) -> dict[str, dict]:
        """Per adapted module, run k's tensors as export.save_peft_lora writes them (PEFT's scaling alpha / r = ours)."""
        return {t.name: {"A": m.lora_A[k], "B": m.lora_B[k], "alpha": m.scaling * m.r} for t, m in self.layers}

    def export(self, out_dir, base_name: str = "", task_type: str = "seq_cls", k: int = 0):
        return save_peft_lora(out_dir, self.model, base_name, task_type, self.adapters(k), head=self.head(k))


METHOD = LoRA
