"""The GPU kernels of ``attention.packed_attention``: each (sequence, head) of a packed batch attends over its own
tokens in one tile (sequences of at most 128 tokens: GLUE), reading q, k, v from and writing its output to the
packed rows directly, with the attention-probability dropout of the sequence's run computed in the kernel (the keyed
masks of ``dropout.DropoutStream.attention``, bit for bit). The backward pass recomputes the probabilities from the
saved log-sum-exp and the masks from their keys, as FlashAttention does (Dao et al. 2022), so nothing of size L x L
is stored. Imported only where Triton is installed; checked against ``attention.attend`` in tests/test_gpu.py (and,
with TRITON_INTERPRET=1, on a CPU: tests/test_packing.py)."""
import triton
import triton.language as tl

from ._triton_dropout import mix
from .dropout import MAX_POSITIONS


@triton.jit
def _keep(seed, step, site_key, seq_key, head, heads, offs_m, offs_n, threshold):
    """The keep mask (BLOCK, BLOCK) of one (sequence, head): dropout._mix over the attention counters."""
    k = mix(seed)
    k = mix(k ^ step)
    k = mix(k ^ site_key)
    row = (seq_key * heads + head) * MAX_POSITIONS + offs_m
    counter = (row[:, None] * MAX_POSITIONS + offs_n[None, :]).to(tl.uint64) & 0xFFFFFFFF
    return (mix(counter ^ k) >> 8) >= threshold


@triton.jit
def _fwd(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, start_ptr, len_ptr, seeds_ptr, step_ptr, per_run, heads, stride,
         scale, site_key, threshold, drop_scale, DROPOUT: tl.constexpr, IEEE: tl.constexpr, BLOCK: tl.constexpr,
         DH: tl.constexpr):
    n = tl.program_id(0)
    h = tl.program_id(1)
    start = tl.load(start_ptr + n)
    L = tl.load(len_ptr + n)
    offs_m = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, DH)
    rows = (start + offs_m).to(tl.int64)[:, None] * stride + h * DH + offs_d[None, :]
    inside = offs_m[:, None] < L
    q = tl.load(q_ptr + rows, mask=inside, other=0.0)
    k = tl.load(k_ptr + rows, mask=inside, other=0.0)
    v = tl.load(v_ptr + rows, mask=inside, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision="ieee" if IEEE else "tf32") * scale
    s = tl.where(offs_m[None, :] < L, s, float("-inf"))
    m = tl.max(s, 1)
    p = tl.exp(s - m[:, None])
    den = tl.sum(p, 1)
    p = p / den[:, None]
    tl.store(lse_ptr + (n * heads + h) * BLOCK + offs_m, m + tl.log(den))
    if DROPOUT:
        seed = tl.load(seeds_ptr + n // per_run).to(tl.uint64) & 0xFFFFFFFF
        step = tl.load(step_ptr).to(tl.uint64) & 0xFFFFFFFF
        keep = _keep(seed, step, site_key.to(tl.uint64), n % per_run, h, heads, offs_m, offs_m,
                     threshold.to(tl.uint64))
        p = tl.where(keep, p * drop_scale, 0.0)
    o = tl.dot(p.to(v.dtype), v, input_precision="ieee" if IEEE else "tf32")
    tl.store(o_ptr + rows, o.to(o_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _bwd(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, dq_ptr, dk_ptr, dv_ptr, start_ptr, len_ptr, seeds_ptr, step_ptr,
         per_run, heads, stride, scale, site_key, threshold, drop_scale, DROPOUT: tl.constexpr, IEEE: tl.constexpr,
         BLOCK: tl.constexpr, DH: tl.constexpr):
    n = tl.program_id(0)
    h = tl.program_id(1)
    start = tl.load(start_ptr + n)
    L = tl.load(len_ptr + n)
    offs_m = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, DH)
    rows = (start + offs_m).to(tl.int64)[:, None] * stride + h * DH + offs_d[None, :]
    inside = offs_m[:, None] < L
    q = tl.load(q_ptr + rows, mask=inside, other=0.0)
    k = tl.load(k_ptr + rows, mask=inside, other=0.0)
    v = tl.load(v_ptr + rows, mask=inside, other=0.0)
    do = tl.load(do_ptr + rows, mask=inside, other=0.0)
    lse = tl.load(lse_ptr + (n * heads + h) * BLOCK + offs_m)
    prec: tl.constexpr = "ieee" if IEEE else "tf32"
    s = tl.dot(q, tl.trans(k), input_precision=prec) * scale
    p = tl.where((offs_m[None, :] < L) & (offs_m[:, None] < L), tl.exp(s - lse[:, None]), 0.0)
    dpd = tl.dot(do, tl.trans(v), input_precision=prec)  # d(dropped p)
    if DROPOUT:
        seed = tl.load(seeds_ptr + n // per_run).to(tl.uint64) & 0xFFFFFFFF
        step = tl.load(step_ptr).to(tl.uint64) & 0xFFFFFFFF
        keep = _keep(seed, step, site_key.to(tl.uint64), n % per_run, h, heads, offs_m, offs_m,
                     threshold.to(tl.uint64))
        pd = tl.where(keep, p * drop_scale, 0.0)
        dp = tl.where(keep, dpd * drop_scale, 0.0)
    else:
        pd = p
        dp = dpd
    dv = tl.dot(tl.trans(pd.to(do.dtype)), do, input_precision=prec)
    ds = p * (dp - tl.sum(p * dp, 1)[:, None])
    dq = tl.dot(ds.to(k.dtype), k, input_precision=prec) * scale
    dk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=prec) * scale
    tl.store(dq_ptr + rows, dq.to(dq_ptr.dtype.element_ty), mask=inside)
    tl.store(dk_ptr + rows, dk.to(dk_ptr.dtype.element_ty), mask=inside)
    tl.store(dv_ptr + rows, dv.to(dv_ptr.dtype.element_ty), mask=inside)
