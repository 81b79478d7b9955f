"""The GPU kernels of ``attention.packed_attention``: each (sequence, head) of a packed batch attends over its own
tokens in one tile (sequences of at most 128 tokens: GLUE), reading q, k, v from and writing its output to the
packed rows directly, with the attention-probability dropout of the sequence's run computed in the kernel (the keyed
masks of ``dropout.DropoutStream.attention``, bit for bit). The backward pass recomputes the probabilities from the
saved log-sum-exp and the masks from their keys, as FlashAttention does (Dao et al. 2022), so nothing of size L x L
is stored. Imported only where Triton is installed; checked against ``attention.attend`` in tests/test_gpu.py (and,
with TRITON_INTERPRET=1, on a CPU: tests/test_packing.py)."""
import triton
import triton.language as tl

from ._triton_flash import _dot, _keep
from . import dropout

MAX_POSITIONS = tl.constexpr(dropout.MAX_POSITIONS)  # a kernel reads only constexpr globals (Triton >= 3.2 refuses
# a plain int at compile time; its interpreter does not)


@triton.jit
def _rows(start_ptr, n, h, stride, BLOCK: tl.constexpr, DH: tl.constexpr):
    """Sequence n's head h: its rows' offsets (BLOCK, DH) in packed (T, stride) tensors."""
    offs = tl.arange(0, BLOCK)
    return (tl.load(start_ptr + n) + offs).to(tl.int64)[:, None] * stride + h * DH + tl.arange(0, DH)[None, :]


@triton.jit
def _tile(ptr, start_ptr, len_ptr, n, h, stride, BLOCK: tl.constexpr, DH: tl.constexpr):
    """Sequence n's head h: its rows' offsets in the packed (T, stride) tensors, which of them it holds, its
    length, and the tile of ``ptr`` there (BLOCK, DH), zeros past the sequence."""
    L = tl.load(len_ptr + n)
    offs = tl.arange(0, BLOCK)
    rows = _rows(start_ptr, n, h, stride, BLOCK, DH)
    inside = offs[:, None] < L
    return rows, inside, L, offs, tl.load(ptr + rows, mask=inside, other=0.0)


@triton.jit
def _fwd(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, start_ptr, len_ptr, seeds_ptr, step_ptr, per_run, heads, stride,
         in_stride, scale, site_key, threshold, drop_scale, DROPOUT: tl.constexpr, IEEE: tl.constexpr,
         BLOCK: tl.constexpr, DH: tl.constexpr):
    """q, k and v rows ``in_stride`` apart (the thirds of one (T, 3 H) projection: 3 H; else H), o's ``stride``."""
    n = tl.program_id(0)
    h = tl.program_id(1)
    rows_in, inside, L, offs_m, q = _tile(q_ptr, start_ptr, len_ptr, n, h, in_stride, BLOCK, DH)
    rows = _rows(start_ptr, n, h, stride, BLOCK, DH)  # o's (and do's)
    k = tl.load(k_ptr + rows_in, mask=inside, other=0.0)
    v = tl.load(v_ptr + rows_in, mask=inside, other=0.0)
    s = _dot(q, tl.trans(k), IEEE) * scale
    s = tl.where(offs_m[None, :] < L, s, float("-inf"))
    m = tl.max(s, 1)
    p = tl.exp(s - m[:, None])
    den = tl.sum(p, 1)
    p = p / den[:, None]
    tl.store(lse_ptr + (n * heads + h) * BLOCK + offs_m, m + tl.log(den))
    if DROPOUT:
        keep = _keep(seeds_ptr, step_ptr, n, per_run, site_key, h, heads, offs_m, offs_m, MAX_POSITIONS, threshold)
        p = tl.where(keep, p * drop_scale, 0.0)
    o = _dot(p.to(v.dtype), v, IEEE)
    tl.store(o_ptr + rows, o.to(o_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _bwd(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, dq_ptr, dk_ptr, dv_ptr, start_ptr, len_ptr, seeds_ptr, step_ptr,
         per_run, heads, stride, in_stride, scale, site_key, threshold, drop_scale, DROPOUT: tl.constexpr,
         IEEE: tl.constexpr, BLOCK: tl.constexpr, DH: tl.constexpr):
    """q, k, v and their gradients rows ``in_stride`` apart, do's ``stride`` (as ``_fwd``)."""
    n = tl.program_id(0)
    h = tl.program_id(1)
    rows_in, inside, L, offs_m, q = _tile(q_ptr, start_ptr, len_ptr, n, h, in_stride, BLOCK, DH)
    rows = _rows(start_ptr, n, h, stride, BLOCK, DH)  # o's (and do's)
    k = tl.load(k_ptr + rows_in, mask=inside, other=0.0)
    v = tl.load(v_ptr + rows_in, mask=inside, other=0.0)
    do = tl.load(do_ptr + rows, mask=inside, other=0.0)
    lse = tl.load(lse_ptr + (n * heads + h) * BLOCK + offs_m)
    s = _dot(q, tl.trans(k), IEEE) * scale
    p = tl.where((offs_m[None, :] < L) & (offs_m[:, None] < L), tl.exp(s - lse[:, None]), 0.0)
    dpd = _dot(do, tl.trans(v), IEEE)  # d(dropped p)
    if DROPOUT:
        keep = _keep(seeds_ptr, step_ptr, n, per_run, site_key, h, heads, offs_m, offs_m, MAX_POSITIONS, threshold)
        pd = tl.where(keep, p * drop_scale, 0.0)
        dp = tl.where(keep, dpd * drop_scale, 0.0)
    else:
        pd = p
        dp = dpd
    dv = _dot(tl.trans(pd.to(do.dtype)), do, IEEE)
    ds = p * (dp - tl.sum(p * dp, 1)[:, None])
    dq = _dot(ds.to(k.dtype), k, IEEE) * scale
    dk = _dot(tl.trans(ds.to(q.dtype)), q, IEEE) * scale
    tl.store(dq_ptr + rows_in, dq.to(dq_ptr.dtype.element_ty), mask=inside)
    tl.store(dk_ptr + rows_in, dk.to(dk_ptr.dtype.element_ty), mask=inside)
    tl.store(dv_ptr + rows_in, dv.to(dv_ptr.dtype.element_ty), mask=inside)
