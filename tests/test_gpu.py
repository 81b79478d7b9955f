"""GPU-only checks (skipped without CUDA; run them on a GPU machine: pytest tests/test_gpu.py).

The CUDA-graph step must do the same math as the eager step: the loss trajectories of eager and graphed training
agree to float rounding, for every method that declares itself graph-safe, for one run and for stacked runs; stacked
runs equal the same runs trained alone (tests/test_stack.py, on the GPU); packed steps equal padded ones and the
dropout kernel equals its reference (dynrank/packing.py, dynrank/dropout.py).
"""
from functools import partial

import pytest
import torch

from conftest import compose
from dynrank import methods

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

METHODS = methods.names()


def _trajectory(method_name, graphs: bool, steps=24, bf16=False, seeds=(1,), device="cuda", packed=False,
                dropout=0.0, out: dict | None = None):
    """Losses (steps, runs) and final trainable numbers (runs, P) of the runs ``seeds`` stacked (run k: seed
    seeds[k], learning rate (seed) x the method's, its own three batches of 8 sequences of 4-16 tokens), padded or
    packed, dropout ``dropout`` (hidden, attention and the adapters': each run's own stream, dynrank.dropout)."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from dynrank.packed_batch import pack
    from dynrank.step import build_stack
    from dynrank.tasks.glue import classification_losses

    device, runs = torch.device(device), len(seeds)
    cfg = compose([f"method={method_name}", "task=cola"])
    if "dropout" in cfg.method:
        cfg.method.dropout = dropout
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(RobertaConfig(num_labels=2, hidden_size=128, num_hidden_layers=2,
                                                           num_attention_heads=2, intermediate_size=256,
                                                           hidden_dropout_prob=dropout,
                                                           attention_probs_dropout_prob=dropout, vocab_size=1000))
    stack = build_stack(cfg, model, family="roberta", seeds=list(seeds), lrs=[float(cfg.train.lr) * s for s in seeds],
                        losses=partial(classification_losses, runs=runs), device=device, total_steps=steps, amp=bf16,
                        graphs=graphs, clip=1.0)
    step = stack.stepper
    if out is not None:
        out["stepper"] = step
    per_run = []
    for seed in seeds:  # each run's own batches, whatever it is stacked with
        g = torch.Generator().manual_seed(100 + seed)
        per_run.append([([[0, *torch.randint(3, 1000, (int(n),), generator=g).tolist(), 2]
                          for n in torch.randint(2, 15, (8,), generator=g)],
                         torch.randint(0, 2, (8,), generator=g)) for _ in range(3)])
    batches = []
    for i in range(3):
        rows = [r for run in per_run for r in run[i][0]]
        if packed:
            b = pack(rows, runs, pad_id=1, position_offset=2, multiple=8)
        else:
            ids = torch.ones(len(rows), 16, dtype=torch.long)
            for j, r in enumerate(rows):
                ids[j, :len(r)] = torch.tensor(r)
            b = {"input_ids": ids, "attention_mask": (ids != 1).long()}
        b["labels"] = torch.cat([run[i][1] for run in per_run])
        batches.append({k: v.to(device) for k, v in b.items()})
    losses = []
    for s in range(steps):
        loss, _ = step(batches[s % 3], s)
        losses.append(loss.float().cpu())
    return torch.stack(losses), stack.flat.data.detach().cpu()


@pytest.mark.parametrize("runs", [1, 3])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", METHODS)
def test_graphed_step_matches_eager(name, bf16, runs):
    """fp32: to float rounding; bf16 (the fast path: bf16 backbone and layer norms, padded ranks): the same
    kernels run eagerly and replayed, so the losses agree to bf16 rounding. One run, and three stacked."""
    seeds = tuple(range(1, runs + 1))
    eager, _ = _trajectory(name, False, bf16=bf16, seeds=seeds)
    graphed, _ = _trajectory(name, True, bf16=bf16, seeds=seeds)
    assert torch.isfinite(graphed).all()
    tol = {"rtol": 1e-2, "atol": 1e-2} if bf16 else {"rtol": 1e-4, "atol": 1e-5}
    assert torch.allclose(eager, graphed, **tol), (eager, graphed)


@pytest.mark.parametrize("name", methods.names(stacks=True))
def test_stacked_runs_equal_solo_runs_on_gpu(name):
    """Three runs stacked (seeds 1-3, three learning rates) as CUDA graphs in fp32 against each run alone: the same
    losses and final trainable numbers (adapters, heads), through DoRA's and AdaLoRA's pruning (24 steps).
    tests/test_stack.py makes the same comparison through the whole loop on a CPU."""
    torch.backends.cuda.matmul.allow_tf32 = False
    losses, params = _trajectory(name, True, seeds=(1, 2, 3))
    for k, seed in enumerate((1, 2, 3)):
        alone_losses, alone_params = _trajectory(name, True, seeds=(seed,))
        assert torch.allclose(losses[:, k], alone_losses[:, 0], rtol=1e-4, atol=1e-5), (seed, losses[:, k],
                                                                                         alone_losses[:, 0])
        # parameters: AdamW turns rounding in near-zero gradients (AdaLoRA's masked triplets) into lr-sized
        # steps, so they agree less closely than the losses (H200, 2026-12-04: adalora's losses to 1.2e-7)
        assert torch.allclose(params[k], alone_params[0], rtol=1e-4, atol=1e-4), seed


def test_padded_lm_head_equals_the_head_on_gpu():
    """XSum's packed LM head on the weight padded to 50,272 rows (aligned GEMMs) gives the logits and the input
    gradient of the head on BART's 50,265 rows, in bf16 under autocast."""
    import types

    from torch import nn

    from dynrank import packing_bart

    torch.manual_seed(0)
    head = nn.Linear(64, 50265, bias=False).cuda().to(torch.bfloat16).requires_grad_(False)
    model = types.SimpleNamespace(lm_head=head, final_logits_bias=torch.randn(1, 50265, device="cuda") * 0.1)
    y = torch.randn(1, 300, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(1, 300, 50265, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = packing_bart.lm_head(model, y)
        want = head(y) + model.final_logits_bias
    assert model._padded_lm_head[1].shape[0] == 50272
    assert got.dtype == want.dtype and torch.allclose(got.float(), want.float(), rtol=1e-2, atol=1e-2)
    g_got, = torch.autograd.grad((got.float() * w).sum(), y)
    g_want, = torch.autograd.grad((want.float() * w).sum(), y)
    assert torch.allclose(g_got.float(), g_want.float(), rtol=2e-2, atol=2e-1)


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_low_rank_node_equals_autograd_on_gpu(name, monkeypatch):
    """The low-rank layers as one autograd node (``layers._LowRank``: the adapter's input gradient accumulated in the
    frozen weight's GEMM or in the keyed dropout kernel's ``ACCUMULATE``, the up-projection in place) against
    autograd's two gradients added: the same loss trajectories, packed, graphed, bf16, every dropout on, 3 runs."""
    from dynrank.methods import layers

    node, _ = _trajectory(name, True, bf16=True, seeds=(1, 2, 3), packed=True, dropout=0.1)
    monkeypatch.setattr(layers, "_frozen_linear", lambda base: False)
    plain, _ = _trajectory(name, True, bf16=True, seeds=(1, 2, 3), packed=True, dropout=0.1)
    assert torch.isfinite(node).all()
    assert torch.allclose(node, plain, rtol=1e-2, atol=1e-2), (node, plain)


@pytest.mark.parametrize("name", ["lora", "dora", "adalora", "houlsby", "bitfit"])
def test_packed_graphed_steps(name):
    """Packed steps as CUDA graphs, dropout ON (each run's keyed stream): graphed = eager, packed = padded (fp32, to
    rounding), and a run stacked beside two others = the run alone (bf16, the fast path: to bf16 rounding)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    eager, _ = _trajectory(name, False, packed=True, dropout=0.1, seeds=(1, 2))
    graphed, _ = _trajectory(name, True, packed=True, dropout=0.1, seeds=(1, 2))
    padded, _ = _trajectory(name, True, packed=False, dropout=0.1, seeds=(1, 2))
    assert torch.allclose(eager, graphed, rtol=1e-4, atol=1e-5), (eager, graphed)
    assert torch.allclose(padded, graphed, rtol=1e-4, atol=1e-5), (padded, graphed)
    stacked, _ = _trajectory(name, True, packed=True, dropout=0.1, seeds=(1, 2, 3), bf16=True)
    alone, _ = _trajectory(name, True, packed=True, dropout=0.1, seeds=(2,), bf16=True)
    assert torch.allclose(stacked[:, 1], alone[:, 0], rtol=2e-2, atol=2e-2), (stacked[:, 1], alone[:, 0])


def test_graphed_step_counts_its_graphs_and_their_setup():
    """What the results' ``training`` reports (trainer.graph_setup): one graph per batch shape and method phase, and
    the host time of their warm-up steps and captures, which later replays do not add to."""
    out = {}
    _trajectory("lora", True, steps=6, packed=True, seeds=(1, 2), out=out)
    step = out["stepper"]
    shapes = len({tuple(k[0]) for k in step.graphs})
    assert len(step.graphs) == shapes >= 1 and step.setup_s > 0
    before = step.setup_s
    _trajectory("lora", True, steps=12, packed=True, seeds=(1, 2), out=out)
    assert len(out["stepper"].graphs) == shapes  # the same three batches: no new graph past the first round
    assert out["stepper"].setup_s < 3 * before + 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_dropout_kernel_equals_the_reference(dtype):
    """The GPU kernel keeps exactly the elements the reference (torch integer ops) keeps, scales by 1/(1-p), and
    its backward applies the same mask."""
    from dynrank import dropout

    assert dropout._triton() is not None, "Triton is not importable on this GPU machine"
    seeds, step = torch.tensor([3, 2**31 + 5], device="cuda"), torch.tensor(987, device="cuda")
    x = torch.randn(2 * 300, 1000, device="cuda", dtype=dtype, requires_grad=True)
    keys = torch.arange(600, device="cuda") * 13
    y = dropout.keyed_dropout(x, keys, 1000, seeds, step, 7, 0.1)
    want = dropout.keep_mask(600, 1000, keys, 1000, seeds, step, 7, 0.1)
    assert torch.equal(y != 0, want & (x != 0))
    assert torch.allclose(y[want].float(), (x[want].float() / 0.9), rtol=1e-2 if dtype == torch.bfloat16 else 1e-6)
    y.sum().backward()
    assert torch.equal(x.grad != 0, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_dropout_added_in_place_equals_torch(dtype):
    """``keyed_dropout_add_`` (the kernel adding the dropped tensor into another in place: a low-rank layer's input
    gradient) equals torch's ``out + keyed_dropout(x)``, bit for bit, 5 runs of rows, RoBERTa's widths."""
    from dynrank import dropout

    seeds, step = torch.tensor([3, 2**31 + 5, 7, 8, 9], device="cuda"), torch.tensor(987, device="cuda")
    for width in (768, 3072):
        x = torch.randn(5 * 211, width, device="cuda", dtype=dtype)
        out = torch.randn(5 * 211, width, device="cuda", dtype=dtype)
        keys = torch.arange(5 * 211, device="cuda") * 17
        want = out + dropout.keyed_dropout(x, keys, width, seeds, step, 4, 0.1)
        got = dropout.keyed_dropout_add_(out.clone(), x, keys, width, seeds, step, 4, 0.1)
        assert torch.equal(got, want), width


def test_bf16_layer_norm_keeps_the_residual_stream_bf16():
    """CUDA autocast returns layer_norm in fp32 (what made the residual stream fp32); BF16LayerNorm returns bf16."""
    from torch import nn

    from dynrank.precision import BF16LayerNorm

    ln = nn.LayerNorm(64).cuda()
    x = torch.randn(8, 64, device="cuda", dtype=torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        plain = ln(x)
        ln.__class__ = BF16LayerNorm
        ours = ln(x)
    assert plain.dtype == torch.float32 and ours.dtype == torch.bfloat16
    assert torch.allclose(ours.float(), plain, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("r", [2, 12])
def test_rank_padding_on_gpu(r):
    """The padded GEMMs (align 8, what runs on a GPU) give the unpadded result and gradients (fp32)."""
    from dynrank.methods.lora import add_low_rank

    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator(device="cuda").manual_seed(r)
    h, x = (torch.randn(64, 96, device="cuda", generator=g), torch.randn(64, 80, device="cuda", generator=g))
    A0, B0 = torch.randn(2, r, 80, device="cuda", generator=g), torch.randn(2, 96, r, device="cuda", generator=g)
    res = []
    for align in (1, 8):
        A, B = A0.clone().requires_grad_(), B0.clone().requires_grad_()
        out = add_low_rank(h, x, A, B, 0.25, align=align)
        out.pow(2).sum().backward()
        res.append((out.detach(), A.grad, B.grad))
    for plain, padded in zip(*res):
        assert torch.allclose(plain, padded, rtol=1e-4, atol=1e-4)


# --- XSum's fast beam search (dynrank/tasks/beam.py) on the GPU: CUDA graphs, bf16 ----------------------------------
GPU_LENGTHS = [3, 250, 17, 64, 120, 9, 33, 200, 5, 90, 41, 12]  # a sample of documents of very different lengths


@pytest.mark.parametrize("runs", [1, 3])
def test_fast_beam_search_equals_generate_on_gpu(runs):
    """fp32 (no TF32), the decoder step replayed as a CUDA graph: generate()'s token ids, one run and three LoRA runs
    stacked (the CPU test, tests/test_xsum.py, runs the same search eagerly)."""
    from test_xsum import GEN, documents, peaked_bart

    from dynrank.tasks import beam
    from dynrank.tasks.base import repeat_runs

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = peaked_bart("lora" if runs > 1 else None, runs, device="cuda", d_model=64)
    batch = documents(GPU_LENGTHS, device="cuda")
    kw = {**GEN, "max_new_tokens": 64}
    fast = beam.FastBeamSearch.build(model, kw, torch.device("cuda"), amp=False, graphs=True)
    assert not isinstance(fast, str) and fast.graphs, fast
    with torch.no_grad():
        want = model.generate(**repeat_runs(batch, runs), **kw)
    got = fast(batch, runs)
    assert got.shape == want.shape and torch.equal(got, want), (got != want).any(1).nonzero().flatten().tolist()


def test_fast_beam_search_bf16_graphs_on_gpu():
    """The evaluation's own precision (bf16 backbone, autocast) with three LoRA runs stacked: the graphed search gives
    the eager fast search's tokens (the same kernels: all of them expected, 90% required), and generate()'s for most
    documents (bf16 rounds the two differently shaped computations differently, which can flip a near-tie; a broken
    path agrees on almost none)."""
    from test_xsum import GEN, documents, peaked_bart

    from dynrank.precision import bf16_backbone
    from dynrank.tasks import beam
    from dynrank.tasks.base import repeat_runs

    runs, dev = 3, torch.device("cuda")
    model = bf16_backbone(peaked_bart("lora", runs, device="cuda", d_model=64))
    batch = documents(GPU_LENGTHS, device="cuda")
    kw = {**GEN, "max_new_tokens": 64}
    graphed = beam.FastBeamSearch.build(model, kw, dev, amp=True, graphs=True)
    eager = beam.FastBeamSearch.build(model, kw, dev, amp=True, graphs=False)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        want = model.generate(**repeat_runs(batch, runs), **kw)
    got = graphed(batch, runs)
    as_eager, same = _same_rows(got, eager(batch, runs)), _same_rows(got, want)
    print(f"bf16: graphed = eager for {as_eager:.0%}, = generate() for {same:.0%} of {len(want)} summaries")
    assert as_eager >= 0.9 and same >= 0.5


def _same_rows(a: torch.Tensor, b: torch.Tensor) -> float:
    """The fraction of rows (summaries) equal token for token, both filled with pad (1) to one width."""
    width = max(a.shape[1], b.shape[1])
    pad = torch.nn.functional.pad
    same = pad(a, (0, width - a.shape[1]), value=1) == pad(b, (0, width - b.shape[1]), value=1)
    return same.all(1).float().mean().item()


def test_bart_dropout_streams_on_gpu():
    """BART's functional dropout from each run's keyed stream on the GPU (the Triton kernel): run 0 stacked with
    another run equals run 0 alone (tests/test_xsum.py on the CPU)."""
    from test_xsum import check_bart_dropout_streams

    check_bart_dropout_streams("cuda", atol=1e-4)



def _bart_trajectory(method_name, graphs: bool, packed: bool, seeds=(1, 2), steps=9, bf16=False, device="cuda"):
    """Losses (steps, runs) of XSum steps of a small BART (d_model 64, 2 heads: the tiled kernels' head size 32;
    every dropout 0.1), runs ``seeds`` stacked, on three batches of sources of 40-300 and summaries of 5-40 tokens,
    padded (XsumTask.collate's layout) or packed (packed_batch.pack_seq2seq, the pad multiple 48 of a GPU run)."""
    from transformers import BartForConditionalGeneration

    from dynrank import bench
    from dynrank.packed_batch import pack_seq2seq
    from dynrank.step import build_stack
    from dynrank.tasks.xsum import XsumTask

    device, runs = torch.device(device), len(seeds)
    cfg = compose([f"method={method_name}", "task=xsum", "model=bart_base"])
    if "dropout" in cfg.method:
        cfg.method.dropout = 0.1
    config = bench.bart_base_config(tiny=True)
    config.d_model, config.encoder_ffn_dim, config.decoder_ffn_dim = 64, 128, 128
    torch.manual_seed(0)
    model = BartForConditionalGeneration(config)
    task = XsumTask(cfg, None)
    stack = build_stack(cfg, model, family="bart", seeds=list(seeds), lrs=[float(cfg.train.lr) * s for s in seeds],
                        losses=partial(task.run_losses, runs=runs), device=device, total_steps=steps, amp=bf16,
                        graphs=graphs, clip=1.0)
    g = torch.Generator().manual_seed(5)
    batches = []
    for _ in range(3):
        src = [[0, *torch.randint(3, 1000, (int(n),), generator=g).tolist(), 2]
               for n in torch.randint(40, 300, (4 * runs,), generator=g)]
        tgt = [[0, *torch.randint(3, 1000, (int(n),), generator=g).tolist(), 2]
               for n in torch.randint(5, 40, (4 * runs,), generator=g)]
        if packed:
            b = pack_seq2seq(src, tgt, runs, 1, 2, 48, 1024)
        else:
            S, T = (-(-max(map(len, x)) // 48) * 48 for x in (src, tgt))
            b = {"input_ids": torch.ones(len(src), S, dtype=torch.long),
                 "labels": torch.full((len(src), T), -100, dtype=torch.long)}
            for i, (a, t) in enumerate(zip(src, tgt)):
                b["input_ids"][i, :len(a)], b["labels"][i, :len(t)] = torch.tensor(a), torch.tensor(t)
            b["attention_mask"] = (b["input_ids"] != 1).long()
        batches.append({k: v.to(device) for k, v in b.items()})
    return torch.stack([stack.stepper(batches[s % 3], s)[0].float().cpu() for s in range(steps)])


@pytest.mark.parametrize("name", ["lora", "dora"])
def test_packed_bart_graphed_steps(name):
    """XSum's packed steps (packing_bart) as CUDA graphs with every dropout on: graphed = eager = padded (fp32, to
    rounding), and the fast path's bf16 packed steps finite and close to them."""
    torch.backends.cuda.matmul.allow_tf32 = False
    eager = _bart_trajectory(name, False, packed=True)
    graphed = _bart_trajectory(name, True, packed=True)
    padded = _bart_trajectory(name, True, packed=False)
    assert torch.allclose(eager, graphed, rtol=1e-4, atol=1e-5), (eager, graphed)
    assert torch.allclose(padded, graphed, rtol=1e-4, atol=1e-5), (padded, graphed)
    fast = _bart_trajectory(name, True, packed=True, bf16=True)
    assert torch.isfinite(fast).all() and torch.allclose(fast, graphed, rtol=5e-2, atol=5e-2), (fast, graphed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiled_attention_kernels_equal_the_reference(dtype):
    """The tiled kernels (tiled_attention.flash) against the reference, forward and backward, keyed dropout 0.1: the
    self-check, then XSum's shapes (a 768-token source padded at 700 for one sequence; a causal 64-token decoder)."""
    from dynrank import tiled_attention

    assert tiled_attention._kernel_agrees(dtype, torch.device("cuda"), 64)
    seeds, step = torch.tensor([1, 7], device="cuda"), torch.tensor(5, device="cuda")
    mask = torch.ones(4, 1, 1, 768, dtype=torch.bool, device="cuda")
    mask[1, ..., 700:] = False
    tol = 2e-4 if dtype == torch.float32 else 3e-2
    for Lq, Lk, m, causal in ((768, 768, mask, False), (64, 768, mask, False), (64, 64, None, True)):
        q = torch.randn(4, 12, Lq, 64, device="cuda", dtype=dtype, requires_grad=True)
        k, v = (torch.randn(4, 12, Lk, 64, device="cuda", dtype=dtype, requires_grad=True) for _ in range(2))
        a = dict(scale=0.125, seeds=seeds, step=step, site=4, p=0.1, positions=1024, mask=m, causal=causal)
        out, ref = tiled_attention.flash(q, k, v, **a), tiled_attention.reference(q, k, v, **a)
        assert out is not None
        g = torch.randn_like(out)
        got = [out, *torch.autograd.grad((out.float() * g.float()).sum(), (q, k, v))]
        want = [ref, *torch.autograd.grad((ref.float() * g.float()).sum(), (q, k, v))]
        for x, y in zip(got, want):
            assert torch.allclose(x.float(), y.float(), rtol=tol, atol=tol), (Lq, Lk, causal)
