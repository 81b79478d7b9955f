"""Dynamic-rank DoRA: schedule (Eq. 9), importance (Eq. 7-8), DEM (Eq. 10), revival, export/merge, end to end."""
import copy
import json
import math
import os
import re

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from transformers import AutoModelForSequenceClassification

from conftest import SHARED_GLUE, cli, compose, method_config, result_file, tiny_overrides
from dynrank.methods.dora import DoRA
from dynrank.models import build_tiny_config, load_model, load_tokenizer

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is many times faster on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_method(family="roberta", r=2, **kw):
    cfg = {"alpha": 8, "dropout": 0.0, "pruning_interval": 2, "reg_coef": 0.3, "dem": True, "initial_budget": None}
    cfg.update(kw)
    return DoRA(method_config("dora", r, **cfg), OmegaConf.create({"r": r}), family)


def tiny_roberta(seed=0):
    mcfg = OmegaConf.create({"tiny": TINY, "family": "roberta"})
    tok = load_tokenizer(mcfg)
    torch.manual_seed(seed)
    return load_model(mcfg, AutoModelForSequenceClassification, tok, num_labels=2), tok


def randomize_c(m, gen):
    """Distinct non-zero c everywhere (stands in for what the gradient does between steps)."""
    with torch.no_grad():
        for c in m._c:
            c.copy_((torch.rand(c.shape, generator=gen) + 0.05) * torch.sign(torch.randn(c.shape, generator=gen)))


def zeros(m) -> int:
    return int(sum((c == 0).sum() for c in m._c))


def test_schedule_prunes_the_formula_fraction():
    model, _ = tiny_roberta()
    m = make_method(r=2, initial_budget=6, pruning_interval=5)  # N = 12 matrices x 6 = 72 components
    m.wrap(model)
    T = 200
    m.setup(T)
    N, r0, r = 72, 6, 2
    assert m.n_components == N
    # p = int(t - 0.15 T), P = int(T (1 - 0.15 - 0.5)): warm-up 30 steps, pruning over 70, then fixed
    assert [m.schedule(t) for t in (1, 30, 31, 100, 101)] == [(-29, 70), (0, 70), (1, 70), (70, 70), (71, 70)]
    # the authors' code logs 'prune finished' after the step with p = P (t = 100); paper_code picks epochs after it
    assert m.pruning_end_step() == 100 and m.schedule.phase(100) == "prune" and m.schedule.phase(101) == "fixed"
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for t in range(1, 101):
        randomize_c(m, gen)
        m.after_step(t)
        p, P = t - 30, 70
        if 0 <= p <= P and (p % 5 == 0 or p == P):
            k = int(N * ((r0 - r) / r0) * (p / P) ** 3)
            assert zeros(m) == max(k, 1), (t, p, k)  # the authors' code thresholds at max(k, 1)
            checked += 1
        else:
            assert zeros(m) == 0, t  # no pruning in warm-up and between pruning steps
    assert checked == 15
    assert m.schedule.pruned_fraction(100) == pytest.approx((r0 - r) / r0) and m.done


def test_final_budget_and_fixed_mask():
    model, _ = tiny_roberta()
    m = make_method(r=2, initial_budget=5, pruning_interval=3)
    m.wrap(model)
    T = 60
    m.setup(T)
    N = m.n_components
    gen = torch.Generator().manual_seed(1)
    _, P = m.schedule(1)
    end = int(T * 0.15) + P  # the step with p = P
    for t in range(1, end + 1):
        with torch.no_grad():  # the gradient moves every c (pruned ones grow back) between pruning steps
            for c in m._c:
                c.add_(0.05 * torch.randn(c.shape, generator=gen))
        m.after_step(t)
    assert m.schedule(end)[0] == P and m.done
    want = N - int(N * (5 - 2) / 5)
    assert sum(m.surviving()) == want == N - zeros(m)
    mask, zero_pos = m.pruning.mask.clone(), torch.cat([c == 0 for c in m._c], 1)  # (1 run, N)
    assert torch.equal(mask, zero_pos)
    for t in range(end + 1, T + 1):  # afterwards the mask is fixed: re-applied after every step
        with torch.no_grad():
            for c in m._c:
                c.add_(0.05 * torch.randn(c.shape, generator=gen))
        m.after_step(t)
        assert torch.equal(m.pruning.mask, mask)
        assert torch.equal(torch.cat([c == 0 for c in m._c], 1), zero_pos)
    s = m.summary()
    assert s["surviving"] == want and s["components"] == N and s["pruning_done"]
    assert sum(v for row in s["rank_map"]["counts"] for v in row) == want


def test_pruned_component_revives_when_its_importance_rises():
    model, _ = tiny_roberta()
    m = make_method(r=2, initial_budget=6, pruning_interval=5)
    m.wrap(model)
    m.setup(200)
    gen = torch.Generator().manual_seed(2)
    randomize_c(m, gen)
    for t in range(1, 71):  # p = 40 at t = 70: a pruning step
        m.after_step(t)
    pruned = [(i, j) for i, c in enumerate(m._c) for j in range(c.shape[1]) if c[0, j] == 0]  # run 0
    assert len(pruned) >= 2
    (i1, j1), (i2, j2) = pruned[0], pruned[1]
    with torch.no_grad():  # a step's gradient pushes one pruned c_j far from 0; the other stays 0
        m._c[i1][0, j1] = 10 * max(float(c.abs().max()) for c in m._c)
    for t in range(71, 76):  # next pruning step at p = 45
        m.after_step(t)
    assert m._c[i1][0, j1] != 0 and not m.pruning.mask[0, i1 * 6 + j1]  # survived the next pruning step
    assert m._c[i2][0, j2] == 0 and m.pruning.mask[0, i2 * 6 + j2]  # the one left at zero stays pruned


def test_cuda_graph_protocol_same_ops_per_key():
    """What a captured CUDA graph needs: per graph_key the step runs the same ops with the same non-tensor
    arguments (a pruning step's k comes from a device index), and state tensors never move."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            flat = [a for a in list(args) + list((kwargs or {}).values()) if not isinstance(a, (torch.Tensor, list, tuple))]
            self.ops.append((str(func), repr(flat)))
            return func(*args, **(kwargs or {}))

    model, _ = tiny_roberta()
    m = make_method(r=2, initial_budget=6, pruning_interval=5)
    m.wrap(model)
    T = 200
    m.setup(T)
    ptrs = [t.data_ptr() for t in (m.importance.ema, m.pruning.mask, m.pruning.keep, m.pruning.kidx)]
    gen = torch.Generator().manual_seed(7)
    seen: dict = {}
    for s in range(T):
        randomize_c(m, gen)
        for _, layer in m.layers:
            layer.lora_A.grad = layer.lora_B.grad = None
        key = m.graph_key(s)
        m.prepare_step(s)
        with Record() as rec:
            extra = m.extra_loss(s)
            if extra is not None:
                extra.sum().backward()
            m.after_step(s + 1)
        if key in seen:
            assert rec.ops == seen[key], (s, key)
        else:
            seen[key] = rec.ops
    assert set(seen) == {(True, "ema"), (True, "prune"), (False, "fixed")}
    assert [t.data_ptr() for t in (m.importance.ema, m.pruning.mask, m.pruning.keep, m.pruning.kidx)] == ptrs
    assert m.done and sum(m.surviving()) == 72 - int(72 * 4 / 6)


class _Toy(nn.Module):
    """Two adapted matrices of different shapes, named as RoBERTa's: layer.0 query (6->6), FFN up (6->10)."""

    def __init__(self):
        super().__init__()
        blk = nn.Module()
        blk.attention = nn.Module()
        setattr(blk.attention, "self", nn.Module())
        blk.attention.self.query = nn.Linear(6, 6)
        blk.intermediate = nn.Module()
        blk.intermediate.dense = nn.Linear(6, 10)
        self.layer = nn.ModuleList([blk])


def test_importance_and_dem_equal_hand_computation():
    torch.manual_seed(3)
    model = _Toy()
    m = make_method(r=2, initial_budget=4)
    m.wrap(model)
    m.setup(100)
    assert m.n_modules == 2
    with torch.no_grad():
        for c in m._c:
            c.copy_(torch.randn(1, 4))
    hand_s, hand_dem = [], 0.0
    for _, mod in m.layers:
        A, B, c = (mod.lora_A[0].detach().double(), mod.lora_B[0].detach().double(), mod.lora_c[0].detach().double())
        comps = [c[i] * torch.outer(B[:, i], A[i]) for i in range(4)]  # c_i B_i A_i, materialised
        dw = sum(comps)
        hand_s += [torch.linalg.norm(ci) / (torch.linalg.norm(dw) + 1e-8) for ci in comps]
        for i in range(4):
            a, b = A[i], B[:, i]
            hand_dem += float(((a - a.mean()) ** 2).sum() / (a.numel() - 1) + ((b - b.mean()) ** 2).sum() / (b.numel() - 1))
    hand_s = torch.stack(hand_s).float()
    s = m.importance.scores(m.factor_groups("lora_A", "lora_B", "lora_c"))
    torch.testing.assert_close(s[0], hand_s, rtol=1e-5, atol=1e-7)
    m.after_step(1)  # warm-up step: S = 0.9 * 0 + 0.1 * s, no pruning
    torch.testing.assert_close(m.importance.ema[0], 0.1 * hand_s, rtol=1e-5, atol=1e-8)
    hand_dem /= 2 * 2 * 4
    assert float(m.extra_loss(0).detach()) == pytest.approx(0.3 * hand_dem, rel=1e-5)
    assert m.extra_loss(int(0.15 * 100) + 35 - 1) is not None  # the step with p = P still has DEM
    assert m.extra_loss(int(0.15 * 100) + 35) is None  # p > P: off
    assert make_method(r=2, dem=False).reg_coef == 0.0
    # DEM has a gradient on A and B only
    loss = m.extra_loss(0)
    loss.sum().backward()
    layers = [mod for _, mod in m.layers]
    assert all(mod.lora_A.grad is not None and mod.lora_B.grad is not None for mod in layers)
    assert all(c.grad is None for c in m._c)


def _train(model, m, tok, steps, lr=1e-2, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    x = torch.randint(3, len(tok), (8, 10), generator=g)
    y = torch.randint(0, 2, (8,), generator=g)
    for step in range(steps):
        loss = model(input_ids=x, labels=y).loss
        extra = m.extra_loss(step)
        (loss if extra is None else loss + extra.sum()).backward()
        opt.step()
        opt.zero_grad()
        m.after_step(step + 1)
    return x


def test_export_and_merge_reproduce_logits(tmp_path):
    from peft import PeftModel

    from dynrank.merge import main as merge_main

    model, tok = tiny_roberta(seed=4)
    base = copy.deepcopy(model)
    base.save_pretrained(tmp_path / "base")
    m = make_method(r=2, initial_budget=8, pruning_interval=2)
    m.wrap(model)
    m.setup(30)
    x = _train(model, m, tok, 30)
    assert m.done
    ranks = m.summary()["ranks"]
    assert len(set(ranks.values())) > 1, ranks  # the budget moved between matrices
    model.eval()
    with torch.no_grad():
        ref = model(input_ids=x).logits
    out = m.export(tmp_path / "adapter", base_name=str(tmp_path / "base"), task_type="seq_cls")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["rank_pattern"] == {k: v for k, v in ranks.items() if v > 0}
    for k, v in cfg["rank_pattern"].items():  # PEFT's alpha_m / r_m equals DoRA's alpha / r0
        assert cfg["alpha_pattern"][k] / v == pytest.approx(8 / 8)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), str(out)).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=x).logits, ref, atol=1e-5, rtol=0)
    # the merge command: a plain HF model, reloaded from disk
    assert merge_main([str(out), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    mask = os.umask(0)
    os.umask(mask)
    assert {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "merged").glob("*.safetensors")} == {
        "model.safetensors": 0o666 & ~mask}  # the umask's mode, as results and adapters (not safetensors' 0600)
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=x).logits, ref, atol=1e-5, rtol=0)


def test_merge_cli_base_failure_is_one_line(tmp_path, capsys):
    from safetensors.torch import save_file

    from dynrank.merge import main as merge_main

    (tmp_path / "a").mkdir()
    (tmp_path / "a/adapter_config.json").write_text(json.dumps({"task_type": "SEQ_CLS", "base_model_name_or_path": str(tmp_path / "nope")}))
    save_file({"w": torch.zeros(2)}, str(tmp_path / "a/adapter_model.safetensors"))  # complete weights: the base fails
    assert merge_main([str(tmp_path / "a"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: could not load the base model") and len(err.splitlines()) == 1


def test_state_dict_round_trip_through_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    model, tok = tiny_roberta()
    m = make_method(r=2, initial_budget=4)
    m.wrap(model)
    m.setup(20)
    _train(model, m, tok, 12)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "s.safetensors"))
    model2, _ = tiny_roberta()
    m2 = make_method(r=2, initial_budget=4)
    m2.wrap(model2)
    m2.setup(20)
    m2.load_state_dict(load_file(str(tmp_path / "s.safetensors")))
    assert torch.equal(m2.importance.ema, m.importance.ema) and torch.equal(m2.pruning.mask, m.pruning.mask)
    assert m2.done == m.done and m.done  # T=20: pruning ends at step 10
    assert torch.equal(m2.pruning.keep, (~m.pruning.mask).float())


def test_param_counts_roberta_base():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    got = {}
    for r, paper in ((8, 1.31e6), (2, 0.34e6)):
        with torch.device("meta"):  # the real architecture, no memory, no forward
            model = RobertaForSequenceClassification(RobertaConfig(num_labels=2))
        m = make_method(r=r)
        m.wrap(model)
        pc = m.param_counts()
        per_rank = 12 * (4 * (768 + 768 + 1) + 2 * (768 + 3072 + 1))  # A row + B column + c, 72 matrices
        assert pc["adapter"] == r * per_rank == r * 165_888 + 72 * r  # = LoRA's + one c per component
        assert pc["adapter_initial"] == math.ceil(1.5 * r) * per_rank
        assert abs(pc["adapter"] - paper) / paper < 0.03
        got[r] = pc
    print(f"\nDoRA RoBERTa-base params: r8 {got[8]['adapter']:,} (paper 1.31M), r2 {got[2]['adapter']:,} "
          f"(paper 0.34M); initial {got[8]['adapter_initial']:,} / {got[2]['adapter_initial']:,}")


def test_bart_and_bert_targets_and_rank_map(tmp_path):
    from transformers import BartForSequenceClassification, BertConfig, BertForSequenceClassification

    from dynrank.rankmap import draw_rank_map

    torch.manual_seed(5)
    mcfg = OmegaConf.create({"tiny": TINY, "family": "bart"})
    bart = BartForSequenceClassification(build_tiny_config(mcfg, "bart", 100))
    m = make_method(family="bart", r=2)
    m.wrap(bart)
    m.setup(100)
    assert m.n_modules == 2 * 6 + 2 * 6 + 2 * 4  # encoder, decoder self + FFN, decoder cross-attention
    x = torch.randint(3, 100, (2, 7))
    x[:, -1] = 2
    bart(input_ids=x, labels=torch.tensor([0, 1])).loss.backward()
    m.after_step(1)
    rm = m.summary()["rank_map"]
    assert rm["rows"][:6] == ["query", "key", "value", "attn_out", "ffn_up", "ffn_down"]
    assert rm["rows"][6:] == ["cross_query", "cross_key", "cross_value", "cross_attn_out"]
    assert rm["cols"] == ["enc.0", "enc.1", "dec.0", "dec.1"]
    assert rm["counts"][6][:2] == [None, None] and rm["counts"][6][2:] == [3, 3]
    assert draw_rank_map(rm, tmp_path / "bart.png").stat().st_size > 1000
    bert = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64))
    mb = make_method(family="bert", r=8)
    mb.wrap(bert)
    assert mb.n_modules == 12 and mb.r0 == 12


@pytest.mark.slow
def test_cli_end_to_end_with_export(tmp_path):
    args = ["task=cola", "method=dora", "model=tiny", f"data.dir={SHARED_GLUE}", "train.epochs=2",
            "data.max_train_samples=256", "data.max_eval_samples=64", "train.export=true", "train.progress=false",
            f"data.cache_dir={tmp_path / 'cache'}", f"results.store={tmp_path / 'store'}",
            f"hydra.run.dir={tmp_path / 'run'}"]
    p = cli(args, cwd=tmp_path, env=ONE_THREAD)
    assert p.returncode == 0, p.stderr
    res = json.loads(result_file(tmp_path / "store/tiny/cola/dora-r8").read_text())
    s = res["method_summary"]
    assert s["initial_budget"] == 12 and s["final_budget"] == 8 and s["pruning_done"]
    assert s["components"] == 12 * 12 and s["surviving"] <= 12 * 8
    assert len(s["rank_map"]["counts"]) == 6 and s["rank_map"]["cols"] == ["0", "1"]
    assert res["params"]["adapter"] == s["params_final"] < s["params_initial"]
    run = tmp_path / "run"
    assert (run / "rank_map.png").stat().st_size > 1000
    assert json.loads((run / "rank_map.json").read_text())["rank_map"] == s["rank_map"]
    assert (run / "adapter/adapter_model.safetensors").exists()
    assert json.loads((run / "adapter/adapter_config.json").read_text())["rank_pattern"]


@pytest.mark.slow
def test_low_budget_without_dem_runs(tmp_path):
    from dynrank.driver import run

    cfg = compose(tiny_overrides(tmp_path, "method=dora", "budget=r2", "method.dem=false", "variant=nodem",
                                 "data.max_train_samples=128", "train.epochs=2"))
    m_cfg = cfg.method
    assert m_cfg.reg_coef == 0.3 and m_cfg.pruning_interval == 10  # Table 8 via ${task.*}
    res = run(cfg, tmp_path / "run")
    s = res["method_summary"]
    assert s["initial_budget"] == 3 and s["final_budget"] == 2 and s["pruning_done"]
    assert s["surviving"] == 36 - int(36 * (3 - 2) / 3)
    assert re.fullmatch(r"tiny/cola/dora-r2-nodem/lr2e-3-[0-9a-f]{8}/seed1", res["run_id"])


@pytest.mark.slow
def test_initial_budget_below_final_fails_with_one_line(tmp_path):
    p = cli(["task=cola", "method=dora", "model=tiny", "budget=r8", "method.initial_budget=4",
             f"data.dir={SHARED_GLUE}", f"data.cache_dir={tmp_path / 'cache'}", f"results.store={tmp_path / 's'}",
             f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=ONE_THREAD)
    assert p.returncode == 2
    err = p.stderr.strip()
    assert err.startswith("error: method.initial_budget=4 is below the final budget budget.r=8") and len(err.splitlines()) == 1


def test_rank_map_aggregate_over_seeds(tmp_path):
    from dynrank.rankmap import aggregate, build_rank_map, draw_heatmap

    a = build_rank_map([("ffn_down", "dec.0", 2), ("query", "enc.0", 4), ("cross_query", "dec.0", 1)])
    b = build_rank_map([("ffn_down", "dec.0", 3), ("query", "enc.0", 6), ("cross_query", "dec.0", 0)])
    assert a["rows"] == ["query", "ffn_down", "cross_query"] and a["cols"] == ["enc.0", "dec.0"]
    mean = aggregate([a, b])
    assert mean["counts"] == [[5.0, None], [None, 2.5], [None, 0.5]] and mean["runs"] == 2
    png = draw_heatmap(mean["counts"], mean["rows"], mean["cols"], tmp_path / "mean.png", title="mean of 2 seeds")
    assert png.stat().st_size > 1000
    with pytest.raises(ValueError):
        aggregate([a, build_rank_map([("query", "0", 1)])])
