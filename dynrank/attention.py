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


def packed_attention(module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: torch.Tensor,
                     lens: torch.Tensor, width: int, dropout_p: float, scaling: float):
    """Attention of a packed batch on a GPU with Triton, each (sequence, head) one tile read from and written to
    the packed rows (``_triton_attention``); None where the kernel does not apply (no Triton, a CPU, sequences over
    128 tokens, a head size that is not a power of two from 16 to 128): the caller then gathers a padded view."""
    heads, dh = module.num_attention_heads, module.attention_head_size
    if not (q.is_cuda or _interpreting()) or width > 128 or dh not in (16, 32, 64, 128) or _kernels() is None:
        return None
    drop = module.dropout
    p = dropout_p if module.training else 0.0
    try:
        return _PackedAttention.apply(q, k, v, start, lens, drop.stream.seeds, drop.stream.step, drop.site, p,
                                      scaling, heads, dh, max(16, 1 << (width - 1).bit_length()))
    except Exception as e:  # a Triton that cannot build the kernel here: the gathered view instead
        from .dropout import kernel_failed

        kernel_failed("_triton_attention", e)
        return None


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def _kernels():
    from .dropout import _FAILED, triton_kernels

    return None if "_triton_attention" in _FAILED else triton_kernels("_triton_attention")


class _PackedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, start, lens, seeds, step, site, p, scale, heads, dh, block):
        from .dropout import _GOLDEN, M32, _threshold

        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        T, H = q.shape[-2], q.shape[-1]
        n = start.numel()
        o = torch.zeros_like(q)
        lse = torch.empty(n * heads * block, dtype=torch.float32, device=q.device)
        args = (start, lens, seeds, step, n // seeds.numel(), heads, H, scale, (site * _GOLDEN) & M32,
                _threshold(p), 1.0 / (1.0 - p))
        meta = dict(DROPOUT=p > 0, IEEE=q.dtype == torch.float32, BLOCK=block, DH=dh,
                    num_warps=4 if block <= 64 else 8)
        _kernels()._fwd[(n, heads)](q, k, v, o, lse, *args, **meta)
        ctx.save_for_backward(q, k, v, lse, start, lens, seeds, step)
        ctx.args, ctx.meta = args[4:], meta  # per_run, heads, stride, scale, site key, threshold, drop scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, lse, start, lens, seeds, step = ctx.saved_tensors
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        _kernels()._bwd[(start.numel(), ctx.args[1])](q, k, v, do.contiguous(), lse, dq, dk, dv, start, lens, seeds,
                                                       step, *ctx.args, **ctx.meta)
        return dq, dk, dv, *([None] * 10)
