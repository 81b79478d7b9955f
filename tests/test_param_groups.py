"""Optimizer parameter groups from a method (``Method.param_group`` -> ``optim.ParamGroup``): a learning-rate scale
and a weight-decay flag per parameter. A method that asks for them (LoRA+ below: B at 16 times the rate, Hayou et al.
2024) trains as ``torch.optim.AdamW`` with the corresponding parameter groups, alone and stacked; the default group
leaves the optimizer exactly as it was."""
import copy
from functools import partial

import pytest
import torch
from torch import nn

from conftest import compose
from dynrank.methods.base import Method
from dynrank.methods.lora import LoRA
from dynrank.optim import Flat, ParamGroup, RunAdamW, lr_factor
from dynrank.step import make_optimizer, make_stepper, prepare_model

# the stacked parameters are strided views into one buffer by design (dynrank/step.py filters it outside pytest)
pytestmark = pytest.mark.filterwarnings("ignore:grad and param do not obey the gradient layout contract")

STEPS, TOTAL = 4, 8


class LoRAPlus(LoRA):
    """LoRA with LoRA+'s learning-rate ratio on B (the whole method, as a method file would hold it)."""
    ratio = 16.0

    def param_group(self, name, param):
        return ParamGroup(lr_scale=self.ratio) if "lora_B" in name else ParamGroup()


class NoDecayOnBias(LoRA):
    def param_group(self, name, param):
        return ParamGroup(decay=False) if name.endswith("bias") else ParamGroup()


def _cfg(no_decay="hf_trainer"):
    cfg = compose(["method=lora", "task=cola", "train.weight_decay=0.1", "train.warmup_ratio=0.25",
                   f"train.no_decay={no_decay}"])
    cfg.method.dropout = 0.0
    return cfg


def _model():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    return RobertaForSequenceClassification(RobertaConfig(num_labels=2, hidden_size=32, num_hidden_layers=2,
                                                          num_attention_heads=2, intermediate_size=64,
                                                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                                          vocab_size=100, max_position_embeddings=40))


def _batch(seed):
    g = torch.Generator().manual_seed(100 + seed)
    ids = torch.randint(3, 100, (4, 10), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (4,), generator=g)}


def _train(cls, seeds, lrs, device="cpu", graphs=False):
    """Runs ``seeds`` (learning rates ``lrs``) of method ``cls`` stacked, STEPS steps of each run's own batch with
    dynrank's step; returns the method, the optimizer and (for one run) the model as it was before training."""
    from dynrank.tasks.glue import classification_losses

    cfg, device = _cfg(), torch.device(device)
    method = cls(cfg.method, cfg.budget, "roberta", runs=len(seeds))
    model = method.wrap(_model())
    method.init_runs(list(seeds))
    before = copy.deepcopy(model) if len(seeds) == 1 else None
    model, flat = prepare_model(model, method, device, False, False, seeds=list(seeds))
    method.setup(TOTAL)
    opt = make_optimizer(cfg.train, method, flat, list(lrs), TOTAL)
    step = make_stepper(model, method, partial(classification_losses, runs=len(seeds)), opt, 1.0, False, device,
                        graphs)
    batches = [_batch(s) for s in seeds]
    batch = {k: torch.cat([b[k] for b in batches]).to(device) for k in batches[0]}
    for s in range(STEPS):
        step(batch, s)
    return method, opt, before


def _torch_adamw(model, seed, lr, ratio, opt):
    """The model of one run trained as torch.optim.AdamW with HF Trainer's groups (biases at weight decay 0), B at
    ``ratio`` times the rate, under LambdaLR with dynrank's schedule; returns its trainable tensors by name."""
    from dynrank import attention, dropout
    from dynrank.tasks.glue import classification_losses

    dropout.install(model, [seed], torch.device("cpu"))  # the same forward as dynrank's (no dropout: p = 0)
    attention.use_for(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = {}
    for n, p in named:
        scale, decay = (ratio if "lora_B" in n else 1.0), "bias" not in n
        groups.setdefault((scale, decay), []).append(p)
    assert len(groups) == (2 if ratio == 1 else 3)  # A and the head's weights; B; the head's biases
    ref = torch.optim.AdamW([{"params": ps, "lr": lr * scale, "weight_decay": 0.1 if decay else 0.0}
                             for (scale, decay), ps in groups.items()], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(ref, lambda s: lr_factor(s, TOTAL, opt.warmup_steps, opt.schedule))
    batch = _batch(seed)
    for _ in range(STEPS):
        ref.zero_grad()
        classification_losses(model, batch, runs=1).sum().backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        ref.step()
        sched.step()
    return {n: p.detach() for n, p in named}


def test_lora_plus_trains_as_torch_adamw_with_its_param_groups():
    """One run of a method whose hook puts B at 16x the rate steps as torch.optim.AdamW with those groups (and the
    no-decay group of train.no_decay=hf_trainer beside them); with B at the run's own rate it would not."""
    method, opt, before = _train(LoRAPlus, [1], [2e-3])
    assert opt.warmup_steps == 2 and opt.lr_scale is not None
    ours = method.run_params(0)
    want = _torch_adamw(copy.deepcopy(before), 1, 2e-3, 16.0, opt)
    assert ours.keys() == want.keys() and any("lora_B" in n for n in ours)
    # AdamW divides by sqrt(v): an element whose gradients are near 0 carries the rounding of two summation orders
    # (the flat buffer's per-run clip, clip_grad_norm_) up to ~1e-6 (B's elements are ~0.07)
    for n in ours:
        assert torch.allclose(ours[n], want[n], rtol=1e-5, atol=1e-6), n
    plain = _torch_adamw(before, 1, 2e-3, 1.0, opt)
    assert not all(torch.allclose(ours[n], plain[n], rtol=1e-5, atol=1e-6) for n in ours if "lora_B" in n)


def test_lora_plus_stacked_runs_equal_their_solo_runs():
    """Two runs (two seeds, two learning rates) stacked: each run's tensors and moments equal its solo run's."""
    stacked, sopt, _ = _train(LoRAPlus, [1, 2], [2e-3, 5e-4])
    for k, (seed, lr) in enumerate([(1, 2e-3), (2, 5e-4)]):
        solo, opt, _ = _train(LoRAPlus, [seed], [lr])
        a, b = stacked.run_params(k), solo.run_params(0)
        for n in a:  # a batched GEMM over R runs rounds differently from R = 1 (tests/test_stack.py)
            assert torch.allclose(a[n], b[n], rtol=1e-4, atol=1e-6), (k, n)
        sa, sb = sopt.run_state_dict(k)["state"], opt.run_state_dict(0)["state"]
        for i in sb:
            assert torch.allclose(sa[i]["exp_avg"], sb[i]["exp_avg"], rtol=1e-4, atol=1e-7), (k, i)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_lora_plus_graphed_step_matches_eager():
    """The scaled groups' rates are device tensors that set_step fills: a replayed CUDA graph reads each step's
    (the warm-up makes them change from step to step: a graph that kept step 1's would be off by lr-sized steps).
    Tolerances as tests/test_gpu.py's."""
    torch.backends.cuda.matmul.allow_tf32 = False
    _, eager, _ = _train(LoRAPlus, [1, 2], [2e-3, 5e-4], device="cuda")
    _, graphed, _ = _train(LoRAPlus, [1, 2], [2e-3, 5e-4], device="cuda", graphs=True)
    assert torch.allclose(eager.flat.data, graphed.flat.data, rtol=1e-4, atol=1e-4)


def test_the_hooks_decay_flag_overrides_the_no_decay_rule():
    """decay=False from the hook spares a parameter that train.no_decay=none decays; decay=True decays one that
    hf_trainer would spare; None leaves the rule's choice."""
    class DecayHeadBias(LoRA):
        def param_group(self, name, param):
            return ParamGroup(decay=True) if name == "classifier.out_proj.bias" else ParamGroup()

    for cls, rule, spared in ((NoDecayOnBias, "none", lambda n: n.endswith("bias")),
                              (LoRA, "none", lambda n: False),
                              (DecayHeadBias, "hf_trainer", lambda n: n == "classifier.dense.bias")):
        cfg = _cfg(rule)
        method = cls(cfg.method, cfg.budget, "roberta", runs=2)
        model = method.wrap(_model())
        _, flat = prepare_model(model, method, torch.device("cpu"), False, False, seeds=[1, 2])
        opt = make_optimizer(cfg.train, method, flat, [1e-3, 1e-3], TOTAL)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        flags = opt.decay or [True] * len(names)
        assert {n for n, d in zip(names, flags) if not d} == {n for n in names if spared(n)}, cls.__name__
        assert opt.lr_scale is None


@pytest.mark.parametrize("order", [None, [3, 0, 5, 1, 4, 2]])
def test_run_adamw_groups_are_torch_adamw_param_groups(order):
    """Per-parameter (lr scale, decay) in stretches that interleave: each run steps as torch.optim.AdamW with one
    parameter group per distinct pair, at run k's rate times the scale; the same with the parameters' columns in
    another order in the buffer (``Flat(order=...)``: parameter i stays parameter i)."""
    torch.manual_seed(0)
    ps = [nn.Parameter(torch.randn(2, 4, 3)) for _ in range(6)]
    scale = [1.0, 4.0, 4.0, 1.0, 0.5, 4.0]
    decay = [True, True, False, False, True, True]
    init = [p.detach().clone() for p in ps]
    flat = Flat(ps, 2, stacked=True, order=order)
    if order:
        assert [flat.offsets[i] for i in order] == [12 * j for j in range(6)]
    opt = RunAdamW(flat, [1e-2, 1e-3], weight_decay=0.5, total_steps=6, warmup_steps=1, decay=decay, lr_scale=scale)
    grads = [[torch.randn_like(p) for p in ps] for _ in range(3)]
    for step, gs in enumerate(grads):
        opt.set_step(step)
        for i, g in enumerate(gs):
            flat.view(flat.grad, i).copy_(g)
        opt.step()
    assert opt.lrs(2) == pytest.approx([1e-2 * 4 / 5, 1e-3 * 4 / 5])  # the runs' rates, as before
    for k, lr in enumerate([1e-2, 1e-3]):
        qs = [nn.Parameter(x[k].clone()) for x in init]
        groups = {}
        for q, s, d in zip(qs, scale, decay):
            groups.setdefault((s, d), []).append(q)
        ref = torch.optim.AdamW([{"params": g, "lr": lr * s, "weight_decay": 0.5 if d else 0.0}
                                 for (s, d), g in groups.items()], lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(ref, lambda s: lr_factor(s, 6, 1))
        for gs in grads:
            for q, g in zip(qs, gs):
                q.grad = g[k].clone()
            ref.step()
            sched.step()
        for i, (p, q) in enumerate(zip(ps, qs)):
            assert torch.allclose(p[k], q, rtol=1e-6, atol=1e-7), (k, i)


def test_default_groups_step_as_before():
    """Groups that are all the default (scale 1, every parameter decayed) take the one-kernel-per-run path: the
    same numbers, bit for bit, as an optimizer given no groups."""
    torch.manual_seed(0)
    init = [torch.randn(3, 5, 2), torch.randn(3, 7)]
    grads = [[torch.randn_like(x) for x in init] for _ in range(3)]
    out = []
    for groups in ({}, {"decay": [True, True], "lr_scale": [1.0, 1]}):
        ps = [nn.Parameter(x.clone()) for x in init]
        flat = Flat(ps, 3, stacked=True)
        opt = RunAdamW(flat, [1e-3, 1e-2, 1e-1], weight_decay=0.01, total_steps=10, warmup_steps=2, **groups)
        assert opt._groups is None and opt.decay is None and opt.lr_scale is None
        for step, gs in enumerate(grads):
            opt.set_step(step)
            for i, g in enumerate(gs):
                flat.view(flat.grad, i).copy_(g)
            opt.step()
        out.append((flat.data.clone(), opt.exp_avg.clone(), opt.exp_avg_sq.clone()))
    assert all(torch.equal(a, b) for a, b in zip(*out))


def test_param_group_defaults_and_checks():
    from dynrank.optim import param_groups

    assert Method.param_group(None, "x", None) == ParamGroup(1.0, None)
    with pytest.raises(ValueError, match="lr_scale"):
        ParamGroup(lr_scale=-1.0)
    with pytest.raises(ValueError, match="lr_scale"):
        ParamGroup(lr_scale=float("nan"))
    with pytest.raises(ValueError, match="decay"):
        ParamGroup(decay="no")
    model = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3))
    params = list(model.parameters())
    assert param_groups(model, params, "hf_trainer") == [ParamGroup(1.0, True)] + [ParamGroup(1.0, False)] * 3
    assert param_groups(model, params, "none", lambda n, p: ParamGroup(2.0) if n == "0.bias" else ParamGroup()) \
        == [ParamGroup(1.0, True), ParamGroup(2.0, True), ParamGroup(1.0, True), ParamGroup(1.0, True)]
    with pytest.raises(TypeError, match="ParamGroup"):
        param_groups(model, params, "none", lambda n, p: 2.0)
