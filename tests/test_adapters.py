"""Houlsby / Pfeiffer bottleneck adapters: identity at init, placement, what trains, config errors."""
import copy

import pytest
import torch
from omegaconf import OmegaConf
from transformers import BartConfig, BartForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

from conftest import compose, method_config
from dynrank.config import validate
from dynrank.errors import ConfigError
from dynrank.methods import build
from dynrank.methods.adapters import ACTIVATIONS, AdapterLinear, SublayerAdapter


def _method(name, r=2, **kw):
    per_rank = {"houlsby": 4, "pfeiffer": 8}[name]
    m = method_config(name, r, **{"bottleneck_per_rank": per_rank, "bottleneck": None, "activation": "relu", **kw})
    return build(OmegaConf.create({"method": m, "budget": {"name": f"r{r}", "r": r}}), "roberta")


def _tiny_roberta():
    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2)
    return RobertaForSequenceClassification(cfg)


def _wrapped(model):
    return sorted(n for n, mod in model.named_modules() if isinstance(mod, (AdapterLinear, SublayerAdapter)))


@pytest.mark.parametrize("name", ["houlsby", "pfeiffer"])
def test_identity_at_init_and_trainable(name):
    model = _tiny_roberta()
    ref = copy.deepcopy(model).eval()
    m = _method(name)
    m.wrap(model)
    model.eval()
    ids = torch.randint(3, 100, (3, 9))
    with torch.no_grad():  # (the per-run head multiplies with bmm: equal to float rounding)
        assert torch.allclose(model(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=0, atol=1e-6)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".adapter." in n or n.startswith("classifier.") for n in trainable)
    assert any(".adapter.up." in n for n in trainable) and any(".adapter.down." in n for n in trainable)
    # one backward: the up-projections get a gradient, so the adapter leaves the identity after a step
    model.train()
    model(input_ids=ids, labels=torch.tensor([0, 1, 1])).loss.backward()
    ups = [mod.adapter.up.weight.grad for _, mod in m.layers]
    assert all(g is not None and g.abs().sum() > 0 for g in ups)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_placement_roberta():
    h, p = _tiny_roberta(), _tiny_roberta()
    _method("houlsby").wrap(h)
    _method("pfeiffer").wrap(p)
    layers = ("roberta.encoder.layer.0", "roberta.encoder.layer.1")
    # the sources' placement: the whole output block (dense, dropout, LayerNorm) with the adapter after the dropout
    assert _wrapped(h) == sorted([f"{l}.attention.output" for l in layers] + [f"{l}.output" for l in layers])
    assert _wrapped(p) == sorted(f"{l}.output" for l in layers)
    b = _tiny_roberta()
    _method("houlsby", placement="before_dropout").wrap(b)  # dynrank's first: a(dense(x)), before the dropout
    assert _wrapped(b) == sorted([f"{l}.attention.output.dense" for l in layers] + [f"{l}.output.dense" for l in layers])
    out = b.roberta.encoder.layer[0].attention.output
    assert isinstance(out.dense, AdapterLinear) and isinstance(out.LayerNorm, torch.nn.LayerNorm)
    with pytest.raises(ConfigError, match=r"^method.placement must be source or before_dropout \(got 'inside'\)$"):
        validate(compose(["method=houlsby", "method.placement=inside"]))  # before training: config.SCHEMA


@pytest.mark.parametrize("name", ["houlsby", "pfeiffer"])
def test_source_placement_computes_the_sources_formula(name):
    """Houlsby: LN(a(h) + x); Pfeiffer: LN(f(LN(h + x)) + h + x), with h = dropout(dense(x')) (AdapterHub's
    DoubleSeqBn / SeqBn), computed by hand on one block in train mode with the same dropout mask."""
    model = _tiny_roberta()
    m = _method(name)
    m.wrap(model)
    block = model.roberta.encoder.layer[0].output
    with torch.no_grad():
        for p in block.adapter.parameters():
            p.normal_(0, 0.3)  # away from the identity
    block.train()
    x_ffn, x = torch.randn(2, 5, 64), torch.randn(2, 5, 32)
    torch.manual_seed(3)
    got = block(x_ffn, x)
    torch.manual_seed(3)
    h = block.dropout(block.dense(x_ffn))
    f = block.adapter.delta
    want = (block.LayerNorm(f(block.LayerNorm(h + x)) + h + x) if name == "pfeiffer"
            else block.LayerNorm(h + f(h) + x))
    assert torch.allclose(got, want, atol=1e-6)


def test_bottleneck_sizes_and_overrides():
    m = _method("houlsby", r=8)
    m.wrap(_tiny_roberta())
    assert m.m == 32 and all(mod.adapter.down.out_features == 32 for _, mod in m.layers)
    m = _method("pfeiffer", r=2)
    m.wrap(_tiny_roberta())
    assert m.m == 16
    m = _method("pfeiffer", r=8, bottleneck=5, activation="gelu")
    m.wrap(_tiny_roberta())
    assert m.m == 5 and isinstance(m.layers[0][1].adapter.act, torch.nn.GELU)
    assert m.summary() == {"bottleneck": 5, "positions": ["ffn_down"], "n_adapters": 2, "activation": "gelu",
                           "placement": "source"}
    with pytest.raises(ConfigError, match=r"^method.activation must be relu, gelu or silu \(got 'tanh'\)$"):
        validate(compose(["method=houlsby", "method.activation=tanh"]))
    from dynrank.config import SCHEMA, conforms  # a bottleneck < 1 is refused before training, with every range
    from dynrank.config.schema import options

    assert set(options(SCHEMA["method.activation"])) == set(ACTIVATIONS)  # what the schema lets through, wrap builds

    assert not conforms(SCHEMA["method.bottleneck"], 0) and not conforms(SCHEMA["method.bottleneck_per_rank"], 0)


def test_bart_encoder_and_decoder_no_cross_attention():
    torch.manual_seed(0)
    cfg = BartConfig(vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                     num_labels=2, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    model = BartForSequenceClassification(cfg)
    ref = copy.deepcopy(model).eval()
    method = method_config("houlsby", 2, activation="relu")  # placement: source, the default
    with pytest.raises(ConfigError, match="placement=before_dropout"):  # BART's layers add the residual inline
        build(OmegaConf.create({"method": method, "budget": {"name": "r2", "r": 2}}), "bart").wrap(copy.deepcopy(model))
    method.placement = "before_dropout"
    m = build(OmegaConf.create({"method": method, "budget": {"name": "r2", "r": 2}}), "bart")
    m.wrap(model)
    names = _wrapped(model)
    assert len(names) == 8  # (self_attn.out_proj + fc2) x 2 layers x (encoder, decoder)
    assert not any("encoder_attn" in n for n in names)
    assert sum(n.endswith("fc2") for n in names) == 4
    ids = torch.tensor([[0, 5, 6, 7, 8, 2], [0, 9, 10, 11, 12, 2]])
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=0, atol=1e-6)


def test_export_roundtrip(tmp_path):
    import json

    from safetensors.torch import load_file

    model = _tiny_roberta()
    fresh = copy.deepcopy(model)
    m = _method("houlsby")
    m.wrap(model)
    with torch.no_grad():
        for _, layer in m.layers:
            layer.adapter.up.weight.normal_()
    out = m.export(tmp_path / "adapter", base_name="tiny")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["method"] == "houlsby" and cfg["bottleneck"] == 8 and len(cfg["modules"]) == 4
    m2 = _method("houlsby")
    m2.wrap(fresh)
    m2.load_run_params(0, load_file(str(out / "adapter_model.safetensors")))
    model.eval(), fresh.eval()
    ids = torch.randint(3, 100, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, fresh(input_ids=ids).logits)
