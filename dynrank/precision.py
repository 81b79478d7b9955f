"""The fast path's precision (``train.bf16=true`` on a GPU): the frozen backbone stored in bf16, autocast for the
rest, and layer norms whose output stays bf16.

Autocast runs ``layer_norm`` in fp32 and returns fp32, so with it alone every residual stream of the model is
fp32: each following linear and adapter casts it back to bf16 (the numbers they multiply are bf16 either way),
and the adapters' dropout, the residual adds and their gradients run on fp32 tensors. That was about a sixth of a
RoBERTa-base LoRA step on an H200, 2.3 of 14 ms (benchmarks/README.md). ``BF16LayerNorm`` normalises in fp32
inside the kernel, as autocast's would, and rounds its output to bf16, as a model loaded in bf16 does; what
changes is that the residual adds are done in bf16. Trainable layer-norm weights (full, bitfit) keep fp32 master
copies.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class BF16LayerNorm(nn.LayerNorm):
    """nn.LayerNorm with a bf16 output under autocast (same parameters, same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bf16 = torch.bfloat16
        w = None if self.weight is None else self.weight.to(bf16)
        b = None if self.bias is None else self.bias.to(bf16)
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x.to(bf16), self.normalized_shape, w, b, self.eps)


def bf16_backbone(model: nn.Module) -> nn.Module:
    """Frozen weights stored in bf16 (trainable ones and the optimizer state stay fp32, so autocast does not
    re-cast the backbone every step), and every nn.LayerNorm made a ``BF16LayerNorm`` in place; a layer norm of
    another kind that offers a bf16 output (``bf16_output``: stacked full fine-tuning's ``RunLayerNorm``) gets it."""
    for p in model.parameters():
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)
    for m in model.modules():
        if type(m) is nn.LayerNorm:
            m.__class__ = BF16LayerNorm
        elif hasattr(m, "bf16_output"):
            m.bf16_output = True
    return model
