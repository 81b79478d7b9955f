"""Stacked runs (``train.stack``): several runs of one cell trained as one model equal the same runs trained alone.

With dropout on (each run its own keyed stream, dynrank/dropout.py), each stacked run's losses, dev metrics and
final trainable tensors (its checkpoint: the parameters, AdamW's moments, the method's state: DoRA's importance and
masks, AdaLoRA's EMAs and rank pattern) equal its solo run's to float rounding, for every method that stacks, for
seeds and for a learning-rate grid, through DoRA's and AdaLoRA's pruning; the stack packed (train.pack), the solo
runs padded. Also: per-run clipping, one run's NaN, resume, runs finished already.
On a GPU, tests/test_gpu.py runs the same comparison.
"""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import cli, compose, tiny_overrides
from dynrank import methods
from dynrank.errors import TrainingError
from dynrank.driver import run_side_by_side
from dynrank.stacking import stacks

STACKING = methods.names(stacks=True)  # every method (full fine-tuning: on RoBERTa)


def cfg(tmp_path, method, seed, lr, store, *extra, device="cpu"):
    over = [f"method={method}", f"seed={seed}", f"train.lr={lr}", f"results.store={tmp_path / store}",
            "data.max_train_samples=48", "train.batch_size=8", "train.log_every=1", f"train.device={device}",
            "train.stack=true", *extra]
    return compose(tiny_overrides(tmp_path, *over))


def train(cfgs, dirs):
    return run_side_by_side(cfgs, dirs)


def checkpoint_tensors(run_dir):
    return load_file(str(run_dir / "checkpoint/tensors.safetensors"))


def assert_same_runs(stacked_dirs, solo_dirs, stacked, solo, atol=1e-5):
    """Losses to float rounding; tensors to 1e-5 absolute: a batched GEMM over R runs rounds differently from R=1,
    and AdamW's g / sqrt(v) turns that rounding in a near-zero gradient into a difference of up to ~1e-6 (DyLoRA's
    B at lr 4e-3, torch 2.13 CPU), far below one step (the learning rate)."""
    for a, b, da, db in zip(stacked, solo, stacked_dirs, solo_dirs):
        la, lb = [h["train_loss"] for h in a["epochs"]], [h["train_loss"] for h in b["epochs"]]
        assert la == pytest.approx(lb, rel=1e-5, abs=1e-6), (a["run_id"], la, lb)
        assert a["final"]["dev"] == pytest.approx(b["final"]["dev"]), a["run_id"]
        assert a["method_summary"] == b["method_summary"], a["run_id"]  # rank maps, surviving components
        ta, tb = checkpoint_tensors(da), checkpoint_tensors(db)
        assert ta.keys() == tb.keys()
        for k in ta:
            if not k.startswith("rng."):
                assert torch.allclose(ta[k].float(), tb[k].float(), rtol=1e-4, atol=atol), (a["run_id"], k)


@pytest.mark.slow
@pytest.mark.parametrize("method", STACKING)
def test_stacked_runs_equal_solo_runs(method, tmp_path):
    """Runs of two seeds and two learning rates, stacked and packed, against each alone and padded, dropout on
    (DoRA and AdaLoRA prune inside the 12 steps); tests/test_gpu.py stacks three on a GPU."""
    grid = [(1, 1e-3), (2, 4e-3)]
    cfgs = [cfg(tmp_path, method, s, lr, "stacked", "train.epochs=2", "train.pack=true") for s, lr in grid]
    dirs = [tmp_path / "stacked" / f"run{i}" for i in range(len(grid))]
    assert [len(g) for g in stacks([_opened(c, d) for c, d in zip(cfgs, dirs)])] == [2]
    stacked = train(cfgs, dirs)
    assert all(r["training"]["stacked_runs"] == 2 and r["training"]["packed"] for r in stacked)
    solo_dirs = [tmp_path / "solo" / f"run{i}" for i in range(len(grid))]
    solo = [train([cfg(tmp_path, method, s, lr, "solo", "train.epochs=2")], [d])[0]
            for (s, lr), d in zip(grid, solo_dirs)]
    assert all(r["training"]["stacked_runs"] == 1 for r in solo)
    assert_same_runs(dirs, solo_dirs, stacked, solo)
    if method in ("dora", "adalora"):  # the allocations moved, each run its own
        assert stacked[0]["method_summary"]["rank_map"] != stacked[1]["method_summary"]["rank_map"]


def _opened(c, d):
    from dynrank.resume import Run

    run = Run(c, d)
    run.close()
    return run


@pytest.mark.slow
def test_full_fine_tuning_stacks_on_roberta_and_runs_side_by_side_elsewhere(tmp_path):
    """RoBERTa's every weight can be one per run; BART ties its token embeddings to its LM head, BERT broadcasts
    its position ids over the batch."""
    cfgs = [cfg(tmp_path, "full", s, 1e-4, "s") for s in (1, 2)]
    assert [len(g) for g in stacks([_opened(c, tmp_path / f"r{i}") for i, c in enumerate(cfgs)])] == [2]
    from dynrank.stacking import stacking

    bart = compose(["task=xsum", "model=bart_base", "method=full", "train.stack=true"])
    bert = compose(["task=rte", "model=minilm", "method=full", "train.stack=true"])
    assert stacking(cfgs[0], torch.device("cpu"))
    assert not stacking(bart, torch.device("cpu")) and not stacking(bert, torch.device("cpu"))


@pytest.mark.slow
def test_each_run_clips_its_own_gradients(tmp_path):
    """One run at an absurd learning rate (its gradients explode) beside a sane one: the sane run trains exactly
    as alone, and the other stops with the NaN error once the sane run has finished and written its results."""
    sane = cfg(tmp_path, "lora", 1, 1e-3, "st")
    wild = cfg(tmp_path, "lora", 2, 1e30, "st")
    dirs = [tmp_path / "st/a", tmp_path / "st/b"]
    with pytest.raises(TrainingError, match=r"loss became NaN/inf .*seed 2, lr 1e\+30"):
        train([sane, wild], dirs)
    alone = train([cfg(tmp_path, "lora", 1, 1e-3, "solo")], [tmp_path / "solo/a"])
    stacked = json.loads((dirs[0] / "results.json").read_text())
    assert_same_runs(dirs[:1], [tmp_path / "solo/a"], [stacked], alone)
    assert not (dirs[1] / "results.json").exists() and not (dirs[1] / "checkpoint").exists()


@pytest.mark.slow
@pytest.mark.parametrize("stack", ["false", "true"])
def test_a_diverging_run_stops_alone_and_is_left_as_it_is_when_run_again(tmp_path, stack):
    """An lr grid whose largest rate diverges, side by side (a CPU's default): the NaN ended the command at once, the
    other run stopped mid-epoch with no checkpoint and no results, the error named the seed but not the rate, and the
    same command failed at the same step every time. Now the other run finishes (results, checkpoint), the command
    ends with the error naming seed and rate, and run again it says once that the run diverged and trains nothing."""
    runs = [cfg(tmp_path, "lora", 1, lr, "st", "train.epochs=2", f"train.stack={stack}") for lr in (1e-3, 1e6)]
    dirs = [tmp_path / "st/a", tmp_path / "st/b"]
    assert [len(group) for group in stacks([_opened(c, d) for c, d in zip(runs, dirs)])] == (
        [1, 1] if stack == "false" else [2])
    nan = r"loss became NaN/inf by step \d+ \(epoch 1, seed 1, lr 1e\+06\)"
    with pytest.raises(TrainingError, match=rf"^{nan}; lower train.lr, .* the command run again leaves the run as "
                                            r"it is \(train.resume=false trains it again\)$"):
        train(runs, dirs)
    sane = json.loads((dirs[0] / "results.json").read_text())
    assert [h["epoch"] for h in sane["epochs"]] == [1, 2] and json.loads(
        (dirs[0] / "checkpoint/state.json").read_text())["epoch"] == 2
    assert (tmp_path / "st" / f"{sane['run_id']}.json").exists()
    assert not (dirs[1] / "results.json").exists() and (dirs[1] / "diverged.json").exists()
    files = {p: p.read_bytes() for p in (tmp_path / "st").rglob("*") if p.is_file()}
    with pytest.raises(TrainingError, match=rf"^it diverged in an earlier attempt \({nan}\) and is left as it is: "
                                            r"add train.resume=false to train it again, or lower train.lr \(another "
                                            r"run\)$"):
        train(runs, dirs)
    assert {p: p.read_bytes() for p in (tmp_path / "st").rglob("*") if p.is_file()} == files  # nothing trained
    assert _opened(runs[0], dirs[1]).failed is None  # (another run's record, as in a run directory set by hand)


def test_clip_per_run_scales_each_row_to_its_own_norm():
    from dynrank.optim import clip_per_run

    g = torch.tensor([[3.0, 4.0], [0.3, 0.4], [300.0, 400.0]])
    norms = clip_per_run(g, 1.0)
    assert norms.tolist() == pytest.approx([5.0, 0.5, 500.0])
    assert torch.linalg.vector_norm(g, dim=1).tolist() == pytest.approx([1.0, 0.5, 1.0], rel=1e-5)


def test_run_adamw_is_torch_adamw_per_run():
    """Each row of the flat buffer steps exactly as torch.optim.AdamW with that run's learning rate."""
    from torch import nn

    from dynrank.optim import Flat, RunAdamW

    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(3, 4, 5))
    init = p.detach().clone()
    flat = Flat([p], 3, stacked=True)
    opt = RunAdamW(flat, [1e-3, 1e-2, 1e-1], weight_decay=0.01, total_steps=10, warmup_steps=2)
    grads = [torch.randn(3, 4, 5) for _ in range(4)]
    for step, g in enumerate(grads):
        opt.set_step(step)
        flat.grad.copy_(g.view(3, -1))
        opt.step()
    for k, lr in enumerate([1e-3, 1e-2, 1e-1]):
        q = nn.Parameter(init[k].clone())
        ref = torch.optim.AdamW([q], lr=lr, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(ref, lambda s: s / 2 if s < 2 else (10 - s) / 8)
        for g in grads:
            q.grad = g[k].clone()
            ref.step()
            sched.step()
        assert torch.allclose(p[k], q, atol=1e-7)
        state = opt.run_state_dict(k)
        assert torch.allclose(state["state"][0]["exp_avg"], ref.state[q]["exp_avg"])


@pytest.mark.slow
def test_killed_stack_resumes_every_run(tmp_path, caplog):
    """A stacked job killed (kill -9) right after its first epoch's checkpoints resumes every run from its checkpoint
    and ends as an uninterrupted stacked job; a stack where one run is finished already trains only the others."""
    import shutil

    from dynrank.config import run_id
    from dynrank.train import runs_of

    over = ["method=dora", "train.batch_size=8", "train.epochs=2", "train.stack=true", "method.dropout=0",
            "seeds=[1,2,3]", "data.max_eval_samples=32"]

    def job(name):
        cfgs = runs_of(compose(tiny_overrides(tmp_path, *over, f"results.store={tmp_path / name}")))
        return cfgs, [tmp_path / name / "runs" / run_id(c) for c in cfgs]

    killed = cli([*tiny_overrides(tmp_path, *over), f"results.store={tmp_path / 'killed'}",
                  f"hydra.run.dir={tmp_path / 'killed/runs'}"], cwd=tmp_path, env={"OMP_NUM_THREADS": "1"},
                 kill_after_epoch=1)
    assert killed.returncode == 137, killed.stderr
    with caplog.at_level("INFO", logger="dynrank"):
        resumed = train(*job("killed"))
    assert sum("resumed from" in m for m in caplog.messages) == 3
    assert all(r["training"]["stacked_runs"] == 3 for r in resumed)
    whole = train(*job("whole"))
    for ra, rb in zip(whole, resumed):
        assert [h["dev"] for h in ra["epochs"]] == [h["dev"] for h in rb["epochs"]]
        assert [h["train_loss"] for h in ra["epochs"]] == pytest.approx([h["train_loss"] for h in rb["epochs"]])
    # one run finished already: the others train, stacked; the finished one is left as it is
    cfgs, dirs = job("whole")
    before = (dirs[1] / "results.json").read_text()
    for d in (dirs[0], dirs[2]):
        shutil.rmtree(d)
    again = train(cfgs, dirs)
    assert [r["training"]["stacked_runs"] for r in (again[0], again[2])] == [2, 2]
    assert (dirs[1] / "results.json").read_text() == before


def test_schedules_linear_and_constant():
    """train.schedule: warm-up, then linear decay to 0 (transformers' get_linear_schedule_with_warmup) or constant
    (BitFit's source); each run's rate is its base rate times the schedule's factor."""
    from transformers import get_linear_schedule_with_warmup

    from dynrank.optim import Flat, RunAdamW, lr_factor

    p = torch.nn.Parameter(torch.zeros(1))
    ref = get_linear_schedule_with_warmup(torch.optim.SGD([p], lr=1.0), 3, 10)
    linear = []
    for _ in range(10):
        linear.append(ref.get_last_lr()[0])
        ref.step()
    assert [lr_factor(s, 10, 3) for s in range(10)] == pytest.approx(linear)
    assert [lr_factor(s, 10, 3, "constant") for s in range(10)] == pytest.approx([0, 1 / 3, 2 / 3] + [1.0] * 7)
    q = torch.nn.Parameter(torch.zeros(2, 3))
    opt = RunAdamW(Flat([q], 2, stacked=True), [1e-3, 2e-3], weight_decay=0.0, total_steps=10, warmup_steps=0,
                   schedule="constant")
    for step in (0, 5, 9):
        opt.set_step(step)
        assert opt.lr.tolist() == pytest.approx([1e-3, 2e-3]) and opt.lrs(step) == pytest.approx([1e-3, 2e-3])


def test_each_methods_optimizer_settings_reach_the_optimizer(tmp_path):
    """Issue 20's settings from the learning rate's source reach the step: BitFit's constant schedule and Adam eps,
    full fine-tuning's betas and no clipping, label smoothing in the loss."""
    from dynrank import methods
    from dynrank.step import make_optimizer, prepare_model
    from dynrank.tasks.glue import classification_losses

    for method, want in (("bitfit", {"schedule": "constant", "eps": 1e-6}),
                         ("full", {"betas": (0.9, 0.98), "eps": 1e-6})):
        c = compose(["task=rte", f"method={method}", "model=tiny"])
        m = methods.build(c, "roberta")
        model = m.wrap(torch.nn.Sequential(torch.nn.Linear(2, 2)))
        _, flat = prepare_model(model, m, torch.device("cpu"), False, False)
        opt = make_optimizer(c.train, m, flat, [1e-3], 10)
        assert all(getattr(opt, k) == v for k, v in want.items()), (method, want)
    assert compose(["task=rte", "method=full"]).train.max_grad_norm is None  # fairseq: no clipping
    logits, labels = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])

    class Model(torch.nn.Module):
        def forward(self, **kw):
            return type("Out", (), {"logits": logits})

    got = classification_losses(Model(), {"input_ids": torch.zeros(4, 2), "labels": labels}, runs=2,
                                label_smoothing=0.1)
    want = torch.stack([torch.nn.functional.cross_entropy(logits[k * 2:k * 2 + 2], labels[k * 2:k * 2 + 2],
                                                          label_smoothing=0.1) for k in range(2)])
    assert torch.allclose(got, want)


def test_stack_size_follows_the_gpus_free_memory():
    """train.max_stack=auto: on a GPU as many runs as its free memory holds at the measured MiB per padded token
    (each run's batch at the task's longest; at most 16); without a GPU, 65,536 padded tokens a step."""
    from dynrank.stacking import MEMORY_SHARE, MIB_PER_TOKEN, stack_size

    cola = compose(["task=cola", "method=dora", "train.batch_size=32"])
    xsum = compose(["task=xsum", "method=lora", "model=bart_base", "train.batch_size=64"])
    assert stack_size(cola) == 65_536 // (32 * 128)  # this CPU: the token bound
    assert stack_size(xsum) == 1
    h100 = 78 * 1024
    assert stack_size(cola, free_mib=h100) == 16  # capped
    per_run = 64 * (768 + 64) * MIB_PER_TOKEN["xsum"]
    assert stack_size(xsum, free_mib=h100) == int(MEMORY_SHARE * h100 // per_run) == 3
    assert stack_size(xsum, free_mib=10_000) == 1  # never below one run
    assert stack_size(compose(["task=cola", "method=dora_wd", "train.batch_size=32"]), free_mib=20_000) < \
        stack_size(cola, free_mib=20_000)  # Weight-Decomposed LoRA keeps more a token
    assert stack_size(compose(["task=cola", "method=dora", "train.max_stack=3"]), free_mib=h100) == 3


def test_run_adamw_spares_the_no_decay_group_as_torch_adamw_param_groups():
    """With a no-decay group (train.no_decay: hf_trainer), each row steps exactly as torch.optim.AdamW with two
    parameter groups, the decayed ones and the rest at weight decay 0, as HF Trainer.create_optimizer builds it."""
    from torch import nn

    from dynrank.optim import Flat, RunAdamW

    torch.manual_seed(0)
    ps = [nn.Parameter(torch.randn(2, 4, 3)), nn.Parameter(torch.randn(2, 3)), nn.Parameter(torch.randn(2, 5)),
          nn.Parameter(torch.randn(2, 2, 2))]
    decay = [True, False, False, True]  # a weight, two biases side by side, a weight
    init = [p.detach().clone() for p in ps]
    flat = Flat(ps, 2, stacked=True)
    opt = RunAdamW(flat, [1e-2, 1e-1], weight_decay=0.5, total_steps=6, warmup_steps=0, decay=decay)
    grads = [[torch.randn_like(p) for p in ps] for _ in range(3)]
    for step, gs in enumerate(grads):
        opt.set_step(step)
        for i, g in enumerate(gs):
            flat.view(flat.grad, i).copy_(g)
        opt.step()
    for k, lr in enumerate([1e-2, 1e-1]):
        qs = [nn.Parameter(x[k].clone()) for x in init]
        ref = torch.optim.AdamW([{"params": [q for q, d in zip(qs, decay) if d], "weight_decay": 0.5},
                                 {"params": [q for q, d in zip(qs, decay) if not d], "weight_decay": 0.0}], lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(ref, lambda s: (6 - s) / 6)
        for gs in grads:
            for q, g in zip(qs, gs):
                q.grad = g[k].clone()
            ref.step()
            sched.step()
        for p, q in zip(ps, qs):
            assert torch.allclose(p[k], q, atol=1e-7)
    # the biases moved by Adam alone: with every parameter decayed they would not be where they are
    every = RunAdamW(Flat([nn.Parameter(init[1].clone())], 2, stacked=True), [1e-2, 1e-1], weight_decay=0.5,
                     total_steps=6)
    for step, gs in enumerate(grads):
        every.set_step(step)
        every.flat.grad.copy_(gs[1])
        every.step()
    assert not torch.allclose(every.flat.data, ps[1].detach())


def test_no_decay_rule_spares_biases_and_layer_norms_as_hf_trainer():
    from torch import nn

    from dynrank.optim import decays

    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2, bias=False))
    params = list(model.parameters())  # 0.weight, 0.bias, 1.weight, 1.bias, 2.weight
    assert decays(model, params, "none") == [True] * 5
    assert decays(model, params, "hf_trainer") == [True, False, False, False, True]
    with pytest.raises(ValueError, match="no-decay rule"):
        decays(model, params, "bias_only")
