"""LoRA: exact parameter counts on RoBERTa-base and equality with HF PEFT's LoRA."""
import pytest
import torch
from omegaconf import OmegaConf
from transformers import RobertaConfig, RobertaForSequenceClassification

from dynrank.methods import build


def _lora(r):
    cfg = OmegaConf.create({"method": {"name": "lora", "alpha": 8, "dropout": 0.1}, "budget": {"name": f"r{r}", "r": r}})
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
            pl.lora_A["default"].weight.copy_(layer.lora_A)
            pl.lora_B["default"].weight.copy_(layer.lora_B)
        for name, mod in peft_model.base_model.model.named_modules():
            if hasattr(mod, "lora_B") and not any(t.name == name for t, _ in m.layers):
                mod.lora_B["default"].weight.zero_()  # pooler / head: not adapted by us
    ids = torch.randint(3, 100, (3, 11))
    ours.eval(), peft_model.eval()
    assert torch.allclose(ours(input_ids=ids).logits, peft_model(input_ids=ids).logits, atol=1e-5)
