"""An encoder layer's query, key and value projections as one (T, 3 H) tensor in a training step (``packing.py``).

The three read the same rows. Apart, they are three GEMMs on the frozen weights forward and three backward, and
autograd adds their three input gradients (and their adapters', ``layers._LowRank``). Here the frozen weights sit
side by side (a copy made once, ``_stacked``): one GEMM with 3 H outputs forward, one input-gradient GEMM over the
joint gradient backward; each projection's low-rank update goes into its third in place (``layers.adapter_into_``)
and its input gradient into the joint one (``layers.adapter_input_grad_``), with its own dropout site. The
one-tile attention kernels read q, k and v as the thirds in place and give back their gradient as one tensor
(``attention.packed_attention(qkv=...)``), so nothing is copied or concatenated between them.

It applies where the three are frozen linears, all bare (the bottleneck adapters' models) or all with a low-rank
update of one kind (the LoRA family, in a training step). Otherwise (BitFit's trainable biases, DoRA-WD's own
forward, evaluation) the projections run apart, as before. The same numbers (``tests/test_packing.py``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .methods import layers
from .methods.layers import (SAVED, LowRankLinear, adapter_grads, adapter_input_grad_, adapter_into_,
                             frozen_derived, frozen_input_grad, low_rank_operands)


def project(sa: nn.Module, h: torch.Tensor) -> torch.Tensor | None:
    """q, k and v of self-attention ``sa`` over rows ``h`` (..., T, H) as the thirds of one (..., T, 3 H) tensor, or
    None where they do not go together (the caller then calls ``sa.query``, ``sa.key`` and ``sa.value``)."""
    mods = (sa.query, sa.key, sa.value)
    if not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return None
    if all(layers._frozen_linear(m) for m in mods):  # (looked up here: bench.without switches it)
        W3, b3 = _stacked(sa, mods)
        return None if W3 is None else F.linear(h, W3, b3)  # autograd: one GEMM each way
    if not all(type(m) is type(mods[0]) and isinstance(m, LowRankLinear) and type(m).forward is LowRankLinear.forward
               and layers._frozen_linear(m.base) for m in mods):  # (DoRA-WD has a forward of its own)
        return None
    drops = [m._keyed_dropout(h) for m in mods]
    if any(d is False for d in drops):
        return None
    W3, b3 = _stacked(sa, [m.base for m in mods])
    if W3 is None:
        return None
    operands = [m.operands or low_rank_operands(*m.factors(), m.scaling, h.device) for m in mods]
    return _QKV.apply(h, W3, b3, *operands[0], *operands[1], *operands[2], drops)


def _stacked(sa: nn.Module, linears) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The frozen weights (3 H, H) and biases (3 H) of ``linears`` side by side, made once per set of weights (their
    storage and version: new or changed weights make them again); None where the biases are some and not others."""
    biases = [m.bias for m in linears]
    if any(b is None for b in biases) and not all(b is None for b in biases):
        return None, None
    tensors = [m.weight for m in linears] + [b for b in biases if b is not None]
    return frozen_derived(sa, "_qkv_stacked", tensors, lambda: (torch.cat([m.weight for m in linears]),
                                                              None if biases[0] is None else torch.cat(biases)))


class _QKV(torch.autograd.Function):
    """x W3^T + b3 with each third's low-rank update added in place, as one node: its backward is one GEMM on the
    joint gradient plus each adapter's parts, accumulated (``layers.adapter_grads``, ``adapter_input_grad_``)."""

    @staticmethod
    def forward(ctx, x, W3, b3, Atq, Btq, Atk, Btk, Atv, Btv, drops):
        h3 = F.linear(x, W3, b3)
        saved = []
        for third, At, Bt, drop in zip(h3.split(W3.shape[0] // 3, -1), (Atq, Atk, Atv), (Btq, Btk, Btv), drops):
            saved += adapter_into_(third, x, At, Bt, drop)
        ctx.save_for_backward(W3, *saved)
        ctx.site_ps = [drop and drop[3:] for drop in drops]
        ctx.x_dtype = x.dtype
        return h3

    @staticmethod
    def backward(ctx, g):
        W3, *saved = ctx.saved_tensors
        sites = [saved[i * SAVED:(i + 1) * SAVED] for i in range(3)]
        grads, parts = [], []
        for i, (gs, site) in enumerate(zip(g.split(W3.shape[0] // 3, -1), sites)):
            g_t, g_At, g_Bt = adapter_grads(gs, site, ctx.needs_input_grad[3 + 2 * i], ctx.needs_input_grad[4 + 2 * i])
            grads += [g_At, g_Bt]
            parts.append(g_t)
        if not ctx.needs_input_grad[0]:
            return None, None, None, *grads, None
        dx = frozen_input_grad(g, W3)
        for g_t, site, site_p in zip(parts, sites, ctx.site_ps):
            adapter_input_grad_(dx, g_t, site, site_p)
        return dx.to(ctx.x_dtype), None, None, *grads, None
