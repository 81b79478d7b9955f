"""The fast path's precision (dynrank/precision.py): bf16 layer-norm outputs, frozen weights in bf16."""
import torch
from torch import nn
from torch.nn import functional as F

from dynrank.precision import BF16LayerNorm, bf16_backbone


def test_bf16_layer_norm_output_is_bf16_and_the_fp32_norm_rounded():
    g = torch.Generator().manual_seed(0)
    ln = nn.LayerNorm(64)
    with torch.no_grad():
        ln.weight.normal_(generator=g)
        ln.bias.normal_(generator=g)
    x = torch.randn(4, 7, 64, generator=g).to(torch.bfloat16)
    keys = set(ln.state_dict())
    ln.__class__ = BF16LayerNorm  # (CUDA autocast's own rule returns fp32: tests/test_gpu.py)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ln(x)
    assert set(ln.state_dict()) == keys
    assert y.dtype == torch.bfloat16
    ref = F.layer_norm(x.float(), (64,), ln.weight.to(torch.bfloat16).float(), ln.bias.to(torch.bfloat16).float(),
                       ln.eps)
    assert torch.allclose(y.float(), ref, rtol=2e-2, atol=2e-2)
    assert (y.float() - ref).abs().mean() < 5e-3


def test_bf16_backbone_keeps_trainable_weights_fp32_and_their_gradients():
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 2))
    model[0].weight.requires_grad_(False)
    model[0].bias.requires_grad_(False)
    model[1].bias.requires_grad_(False)  # bitfit-like: the norm's weight trains, its bias does not
    bf16_backbone(model)
    assert type(model[1]) is BF16LayerNorm
    assert model[0].weight.dtype == model[1].bias.dtype == torch.bfloat16
    assert model[1].weight.dtype == model[2].weight.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(torch.randn(5, 8)).float().pow(2).mean()
    loss.backward()
    assert model[1].weight.grad is not None and model[1].weight.grad.dtype == torch.float32
    assert torch.isfinite(model[1].weight.grad).all() and model[1].weight.grad.abs().sum() > 0
    assert model[0].weight.grad is None


def test_bf16_backbone_gives_stacked_full_fine_tunings_layer_norms_a_bf16_output():
    """``RunLayerNorm`` (one scale and shift per run) under the fast path: bf16 out, as ``BF16LayerNorm``'s, each
    run's rows normalised in fp32 with its own affine and rounded once; its fp32 weights keep fp32 gradients."""
    from dynrank.methods.layers import RunLayerNorm

    g = torch.Generator().manual_seed(0)
    norm = RunLayerNorm(nn.LayerNorm(64), 2)
    with torch.no_grad():
        norm.weight.normal_(generator=g)
        norm.bias.normal_(generator=g)
    x = torch.randn(2 * 3, 7, 64, generator=g).to(torch.bfloat16)  # 3 sequences a run, run-major
    bf16_backbone(nn.Sequential(norm))
    assert norm.bf16_output
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(x)
    assert y.dtype == torch.bfloat16
    for k in range(2):
        rows = slice(3 * k, 3 * k + 3)
        ref = F.layer_norm(x[rows].float(), (64,), norm.weight[k].detach(), norm.bias[k].detach(), norm.eps)
        assert torch.equal(y[rows], ref.to(torch.bfloat16)), k  # one rounding, of the fp32 result
    y.float().sum().backward()
    assert norm.weight.grad.dtype == torch.float32 and norm.weight.grad.abs().sum() > 0
