"""Pfeiffer adapters (Pfeiffer et al., 2021, AdapterFusion): one bottleneck adapter per layer.

The adapter sits in the FFN's output block only, on the layer-normed stream after the dropout (AdapterHub's
``SeqBnConfig``; ``dynrank.methods.adapters``: LN(W_up act(W_down LN(h + x)) + h + x)). Bottleneck
m = ``bottleneck_per_rank`` (8) x budget.r: on RoBERTa-base m = 64 (r8) gives
12 x (2*768*64 + 64 + 768) = 1,189,632 (paper 1.19M), m = 16 (r2) gives 304,320 (paper 0.30M).
BART: after fc2 of every encoder and decoder layer.
"""
from .adapters import BottleneckAdapters


class Pfeiffer(BottleneckAdapters):
    name = "pfeiffer"
    positions = ("ffn_down",)
    pfeiffer = True


METHOD = Pfeiffer
