"""Weight-Decomposed LoRA (dora_wd) vs HF PEFT's LoraConfig(use_dora=True): logits, gradients, export."""
import copy

import pytest
import torch
from omegaconf import OmegaConf
from transformers import RobertaConfig, RobertaForSequenceClassification

from dynrank.methods import build
from dynrank.methods.dora_wd import DoRAWDLinear


def _dora_wd(r=4, dropout=0.0):
    cfg = OmegaConf.create({"method": {"name": "dora_wd", "alpha": 8, "dropout": dropout},
                            "budget": {"name": f"r{r}", "r": r}})
    return build(cfg, "roberta")


def _pair(dropout):
    """Our dora_wd model and PEFT's use_dora model with the same backbone, A, B and magnitudes."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2)
    base = RobertaForSequenceClassification(cfg)
    pristine = copy.deepcopy(base)
    ours = copy.deepcopy(base)
    m = _dora_wd(4, dropout)
    m.wrap(ours)
    names = [t.name for t, _ in m.layers]
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, task_type="SEQ_CLS",
                                                 target_modules=names, use_dora=True))
    with torch.no_grad():
        for t, layer in m.layers:
            pl = peft_model.base_model.model.get_submodule(t.name)
            # PEFT initialised its magnitude the same way: ||W0||_c per output row
            assert torch.allclose(pl.lora_magnitude_vector["default"].weight, layer.magnitude[0], atol=1e-6)
            layer.lora_A.copy_(torch.randn_like(layer.lora_A) * 0.3)
            layer.lora_B.copy_(torch.randn_like(layer.lora_B) * 0.3)
            layer.magnitude.mul_(1 + 0.2 * torch.rand_like(layer.magnitude))
            pl.lora_A["default"].weight.copy_(layer.lora_A[0])  # run 0 of our (runs, ...) tensors
            pl.lora_B["default"].weight.copy_(layer.lora_B[0])
            pl.lora_magnitude_vector["default"].weight.copy_(layer.magnitude[0])
    return m, ours, peft_model, pristine


def _grads(m, peft_model):
    out = []
    for t, layer in m.layers:
        pl = peft_model.base_model.model.get_submodule(t.name)
        out.append((layer.lora_A.grad[0], pl.lora_A["default"].weight.grad))
        out.append((layer.lora_B.grad[0], pl.lora_B["default"].weight.grad))
        out.append((layer.magnitude.grad[0], pl.lora_magnitude_vector["default"].weight.grad))
    return out


def _close(a, b):
    return torch.allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_equals_peft_logits_and_gradients(dropout):
    m, ours, peft_model, _ = _pair(dropout)
    ids = torch.randint(3, 100, (4, 10))
    labels = torch.tensor([0, 1, 1, 0])
    # eval: deterministic
    ours.eval(), peft_model.eval()
    with torch.no_grad():
        assert _close(ours(input_ids=ids).logits, peft_model(input_ids=ids).logits)
    # train mode: the same RNG stream (model dropout + adapter dropout in the same order)
    ours.train(), peft_model.train()
    torch.manual_seed(123)
    lo = ours(input_ids=ids, labels=labels)
    torch.manual_seed(123)
    lp = peft_model(input_ids=ids, labels=labels)
    assert _close(lo.logits, lp.logits)
    lo.loss.backward()
    lp.loss.backward()
    grads = _grads(m, peft_model)
    assert all(a is not None and b is not None for a, b in grads)
    assert all(a.abs().sum() > 0 for a, _ in grads)
    for a, b in grads:
        assert _close(a, b), (a - b).abs().max()


def test_magnitude_init_norm_detached_and_merge():
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 5)
    layer = DoRAWDLinear(lin, runs=1, r=2, alpha=8, dropout=0.0)
    layer.reset_run(0, torch.Generator().manual_seed(0))
    assert torch.allclose(layer.magnitude[0], lin.weight.norm(dim=1))  # ||W0||_c, one per output row
    x = torch.randn(3, 6)
    assert torch.allclose(layer(x), lin(x), atol=1e-6)  # W' = W0 at init (B = 0)
    with torch.no_grad():
        layer.lora_B.normal_()
    layer(x).sum().backward()
    # the norm is a constant: d/dm of m * V / ||V||_c is V x / ||V||_c, nothing through ||V||_c
    V = lin.weight + layer.scaling * layer.lora_B[0] @ layer.lora_A[0]
    expect = ((x @ V.T) / V.norm(dim=1)).sum(0)
    assert torch.allclose(layer.magnitude.grad[0], expect.detach(), atol=1e-5)
    layer.eval()
    with torch.no_grad():
        y = layer(x)
        merged = copy.deepcopy(layer).merge()
        assert torch.allclose(merged(x), y, atol=1e-5)


def test_export_reloads_in_peft(tmp_path):
    from peft import PeftModel

    m, ours, _, pristine = _pair(0.1)
    with torch.no_grad():
        ours.classifier.out_proj.weight.add_(0.5)  # a trained head travels with the adapter
    out = m.export(tmp_path / "adapter", base_name="tiny", task_type="seq_cls")
    from safetensors.torch import load_file

    keys = load_file(str(out / "adapter_model.safetensors"))
    assert any(k.endswith(".lora_magnitude_vector") for k in keys)  # PEFT 0.21's key name
    loaded = PeftModel.from_pretrained(pristine, str(out)).eval()
    ours.eval()
    ids = torch.randint(3, 100, (4, 10))
    with torch.no_grad():
        assert _close(ours(input_ids=ids).logits, loaded(input_ids=ids).logits)
