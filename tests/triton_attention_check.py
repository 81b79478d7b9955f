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

# the self-checks each kernel passes before its first use (fp32: the interpreter's bf16 is not the GPU's)
assert attention._kernel_agrees(torch.float32, torch.device("cpu"), 16)
assert dropout._kernel_agrees(torch.float32, torch.device("cpu"))
print("self-checks ok")
