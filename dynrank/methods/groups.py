"""Groups of low-rank layers of one kind and shape (``layers.LowRankLinear``): what a step makes once per group
instead of once per adapted matrix. RoBERTa-base's 72 adapted matrices make 3 groups ((d, d), (d, ff), (ff, d)).

- ``bind_groups``: the optimizer's buffer (``optim.Flat``, in ``storage_order``) holds a group's factors side by
  side, so each factor of the group is one tensor (R, G, ...) that *is* the layers' parameters (``Flat.alias``):
  reading it copies nothing, and autograd adds its gradient into the buffer once per group;
- ``shared_operands``: inside, every layer reads the operands (``combine``, scale, bf16 cast, rank padding) its
  group made once (``layers.low_rank_operands`` on the group's factors, ``factors_of``).
Both give the numbers of each layer doing it alone, bit for bit (``tests/test_methods.py``).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from . import layers as _layers  # its low_rank_operands looked up at each call (scripts/count_step_ops.py patches it)
from .layers import LowRankLinear


def share_groups(model: nn.Module) -> list[list[LowRankLinear]]:
    """The ``LowRankLinear`` layers of ``model`` that share operands (``shares``), grouped by kind and shape (type,
    d_in, d_out, r, scaling), each group in model order: RoBERTa-base's 72 adapted matrices make 3 groups."""
    groups: dict = {}
    for m in model.modules():
        if isinstance(m, LowRankLinear) and m.shares:
            groups.setdefault((type(m), m.base.in_features, m.base.out_features, m.r, m.scaling), []).append(m)
    return list(groups.values())


class FactorGroup:
    """A group of layers (``share_groups``) whose factor parameters lie side by side in the optimizer's flat buffer,
    and each factor of theirs as one tensor (R, G, ...) that is those parameters (``optim.Flat.alias``)."""

    def __init__(self, layers: list[LowRankLinear], factors: tuple[torch.Tensor, ...]):
        self.layers, self.factors = layers, dict(zip(layers[0].factor_params, factors))


def storage_order(model: nn.Module, params: list[nn.Parameter]) -> list[int]:
    """An order of ``params`` (the model's trainable parameters) for the optimizer's flat buffer: each group's
    factors side by side, factor by factor, layer by layer in the group's order; then every other parameter as
    given. ``bind_groups`` then reads each as one tensor."""
    index = {id(p): i for i, p in enumerate(params)}
    order: list[int] = []
    for layers in share_groups(model):
        for name in layers[0].factor_params:
            ids = [index.get(id(getattr(m, name))) for m in layers]
            if None not in ids:
                order += ids
    placed = set(order)
    return order + [i for i in range(len(params)) if i not in placed]


def bind_groups(model: nn.Module, flat) -> None:
    """Every group whose factors ``flat`` holds side by side (``storage_order``) reads them as one tensor each from
    now on (``factors_of``): ``shared_operands`` and DoRA's importance and DEM then neither copy the factors into a
    stack nor add the gradient back into each parameter's own (3 ops instead of 3 x 72 a step on RoBERTa-base)."""
    for layers in share_groups(model):
        factors = tuple(flat.alias([getattr(m, name) for m in layers]) for name in layers[0].factor_params)
        if all(f is not None for f in factors):
            group = FactorGroup(layers, factors)
            for m in layers:
                m.factor_group = group


def factors_of(layers: list[LowRankLinear], names: tuple[str, ...] | None = None) -> tuple[torch.Tensor, ...]:
    """Each of ``names`` (default: the layers' ``factor_params``) of a group of layers as one tensor (R, G, ...): the
    tensor the parameters alias where ``bind_groups`` bound exactly these layers, else ``torch.stack(..., 1)`` of
    them. The same numbers either way."""
    names = names or layers[0].factor_params
    group = layers[0].factor_group
    if group is not None and len(group.layers) == len(layers) and all(a is b for a, b in zip(group.layers, layers)):
        return tuple(group.factors[n] for n in names)
    return tuple(torch.stack([getattr(m, n) for m in layers], 1) for n in names)


@contextmanager
def shared_operands(model: nn.Module):
    """Inside, every ``LowRankLinear`` of ``model`` (that ``shares``) reads operands made once for its group of
    layers of one kind and shape: a few ops per group (``combine``, scale, cast, pad) instead of per layer.
    RoBERTa-base has 72 adapted matrices in 3 shapes; per layer, these ops are ~13 small kernels, forward and
    backward: a step of 5 stacked DoRA runs dispatches 951 fewer operations (``scripts/count_step_ops.py``). The
    numbers are the same: the same elementwise ops on the same values, stacked. The factors are read as one tensor
    per group (``factors_of``: the parameters themselves where bound, else a stack). Spans one forward (the training
    step's, ``step._update``); the backward then runs through them."""
    groups = share_groups(model)
    try:
        for layers in groups:
            first = layers[0]
            factors = factors_of(layers)
            At, Bt = _layers.low_rank_operands(*first.combine(*factors), first.scaling, factors[0].device)
            for m, a, b in zip(layers, At.unbind(1), Bt.unbind(1)):
                m.operands = (a, b)
        yield
    finally:
        for layers in groups:
            for m in layers:
                m.operands = None
