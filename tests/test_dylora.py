"""DyLoRA: truncated forward with alpha / b, frozen-mode gradients, the per-step rank schedule
(deterministic, resumable), evaluation at several ranks, and a toy task that works at rank 1 and r_max."""
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F
from transformers import RobertaConfig, RobertaForSequenceClassification

from dynrank.errors import ConfigError
from dynrank.methods import build
from dynrank.methods.dylora import DyLoRALinear, RankState, rank_schedule


def _layer(r_max=4, alpha=8.0, frozen=True, d_in=6, d_out=5):
    torch.manual_seed(0)
    st = RankState(1, r_max, alpha, frozen=frozen)  # one run
    layer = DyLoRALinear(torch.nn.Linear(d_in, d_out), st, dropout=0.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    return st, layer


def _method(r=8, **kw):
    m = {"name": "dylora", "alpha": 8, "dropout": 0.1, "r_min": 1, "r_max": r, "mode": "frozen",
         "eval_ranks": [1, 2, 4, 8], "export_rank": None, "seed": 3, **kw}
    return build(OmegaConf.create({"method": m, "budget": {"name": f"r{r}", "r": r}}), "roberta")


@pytest.mark.parametrize("b", [1, 3, 4])
def test_truncated_forward_scaling(b):
    st, layer = _layer()
    x = torch.randn(7, 6)
    A, B = layer.lora_A[0], layer.lora_B[0]
    expect = layer.base(x) + (8.0 / b) * x @ A[:b].T @ B[:, :b].T
    layer.eval()
    st.set_eval(b)
    assert torch.allclose(layer(x), expect, atol=1e-5)
    layer.train()
    st.set_train(b)
    assert torch.allclose(layer(x), expect, atol=1e-5)  # frozen mode changes gradients, not values


@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_mode_gradients(frozen):
    st, layer = _layer(frozen=frozen)
    st.set_train(3)
    layer(torch.randn(7, 6)).pow(2).sum().backward()
    ga = layer.lora_A.grad[0].abs().sum(1)
    gb = layer.lora_B.grad[0].abs().sum(0)
    assert ga[2] > 0 and gb[2] > 0
    assert ga[3] == 0 and gb[3] == 0  # beyond b: not used at all
    if frozen:  # only the b-th row of A / column of B learns
        assert ga[:2].sum() == 0 and gb[:2].sum() == 0
    else:
        assert (ga[:2] > 0).all() and (gb[:2] > 0).all()


def test_schedule_deterministic_uniform_and_resumable():
    s = rank_schedule(3, 4000, 1, 8)
    assert s == rank_schedule(3, 4000, 1, 8) and s != rank_schedule(4, 4000, 1, 8)
    counts = [s.count(b) for b in range(1, 9)]
    assert min(counts) > 400 and max(counts) < 600  # uniform over [1, 8]: 500 each
    assert set(rank_schedule(1, 500, 2, 4)) == {2, 3, 4}

    m = _method(r=8)
    m.wrap(_tiny_roberta())
    m.setup(50)
    assert m.schedule == [rank_schedule(3, 50, 1, 8)]  # one run, its ranks drawn from method.seed
    assert torch.equal(m.state.gate[0], m.state.gates[m.schedule[0][0]])
    for step in range(1, 21):
        m.after_step(step)
        assert torch.equal(m.state.gate[0], m.state.gates[m.schedule[0][step]])
        assert torch.equal(m.state.grad_mask[0], m.state.masks[m.schedule[0][step]])
    saved = m.state_dict()
    m2 = _method(r=8)
    m2.wrap(_tiny_roberta())
    m2.setup(50)
    m2.load_state_dict(saved)
    assert m2.step == m.step == 20 and m2.schedule == m.schedule
    assert torch.equal(m2.state.gate, m.state.gate)
    assert sum(m.summary()["sampled_ranks"].values()) == 20


def _tiny_roberta():
    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2)
    return RobertaForSequenceClassification(cfg)


def test_eval_uses_r_max_and_final_evaluation_ranks():
    model = _tiny_roberta()
    m = _method(r=8)
    m.wrap(model)
    m.setup(10)
    with torch.no_grad():
        for _, layer in m.layers:
            layer.lora_B.normal_()
    ids = torch.randint(3, 100, (2, 9))
    model.eval()
    with torch.no_grad():
        full = model(input_ids=ids).logits
        m.state.set_train(1)  # the training rank does not leak into evaluation
        assert torch.equal(model(input_ids=ids).logits, full)
    seen = []

    def evaluate():  # one dict per run
        with torch.no_grad():
            seen.append(model(input_ids=ids).logits)
        return [{"accuracy": float(len(seen))}]

    ev, = m.final_evaluation(evaluate)
    assert list(ev) == ["rank_1", "rank_2", "rank_4", "rank_8"]
    assert torch.equal(seen[-1], full) and not torch.allclose(seen[0], full)
    assert m.state.eval_b == 8
    small = _method(r=2)
    small.wrap(_tiny_roberta())
    assert small.eval_ranks() == [1, 2]
    with pytest.raises(ConfigError, match="r_min"):
        _method(r=2, r_min=3)


def test_export_truncated_reloads_in_peft(tmp_path):
    import copy

    from peft import PeftModel

    model = _tiny_roberta()
    pristine = copy.deepcopy(model)
    m = _method(r=8, export_rank=2)
    m.wrap(model)
    with torch.no_grad():
        for _, layer in m.layers:
            layer.lora_B.normal_()
    out = m.export(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(pristine, str(out)).eval()
    model.eval()
    m.state.set_eval(2)
    ids = torch.randint(3, 100, (3, 9))
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, loaded(input_ids=ids).logits, atol=1e-5)


def test_toy_task_works_at_every_rank():
    """A frozen zero linear map + a DyLoRA adapter (r_max 4) learns a linearly separable task; the
    adapter truncated to rank 1 still solves it (the DyLoRA property), as does r_max."""
    torch.manual_seed(0)
    d, n, r_max, steps = 16, 512, 4, 150
    w = torch.randn(d)
    x = torch.randn(n, d)
    y = (x @ w > 0).long()
    base = torch.nn.Linear(d, 2)
    torch.nn.init.zeros_(base.weight), torch.nn.init.zeros_(base.bias)
    base.requires_grad_(False)
    st = RankState(1, r_max, alpha=4.0, frozen=True)
    layer = DyLoRALinear(base, st, dropout=0.0)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.02, weight_decay=0.0)
    sched = rank_schedule(0, steps, 1, r_max)
    layer.train()
    for step in range(steps):
        st.set_train(sched[step])
        idx = torch.randint(0, n, (64,))
        F.cross_entropy(layer(x[idx]), y[idx]).backward()
        opt.step()
        opt.zero_grad()
    layer.eval()
    for b in (1, r_max):
        st.set_eval(b)
        with torch.no_grad():
            logits = layer(x)
        loss = F.cross_entropy(logits, y).item()
        acc = (logits.argmax(-1) == y).float().mean().item()
        print(f"rank {b}: loss {loss:.3f} accuracy {acc:.3f}")
        assert math.isfinite(loss) and acc > 0.9
