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
