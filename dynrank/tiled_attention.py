"""Attention in tiles with each run's keyed attention dropout, for sequences of any length: SQuAD's 384-token
windows (packed rows) and BART's 768-token sources and their summaries (packed rows, each summary's queries
against its own source's rows; or padded views, masks and causal decoder).

``flash`` computes what ``probabilities`` (transformers' eager attention), ``DropoutStream.attention`` and a
product with v compute (the same masks, bit for bit), without storing an L x L tensor: on a GPU with Triton, by
the kernels of ``_triton_flash`` (FlashAttention-2's loop, Dao 2023). It returns None where they do not apply
(no Triton, a CPU outside Triton's interpreter, a head size that is not a power of two from 16 to 128, a kernel
that failed its check against the reference once in this process); the caller then computes the reference.
"""
from __future__ import annotations

import torch

from .dropout import _GOLDEN, M32, _FAILED, _threshold, interpreting, kernel_failed, triton_kernels

NAME = "_triton_flash"
# The kernels' tiles (query rows x keys, each at most a sequence's length rounded up to a power of two >= 16) and
# warps: FlashAttention-2's loop at 64 x 64 with 4 warps. ``scripts/bench_attention.py`` times other tilings at
# XSum's and SQuAD's shapes on a GPU (each checked against ``reference`` first); change them here only for one that
# measured faster there.
TILES = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": None}
# The backward's two kernels (query gradient; key and value gradients) on tiles of their own, where one measured
# faster there than the forward's (the bench times the two passes apart); None: the forward's.
BWD_TILES: dict | None = None


def _meta(tiles: dict, Lq: int, Lk: int) -> dict:
    """A launch's tile sizes (each at most its sequence's length rounded up to a power of two >= 16) and warps."""
    bm, bn = (min(tiles[b], max(16, 1 << (L - 1).bit_length())) for b, L in (("BLOCK_M", Lq), ("BLOCK_N", Lk)))
    return dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=tiles["num_warps"],
                **({"num_stages": tiles["num_stages"]} if tiles["num_stages"] else {}))


def flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, seeds: torch.Tensor,
          step: torch.Tensor, site: int, p: float, positions: int, mask: torch.Tensor | None = None,
          causal: bool = False, packed: tuple | None = None, kv: tuple | None = None) -> torch.Tensor | None:
    """softmax(q k^T * scale), dropped with the runs' keyed masks (``p``; site ``site``, the stream's seeds, step
    and ``positions``), times v. Padded: q (N, heads, Lq, dh), k and v (N, heads, Lk, dh), ``mask`` a bool mask
    broadcastable to (N, heads, Lq, Lk) (True: may attend), ``causal``: query i sees keys up to i. Packed: q, k, v
    (..., T, heads * dh) rows and ``packed = (start, lens, heads, width)``: sequence n's rows start[n] ..
    start[n] + lens[n] - 1, ``width`` >= every length; ``kv = (kstart, klens, kwidth)``: k and v rows of their own
    (cross-attention: sequence n's queries against keys kstart[n] .. kstart[n] + klens[n] - 1), else the queries'.
    Runs are the sequences' blocks of N / len(seeds)."""
    dh = q.shape[-1] if packed is None else q.shape[-1] // packed[2]
    if not usable(q, dh, mask):
        return None
    try:
        if not _kernel_agrees(q.dtype, q.device, dh):
            raise RuntimeError("the kernel disagrees with the reference attention on a check batch")
        return _Flash.apply(q, k, v, mask, seeds, step, (scale, site, p, positions, causal, packed, kv))
    except Exception as e:  # a Triton that cannot build the kernels here: the reference instead
        kernel_failed(NAME, e)
        return None


def usable(q: torch.Tensor, dh: int, mask) -> bool:
    return ((q.is_cuda or interpreting()) and dh in (16, 32, 64, 128)
            and (mask is None or mask.dtype == torch.bool) and NAME not in _FAILED
            and triton_kernels(NAME) is not None)


def _geometry(x: torch.Tensor, packed) -> tuple[int, int, int]:
    """(s_n, s_r, s_h): a sequence's, a row's and a head's stride in ``x`` (``_triton_flash``'s layout)."""
    if packed is None:
        return x.stride(0), x.stride(2), x.stride(1)
    return 0, x.stride(-2), x.shape[-1] // packed[2]


class _Flash(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, seeds, step, args):
        scale, site, p, positions, causal, packed, kv = args
        if packed is not None:  # rows (T, width): the output and gradients are made with these strides
            q, k, v = (x if x.stride(-1) == 1 and x.stride(-2) == x.shape[-1] else x.contiguous() for x in (q, k, v))
        q = q if q.stride(-1) == 1 else q.contiguous()
        if k.stride() != v.stride() or k.stride(-1) != 1:
            k, v = k.contiguous(), v.contiguous()
        if packed is None:
            N, heads, Lq, dh = q.shape
            start = kstart = torch.zeros(N, dtype=torch.int64, device=q.device)
            qlen = torch.full((N,), Lq, dtype=torch.int64, device=q.device)
            Lk = k.shape[2]
            klen = torch.full((N,), Lk, dtype=torch.int64, device=q.device)
        else:
            start, qlen, heads, Lq = packed
            kstart, klen, Lk = kv if kv is not None else (start, qlen, Lq)
            N, dh = start.numel(), q.shape[-1] // heads
        if mask is not None:
            mask = mask.expand(N, heads, Lq, Lk).view(torch.uint8)
            m_strides = mask.stride()
        else:
            mask, m_strides = q, (0, 0, 0, 0)
        o = torch.empty_like(q) if packed is None else torch.zeros_like(q)
        lse = torch.empty(2 * N * heads * Lq, dtype=torch.float32, device=q.device)  # each row's max, log-sum
        common = (*m_strides, Lq, N * heads * Lq, N // seeds.numel(), heads, positions, scale, (site * _GOLDEN) & M32,
                  _threshold(p), 1.0 / (1.0 - p))
        flags = dict(HAS_MASK=mask is not q, CAUSAL=causal, DROPOUT=p > 0, IEEE=q.dtype == torch.float32, DH=dh)
        meta = _meta(TILES, Lq, Lk)
        triton_kernels(NAME)._fwd[(-(-Lq // meta["BLOCK_M"]), N * heads)](
            q, k, v, o, lse, start, kstart, qlen, klen, mask, seeds, step, *_geometry(q, packed),
            *_geometry(k, packed), *common, **flags, **meta)
        ctx.save_for_backward(q, k, v, o, lse, start, kstart, qlen, klen, mask, seeds, step)
        ctx.packed, ctx.common, ctx.flags, ctx.shape = packed, common, flags, (Lq, Lk, N * heads)
        ctx.meta = meta if BWD_TILES is None else _meta(BWD_TILES, Lq, Lk)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, start, kstart, qlen, klen, mask, seeds, step = ctx.saved_tensors
        do = do if do.stride(-1) == 1 else do.contiguous()
        dq = torch.empty_like(q) if ctx.packed is None else torch.zeros_like(q)
        dk, dv = (torch.empty_like(k), torch.empty_like(v)) if ctx.packed is None else \
            (torch.zeros_like(k), torch.zeros_like(v))
        delta = torch.empty(lse.numel() // 2, dtype=torch.float32, device=q.device)
        kernels, g = triton_kernels(NAME), (*_geometry(q, ctx.packed), *_geometry(k, ctx.packed),
                                            *_geometry(do, ctx.packed))
        (Lq, Lk, rows), meta = ctx.shape, ctx.meta
        kernels._bwd_dq[(-(-Lq // meta["BLOCK_M"]), rows)](q, k, v, o, do, dq, lse, delta, start, kstart, qlen, klen,
                                                           mask, seeds, step, *g, *ctx.common, **ctx.flags, **meta)
        kernels._bwd_dkdv[(-(-Lk // meta["BLOCK_N"]), rows)](q, k, v, do, dk, dv, lse, delta, start, kstart, qlen,
                                                             klen, mask, seeds, step, *g, *ctx.common, **ctx.flags,
                                                             **meta)
        return dq, dk, dv, None, None, None, None


def reference(q, k, v, *, scale, seeds, step, site, p, positions, mask=None, causal=False):
    """What ``flash`` computes, padded, in torch's ops: ``probabilities``, the keyed dropout of the
    stream's rows (``DropoutStream.attention``), times v."""
    from .dropout import DropoutStream, seq_keys

    probs = probabilities(q, k, mask, scale, causal)
    if p > 0:
        stream = DropoutStream([0], q.device, positions)
        stream.seeds, stream.step, stream.runs = seeds, step, seeds.numel()
        stream.seq_keys = seq_keys(q.shape[0], seeds.numel(), q.device)
        probs = stream.attention(probs, site, p)
    return torch.matmul(probs, v)


def probabilities(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, scaling: float,
                  causal: bool = False) -> torch.Tensor:
    """softmax(q k^T * scale) (N, heads, Lq, Lk) in q's dtype, as transformers' eager attention computes it (in
    fp32); ``mask`` bool (True: may attend) or additive, ``causal``: query i sees keys up to i."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scaling
    low = torch.finfo(scores.dtype).min
    if causal:
        Lq, Lk = scores.shape[-2:]
        scores = scores.masked_fill(~torch.ones(Lq, Lk, dtype=torch.bool, device=q.device).tril(), low)
    if mask is not None:
        scores = scores.masked_fill(~mask, low) if mask.dtype == torch.bool else scores + mask
    return torch.softmax(scores.float(), dim=-1).to(q.dtype)


_AGREES: set = set()


def _kernel_agrees(dtype, device, dh: int) -> bool:
    """Once per process, dtype and head size, before the kernels' first use: output and input gradients against
    ``reference`` on a check batch of 2 runs (queries and keys of different lengths over two tiles, a padding
    mask, dropout 0.3; and causal self-attention), to the dtype's rounding."""
    key = (dtype, str(device), dh)
    if key in _AGREES:
        return True
    g = torch.Generator().manual_seed(0)
    seeds, step = torch.tensor([1, 7], device=device), torch.tensor(3, device=device)
    mask = torch.ones(4, 1, 1, 70, dtype=torch.bool)
    mask[1, ..., 50:] = False
    cases = [((4, 2, 66, dh), (4, 2, 70, dh), mask.to(device), False), ((4, 2, 66, dh), (4, 2, 66, dh), None, True)]
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    for qs, ks, m, causal in cases:
        q, k, v = (torch.randn(*s, generator=g).to(device, dtype).requires_grad_() for s in (qs, ks, ks))
        w = torch.randn(*qs, generator=g).to(device, dtype)
        args = dict(scale=dh ** -0.5, seeds=seeds, step=step, site=2, p=0.3, positions=512, mask=m, causal=causal)
        with torch.autocast(device.type, enabled=False), torch.enable_grad():
            out = _Flash.apply(q, k, v, m, seeds, step, (dh ** -0.5, 2, 0.3, 512, causal, None, None))
            ref = reference(q, k, v, **args)
            got = [out, *torch.autograd.grad((out.float() * w.float()).sum(), (q, k, v))]
            want = [ref, *torch.autograd.grad((ref.float() * w.float()).sum(), (q, k, v))]
        if not all(torch.allclose(a.float(), c.float(), rtol=tol, atol=tol) for a, c in zip(got, want)):
            return False
    _AGREES.add(key)
    return True
