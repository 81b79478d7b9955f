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

from .dropout import interpreting
from .tiled_attention import flash, probabilities

NAME = "dynrank"


def attend(module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           dropout_p: float, scaling: float) -> torch.Tensor:
    """(N, heads, L, dh) attention of each sequence; ``mask`` a bool mask broadcastable to (N, heads, L, L), True
    where a query may attend a key (None: all)."""
    if dropout_p == 0.0 or not module.training:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling)
    drop = module.dropout  # a KeyedDropout (dropout.install): its site and stream
    return keyed(q, k, v, drop.stream, drop.site, dropout_p, mask, scaling)


def keyed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, stream, site: int, p: float, mask: torch.Tensor | None,
          scaling: float, causal: bool = False) -> torch.Tensor:
    """(N, heads, Lq, dh) attention whose probabilities are dropped with the runs' keyed masks (``stream``'s, site
    ``site``): in tiles on a GPU (``tiled_attention.flash``: no L x L tensor stored), else as transformers' eager
    attention computes it (``probabilities``), dropped, times v."""
    out = flash(q, k, v, scale=scaling, seeds=stream.seeds, step=stream.step, site=site, p=p,
                positions=stream.positions, mask=mask, causal=causal)
    if out is not None:
        return out
    return torch.matmul(stream.attention(probabilities(q, k, mask, scaling, causal), site, p), v)


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
                     lens: torch.Tensor, width: int, dropout_p: float, scaling: float, qkv: torch.Tensor | None = None):
    """Attention of a packed batch on a GPU with Triton, each (sequence, head) one tile read from and written to
    the packed rows (``_triton_attention``); None where the kernel does not apply (no Triton, a CPU, sequences over
    128 tokens, a head size that is not a power of two from 16 to 128): the caller then gathers a padded view.
    ``qkv``: q, k and v are its thirds (one projection, ``qkv.project``): the one-tile kernels read it in place."""
    heads, dh = module.num_attention_heads, module.attention_head_size
    drop = module.dropout
    p = dropout_p if module.training else 0.0
    if width > 128:  # longer than one tile (SQuAD's windows): the tiled kernels, on the packed rows as well
        s = drop.stream
        return flash(q, k, v, scale=scaling, seeds=s.seeds, step=s.step, site=drop.site, p=p, positions=s.positions,
                     packed=(start, lens, heads, width))
    if not (q.is_cuda or interpreting()) or dh not in (16, 32, 64, 128) or _kernels() is None:
        return None
    try:
        if not _kernel_agrees(q.dtype, q.device, dh):
            raise RuntimeError("the kernel disagrees with attention.attend on a check batch")
        tensors = (q, k, v) if qkv is None else (qkv, None, None)
        return _PackedAttention.apply(*tensors, start, lens, drop.stream.seeds, drop.stream.step, drop.site, p,
                                      scaling, heads, dh, max(16, 1 << (width - 1).bit_length()))
    except Exception as e:  # a Triton that cannot build the kernel here: the gathered view instead
        from .dropout import kernel_failed

        kernel_failed("_triton_attention", e)
        return None


_AGREES: set = set()


def _kernel_agrees(dtype, device, dh: int) -> bool:
    """Once per process, dtype and head size, before the kernel's first use: its output and input gradients against
    ``attend`` on the gathered view of a small packed batch (4 sequences of 2 runs, attention dropout 0.3), to the
    dtype's rounding, with q, k, v apart and as one projection's thirds. A kernel that disagrees is not used
    (``kernel_failed``: the gathered view instead)."""
    key = (dtype, str(device), dh)
    if key in _AGREES:
        return True
    import types

    from .dropout import DropoutStream, KeyedDropout
    from .packed_batch import pack

    g = torch.Generator().manual_seed(0)
    heads, H = 2, 2 * dh
    b = {k: v.to(device) for k, v in pack([[1] * n for n in (3, 9, 1, 6)], 2, pad_id=0, position_offset=0).items()}
    N, width = b["valid"].shape
    T, real = b["input_ids"].numel(), b["input_ids"] != 0
    stream = DropoutStream([1, 7], device)
    stream.set_step(3)
    stream.set_rows(torch.arange(N, device=device) % 2, b["token_keys"])
    module = types.SimpleNamespace(num_attention_heads=heads, attention_head_size=dh, training=True,
                                   dropout=KeyedDropout(0.3, 0, stream))
    q, k, v, w = (torch.randn(T, H, generator=g).to(device, dtype) for _ in range(4))
    q, k, v = (x.requires_grad_() for x in (q, k, v))

    def seqs(x):
        return x.index_select(0, b["gather"]).view(N, width, heads, dh).transpose(1, 2)

    qkv = torch.cat([q, k, v], -1).detach().requires_grad_()  # the joint form: the thirds of one projection
    block = max(16, 1 << (width - 1).bit_length())
    with torch.autocast(device.type, enabled=False), torch.enable_grad():
        out = _PackedAttention.apply(q, k, v, b["seq_start"], b["seq_len"], stream.seeds, stream.step, 0, 0.3,
                                     dh ** -0.5, heads, dh, block)
        ref = attend(module, seqs(q), seqs(k), seqs(v), b["valid"][:, None, None, :], 0.3, dh ** -0.5)
        ref = ref.transpose(1, 2).reshape(N * width, H).index_select(0, b["scatter"])
        got = [out, *torch.autograd.grad((out.float() * w.float())[real].sum(), (q, k, v))]
        want = [ref, *torch.autograd.grad((ref.float() * w.float())[real].sum(), (q, k, v))]
        joint = _PackedAttention.apply(qkv, None, None, b["seq_start"], b["seq_len"], stream.seeds, stream.step, 0,
                                       0.3, dh ** -0.5, heads, dh, block)
        got += [joint, *_thirds(torch.autograd.grad((joint.float() * w.float())[real].sum(), qkv)[0])]
        want += want
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    if all(torch.allclose(a.float()[real], c.float()[real], rtol=tol, atol=tol) for a, c in zip(got, want)):
        _AGREES.add(key)
        return True
    return False


def _kernels():
    from .dropout import _FAILED, triton_kernels

    return None if "_triton_attention" in _FAILED else triton_kernels("_triton_attention")


def _thirds(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return qkv.split(qkv.shape[-1] // 3, -1)


class _PackedAttention(torch.autograd.Function):
    """q, k, v (T, H) each; or, with k and v None, ``q`` one (T, 3 H) projection (``qkv.project``) whose thirds the
    kernels read in place and whose gradient they write as one tensor (no copy of q, k, v, no concatenation of
    their gradients)."""

    @staticmethod
    def forward(ctx, q, k, v, start, lens, seeds, step, site, p, scale, heads, dh, block):
        from .dropout import _GOLDEN, M32, _threshold

        joint = k is None
        if joint:
            qkv = q
            q, k, v = _thirds(qkv)
        else:
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        H = q.shape[-1]
        n = start.numel()
        o = torch.zeros(*q.shape, dtype=q.dtype, device=q.device)
        lse = torch.empty(n * heads * block, dtype=torch.float32, device=q.device)
        args = (start, lens, seeds, step, n // seeds.numel(), heads, H, q.stride(-2), scale, (site * _GOLDEN) & M32,
                _threshold(p), 1.0 / (1.0 - p))
        meta = dict(DROPOUT=p > 0, IEEE=q.dtype == torch.float32, BLOCK=block, DH=dh,
                    num_warps=4 if block <= 64 else 8)
        _kernels()._fwd[(n, heads)](q, k, v, o, lse, *args, **meta)
        ctx.save_for_backward(*((qkv,) if joint else (q, k, v)), lse, start, lens, seeds, step)
        ctx.joint = joint
        ctx.args, ctx.meta = args[4:], meta  # per_run, heads, stride, in stride, scale, site key, threshold, drop
        return o

    @staticmethod
    def backward(ctx, do):
        if ctx.joint:
            qkv, lse, start, lens, seeds, step = ctx.saved_tensors
            q, k, v = _thirds(qkv)
            grad = torch.zeros_like(qkv)
            dq, dk, dv = _thirds(grad)
        else:
            q, k, v, lse, start, lens, seeds, step = ctx.saved_tensors
            dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        _kernels()._bwd[(start.numel(), ctx.args[1])](q, k, v, do.contiguous(), lse, dq, dk, dv, start, lens, seeds,
                                                       step, *ctx.args, **ctx.meta)
        if ctx.joint:
            return grad, None, None, *([None] * 10)
        return dq, dk, dv, *([None] * 10)
