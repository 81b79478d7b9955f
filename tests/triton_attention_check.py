"""Run by tests/test_packing.py with TRITON_INTERPRET=1 (Triton decides at import whether it interprets): the
packed attention kernel against the reference, on a CPU."""
import types

import torch

from dynrank import attention, dropout
from dynrank.packed_batch import pack

torch.manual_seed(0)
heads, dh = 2, 16
H = heads * dh
rows = [[0] + [5] * n + [2] for n in (3, 9, 1, 6)]  # two runs of two sequences
b = pack(rows, 2, pad_id=1, position_offset=2, multiple=8)
T, N, width = b["input_ids"].numel(), 4, b["valid"].shape[1]
stream = dropout.DropoutStream([1, 7], "cpu")
stream.set_step(3)
stream.set_rows(torch.arange(N) % 2, b["token_keys"])
module = types.SimpleNamespace(num_attention_heads=heads, attention_head_size=dh, training=True,
                               dropout=dropout.KeyedDropout(0.1, 5, stream))
real = b["input_ids"] != 1


def seqs(x):
    return x.index_select(0, b["gather"]).view(N, width, heads, dh).transpose(1, 2)


for p in (0.0, 0.3):
    q, k, v = (torch.randn(T, H, requires_grad=True) for _ in range(3))
    out = attention.packed_attention(module, q, k, v, b["seq_start"], b["seq_len"], width, p, dh ** -0.5)
    ref = attention.attend(module, seqs(q), seqs(k), seqs(v), b["valid"][:, None, None, :], p, dh ** -0.5)
    ref = ref.transpose(1, 2).reshape(N * width, H).index_select(0, b["scatter"])
    assert torch.allclose(out[real], ref[real], atol=1e-5), p
    g = torch.randn(T, H)
    got = torch.autograd.grad((out * g)[real].sum(), (q, k, v))
    want = torch.autograd.grad((ref * g)[real].sum(), (q, k, v))
    for a, w in zip(got, want):
        assert torch.allclose(a[real], w[real], atol=1e-5), p
        assert not a[~real].any()
print("ok")

# q, k and v as the thirds of one projection (qkv.project): the one-tile kernels read them in place (rows 3 H
# apart) and write their gradient as one tensor
for p in (0.0, 0.3):
    qkv = torch.randn(T, 3 * H, requires_grad=True)
    q, k, v = qkv.split(H, -1)
    out = attention.packed_attention(module, q, k, v, b["seq_start"], b["seq_len"], width, p, dh ** -0.5, qkv=qkv)
    ref = attention.attend(module, seqs(q), seqs(k), seqs(v), b["valid"][:, None, None, :], p, dh ** -0.5)
    ref = ref.transpose(1, 2).reshape(N * width, H).index_select(0, b["scatter"])
    assert torch.allclose(out[real], ref[real], atol=1e-5), p
    g = torch.randn(T, H)
    got, = torch.autograd.grad((out * g)[real].sum(), qkv)
    want, = torch.autograd.grad((ref * g)[real].sum(), qkv)
    assert torch.allclose(got[real], want[real], atol=1e-5), p
    assert not got[~real].any()
print("joint ok")

# the self-checks each kernel passes before its first use (fp32: the interpreter's bf16 is not the GPU's)
assert attention._kernel_agrees(torch.float32, torch.device("cpu"), 16)
assert dropout._kernel_agrees(torch.float32, torch.device("cpu"))
print("self-checks ok")

# the tiled kernels (tiled_attention.flash) against the reference: padded with a padding mask (one sequence masked
# everywhere: it attends uniformly, and passes no gradient to its scores), causal, queries and keys of different
# lengths over several tiles, with the keyed dropout and without
from dynrank import tiled_attention  # noqa: E402

seeds, step = torch.tensor([1, 7]), torch.tensor(3)


def tiled_checks():
    global b, T, N, width  # the packed rows below: ``seqs`` gathers from them
    for causal in (False, True):
        Lk = 66 if causal else 70
        q = torch.randn(4, 2, 66, 16, requires_grad=True)
        k, v = (torch.randn(4, 2, Lk, 16, requires_grad=True) for _ in range(2))
        mask = None
        if not causal:
            mask = torch.ones(4, 1, 1, Lk, dtype=torch.bool)
            mask[1, ..., 50:] = False
            mask[2] = False
        for p in (0.0, 0.3):
            a = dict(scale=0.25, seeds=seeds, step=step, site=2, p=p, positions=1024, mask=mask, causal=causal)
            out, ref = tiled_attention.flash(q, k, v, **a), tiled_attention.reference(q, k, v, **a)
            assert out is not None and torch.allclose(out, ref, atol=1e-5), (causal, p)
            g = torch.randn_like(out)
            for x, y in zip(torch.autograd.grad((out * g).sum(), (q, k, v)),
                            torch.autograd.grad((ref * g).sum(), (q, k, v))):
                assert torch.allclose(x, y, atol=1e-5), (causal, p)

    # packed rows longer than one tile (SQuAD's windows): the tiled kernels on the rows = attend on the padded view
    rows = [[0] + [5] * n + [2] for n in (3, 150, 1, 133)]
    b = pack(rows, 2, pad_id=1, position_offset=2, multiple=8)
    T, N, width = b["input_ids"].numel(), 4, b["valid"].shape[1]
    assert width > 128
    stream.set_rows(torch.arange(N) % 2, b["token_keys"])
    real = b["input_ids"] != 1
    for p in (0.0, 0.3):
        q, k, v = (torch.randn(1, T, H, requires_grad=True) for _ in range(3))
        out = attention.packed_attention(module, q, k, v, b["seq_start"], b["seq_len"], width, p, dh ** -0.5)[0]
        ref = attention.attend(module, seqs(q[0]), seqs(k[0]), seqs(v[0]), b["valid"][:, None, None, :], p, dh ** -0.5)
        ref = ref.transpose(1, 2).reshape(N * width, H).index_select(0, b["scatter"])
        assert torch.allclose(out[real], ref[real], atol=1e-5), p
        g = torch.randn(T, H)
        for a, w in zip(torch.autograd.grad((out * g)[real].sum(), (q, k, v)),
                        torch.autograd.grad((ref * g)[real].sum(), (q, k, v))):
            assert torch.allclose(a[0][real], w[0][real], atol=1e-5), p
            assert not a[0][~real].any()


tiles = dict(tiled_attention.TILES)
# the default tiles, then tiles of other heights and widths (key blocks wider than query blocks and narrower: the
# causal key-gradient loop starts at the first query block that sees its keys), several tiles a sequence
for m, n in ((64, 64), (16, 32), (32, 16)):
    tiled_attention.TILES.update(BLOCK_M=m, BLOCK_N=n)
    tiled_checks()
tiled_attention.TILES.update(tiles)
# the backward on tiles of its own (BWD_TILES): its grids and loops from them, the forward's saved rows read as they are
tiled_attention.BWD_TILES = dict(tiles, BLOCK_M=16, BLOCK_N=32)
tiled_checks()
tiled_attention.BWD_TILES = None
assert tiled_attention._kernel_agrees(torch.float32, torch.device("cpu"), 16)
print("tiled ok")

# BART's functional dropout through the tiled kernels: a stacked run equals the run alone
import sys  # noqa: E402

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from test_xsum import check_bart_dropout_streams  # noqa: E402

check_bart_dropout_streams("cpu", atol=1e-5)
assert "_triton_flash" not in dropout._FAILED
print("bart ok")

# BART's packed step with the tiled kernels on its rows (encoder self-, causal decoder self- and cross-attention,
# each summary's queries against its own source's rows) = the padded step, every dropout on
import tempfile  # noqa: E402

import pytest  # noqa: E402
from test_xsum import test_packed_bart_equals_padded_dropout_on  # noqa: E402

kinds = set()
_apply = tiled_attention._Flash.apply


def _counted(*a):
    packed, kv, causal = a[6][5], a[6][6], a[6][4]
    if packed is not None:
        kinds.add("cross" if kv is not None else "causal" if causal else "self")
    return _apply(*a)


tiled_attention._Flash.apply = _counted
with tempfile.TemporaryDirectory() as d, pytest.MonkeyPatch.context() as mp:
    test_packed_bart_equals_padded_dropout_on("dora", __import__("pathlib").Path(d), mp)
tiled_attention._Flash.apply = _apply
assert kinds == {"self", "causal", "cross"}, kinds
assert "_triton_flash" not in dropout._FAILED
print("packed bart ok")
