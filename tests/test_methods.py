"""Trainable-parameter counts of every method on the RoBERTa-base architecture vs the paper's Table 2,
and a short end-to-end run of the methods added here (houlsby, pfeiffer, dora_wd, dylora).

The RoBERTa-base architecture is built from ``RobertaConfig()`` (with roberta-base's 514 positions
and one token type) on the meta device: no weights, no download, milliseconds. Run with ``-s`` to
see the printed table.
"""
from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch

from conftest import CONF, compose, tiny_overrides

METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))

# Table 2 (../shared/paper/table2_glue.csv, trainable_params), in parameters.
PAPER = {
    ("full", "r8"): 124.65e6, ("bitfit", "r8"): 0.10e6,
    ("houlsby", "r8"): 1.20e6, ("houlsby", "r2"): 0.31e6,
    ("pfeiffer", "r8"): 1.19e6, ("pfeiffer", "r2"): 0.30e6,
    ("lora", "r8"): 1.33e6, ("lora", "r2"): 0.33e6,
    ("adalora", "r8"): 1.27e6, ("adalora", "r2"): 0.32e6,
    ("dora", "r8"): 1.31e6, ("dora", "r2"): 0.34e6,
}

D, FF, L = 768, 3072, 12
HEAD = D * D + D + D * 2 + 2  # RobertaClassificationHead: dense + out_proj, 592,130
LORA_PER_R = L * (4 * (D + D) + (D + FF) + (FF + D))  # 165,888 per unit of rank
D_OUT = L * (4 * D + FF + D)  # 82,944 output rows of the six adapted matrices


def adapter(m: int) -> int:
    return 2 * D * m + m + D


# Exact counts (no paper number needed): adapter parameters, head excluded.
EXACT = {
    ("full", "r8"): 124_055_040, ("full", "r2"): 124_055_040,  # backbone without the (unused) pooler
    ("bitfit", "r8"): 102_144, ("bitfit", "r2"): 102_144,
    ("houlsby", "r8"): 2 * L * adapter(32), ("houlsby", "r2"): 2 * L * adapter(8),
    ("pfeiffer", "r8"): L * adapter(64), ("pfeiffer", "r2"): L * adapter(16),
    ("lora", "r8"): 8 * LORA_PER_R, ("lora", "r2"): 2 * LORA_PER_R,
    ("dora_wd", "r8"): 8 * LORA_PER_R + D_OUT, ("dora_wd", "r2"): 2 * LORA_PER_R + D_OUT,
    ("dylora", "r8"): 8 * LORA_PER_R, ("dylora", "r2"): 2 * LORA_PER_R,
}
# Dynamic-rank methods: param_counts()["adapter"] is the final budget (r per module on average, each
# component costing d_in + d_out + 1); the initial budget is "adapter_initial".
DYNAMIC = ("dora", "adalora")
# Known gaps to the paper, beyond 3%: reported, checked to still be there (so a fix is noticed).
KNOWN_GAPS = {
    ("adalora", "r8"): "AdaLoRA r8: 8 triplets x 72 matrices = 1,327,680 vs the paper's 1.27M (+4.5%)",
    ("adalora", "r2"): "AdaLoRA r2: 331,920 vs the paper's 0.32M (+3.7%)",
}


def roberta_base(meta: bool = True):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    cfg = RobertaConfig(num_labels=2, max_position_embeddings=514, type_vocab_size=1)
    if meta:
        with torch.device("meta"):
            return RobertaForSequenceClassification(cfg)
    return RobertaForSequenceClassification(cfg)


def wrapped_counts(name: str, budget: str) -> dict:
    from dynrank import methods

    cfg = compose([f"method={name}", f"budget={budget}", "model=roberta_base", "task=cola"])
    try:
        method = methods.build(cfg, "roberta")
        method.wrap(roberta_base(meta=True))
        counts = method.param_counts()
    except (NotImplementedError, RuntimeError):  # a method that computes on its weights at wrap time
        method = methods.build(cfg, "roberta")
        method.wrap(roberta_base(meta=False))
        counts = method.param_counts()
    return counts


def test_roberta_base_architecture():
    """The meta-device build is RoBERTa-base: 124,647,170 parameters with the classification head."""
    model = roberta_base()
    total = sum(p.numel() for p in model.parameters())
    assert total == 124_055_040 + HEAD == 124_647_170
    assert math.isclose(total, PAPER[("full", "r8")], rel_tol=0.001)


@pytest.mark.parametrize("name", METHODS)
def test_param_counts_vs_table2(name):
    gaps = []
    for budget in ("r8", "r2"):
        c = wrapped_counts(name, budget)
        adapter_n = c["adapter"]  # dora / adalora: the final budget (their param_counts' convention)
        paper = PAPER.get((name, budget))
        print(f"{name:9s} {budget}: adapter {adapter_n:>11,d}  head {c['head']:>7,d}  "
              f"paper {'-' if paper is None else f'{paper / 1e6:.2f}M'}"
              + ("" if paper is None else f"  ({100 * (adapter_n / paper - 1):+.1f}%)"))
        assert c["head"] == HEAD, "the classification head always trains, fully"
        if (name, budget) in EXACT:
            assert adapter_n == EXACT[(name, budget)]
        if paper is not None:
            off = abs(adapter_n / paper - 1) > 0.03
            if (name, budget) in KNOWN_GAPS:
                assert off, f"{name} {budget} now within 3% of the paper: remove it from KNOWN_GAPS"
                gaps.append(KNOWN_GAPS[(name, budget)])
            else:
                assert not off, f"{name} {budget}: {adapter_n} vs paper {paper:.0f}"
    if gaps:
        pytest.xfail("; ".join(gaps))
    assert (name, "r8") in EXACT or name in DYNAMIC or (name, "r8") in PAPER, f"no expected count for {name}"


# ------------------------------------------------------------------------------------------ end to end
E2E = ["houlsby", "pfeiffer", "dora_wd", "dylora"]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.slow
@pytest.mark.parametrize("name", E2E)
def test_end_to_end_tiny_cola(name, tmp_path, shared_cache):
    """model=tiny on a CoLA subset: trains, evaluates, writes the results JSON (in-process driver.run)."""
    from dynrank.driver import run

    cfg = compose(tiny_overrides(tmp_path, "task=cola", f"method={name}", f"data.cache_dir={shared_cache}",
                                 "data.max_train_samples=128", "data.max_eval_samples=64"))
    res = run(cfg, tmp_path / "run")
    stored = json.loads(next((tmp_path / "store").rglob("seed1.json")).read_text())
    assert stored["method"] == name and stored["run_id"] == res["run_id"]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["params"] == stored["params"]
    assert stored["params"]["adapter"] > 0 and math.isfinite(stored["epochs"][0]["train_loss"])
    assert 0.0 <= stored["final"]["dev"]["accuracy"] <= 1.0
    if name == "dylora":
        ev = stored["extra_evals"]
        assert sorted(ev) == [f"rank_{b}" for b in range(1, 9)]  # every rank, as the reference's run_glue.py
        assert all("matthews" in m and "accuracy" in m for m in ev.values())
        assert ev["rank_8"] == stored["final"]["dev"]  # per-epoch eval runs at r_max
        steps = math.ceil(128 / int(cfg.train.batch_size))
        assert sum(stored["method_summary"]["sampled_ranks"].values()) == steps
    else:
        assert "extra_evals" not in stored


@pytest.mark.parametrize("name", ["lora", "dora", "adalora"])
def test_shared_operands_equal_each_layers_own(name, tmp_path):
    """A training step makes each group of low-rank layers' operands once (``groups.shared_operands``, one group
    per layer kind and shape): the runs' losses and every gradient equal those of each layer making its own, bit for
    bit, with every trainable tensor (DoRA's c, AdaLoRA's lambda) away from its zero init; and so do they with each
    group's factors read in place from the optimizer's buffer (``groups.bind_groups``: no stack, the gradient
    added into the buffer once per group), DoRA's DEM included."""
    from dynrank import inputs, methods
    from dynrank.methods.groups import bind_groups, shared_operands, storage_order
    from dynrank.methods.layers import LowRankLinear
    from dynrank.optim import Flat

    cfg = compose(tiny_overrides(tmp_path, f"method={name}"))
    shared = inputs.load_data(cfg)
    method = methods.build(cfg, cfg.model.family, runs=2)
    model = method.wrap(shared.task.build_model())
    method.init_runs([1, 2])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.train()
    batch = shared.task.train_batch(shared.train_set, ([0, 3, 5], [1, 2, 9]), False)

    layers = [m for m in model.modules() if isinstance(m, LowRankLinear)]
    method.setup(100)

    def step(share: bool, flat=None):
        if flat is None:
            model.zero_grad()
        else:
            flat.zero_grad()  # the parameters' gradients are views of the buffer's
        torch.manual_seed(0)  # the layers' own dropout
        with shared_operands(model) if share else contextlib.nullcontext():
            if share and flat is None:
                assert layers and all(m.operands is not None for m in layers)
                assert len({m.operands[0]._base.data_ptr() for m in layers}) == 3  # (d, d), (d, ff), (ff, d)
            loss = shared.task.run_losses(model, batch, 2)
            extra = method.extra_loss(0)
            total = loss if extra is None else loss + extra
        total.sum().backward()
        return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    (la, ga), (lb, gb) = step(False), step(True)
    assert torch.equal(la, lb)
    assert ga.keys() == gb.keys() and all(torch.equal(ga[n], gb[n]) for n in ga), name
    assert all(m.operands is None for m in layers)  # none left behind
    params = [p for p in model.parameters() if p.requires_grad]
    flat = Flat(params, 2, True, order=storage_order(model, params))
    bind_groups(model, flat)
    assert all(m.factor_group is not None for m in layers)
    assert len({id(m.factor_group) for m in layers}) == 3
    lc, gc = step(True, flat)
    assert torch.equal(la, lc)
    assert ga.keys() == gc.keys() and all(torch.equal(ga[n], gc[n]) for n in ga), name


@pytest.mark.slow
def test_shared_operands_dispatch_fewer_ops_a_step():
    """What sharing saves (scripts/count_step_ops.py): DoRA's step (2 RoBERTa-base layers, 12 adapted matrices, 2
    runs) with the GPU's bf16 autocast and rank padding to 8 (r0 = 12 -> 16) dispatches at least 8 fewer operations
    per adapted matrix (the per-matrix c fold, scale, casts and pads of the forward, their backward) than with each
    layer making its own operands; and at least 3 fewer again per matrix with the factors read in place from the
    optimizer's buffer."""
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("count_step_ops", ROOT / "scripts" / "count_step_ops.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    own, shared, bound = (script.count("dora", 2, 2, *flags) for flags in script.VARIANTS.values())
    assert shared <= own - 8 * 12, (own, shared)
    # each group's factors read in place (groups.bind_groups): no per-matrix gradient add for A, B and c
    assert bound <= shared - 3 * 12, (shared, bound)


def test_bench_without_switches_each_cut_off_and_back():
    """``bench.without`` (scripts/bench.py --ablate): inside, the named cuts are off (no bound groups on a model
    built there, no shared operands, autograd's path instead of the low-rank node); after, all are back."""
    from torch import nn

    from dynrank import bench
    from dynrank import step as stepmod
    from dynrank.methods import groups, layers

    from dynrank import packing, qkv

    frozen = nn.Linear(4, 4).requires_grad_(False)
    with bench.without("node", "bind", "share", "qkv"):
        assert not layers._frozen_linear(frozen)
        assert packing.project is not qkv.project
        assert stepmod.bind_groups is not groups.bind_groups
        assert stepmod.shared_operands is not groups.shared_operands
        bench.dynrank_runner("lora", "eager-fp32", torch.device("cpu"), 4, model_config={"num_hidden_layers": 1})
    assert layers._frozen_linear(frozen) and stepmod.bind_groups is groups.bind_groups
    assert stepmod.shared_operands is groups.shared_operands and packing.project is qkv.project
    with pytest.raises(ValueError, match="unknown cut"):
        with bench.without("nodes"):
            pass


def test_stacked_full_fine_tuning_is_each_runs_model_on_its_rows():
    """Stacked full fine-tuning's layers (``PretrainedRunLinear``, ``RunLayerNorm``, ``RunEmbedding``): run k
    computes its own model on its rows, and its weights take that model's gradients from them alone (padding
    included: the padding id's embedding row takes none, as ``nn.Embedding``'s). The runs' weights differ here, as
    after a few steps."""
    import copy

    from transformers import RobertaConfig, RobertaForSequenceClassification

    from dynrank import methods
    from dynrank.methods.layers import RunEmbedding

    torch.manual_seed(0)
    models = [RobertaForSequenceClassification(RobertaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=40, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))]
    models.append(copy.deepcopy(models[0]))
    with torch.no_grad():
        for p in models[1].parameters():
            p.add_(0.1 * torch.randn_like(p))
    stacked = copy.deepcopy(models[0])
    method = methods.build(compose(["method=full", "task=rte"]), "roberta", runs=2)
    method.wrap(stacked)
    method.load_run_params(1, dict(models[1].named_parameters()))
    assert isinstance(stacked.roberta.embeddings.word_embeddings, RunEmbedding)
    assert not [n for n, p in stacked.named_parameters() if p.shape[0] != 2]  # every weight one per run
    ids = torch.randint(3, 100, (4, 10), generator=torch.Generator().manual_seed(1))
    ids[:, 0], ids[1, 6:], ids[3, 4:] = 0, 1, 1  # <s>; two sequences padded with RoBERTa's pad id (1)
    mask = (ids != 1).long()
    g, gh = torch.randn(4, 2), torch.randn(4, 10, 32)

    def backward(model, rows):  # the head's logits and every position's hidden state (pads' too)
        out = model(input_ids=ids[rows], attention_mask=mask[rows], output_hidden_states=True)
        ((out.logits * g[rows]).sum() + (out.hidden_states[-1] * gh[rows]).sum()).backward()
        return out.logits.detach()

    logits = backward(stacked, slice(None))
    for k, model in enumerate(models):
        rows = slice(2 * k, 2 * k + 2)
        assert torch.allclose(logits[rows], backward(model, rows), atol=1e-5), k
        run_grads = dict(stacked.named_parameters())
        for name, p in model.named_parameters():
            assert torch.allclose(run_grads[name].grad[k], p.grad, atol=1e-5), (k, name)
    assert not stacked.roberta.embeddings.word_embeddings.weight.grad[:, 1].any()  # the padding row
