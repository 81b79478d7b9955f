"""The GPU kernel of ``dropout.keyed_dropout``: the keyed mask computed and applied in one pass (imported only where
Triton is installed; the same hash as ``dropout._mix``, in 32-bit integers, checked bit for bit in
``tests/test_gpu.py`` and, in Triton's interpreter, in ``tests/triton_dropout_check.py``)."""
import torch
import triton
import triton.language as tl

from .dropout import _GOLDEN, M32, _threshold


@triton.jit
def mix(x):  # lowbias32 on uint32: its products wrap modulo 2^32, as dropout._mix's masked int64 ones do
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def stream_key(seed, step_ptr, site_key):
    """K(seed, step, site): ``dropout.stream_keys`` for the runs' seeds ``seed`` (loaded by the caller). Every value
    is taken modulo 2^32 (``.to(tl.uint32)`` keeps the low 32 bits), as the reference's ``& M32``."""
    step = tl.load(step_ptr).to(tl.uint32)
    return mix(mix(mix(seed.to(tl.uint32)) ^ step) ^ site_key.to(tl.uint32))


@triton.jit
def kernel(x_ptr, out_ptr, keys_ptr, seeds_ptr, step_ptr, width, rows_per_run, blocks_per_run, counter_width,
           site_key, threshold, scale, ACCUMULATE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program (i, j): rows block i % blocks_per_run of run i // blocks_per_run (a block never straddles two runs,
    so the run's stream key is computed once, not per row), columns block j. ``ACCUMULATE``: out += the dropout of
    x (rounded to out's dtype first, as torch's ``out.add_(dropout(x))``), else out = it."""
    run = tl.program_id(0) // blocks_per_run
    r = (tl.program_id(0) % blocks_per_run) * BLOCK_R + tl.arange(0, BLOCK_R)  # within the run
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    rmask = r < rows_per_run
    r = run.to(tl.int64) * rows_per_run + r
    k = stream_key(tl.load(seeds_ptr + run), step_ptr, site_key)
    rk = tl.load(keys_ptr + r, mask=rmask, other=0).to(tl.uint32) * counter_width.to(tl.uint32)
    u = mix((rk[:, None] + c.to(tl.uint32)[None, :]) ^ k)  # the counter row_key * width + column, mod 2^32
    keep = u >= (threshold.to(tl.uint32) << 8)  # (u >> 8) >= threshold: the top 24 bits
    m = rmask[:, None] & (c[None, :] < width)
    offs = r[:, None] * width + c[None, :]
    x = tl.load(x_ptr + offs, mask=m, other=0.0)
    y = tl.where(keep, x.to(tl.float32) * scale, 0.0).to(out_ptr.dtype.element_ty)  # in fp32, as torch scales bf16
    if ACCUMULATE:
        y = y.to(tl.float32) + tl.load(out_ptr + offs, mask=m, other=0.0).to(tl.float32)
        y = y.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + offs, y, mask=m)


def launch(x: torch.Tensor, keys, counter_width, seeds, step, site, p, out: torch.Tensor | None = None):
    """The dropout of ``x`` into a new tensor, or added into ``out`` (contiguous, x's shape and dtype)."""
    x = x.contiguous()
    accumulate = out is not None
    out = torch.empty_like(x) if out is None else out
    width = x.shape[-1]
    rows = x.numel() // width
    # 4,096 elements a program, 256 columns wide: RoBERTa's and BART's widths (768, 3,072) are whole multiples of
    # it (a 1,024-wide block left a quarter of its lanes masked on a 768-wide row)
    block_c = min(256, triton.next_power_of_2(width))
    block_r = max(1, 4096 // block_c)
    runs = seeds.numel()
    if rows % runs:
        raise ValueError(f"{rows} rows are not {runs} runs' equal blocks")
    blocks = triton.cdiv(rows // runs, block_r)  # per run
    grid = (runs * blocks, triton.cdiv(width, block_c))
    kernel[grid](x, out, keys, seeds, step, width, rows // runs, blocks, counter_width,
                 (site * _GOLDEN) & M32, _threshold(p), 1.0 / (1.0 - p), ACCUMULATE=accumulate, BLOCK_R=block_r,
                 BLOCK_C=block_c)
    return out
