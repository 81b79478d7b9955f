"""Self-attention of the encoders (RoBERTa, BERT) per sequence, with attention-probability dropout from the runs'
own streams (``dropout.DropoutStream``).

One function, ``attend``, serves both layouts: transformers' padded forward calls it through the attention
interface registered as ``"dynrank"`` (``use_for``), and the packed forward (``packing.py``) gathers each sequence's
tokens into a padded view around it. Without dropout (evaluation, or p = 0) it is PyTorch's
``scaled_dot_product_attention``; with dropout it computes the probabilities (softmax(q k^T * scale), masked
keys excluded), drops them with the keyed masks of each run and multiplies by v: the same math as transformers'
eager attention, whose dropout drew from one generator for the whole stack.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

NAME = "dynrank"


def attend(module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           dropout_p: float, scaling: float) -> torch.Tensor:
    """(N, heads, L, dh) attention of each sequence; ``mask`` a bool mask broadcastable to (N, heads, L, L), True
    where a query may attend a key (None: all)."""
    if dropout_p == 0.0 or not module.training:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scaling
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    drop = module.dropout  # a KeyedDropout (dropout.install): its site and stream
    probs = drop.stream.attention(probs, drop.site, dropout_p)
    return torch.matmul(probs, v)


def _interface(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
               **kwargs):
    """transformers' attention-interface signature: (N, heads, L, dh) in, (N, L, heads, dh) out."""
    if attention_mask is not None and attention_mask.dtype != torch.bool:  # an additive mask
        attention_mask = attention_mask == 0
    out = attend(module, query, key, value, attention_mask, dropout, scaling)
    return out.transpose(1, 2).contiguous(), None


def use_for(model) -> None:
    """Make ``model`` (its config and every sub-config) attend with ``attend``, registered once with transformers
    (with the SDPA mask format: a bool mask, or None without padding)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, _interface)
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    for m in model.modules():
        config = getattr(m, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = NAME
