"""The GPU kernel of ``dropout.keyed_dropout``: the keyed mask computed and applied in one pass (imported only where
Triton is installed; the same hash as ``dropout._mix``, checked bit for bit in ``tests/test_gpu.py``)."""
import torch
import triton
import triton.language as tl

from .dropout import _GOLDEN, M32, _threshold


@triton.jit
def mix(x):  # lowbias32 on uint64 holding 32-bit values (a product of two of them fits: exact)
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


@triton.jit
def stream_key(seed, step_ptr, site_key):
    """K(seed, step, site): ``dropout.stream_keys`` for the runs' seeds ``seed`` (loaded by the caller)."""
    step = tl.load(step_ptr).to(tl.uint64) & 0xFFFFFFFF
    return mix(mix(mix(seed.to(tl.uint64) & 0xFFFFFFFF) ^ step) ^ site_key.to(tl.uint64))


@triton.jit
def kernel(x_ptr, out_ptr, keys_ptr, seeds_ptr, step_ptr, rows, width, rows_per_run, counter_width,
           site_key, threshold, scale, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    rmask = r < rows
    k = stream_key(tl.load(seeds_ptr + r // rows_per_run, mask=rmask, other=0), step_ptr, site_key)
    rk = tl.load(keys_ptr + r, mask=rmask, other=0)
    counter = (rk[:, None] * counter_width + c[None, :]).to(tl.uint64) & 0xFFFFFFFF
    u = mix(counter ^ k[:, None])
    keep = (u >> 8) >= threshold.to(tl.uint64)
    m = rmask[:, None] & (c[None, :] < width)
    offs = r[:, None].to(tl.int64) * width + c[None, :]
    x = tl.load(x_ptr + offs, mask=m, other=0.0)
    y = tl.where(keep, x.to(tl.float32) * scale, 0.0)  # in fp32, as torch scales a bf16 tensor
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=m)


def launch(x: torch.Tensor, keys, counter_width, seeds, step, site, p):
    x = x.contiguous()
    out = torch.empty_like(x)
    width = x.shape[-1]
    rows = x.numel() // width
    block_c = min(1024, triton.next_power_of_2(width))
    block_r = max(1, 4096 // block_c)
    grid = (triton.cdiv(rows, block_r), triton.cdiv(width, block_c))
    kernel[grid](x, out, keys, seeds, step, rows, width, rows // seeds.numel(), counter_width,
                 (site * _GOLDEN) & M32, _threshold(p), 1.0 / (1.0 - p), BLOCK_R=block_r, BLOCK_C=block_c)
    return out
