"""Run by tests/test_packing.py with TRITON_INTERPRET=1 (Triton decides at import whether it interprets): the keyed
dropout kernel (``_triton_dropout``, 32-bit hash) against ``dropout.keep_mask`` (numpy's uint32), bit for bit, on a
CPU: the widths it runs at (768 and 3,072, several column blocks, and a width that is not a multiple of the block),
seeds and row keys past 2^31 (their low 32 bits count), counters whose products wrap modulo 2^32; and added in place
into another tensor (fp32: the same numbers as torch's add of the dropped tensor)."""
import torch

from dynrank import _triton_dropout, dropout

g = torch.Generator().manual_seed(0)
for rows, width, seeds, key_scale, p in ((48, 768, [5, 2**31 + 9], 512, 0.1), (16, 3072, [3], 1024, 0.3),
                                         (30, 300, [1, 2**40 + 7, 11], 7_000_003, 0.1)):
    x = torch.rand(rows, width, generator=g) + 0.5  # no zeros: a zero is dropped or kept alike
    keys = torch.randint(0, 2**40, (rows,), generator=g) * key_scale  # row keys; products wrap 2^32
    seeds_t, step = torch.tensor(seeds), torch.tensor(2**33 + 11)
    y = _triton_dropout.launch(x, keys, width, seeds_t, step, 3, p)
    mask = dropout.keep_mask(rows, width, keys, width, seeds_t, step, 3, p)
    assert torch.equal(y != 0, mask), (rows, width)
    assert torch.equal(y[mask], x[mask] * (1.0 / (1.0 - p))), (rows, width)
    assert 0.5 * p < 1 - mask.float().mean().item() < 1.5 * p  # the rate it was asked for
    for dtype in (torch.float32, torch.bfloat16):  # added into a gradient in place (dropout.keyed_dropout_add_)
        base = torch.randn(rows, width, generator=g).to(dtype)
        got = _triton_dropout.launch(x.to(dtype), keys, width, seeds_t, step, 3, p, out=base.clone())
        want = base + x.to(dtype) * mask * (1.0 / (1.0 - p))
        if dtype == torch.float32:
            assert torch.equal(got, want), (rows, width)
        else:  # the interpreter rounds to bf16 its own way (tests/test_gpu.py checks bf16 bit for bit)
            assert torch.allclose(got.float(), want.float(), rtol=0, atol=2 * 2.0 ** -6), (rows, width)
print("dropout ok")
