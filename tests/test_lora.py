"""LoRA: exact parameter counts on RoBERTa-base and equality with HF PEFT's LoRA."""
import pytest
import torch
from omegaconf import OmegaConf
from transformers import RobertaConfig, RobertaForSequenceClassification

from conftest import method_config
from dynrank.methods import build


def _lora(r):
    cfg = OmegaConf.create({"method": method_config("lora", r, alpha=8, dropout=0.1, kaiming_a=5 ** 0.5),
                            "budget": {"name": f"r{r}", "r": r}})
    return build(cfg, "roberta")


@pytest.mark.parametrize("r, expected", [(8, 1_327_104), (2, 331_776)])
def test_lora_counts_on_roberta_base(r, expected):
    with torch.device("meta"):  # the real architecture, no weights allocated
        model = RobertaForSequenceClassification(RobertaConfig(num_labels=2))
    m = _lora(r)
    m.wrap(model)
    counts = m.param_counts()
    print(f"lora r={r}: adapter {counts['adapter']:,} head {counts['head']:,}")
    assert counts["adapter"] == expected
    assert counts["head"] == 768 * 768 + 768 + 768 * 2 + 2


def test_lora_equals_peft():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    base = RobertaForSequenceClassification(cfg)
    ours = RobertaForSequenceClassification(cfg)
    ours.load_state_dict(base.state_dict())
    m = _lora(4)
    m.wrap(ours)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="SEQ_CLS",
                                                 target_modules=["query", "key", "value", "dense"]))
    # PEFT's "dense" also hits the pooler and the classifier; ours targets exactly the six matrix types.
    with torch.no_grad():
        for t, layer in m.layers:
            pl = peft_model.base_model.model.get_submodule(t.name)
            layer.lora_A.copy_(torch.randn_like(layer.lora_A))
            layer.lora_B.copy_(torch.randn_like(layer.lora_B))
            pl.lora_A["default"].weight.copy_(layer.lora_A[0])  # run 0 of our (runs, r, d_in) tensors
            pl.lora_B["default"].weight.copy_(layer.lora_B[0])
        for name, mod in peft_model.base_model.model.named_modules():
            if hasattr(mod, "lora_B") and not any(t.name == name for t, _ in m.layers):
                mod.lora_B["default"].weight.zero_()  # pooler / head: not adapted by us
    ids = torch.randint(3, 100, (3, 11))
    ours.eval(), peft_model.eval()
    assert torch.allclose(ours(input_ids=ids).logits, peft_model(input_ids=ids).logits, atol=1e-5)


@pytest.mark.parametrize("r", [2, 8, 12])
def test_rank_padding_is_the_same_function(r):
    """add_low_rank pads the rank to a multiple of 8 on a GPU; forced here on CPU: same output, same gradients,
    for a rank that needs padding (2, 12) and one that does not (8)."""
    from dynrank.methods.lora import add_low_rank

    g = torch.Generator().manual_seed(r)
    h, x = torch.randn(3, 5, 24, generator=g), torch.randn(3, 5, 16, generator=g)
    A0, B0 = torch.randn(1, r, 16, generator=g), torch.randn(1, 24, r, generator=g)
    outs = []
    for align in (1, 8):
        A, B = A0.clone().requires_grad_(), B0.clone().requires_grad_()
        xx = x.clone().requires_grad_()
        out = add_low_rank(h, xx, A, B, 0.5, align=align)
        out.pow(2).sum().backward()
        outs.append((out.detach(), A.grad, B.grad, xx.grad))
    ref = h + 0.5 * (x @ A0[0].t()) @ B0[0].t()
    assert torch.allclose(outs[0][0], ref, atol=1e-5)
    for plain, padded in zip(*outs):
        assert plain.shape == padded.shape
        assert torch.allclose(plain, padded, rtol=1e-5, atol=1e-5)


def test_rank_padding_casts_before_padding_under_autocast():
    """Under autocast the padded A and B are in the autocast dtype, and the result is what autocast gives unpadded."""
    from dynrank.methods.lora import add_low_rank

    g = torch.Generator().manual_seed(0)
    h, x = torch.randn(4, 32, generator=g), torch.randn(4, 16, generator=g)
    A, B = torch.randn(1, 12, 16, generator=g), torch.randn(1, 32, 12, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        padded = add_low_rank(h, x, A, B, 2.0, align=8)
        plain = add_low_rank(h, x, A, B, 2.0, align=1)
    assert padded.dtype == plain.dtype == torch.bfloat16
    assert torch.allclose(padded.float(), plain.float(), rtol=2e-2, atol=2e-2)


def test_runs_each_meet_their_own_factors():
    """Stacked runs: rows [k*b, (k+1)*b) of h and x are run k's, and get run k's update only."""
    from dynrank.methods.lora import add_low_rank

    g = torch.Generator().manual_seed(0)
    R, b = 3, 4
    h, x = torch.randn(R * b, 5, 24, generator=g), torch.randn(R * b, 5, 16, generator=g)
    A, B = torch.randn(R, 6, 16, generator=g), torch.randn(R, 24, 6, generator=g)
    out = add_low_rank(h, x, A, B, 0.5)
    for k in range(R):
        rows = slice(k * b, (k + 1) * b)
        assert torch.allclose(out[rows], add_low_rank(h[rows], x[rows], A[k:k + 1], B[k:k + 1], 0.5), atol=1e-6)
