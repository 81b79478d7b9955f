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


@pytest.mark.parametrize("name", METHODS)
def test_graphed_step_matches_eager(name):
    try:
        eager = _trajectory(name, False)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"{name}: {e}")
    graphed = _trajectory(name, True)
    assert torch.isfinite(graphed).all()
    assert torch.allclose(eager, graphed, rtol=1e-4, atol=1e-5), (eager, graphed)
