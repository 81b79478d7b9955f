"""Packed steps (``dynrank/packing.py``) and one dropout stream per run (``dynrank/dropout.py``).

- packed = padded: every method's task losses and gradients, GLUE and SQuAD, RoBERTa and BERT, with dropout ON
  (the masks are keyed by a token's sequence and position, not by where it sits in the batch) and off;
- the keyed masks: the integer hash against plain Python ints, the keep rate, a run's masks independent of the
  runs beside it;
- the encoder walk against transformers' own forward (evaluation mode).
On a GPU, tests/test_gpu.py checks the Triton kernel against the reference bit for bit and graphed packed steps.
"""
import pytest
import torch

from conftest import ROOT, compose, interpreted, tiny_overrides
from dynrank import dropout, inputs, methods
from dynrank.packed_batch import bucket, pack, view_width
from dynrank.step import prepare_model

STACKING = methods.names(stacks=True)  # every method (full fine-tuning: on RoBERTa)
SQUAD = ROOT / "tests" / "fixtures" / "squad"
MINILM = ROOT.parent / "shared" / "models" / "all-MiniLM-L6-v2"


def build(tmp_path, method, *extra, runs=2, seeds=None):
    over = [f"method={method}", *extra]
    if "dropout" in compose(tiny_overrides(tmp_path, *over)).method:  # the methods with a dropout of their own
        over.append("method.dropout=0.1")
    return prepared(compose(tiny_overrides(tmp_path, *over)), runs, seeds)


def prepared(cfg, runs: int, seeds=None):
    """(task, train set, model): ``cfg``'s data, its method wrapped around its model for ``runs`` stacked runs (seeds
    1..runs unless ``seeds``), prepared on the CPU as the loop prepares it (each run's dropout stream)."""
    shared = inputs.load_data(cfg)
    m = methods.build(cfg, cfg.model.family, runs=runs)
    model = m.wrap(shared.task.build_model())
    seeds = seeds or list(range(1, runs + 1))
    m.init_runs(seeds)
    model, _ = prepare_model(model, m, torch.device("cpu"), False, False, seeds=seeds)
    return shared.task, shared.train_set, model


def losses_and_grads(task, ds, model, per_run, packed, step=5):
    model.zero_grad()
    model.dropout_stream.set_step(step)
    loss = task.run_losses(model, task.train_batch(ds, per_run, packed), len(per_run))
    loss.sum().backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_packed_equals_padded(task, ds, model, per_run):
    model.train()
    (la, ga), (lb, gb) = (losses_and_grads(task, ds, model, per_run, packed) for packed in (False, True))
    assert torch.allclose(la, lb, rtol=1e-5, atol=1e-6), (la, lb)
    for n in ga:
        assert torch.allclose(ga[n], gb[n], rtol=1e-4, atol=1e-6), n
    return la


@pytest.mark.slow
@pytest.mark.parametrize("method", STACKING)
def test_packed_equals_padded_glue_dropout_on(method, tmp_path):
    task, ds, model = build(tmp_path, method, runs=2)
    per_run = ([0, 3, 5, 7, 30], [1, 2, 9, 11, 40])
    loss = assert_packed_equals_padded(task, ds, model, per_run)
    model.eval()  # dropout was on: the training loss is not the evaluation loss
    with torch.no_grad():
        plain = task.run_losses(model, task.train_batch(ds, per_run, True), 2)
    assert not torch.allclose(loss, plain)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "dora", "houlsby"])
def test_packed_equals_padded_squad(method, tmp_path):
    """SQuAD windows (several per question, different lengths), the QA head on every token."""
    task, ds, model = build(tmp_path, method, "task=squad_v1", f"data.dir={SQUAD}", "data.max_train_samples=null")
    n = len(ds)
    assert n >= 6
    assert_packed_equals_padded(task, ds, model, ([0, n - 1, 2], [1, 3, n - 2]))


@pytest.mark.slow
@pytest.mark.skipif(not MINILM.exists(), reason="no MiniLM weights in ../shared/models")
@pytest.mark.parametrize("task_name", ["mrpc", "squad_v1"])
def test_packed_equals_padded_bert(task_name, tmp_path):
    """BERT's family (MiniLM, real weights): position ids from 0, its pooler, segment ids for SQuAD."""
    extra = ["model=minilm", f"model.path={MINILM}", f"task={task_name}"]
    if task_name == "squad_v1":
        extra += [f"data.dir={SQUAD}", "data.max_train_samples=null"]
    task, ds, model = build(tmp_path, "lora", *extra)
    assert_packed_equals_padded(task, ds, model, ([0, 2, 4], [1, 3, 5]))


def test_encoder_walk_equals_transformers_forward(tmp_path):
    """Evaluation mode: the packed forward's logits are transformers' own (padded) forward's."""
    from dynrank.packing import classification_logits

    task, ds, model = build(tmp_path, "lora", runs=2)
    for p in model.parameters():  # B = 0 at init: give the adapters something to add
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    model.eval()
    per_run = ([0, 3, 5], [1, 2, 9])
    padded = task.train_batch(ds, per_run, False)
    with torch.no_grad():
        want = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
        got = classification_logits(model, task.train_batch(ds, per_run, True))
    assert torch.allclose(want, got, atol=1e-5)


@pytest.mark.parametrize("method", ["lora", "houlsby"])
def test_a_run_draws_the_same_masks_alone_and_stacked(method, tmp_path):
    """Seed 3's losses and gradients with dropout on: stacked beside seed 1 (run 1 of 2) = alone."""
    task, ds, stacked = build(tmp_path, method, runs=2, seeds=[1, 3])
    _, _, alone = build(tmp_path, method, runs=1, seeds=[3])
    batch3 = [4, 8, 15]
    for packed in (False, True):
        ls, gs = losses_and_grads(task, ds, stacked, ([0, 1, 2], batch3), packed)
        la, ga = losses_and_grads(task, ds, alone, (batch3,), packed)
        assert torch.allclose(ls[1], la[0], rtol=1e-5), (packed, ls, la)
        for n, g in ga.items():
            assert torch.allclose(gs[n][1], g[0], rtol=1e-4, atol=1e-7), (packed, n)


def test_keyed_hash_is_lowbias32_on_plain_ints():
    M = 0xFFFFFFFF

    def mix(x):
        x ^= x >> 16
        x = (x * 0x7FEB352D) & M
        x ^= x >> 15
        x = (x * 0x846CA68B) & M
        return x ^ (x >> 16)

    seeds, step, site, p = torch.tensor([3, 2**31 + 5]), torch.tensor(123456), 9, 0.3
    K = [mix(mix(mix(s) ^ 123456) ^ ((site * 0x9E3779B9) & M)) for s in seeds.tolist()]
    keys = torch.tensor([0, 1, 700, 4_000_000])
    mask = dropout.keep_mask(4, 10, keys, 10, seeds, step, site, p)
    want = [[(mix(((k * 10 + j) & M) ^ K[r // 2]) >> 8) >= round(p * 2**24) for j in range(10)]
            for r, k in enumerate(keys.tolist())]
    assert mask.tolist() == want


def test_keyed_masks_keep_one_minus_p_and_differ_by_step_site_and_seed():
    keys = torch.arange(2000) * 7
    one = torch.tensor([5])

    def m(seed=one, step=1, site=0):
        return dropout.keep_mask(2000, 256, keys, 256, seed, torch.tensor(step), site, 0.1)
    assert abs(m().float().mean().item() - 0.9) < 0.003
    for other in (m(step=2), m(site=1), m(seed=torch.tensor([6]))):
        agree = (m() == other).float().mean().item()
        assert abs(agree - (0.9 ** 2 + 0.1 ** 2)) < 0.005  # independent masks agree 82% of the time


def test_pack_layout():
    rows = [[0, 5, 2], [0, 6, 7, 2], [0, 9, 2], [0, 4, 4, 4, 4, 2]]  # two runs of two sequences
    b = pack(rows, 2, pad_id=1, position_offset=2, multiple=8)
    block = bucket(9)
    assert b["input_ids"].shape == (2 * block,)
    assert b["seq_start"].tolist() == [0, 3, block, block + 3]
    assert b["input_ids"][:7].tolist() == [0, 5, 2, 0, 6, 7, 2] and (b["input_ids"][7:block] == 1).all()
    assert b["position_ids"][3:7].tolist() == [2, 3, 4, 5]
    assert b["valid"].shape == (4, 16) and b["valid"].sum(1).tolist() == [3, 4, 3, 6]  # view_width(6, 8)
    assert b["token_keys"][block + 3:block + 5].tolist() == [512, 513]  # run 1's second sequence, in its run
    x = torch.arange(2 * block)
    assert x[b["gather"]].view(4, 16)[1, :4].tolist() == [3, 4, 5, 6]  # sequence 1's rows, then padding slots
    slots = x[b["gather"]]  # the way there and back is the identity on real rows
    back = slots[b["scatter"]]
    real = b["input_ids"] != 1
    assert torch.equal(back[real], x[real])


def test_view_width_is_a_power_of_two_within_a_tile():
    """Bucketed widths (CUDA graphs): a power of two up to the kernel's tile, the multiple beyond; exact on a CPU."""
    assert [view_width(n, 8) for n in (3, 17, 40, 64, 65, 72, 128)] == [16, 32, 64, 64, 128, 128, 128]
    assert [view_width(n, 8) for n in (129, 384)] == [136, 384]
    assert [view_width(n, 1) for n in (3, 40, 129)] == [3, 40, 129]


@pytest.mark.slow
def test_packed_equals_padded_with_bucketed_widths(tmp_path):
    """With the GPU's pad_to_multiple (8) the packed view is wider than the longest sequence (view_width): the
    slots past each sequence's end are masked, so the losses and gradients still equal the padded step's."""
    task, ds, model = build(tmp_path, "lora", "train.pad_to_multiple=8")
    assert task.pad_to_multiple == 8
    per_run = ([0, 3, 5, 7, 30], [1, 2, 9, 11, 40])
    batch = task.train_batch(ds, per_run, True)
    assert batch["valid"].shape[1] == view_width(int(batch["seq_len"].max()), 8) > int(batch["seq_len"].max())
    assert_packed_equals_padded(task, ds, model, per_run)


def test_bucket_bounds_filler_and_sizes():
    sizes = {bucket(n) for n in range(1, 5000)}
    assert all(bucket(n) >= n and bucket(n) - n <= max(16, n / 8) for n in range(1, 5000))
    assert len(sizes) < 120


@pytest.mark.slow
def test_packed_attention_kernel_in_triton_interpreter():
    """The GPU attention kernels (Triton, run by its interpreter on a CPU) equal their references, forward and
    backward, with the keyed attention dropout and without: the one-tile kernel and the tiled ones on packed rows
    (``attention.attend`` on the padded view; filler rows get no gradient; q, k and v apart and as the thirds of
    one projection, read in place), the tiled ones on padded views with a
    padding mask and causal (``tiled_attention.reference``; tiles of 64 x 64, 16 x 32 and 32 x 16), BART's
    stacked = solo dropout through them, and BART's packed step (the kernels on its rows, cross-attention included)
    = its padded step."""
    out = interpreted(ROOT / "tests" / "triton_attention_check.py")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "joint ok" in out.stdout and "packed bart ok" in out.stdout


def test_keyed_dropout_kernel_in_triton_interpreter():
    """The GPU dropout kernel (32-bit hash, 256-column blocks; Triton's interpreter on a CPU) keeps exactly the
    elements ``dropout.keep_mask`` keeps and scales them by 1/(1-p): RoBERTa's and BART's widths, seeds and row keys
    past 2^31, counters that wrap modulo 2^32."""
    out = interpreted(ROOT / "tests" / "triton_dropout_check.py")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "dropout ok" in out.stdout


def test_max_length_past_the_positions_is_one_line(tmp_path):
    """task.max_length over the model's positions (RoBERTa: 514 - 2) is refused before training, naming the bound."""
    from dynrank.errors import ConfigError
    from dynrank.driver import run

    cfg = compose(tiny_overrides(tmp_path, "task.max_length=600"))
    with pytest.raises(ConfigError, match=r"task.max_length=600 is longer than the 512 positions .*task.max_length=512"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_an_empty_sentence_packs_as_its_special_tokens(tmp_path):
    """An empty sentence is <s></s> (2 tokens): packed = padded with it in the batch."""
    task, ds, model = build(tmp_path, "lora")
    ds.columns["input_ids"][5] = [0, 2]
    ds.__dict__.pop("_flat", None)
    assert_packed_equals_padded(task, ds, model, ([5, 3, 0], [1, 2, 9]))


def test_keyed_masks_in_numpy_and_in_torch_ops_agree():
    """The CPU implementation (numpy uint32) and the GPU one without Triton (torch int64, graph-safe) agree."""
    seeds, step, keys = torch.tensor([3, 2**31 + 5]), torch.tensor(77), torch.arange(600) * 13
    K = dropout.stream_keys(seeds, step, 7).repeat_interleave(300)
    assert torch.equal(dropout.keep_mask(600, 1000, keys, 1000, seeds, step, 7, 0.1),
                       dropout._keep_mask_torch(1000, keys, 1000, K, 0.1))


def test_out_of_memory_in_a_kernel_is_raised_and_the_kernel_kept():
    """Out of memory inside a Triton kernel's call is memory, not the kernel: raised again, the kernel kept in use
    (a profile on 2026-12-07 ran every row after one out-of-memory row on the torch fallback, its steps 5x slower); a
    kernel that fails otherwise (a compile error) is not used again."""
    with pytest.raises(torch.OutOfMemoryError):
        dropout.kernel_failed("_triton_dropout", torch.OutOfMemoryError("CUDA out of memory"))
    assert "_triton_dropout" not in dropout._FAILED
    try:
        dropout.kernel_failed("_no_such_kernel", RuntimeError("PTX assembly failed"))
        assert "_no_such_kernel" in dropout._FAILED
    finally:
        dropout._FAILED.discard("_no_such_kernel")


@pytest.mark.parametrize("method,p", [("lora", 0.0), ("dora", 0.1), ("adalora", 0.1), ("dylora", 0.1)])
def test_low_rank_node_equals_autograd(method, p, tmp_path, monkeypatch):
    """A low-rank layer over a frozen linear is one autograd node (``layers._LowRank``), whose backward adds the
    adapter's input gradient inside the frozen weight's (``baddbmm_``, or the keyed dropout's backward in place),
    and in a packed step a layer's query, key and value are one node over their joint weights (``qkv.project``):
    the losses equal autograd's path bit for bit and every gradient to float rounding, with the adapter's dropout
    (each run's keyed stream) on and off, packed and padded, and a wrong mask in the backward fails."""
    from dynrank.methods import layers

    task, ds, model = prepared(compose(tiny_overrides(tmp_path, f"method={method}", f"method.dropout={p}")), 2)
    lows = [m for m in model.modules() if isinstance(m, layers.LowRankLinear)]
    assert all(isinstance(m.dropout, dropout.KeyedDropout) == (p > 0) for m in lows)
    with torch.no_grad():
        for q in model.parameters():
            if q.requires_grad:  # every factor (B, c, lambda) away from its zero init
                q.add_(torch.randn(q.shape, generator=torch.Generator().manual_seed(q.numel())) * 0.1)
    model.train()
    per_run = ([0, 3, 5], [1, 2, 9])
    from dynrank import qkv

    calls = []
    real, real_qkv = layers._LowRank.apply, qkv._QKV.apply
    monkeypatch.setattr(layers._LowRank, "apply", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(qkv._QKV, "apply", lambda *a: calls.extend([3]) or real_qkv(*a))
    for packed in (False, True):
        calls.clear()
        la, ga = losses_and_grads(task, ds, model, per_run, packed)
        # every adapted matrix went through a node; packed, each layer's query, key and value through one
        assert sum(calls) == len(lows) and (3 in calls) == packed, calls
        with monkeypatch.context() as m:
            m.setattr(layers, "_frozen_linear", lambda base: False)  # autograd's path: two gradients added
            lb, gb = losses_and_grads(task, ds, model, per_run, packed)
        assert torch.equal(la, lb), packed
        for n in ga:
            assert torch.allclose(ga[n], gb[n], rtol=1e-5, atol=1e-7), (packed, n)
    if p:  # the GPU kernel's way (no mask kept: keyed_dropout_add_ recomputes it from its keys) gives the same
        # gradients, and another site's mask in the backward fails
        monkeypatch.setattr(layers, "keyed_dropout_kept", lambda *a: (dropout.keyed_dropout(*a), None))
        lk, gk = losses_and_grads(task, ds, model, per_run, True)
        assert torch.equal(lk, la) and all(torch.allclose(ga[n], gk[n], rtol=1e-5, atol=1e-7) for n in ga)
        real_add = layers.keyed_dropout_add_
        monkeypatch.setattr(layers, "keyed_dropout_add_", lambda out, x, keys, w, seeds, step, site, q, mask:
                            real_add(out, x, keys, w, seeds, step, site + 1, q, mask=mask))
        lc, gc = losses_and_grads(task, ds, model, per_run, True)
        assert not all(torch.allclose(ga[n], gc[n], rtol=1e-5, atol=1e-7) for n in ga)


def test_low_rank_node_skips_a_frozen_inputs_gradient():
    """Below a frozen embedding the first layer's input needs no gradient: the node's backward then runs no GEMM on
    the frozen weight (autograd's path skips it too) and still gives A and B theirs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from dynrank.methods import layers

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 4, generator=g)
    A = torch.randn(2, 4, 3, generator=g, requires_grad=True)  # (R, d_in, r): At
    B = torch.randn(2, 3, 6, generator=g, requires_grad=True)  # (R, r, d_out): Bt
    for needs in (False, True):
        x = torch.randn(2, 5, 4, generator=g, requires_grad=needs)
        out = layers._LowRank.apply(x, W, None, A, B, None)
        with Ops() as ops:
            grads = torch.autograd.grad(out.sum(), (x, A, B) if needs else (A, B))
        assert ("aten.mm" in ops.names) == needs, ops.names
        want = torch.autograd.grad((x @ W.t() + torch.bmm(torch.bmm(x, A), B)).sum(), (x, A, B) if needs else (A, B))
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(grads, want))
