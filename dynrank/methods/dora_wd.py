"""Weight-Decomposed Low-Rank Adaptation (Liu et al., 2024; "DoRA" in that paper, ``dora_wd`` here so it is not
confused with the dynamic-rank DoRA this project reproduces; docs/methods.md).

The adapted weight is decomposed into magnitude and direction (Liu et al., Eq. 5):

    W' = m * (W0 + s B A) / ||W0 + s B A||_c,    s = alpha / r,

||.||_c the norm of each output row of the (d_out x d_in) weight (PEFT's layout of the paper's column norm), m
trainable and initialised to ||W0||_c, B = 0 at the start. The norm is a constant (Sec. 4.3: computed without a
graph). The forward equals PEFT 0.21 ``LoraConfig(use_dora=True)`` (``DoraLinearVariant.forward``), dropout included:
with dropout the frozen path sees the clean input and the magnitude correction the dropped one; tests compare logits
and gradients against it. Targets as LoRA's; trainable: LoRA's parameters plus one magnitude per output row (per run).
``export`` writes a PEFT adapter (``use_dora=True``, magnitudes as ``lora_magnitude_vector``).
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import nn
from torch.nn import functional as F

from ..export import save_peft_lora
from .layers import LowRankLinear, by_run, init_slice, kaiming
from .lora import LoRA


def _no_autocast(device_type: str):
    if device_type in ("cuda", "cpu"):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()


class DoRAWDLinear(LowRankLinear):
    shares = False  # its own forward (the magnitude over the column norm), not the shared operands

    def __init__(self, base: nn.Linear, runs: int, r: int, alpha: float, dropout: float,
                 kaiming_a: float = math.sqrt(5)):
        super().__init__(base, runs, r, alpha / r, dropout)
        self.kaiming_a = kaiming_a  # sqrt(5): as nn.Linear / PEFT
        with torch.no_grad():
            self.magnitude = nn.Parameter(self.weight_norm())  # (R, d_out) = ||W0||_c since B = 0
        self.reset_runs()

    def reset_run(self, k, generator):
        init_slice(self.lora_A[k], kaiming(self.kaiming_a, generator))
        with torch.no_grad():
            self.lora_B[k].zero_()
            self.magnitude[k].copy_(self.weight_norm()[k])

    @torch.no_grad()
    def weight_norm(self) -> torch.Tensor:
        """||W0 + s B_k A_k||_c per output row of every run k (R, d_out), outside the graph (the paper's Sec. 4.3).

        One (R, d_out, d_in) temporary in W0's dtype (fp32; bf16 when the loop stores the frozen backbone
        in bf16), the norm accumulated in fp32; autocast off so W0 is not re-cast.
        """
        W0 = self.base.weight
        with _no_autocast(W0.device.type):
            W = torch.baddbmm(W0.unsqueeze(0), self.lora_B.to(W0.dtype), self.lora_A.to(W0.dtype), alpha=self.scaling)
            return torch.linalg.vector_norm(W, dim=2, dtype=torch.float32)

    def forward(self, x):
        R = self.runs
        result = self.base(x)
        g = (self.magnitude / self.weight_norm()).unsqueeze(1)  # (R, 1, d_out), gradient only through m
        if isinstance(self.dropout, nn.Identity) or not self.training:
            base_result = result if self.base.bias is None else result - self.base.bias
        else:
            x = self.dropout(x)
            base_result = F.linear(x, self.base.weight)
        lora = torch.bmm(torch.bmm(by_run(x, R), self.lora_A.transpose(1, 2)), self.lora_B.transpose(1, 2))
        out = by_run(result, R) + (g - 1) * by_run(base_result, R) + g * lora * self.scaling  # as PEFT
        return out.view(result.shape).to(result.dtype)

    @torch.no_grad()
    def merge(self, k: int = 0) -> nn.Linear:
        """Fold run k into the frozen weight: W' = m * (W0 + s B A) / ||W0 + s B A||_c."""
        W = torch.addmm(self.base.weight.float(), self.lora_B[k].float(), self.lora_A[k].float(), alpha=self.scaling)
        W *= (self.magnitude[k].float() / torch.linalg.vector_norm(W, dim=1)).unsqueeze(1)
        self.base.weight.copy_(W.to(self.base.weight.dtype))
        return self.base


class DoRAWD(LoRA):
    """LoRA's wrapping with the weight-decomposed layer; exported as PEFT ``use_dora`` adapters."""

    name = "dora_wd"
    layer = DoRAWDLinear

    def export(self, out_dir, base_name: str = "", task_type: str = "seq_cls", k: int = 0):
        adapters = self.adapters(k)
        for t, m in self.layers:
            adapters[t.name]["magnitude"] = m.magnitude[k]
        return save_peft_lora(out_dir, self.model, base_name, task_type, adapters, use_dora=True, head=self.head(k))


METHOD = DoRAWD
