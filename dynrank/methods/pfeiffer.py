"""Pfeiffer adapters (Pfeiffer et al., 2021, AdapterFusion): one bottleneck adapter per layer.

The adapter sits on the output of the FFN's down projection only (``dynrank.methods.adapters``:
a(h) = h + W_up act(W_down h)), before dropout / residual / LayerNorm. Bottleneck
m = ``bottleneck_per_rank`` (8) x budget.r: on RoBERTa-base m = 64 (r8) gives
12 x (2*768*64 + 64 + 768) = 1,189,632 (paper 1.19M), m = 16 (r2) gives 304,320 (paper 0.30M).
BART: after fc2 of every encoder and decoder layer.
"""
from .adapters import BottleneckAdapters


class Pfeiffer(BottleneckAdapters):
    name = "pfeiffer"
    positions = ("ffn_down",)


METHOD = Pfeiffer
