"""GPU-only checks (skipped without CUDA; run them on a GPU machine: pytest tests/test_gpu.py).

The CUDA-graph step must do the same math as the eager step: with dropout off, the loss trajectories of
eager and graphed training agree to float rounding, for every method that declares itself graph-safe.
"""
import pytest
import torch

from conftest import compose

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

METHODS = ["full", "bitfit", "lora", "houlsby", "pfeiffer", "dora_wd", "dylora", "adalora", "dora"]


def _trajectory(method_name, graphs: bool, steps=24, bf16=False):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from dynrank import methods
    from dynrank.step import GraphedStep, make_optimizer, prepare_model, train_step

    device = torch.device("cuda")
    over = [f"method={method_name}", "task=cola"]
    cfg = compose(over)
    if "dropout" in cfg.method:
        cfg.method.dropout = 0.0
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(RobertaConfig(num_labels=2, hidden_size=128, num_hidden_layers=2,
                                                           num_attention_heads=2, intermediate_size=256,
                                                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                                           vocab_size=1000))
    method = methods.build(cfg, "roberta")
    model = prepare_model(method.wrap(model), method, device, bf16, False)
    method.setup(steps)
    opt, sched = make_optimizer(cfg.train, method, steps, device, graphs)
    g = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(3, 1000, (8, 16), generator=g).to(device),
                "attention_mask": torch.ones(8, 16, dtype=torch.long, device=device),
                "labels": torch.randint(0, 2, (8,), generator=g).to(device)} for _ in range(3)]
    stepper = GraphedStep(model, method, opt, sched, 1.0, bf16, device) if graphs else None
    losses = []
    for s in range(steps):
        b = batches[s % 3]
        if graphs:
            loss, _ = stepper(b, s)
        else:
            method.prepare_step(s)
            loss, _ = train_step(model, method, opt, sched, b, s, 1.0, bf16, device)
        losses.append(float(loss))
    return torch.tensor(losses)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", METHODS)
def test_graphed_step_matches_eager(name, bf16):
    """fp32: to float rounding; bf16 (the fast path: bf16 backbone and layer norms, padded ranks): the same
    kernels run eagerly and replayed, so the losses agree to bf16 rounding."""
    try:
        eager = _trajectory(name, False, bf16=bf16)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"{name}: {e}")
    graphed = _trajectory(name, True, bf16=bf16)
    assert torch.isfinite(graphed).all()
    tol = {"rtol": 1e-2, "atol": 1e-2} if bf16 else {"rtol": 1e-4, "atol": 1e-5}
    assert torch.allclose(eager, graphed, **tol), (eager, graphed)


def test_bf16_layer_norm_keeps_the_residual_stream_bf16():
    """CUDA autocast returns layer_norm in fp32 (what made the residual stream fp32); BF16LayerNorm returns bf16."""
    from torch import nn

    from dynrank.precision import BF16LayerNorm

    ln = nn.LayerNorm(64).cuda()
    x = torch.randn(8, 64, device="cuda", dtype=torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        plain = ln(x)
        ln.__class__ = BF16LayerNorm
        ours = ln(x)
    assert plain.dtype == torch.float32 and ours.dtype == torch.bfloat16
    assert torch.allclose(ours.float(), plain, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("r", [2, 12])
def test_rank_padding_on_gpu(r):
    """The padded GEMMs (align 8, what runs on a GPU) give the unpadded result and gradients (fp32)."""
    from dynrank.methods.lora import add_low_rank

    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator(device="cuda").manual_seed(r)
    h, x = (torch.randn(64, 96, device="cuda", generator=g), torch.randn(64, 80, device="cuda", generator=g))
    A0, B0 = torch.randn(r, 80, device="cuda", generator=g), torch.randn(96, r, device="cuda", generator=g)
    res = []
    for align in (1, 8):
        A, B = A0.clone().requires_grad_(), B0.clone().requires_grad_()
        out = add_low_rank(h, x, A, B, 0.25, align=align)
        out.pow(2).sum().backward()
        res.append((out.detach(), A.grad, B.grad))
    for plain, padded in zip(*res):
        assert torch.allclose(plain, padded, rtol=1e-4, atol=1e-4)
