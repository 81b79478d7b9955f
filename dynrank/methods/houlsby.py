"""Houlsby adapters (Houlsby et al., 2019): two bottleneck adapters per layer.

One adapter in the attention block's output and one in the FFN's output, after the sub-layer's dropout
(``dynrank.methods.adapters``: LN(a(h) + x), a(h) = h + W_up act(W_down h), as AdapterHub's
``DoubleSeqBnConfig`` and the LoRA repository's Adpt^H). Bottleneck m = ``bottleneck_per_rank`` (4) x budget.r, sized
so the trainable adapter parameters match the paper's Table 2: on RoBERTa-base m = 32 (r8) gives
24 x (2*768*32 + 32 + 768) = 1,198,848 (paper 1.20M) and m = 8 (r2) gives 313,536 (paper 0.31M).

BART (``method.placement=before_dropout``): adapters after self_attn.out_proj and fc2 in every encoder and decoder
layer; the decoder's
cross-attention (encoder_attn.out_proj) gets none, as in the original Houlsby design (one adapter
per attention sub-layer, the self-attention one) and AdapterHub's default (``cross_adapter=False``).
"""
from .adapters import BottleneckAdapters


class Houlsby(BottleneckAdapters):
    name = "houlsby"
    positions = ("attn_out", "ffn_down")


METHOD = Houlsby
