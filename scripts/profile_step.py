"""Where the time of a training step goes, on one GPU: kernel time by category, GPU-busy share, batch scaling,
and a real short MiniLM run on CoLA with its evaluation and checkpoint timed apart.

    python scripts/profile_step.py --minilm .gpu/minilm --data .gpu/glue --out $OUT/profile.json
    python scripts/profile_step.py --smoke --out /tmp/profile.json     # every part on CPU in seconds (the test)

(a) step profile: each of --methods (RoBERTa-base architecture, random weights, L=128, batch 32 per run, graph-bf16,
    built by dynrank.bench's runner as scripts/bench.py's, --profile-runs runs stacked in the step: 1 and 5) warms
    up, is timed with CUDA events, then ~20 replayed steps run under torch.profiler; kernel time per step is
    summed per category (CATEGORIES, by kernel name) and the top-25 kernels are kept. FLOPs: counted by torch.utils.flop_counter.FlopCounterMode over the first step
    (which runs eagerly, before the graph is captured; a replay carries no op-level events to count), and
    an analytic estimate beside it. ``dora@end``: measured past the end of its schedule (allocation final:
    no DEM, no importance EMA); plain ``dora``: in its first phase (DEM and the importance EMA every step).
(b) batch scaling: samples/s of --scale-methods at --batches, L=128, graph-bf16 (mean and steady = median step).
(c) real run: dynrank's own Trainer (dynrank/trainer.py) on real CoLA with MiniLM, batch 16,
    train.bf16=true train.cuda_graphs=true, for --real-epochs epochs of the configured schedule; training
    steps, evaluation, checkpoint writing and the rest are timed apart (the Trainer's own methods, with
    timers wrapped around Task.evaluate and checkpoint.save), then --real-profile-steps steps of the next
    epoch run under torch.profiler for the share of wall time the GPU is idle (host-bound); --real-seeds k: seeds
    1..k stacked in that run.
(d) runs stacked: MiniLM's shape, CoLA's lengths, k = each of --stack runs of --scale-methods in one step.
--setting xsum (part a): BART-base on XSum's length model (dynrank.bench), each method's XSum batch, packed or
    padded (--layout), analytic FLOPs on the real source and summary tokens.

Writes one JSON (--out; device, versions, date and command inside; rewritten after every measured point, so a
run cut short keeps what it measured) and prints a Markdown summary. No chrome trace is written: the profiler's
events are aggregated in memory.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is a local path; no Hub look-ups (the GPU box is offline)

from dynrank import bench  # noqa: E402
from dynrank.config import compose  # noqa: E402
from dynrank.step import GraphedStep  # noqa: E402
from dynrank.results import versions, write_json  # noqa: E402

SHARED = ROOT.parent / "shared"
VOCAB = 50265  # RoBERTa's
LENGTH = 128  # bench.py's fixed setting
WINDOW = "profile_step.window"  # the profiler annotation around the profiled steps
TOP = 25  # kernels listed by total time
LEAD_IN = 2  # steps profiled before the window opens (left out of it)
WARM_REAL = 10  # the real run's steady ms/step leaves out each epoch's first steps (eager, capture)

# Kernel categories: the first row with a pattern in the lower-cased kernel name wins. On CPU (--smoke) the
# same table sorts aten op names (aten::addmm, aten::native_layer_norm, ...).
CATEGORIES = [
    ("memcpy/memset", ("memcpy", "memset")),
    ("softmax/attention", ("flash", "fmha", "attention", "sdpa", "softmax")),  # before matmul: they name cutlass
    ("layer norm", ("layer_norm", "layernorm", "gammabeta")),
    ("dropout/rand", ("dropout", "philox", "bernoulli", "distribution", "masked_scale", "curand")),
    ("gelu/activation", ("gelu", "tanh", "relu", "silu", "sigmoid")),
    ("matmul/gemm", ("gemm", "nvjet", "xmma", "cutlass", "cublas", "splitkreduce", "gemv", "aten::mm", "addmm",
                     "bmm", "matmul")),
    ("reductions/norms (DEM, importance, clip norm)", ("lpnorm", "reduce", "norm", "sum", "mean", "welford",
                                                       "::var", "cub::", "sort", "kthvalue")),
    ("optimizer/foreach (AdamW, zero grads, clip scale)", ("adam", "multi_tensor_apply", "foreach")),
    ("casts/copies", ("copy", "catarray")),  # dtype casts run as copy kernels (direct_copy, bfloat16_copy)
    ("elementwise (other)", ("elementwise", "fill", "where", "index", "mul", "add", "div", "clamp", "abs")),
]
OTHER = "other"


def category(kernel: str) -> str:
    name = kernel.lower()
    return next((cat for cat, patterns in CATEGORIES if any(p in name for p in patterns)), OTHER)


# --- profiling -----------------------------------------------------------------------------------------------

def profiled(run, device, lead_in=None):
    """Runs ``lead_in()`` and then ``run()`` under torch.profiler. Returns ``run()``'s device events as
    (name, start µs, µs), and its window's start and length in µs.

    The device events are the CUDA kernels, memcpys and memsets that start inside the window (``run()`` plus a
    final synchronize); on CPU (--smoke), the aten ops with their self time, the nearest CPU-side equivalent.
    ``lead_in`` runs first in the same session, outside the window: CUPTI may lose the first kernels of one."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        if lead_in is not None:
            lead_in()
        bench.synchronize(device)
        with record_function(WINDOW):
            run()
            bench.synchronize(device)
    events = prof.events()
    window = next(e for e in events if e.name == WINDOW and e.device_type == DeviceType.CPU).time_range
    if cuda:  # record_function ranges (ours, the optimizer's) may come back on the device too: not kernels
        host = {e.name for e in events if e.device_type == DeviceType.CPU}
        dev = [(e.name, e.time_range.start, e.time_range.elapsed_us()) for e in events
               if e.device_type == DeviceType.CUDA and e.name not in host]
    else:
        dev = [(e.name, e.time_range.start, e.self_cpu_time_total) for e in events
               if e.device_type == DeviceType.CPU and e.name.startswith("aten::")]
    inside = [e for e in dev if window.start <= e[1] <= window.end]
    return inside, window.start, window.elapsed_us()


def busy_us(events, start: float, end: float) -> float:
    """Length of the union of the events' intervals within [start, end]: the time the device did anything."""
    total, reach = 0.0, start
    for _, s, d in sorted(events, key=lambda e: e[1]):
        lo, hi = max(s, reach), min(s + d, end)
        if hi > lo:
            total += hi - lo
            reach = hi
    return total


def kernel_summary(events, steps: int) -> dict:
    """Kernel time per step, by category and by kernel (the top ones, with calls per step)."""
    per_kernel = defaultdict(lambda: [0, 0.0])
    for name, _, dur in events:
        per_kernel[name][0] += 1
        per_kernel[name][1] += dur
    total_us = sum(us for _, us in per_kernel.values())
    cats = defaultdict(lambda: [0, 0.0])
    for name, (calls, us) in per_kernel.items():
        cats[category(name)][0] += calls
        cats[category(name)][1] += us
    categories = {cat: {"ms_per_step": us / 1000 / steps, "share": us / total_us if total_us else 0.0,
                        "kernels_per_step": calls / steps}
                  for cat, (calls, us) in sorted(cats.items(), key=lambda kv: -kv[1][1])}
    top = [{"kernel": short_name(name), "category": category(name), "ms_per_step": us / 1000 / steps,
            "calls_per_step": calls / steps, "us_per_call": us / calls, "share": us / total_us if total_us else 0.0}
           for name, (calls, us) in sorted(per_kernel.items(), key=lambda kv: -kv[1][1])[:TOP]]
    calls = sum(c for c, _ in per_kernel.values())
    return {"kernel_ms_per_step": total_us / 1000 / steps, "kernels_per_step": calls / steps,
            "categories": categories, "top_kernels": top}


def short_name(kernel: str, limit: int = 300) -> str:
    """A CUDA kernel's name without the namespaces that every ATen kernel repeats, cut to ``limit``."""
    for noise in ("void ", "at::native::", "(anonymous namespace)::"):
        kernel = kernel.replace(noise, "")
    return kernel[:limit]


def window_summary(events, start: float, window_us: float, steps: int) -> dict:
    """The profiled window: its wall time per step and the share of it in which the device was busy."""
    busy = busy_us(events, start, start + window_us)
    out = {"window_ms_per_step": window_us / 1000 / steps, "device_busy_ms_per_step": busy / 1000 / steps,
           "device_busy_share": busy / window_us if window_us else 0.0,
           "device_idle_share": 1 - busy / window_us if window_us else 0.0, "device_events": len(events)}
    if not events:
        out["warning"] = "the profiler recorded no device events in the window (CUPTI not working?)"
    return out


# --- FLOPs ---------------------------------------------------------------------------------------------------

def counted_flops(step, batch) -> float:
    """Runs one step and counts its FLOPs op by op (torch.utils.flop_counter: matmuls and attention, forward and
    backward). Call it on a step that runs eagerly: a CUDA-graph replay has no ops to count."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(batch)
    return float(counter.get_total_flops())


def analytic_flops(model_config: dict, lengths: list[int], frozen: bool = True) -> float:
    """Model FLOPs of the encoder's forward + backward over sequences of ``lengths`` real tokens (padding and filler
    left out, as are adapters and the head; no recompute).

    Linears: 2 x params x tokens forward; backward 2x that for trained weights, 1x for frozen ones (input
    gradients only). Attention's two batched matmuls: 4 x L^2 x hidden per sequence and layer forward, twice
    that backward. (The usual "6 x params x tokens" counts weight gradients the frozen backbone never computes.)"""
    from transformers import RobertaConfig

    c = RobertaConfig(**model_config)
    H, n = c.hidden_size, c.num_hidden_layers
    linear = 2 * (4 * H * H + 2 * H * c.intermediate_size) * n * sum(lengths)
    attention = 4 * sum(L * L for L in lengths) * H * n
    return linear * (2 if frozen else 3) + attention * 3


def analytic_flops_bart(config, sources: list[int], summaries: list[int], frozen: bool = True) -> float:
    """Model FLOPs of a BART step over ``sources`` and ``summaries`` of these real lengths (pair by pair), as
    ``analytic_flops`` counts them: the encoder's linears on source tokens, the decoder's self-attention, cross-query
    and output and FFN linears and the LM head on summary tokens, the cross-attention's key and value projections
    on source tokens; attention 4 x Lq x Lk x d_model per layer forward (the causal decoder's half of it)."""
    H, F, V = config.d_model, config.encoder_ffn_dim, config.vocab_size
    ne, nd = config.encoder_layers, config.decoder_layers
    S, T = sum(sources), sum(summaries)
    linear = 2 * ((4 * H * H + 2 * H * F) * ne * S + (6 * H * H + 2 * H * F) * nd * T + 2 * H * H * nd * S + H * V * T)
    attention = 4 * H * (ne * sum(s * s for s in sources) + nd * sum(t * t / 2 + t * s for s, t in
                                                                   zip(sources, summaries)))
    return linear * (2 if frozen else 3) + attention * 3


def seq2seq_lengths(batch: dict) -> tuple[list[int], list[int]]:
    """Each pair's real source and summary lengths of an XSum batch, packed or padded (sources as
    ``sequence_lengths`` reads them)."""
    summaries = batch["decoder_seq_len"] if "seq_len" in batch else (batch["labels"] != -100).sum(1)
    return sequence_lengths(batch), [int(n) for n in summaries.tolist()]


def sequence_lengths(batch: dict) -> list[int]:
    """The real length of every sequence of a batch, packed (``seq_len``) or padded (its attention mask)."""
    lens = batch["seq_len"] if "seq_len" in batch else batch["attention_mask"].sum(1)
    return [int(n) for n in lens.tolist()]


# --- (a) and (b): synthetic RoBERTa-base steps -------------------------------------------------------------------

def schedule_steps(spec: str, args) -> int:
    """``method@end``: a schedule that ends within the warm-up, so the measured steps come after it (DoRA's and
    AdaLoRA's final phase); otherwise a long one, so they sit in its first phase (one graph key throughout)."""
    return args.warmup if spec.endswith("@end") else args.schedule_steps


def measure_point(spec: str, batch: int, args, device, profile: bool, setting: str = "fixed",
                  model_config: dict | None = None, runs: int = 1, layout: str | None = None) -> dict:
    """One method at one batch size: build (bench.py's runner, ``runs`` runs stacked, each with ``batch``), warm
    up, time; with ``profile`` also count FLOPs and profile ``args.profile_steps`` steps. ``setting``: bench.py's
    ``fixed`` (L=128) or ``cola`` (CoLA's lengths, padded per batch to a multiple of 8); with a ``layout``
    (``padded`` or ``packed``), a real-length setting of ``bench.REAL``: each run the task's own batch, laid out as
    the loop lays it out, or ``xsum`` (BART-base on XSum's length model, bench_seq2seq's batches, packed as
    ``packing_bart`` packs them); ``model_config``: RobertaConfig fields (default args'). Samples/s are every run's
    together."""
    method = spec.split("@")[0]
    model_config = args.model_config if model_config is None else model_config
    real, xsum = layout is not None, setting == "xsum"
    row = {"method": spec, "mode": args.mode, "runs": runs,
           "length": LENGTH if setting == "fixed" else setting, "schedule_steps": schedule_steps(spec, args)}
    if real:
        row["layout"] = layout
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    if xsum:  # BART-base on XSum's length model, the method's XSum batch (conf/hparams)
        step, row["adapter_params"] = bench.dynrank_seq2seq_runner(method, args.mode, device, row["schedule_steps"],
                                                                   runs, tiny=args.smoke)
        config = step.model.config
        caps = (64, 16) if args.smoke else (768, 64)  # the tasks' truncation (tiny: its positions)
        batches, counts, batch, _ = bench.xsum_batches(  # padded as on a GPU, also in --smoke
            method, device, runs, args.n_batches, bench.xsum_lengths(4096, 0, max_source=caps[0], max_target=caps[1]),
            config.vocab_size, layout == "packed", pads_as=torch.device("cuda"))
        row["real_tokens_per_step"] = sum(r for r, _ in counts) / len(counts)
        row["computed_tokens_per_step"] = sum(c for _, c in counts) / len(counts)
    else:
        step, row["adapter_params"] = bench.dynrank_runner(method, args.mode, device, row["schedule_steps"],
                                                           model_config, runs=runs)
        if real:
            batch = bench.REAL[setting][1]
            batches = [b for b, _, _ in bench.real_batches(setting, args.n_batches, device, VOCAB, runs,
                                                           layout == "packed", batch_size=batch)]
            row["real_tokens_per_step"] = sum(sum(sequence_lengths(b)) for b in batches) / len(batches)
        else:
            lengths = bench.cola_lengths() if setting == "cola" else []
            batches = bench.make_batches(setting, args.n_batches, device, VOCAB, lengths, 8, batch_size=batch * runs)
    row["batch"] = batch
    first = 0
    if profile:  # the first step runs eagerly (a graph is captured at the second): count its FLOPs
        row["flops_per_step_counted"] = counted_flops(step, batches[0])
        frozen = method != "full"
        row["flops_per_step_analytic"] = sum(  # the mean step
            analytic_flops_bart(config, *seq2seq_lengths(b), frozen=frozen) if xsum else
            analytic_flops(args.model_config, sequence_lengths(b), frozen=frozen) for b in batches) / len(batches)
        first = 1
    for i in range(first, max(args.warmup, 2 * len(batches) if real else 0)):  # real: every shape warmed, captured
        step(batches[i % len(batches)])
    dt, per_step, samples, last = bench.timed_steps(step, batches, args.steps, device)
    median = sorted(per_step)[len(per_step) // 2]
    row.update({"samples_per_s": samples / dt, "steady_samples_per_s": 1000 * batch * runs / median,
                "aggregate_samples_per_s": 1000 * batch * runs / median,
                "wall_ms_per_step": median, "wall_ms_per_step_mean": 1000 * dt / args.steps,
                "final_loss": float(last.float().mean())})
    if device.type == "cuda":
        row["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    if profile:
        try:
            row.update(profile_point(step, batches, args, device, row))
        except Exception as e:  # noqa: BLE001  (the timing above stands without the profile)
            traceback.print_exc()
            row["profile_error"] = describe(e)
    del step, batches
    gc.collect()
    return row


def profile_point(step, batches, args, device, row) -> dict:
    n = args.profile_steps
    events, start, window_us = profiled(lambda: bench.timed_steps(step, batches, n, device), device,
                                        lead_in=lambda: bench.timed_steps(step, batches, LEAD_IN, device))
    out = {"profiled_steps": n, **kernel_summary(events, n), **window_summary(events, start, window_us, n)}
    out["gpu_busy_fraction"] = out["kernel_ms_per_step"] / row["wall_ms_per_step"]  # kernel time / wall time
    wall_s = row["wall_ms_per_step"] / 1000
    out["tflops_counted"] = row["flops_per_step_counted"] / wall_s / 1e12
    out["tflops_analytic"] = row["flops_per_step_analytic"] / wall_s / 1e12
    return out


def step_profiles(args, device, rows: list, save):
    for runs in args.profile_runs:
        for spec in args.methods:
            layout = None if args.setting == "fixed" else args.layout
            rows.append(guarded(measure_point, spec, args.profile_batch, args, device, True, args.setting,
                                runs=runs, layout=layout, label={"method": spec, "runs": runs}))
            save()


def batch_scaling(args, device, profiles: list[dict], rows: list, save):
    """Samples/s per (method, batch); a point (a) measured already is reused, not run again."""
    done = {(r["method"], r["batch"]): r for r in profiles if "error" not in r and r.get("runs", 1) == 1}
    keys = ("method", "mode", "batch", "length", "samples_per_s", "steady_samples_per_s", "wall_ms_per_step",
            "wall_ms_per_step_mean", "peak_mem_mib", "error")
    for spec in args.scale_methods:
        for batch in args.batches:
            r = done.get((spec, batch)) or guarded(measure_point, spec, batch, args, device, False,
                                                   label={"method": spec, "batch": batch})
            rows.append({k: r[k] for k in keys if k in r})
            save()


# --- (d): runs stacked into one step ----------------------------------------------------------------------------

MINILM_SHAPE = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}


def stacking(args, device, rows: list, save):
    """A small model at short lengths is bound by the number of kernels, not their size: k runs of one cell stacked
    in one step (their adapters with a run dimension on the shared frozen backbone: dynrank's stacked path) cost far
    less than k steps. MiniLM-L6's shape (the proxy runs' model) in RoBERTa's architecture, random weights, CoLA's
    lengths, each run's batch --stack-batch, k each of --stack: ms per step and ms per run-step (ms / k)."""
    base = args.stack_batch
    for spec in args.scale_methods:
        for k in args.stack:
            r = guarded(measure_point, spec, base, args, device, False, "cola", args.stack_config, runs=k,
                        label={"method": spec, "batch": base * k})
            if "error" not in r:
                r = {key: r[key] for key in ("method", "runs", "batch", "length", "wall_ms_per_step",
                                             "steady_samples_per_s", "aggregate_samples_per_s", "peak_mem_mib")
                     if key in r}
                r["seeds_stacked"] = k
                r["ms_per_seed_step"] = r["wall_ms_per_step"] / k
            rows.append(r)
            save()


# --- (c): a real run through dynrank's Trainer ------------------------------------------------------------------

class Stopwatch:
    """Seconds per label, summed over calls."""

    def __init__(self):
        self.s = defaultdict(float)

    @contextmanager
    def __call__(self, label: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.s[label] += time.perf_counter() - t0


def real_overrides(args, device, work: Path) -> list[str]:
    fast = device.type == "cuda"
    over = [f"method={args.real_method}", "task=cola", f"data.dir={args.data}", f"data.cache_dir={work / 'cache'}",
            f"results.store={work / 'store'}", "train.progress=false", f"train.batch_size={args.real_batch}",
            f"train.device={device.type}", f"train.bf16={str(fast).lower()}", f"train.cuda_graphs={str(fast).lower()}"]
    over += ["model=tiny"] if args.smoke else ["model=minilm", f"model.path={args.minilm}"]
    if args.max_train_samples:
        over.append(f"data.max_train_samples={args.max_train_samples}")
    if args.max_eval_samples:
        over.append(f"data.max_eval_samples={args.max_eval_samples}")
    return over


def timed_epoch(t, epoch: int, clock: Stopwatch) -> list[float]:
    """One epoch through the Trainer's own methods. Returns host timestamps: before the first step, after each
    step returned, and after the GPU finished them all."""
    with clock("begin_epoch"):
        plan = t.begin_epoch(epoch)
    with clock("train"):
        marks = [time.perf_counter()]
        for i, idx in enumerate(plan):
            t.train_step(i, idx)
            marks.append(time.perf_counter())
        bench.synchronize(t.device)  # the steps' GPU work belongs to the steps
        marks.append(time.perf_counter())
    with clock("end_epoch"):
        t.end_epoch()
    return marks


def real_run(args, device) -> dict:
    from dynrank.trainer import Trainer
    from dynrank.resume import Run

    with tempfile.TemporaryDirectory(prefix="dynrank-profile-") as tmp:  # data cache, checkpoint, results
        overrides = real_overrides(args, device, Path(tmp))
        cfg = compose(overrides)
        clock = Stopwatch()
        with clock("setup"):
            runs = [Run(compose([*overrides, f"seed={s}"]), Path(tmp) / f"run{s}")
                    for s in range(1, args.real_seeds + 1)]
            t = Trainer(runs, runs[0].data(), timer=clock)  # evaluation and checkpoints timed apart
        marks, epochs_s, window = timed_run(t, args, clock)
    report = {"overrides": overrides, "method": str(cfg.method.name), "model": str(cfg.model.id),
              "batch_size": int(cfg.train.batch_size), "runs_stacked": t.R, "epochs_run": len(t.states[0].history),
              "epochs_in_schedule": t.epochs, "schedule_steps": t.total_steps, "train_examples": len(t.train_set),
              "fast_path": bool(t.amp and isinstance(t.stepper, GraphedStep))}
    return {**report, **real_times(epochs_s, clock.s["finish"], marks), "profile": window}


def timed_run(t, args, clock: Stopwatch):
    """--real-epochs epochs, then the profiled window, then finish, with evaluation and checkpoints timed apart.
    Returns each epoch's step timestamps, the seconds per label over the epochs, and the window's profile."""
    with ExitStack() as locks:
        for run in t.runs:
            locks.callback(run.close)
        marks = [timed_epoch(t, epoch, clock) for epoch in range(args.real_epochs)]
        epochs_s = dict(clock.s)
        window = real_window(t, args.real_profile_steps)
        with clock("finish"):
            t.finish()
    return marks, epochs_s, window


def real_times(s: dict, finish_s: float, marks: list[list[float]]) -> dict:
    """Seconds per part and ms of wall per training step: the steps alone, after their first few (eager and
    capture steps), and with each epoch's evaluation, checkpoint and the rest of begin/end_epoch amortised."""
    steps = sum(len(m) - 2 for m in marks)
    skip = WARM_REAL if min(len(m) for m in marks) - 2 > 2 * WARM_REAL else 0
    steady = sum(m[-1] - m[skip] for m in marks) / (steps - skip * len(marks))
    host = sorted(b - a for m in marks for a, b in zip(m[:-2], m[1:-1]))
    epochs = s["begin_epoch"] + s["end_epoch"]  # the Trainer's own evaluate and save calls are inside end_epoch
    epoch_rest = epochs - s["eval"] - s["checkpoint"]
    return {"steps": steps, "setup_s": s["setup"], "train_s": s["train"], "eval_s": s["eval"],
            "checkpoint_s": s["checkpoint"], "epoch_rest_s": epoch_rest, "finish_s": finish_s,
            "train_ms_per_step": 1000 * s["train"] / steps,
            "train_ms_per_step_steady": 1000 * steady, "steady_leaves_out_first": skip,
            "host_ms_per_step_median": 1000 * host[len(host) // 2],
            "ms_per_step_amortised": 1000 * (s["train"] + epochs) / steps,
            "ms_per_step_all_in": 1000 * (s["setup"] + s["train"] + epochs + finish_s) / steps}


def real_window(t, n: int) -> dict:
    """The first ``n`` steps of the next epoch under torch.profiler: the share of wall time the GPU is idle."""
    plan = t.begin_epoch(t.epoch + 1)[:LEAD_IN + n]
    lead, plan = plan[:LEAD_IN], plan[LEAD_IN:]
    events, start, window_us = profiled(lambda: [t.train_step(i, idx) for i, idx in enumerate(plan, LEAD_IN)],
                                        t.device, lead_in=lambda: [t.train_step(i, idx) for i, idx in enumerate(lead)])
    return {"profiled_steps": len(plan), **window_summary(events, start, window_us, len(plan)),
            **kernel_summary(events, len(plan))}


# --- the report ------------------------------------------------------------------------------------------------

def guarded(fn, *a, label: dict, **kw) -> dict:
    """``fn``'s row, or ``label`` with the error: one failed part does not lose the others."""
    try:
        return fn(*a, **kw)
    except Exception as e:  # noqa: BLE001  (reported in the JSON)
        traceback.print_exc()
        return {**label, "error": describe(e)}


def describe(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def header(args, device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    notes = ["(a) kernel time: CUDA kernels, memcpy and memset from torch.profiler (CUPTI), summed per step; "
             "gpu_busy_fraction = kernel time / wall time (CUDA events, median step, unprofiled); "
             "device_busy_share = union of kernel intervals / profiled window",
             "FLOPs: flops_per_step_counted = torch.utils.flop_counter over the first (eager) step; "
             "flops_per_step_analytic = analytic_flops() (frozen backbone: backward of a linear = input gradients "
             "only); TFLOP/s = FLOPs / median wall step",
             "method@end = measured past the end of its schedule (final phase); plain = in its first phase"]
    if args.smoke:
        notes.append("smoke: CPU, tiny model, eager fp32 (no CUDA graphs, no bf16): numbers only show the script runs; "
                     "'kernels' are aten ops with their CPU self time")
    return {"device": name, "smoke": args.smoke, "mode": args.mode, "model_config": args.model_config,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python scripts/profile_step.py", *args.argv]),
            "versions": versions(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "notes": notes}


def markdown(report: dict) -> str:
    lines = [f"# profile_step: {report['device']} ({report['mode']}), torch {report['torch']}"]
    lines += markdown_profiles([r for r in report.get("step_profile", []) if "categories" in r])
    lines += markdown_scaling(report.get("batch_scaling", []))
    real = report.get("real_run")
    lines += markdown_real(real) if real and "error" not in real else []
    lines += markdown_stacking(report.get("stacking", []))
    for part in ("step_profile", "batch_scaling", "stacking"):
        lines += [f"- {part} {r['method']}: {r.get('error') or r['profile_error']}" for r in report.get(part, [])
                  if "error" in r or "profile_error" in r]
    if real and "error" in real:
        lines.append(f"- real_run: {real['error']}")
    return "\n".join(lines)


def markdown_profiles(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    r0 = rows[0]
    shape = (f"{r0['length']}'s lengths, {r0['layout']}" if "layout" in r0 else f"L={LENGTH}")
    lines = ["", f"(a) {shape}, batch {r0['batch']} per run: ms per step (analytic TFLOP/s: real tokens only)", "",
             "| method | runs | wall | kernels | busy | idle (window) | TFLOP/s counted | analytic | samples/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r.get('runs', 1)} | {r['wall_ms_per_step']:.2f} | {r['kernel_ms_per_step']:.2f} | "
              f"{r['gpu_busy_fraction']:.0%} | {r['device_idle_share']:.0%} | {r['tflops_counted']:.3g} | "
              f"{r['tflops_analytic']:.3g} | {r['steady_samples_per_s']:.0f} |" for r in rows]
    lines += ["", "| kernel ms per step (share) | " + " | ".join(f"{r['method']} x{r.get('runs', 1)}" for r in rows) + " |",
              "|---|" + "---:|" * len(rows)]
    for c in dict.fromkeys(c for r in rows for c in r["categories"]):
        cells = [r["categories"].get(c, {"ms_per_step": 0.0, "share": 0.0}) for r in rows]
        lines.append(f"| {c} | " + " | ".join(f"{x['ms_per_step']:.2f} ({x['share']:.0%})" for x in cells) + " |")
    return lines


def markdown_scaling(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["", f"(b) L={LENGTH}: steady samples/s (mean over the window)", "",
             "| method | batch | samples/s | ms/step | peak MiB |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['batch']} | error | | |" if "error" in r else
              f"| {r['method']} | {r['batch']} | {r['steady_samples_per_s']:.0f} ({r['samples_per_s']:.0f}) | "
              f"{r['wall_ms_per_step']:.2f} | {r.get('peak_mem_mib', 0):.0f} |" for r in rows]
    return lines


def markdown_stacking(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["", "(d) runs stacked: MiniLM's shape, CoLA lengths, one step for k runs' batches", "",
             "| method | seeds k | batch | ms/step | ms per seed-step | peak MiB |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['method']} | | {r['batch']} | error | | |" if "error" in r else
              f"| {r['method']} | {r['seeds_stacked']} | {r['batch']} | {r['wall_ms_per_step']:.2f} | "
              f"{r['ms_per_seed_step']:.2f} | {r.get('peak_mem_mib', 0):.0f} |" for r in rows]
    return lines


def markdown_real(r: dict) -> list[str]:
    w = r["profile"]
    return ["", f"(c) real run: {r['model']} {r['method']} CoLA batch {r['batch_size']}, {r['steps']} steps, "
                f"{r.get('runs_stacked', 1)} run(s) stacked, fast path {r['fast_path']}", "",
            f"- ms/step: steps {r['train_ms_per_step']:.2f} (steady {r['train_ms_per_step_steady']:.2f}), with eval "
            f"+ checkpoint amortised {r['ms_per_step_amortised']:.2f}, all in {r['ms_per_step_all_in']:.2f}; host "
            f"per step (median) {r['host_ms_per_step_median']:.2f}",
            f"- seconds: setup {r['setup_s']:.1f}, steps {r['train_s']:.1f}, eval {r['eval_s']:.2f}, checkpoint "
            f"{r['checkpoint_s']:.2f}, rest of epoch {r['epoch_rest_s']:.2f}, finish {r['finish_s']:.2f}",
            f"- profiled {w['profiled_steps']} steps: {w['window_ms_per_step']:.2f} ms/step, kernels "
            f"{w['kernel_ms_per_step']:.2f} ms/step, device idle {w['device_idle_share']:.0%} of the wall time"]


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="every part on CPU, tiny model, few steps (the test)")
    ap.add_argument("--out", help="the JSON (default benchmarks/profile-<device>-<date>.json)")
    ap.add_argument("--parts", default="a,b,c,d",
                    help="a: step profile, b: batch scaling, c: real run, d: runs stacked")
    ap.add_argument("--methods", default="lora,dora,dora@end,adalora", help="(a); method@end: past its schedule's end")
    ap.add_argument("--scale-methods", default="lora,dora", help="(b)")
    ap.add_argument("--batches", default="32,96,160", help="(b)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--steps", type=int, default=40, help="timed steps per point (CUDA events)")
    ap.add_argument("--profile-steps", type=int, default=20, help="(a) steps under torch.profiler")
    ap.add_argument("--profile-runs", default="1,5", help="(a) runs stacked in the profiled step (each batch 32)")
    ap.add_argument("--setting", default="fixed", choices=["fixed", *bench.REAL, "xsum"],
                    help="(a) fixed: every sequence 128 tokens, batch 32 per run; or a task's recorded lengths and "
                         "batch (bench.REAL); or xsum: BART-base on XSum's length model, the method's batch")
    ap.add_argument("--layout", default="padded", choices=["padded", "packed"],
                    help="(a) with a real-length --setting: the batch padded to its longest sequence or packed")
    ap.add_argument("--schedule-steps", type=int, default=10_000, help="the schedule's length for plain methods")
    ap.add_argument("--minilm", default=str(SHARED / "models/all-MiniLM-L6-v2"))
    ap.add_argument("--data", default=str(SHARED / "data/glue"))
    ap.add_argument("--stack", default="1,3,5", help="(d) seeds per step: batch --stack-batch x each")
    ap.add_argument("--stack-batch", type=int, default=16, help="(d) one seed's batch (CoLA's, Table 8)")
    ap.add_argument("--real-method", default="dora")
    ap.add_argument("--real-seeds", type=int, default=1, help="(c) seeds 1..k of the real run, stacked")
    ap.add_argument("--real-batch", type=int, default=16)
    ap.add_argument("--real-epochs", type=int, default=1)
    ap.add_argument("--real-profile-steps", type=int, default=50)
    ap.add_argument("--max-train-samples", type=int)
    ap.add_argument("--max-eval-samples", type=int)
    args = ap.parse_args(argv)
    args.argv = list(argv)
    args.profile_batch = 32
    args.mode, args.model_config, args.n_batches = "graph-bf16", {}, 16
    args.stack_config = MINILM_SHAPE
    if args.smoke:
        from omegaconf import OmegaConf

        torch.set_num_threads(1)  # a tiny model gains nothing from intra-op threads, and they stall on a busy host
        args.device, args.mode, args.n_batches = "cpu", "eager-fp32", 2
        args.model_config = args.stack_config = dict(OmegaConf.load(ROOT / "conf/model/tiny.yaml").tiny)
        args.stack, args.stack_batch = "1,2", 4
        args.profile_runs = args.profile_runs if "--profile-runs" in args.argv else "1,2"
        args.batches, args.profile_batch = "4,8", 4
        args.warmup, args.steps, args.profile_steps, args.real_profile_steps = 2, 2, 2, 3
        args.max_train_samples, args.max_eval_samples = args.max_train_samples or 48, args.max_eval_samples or 32
    args.methods, args.scale_methods = args.methods.split(","), args.scale_methods.split(",")
    args.batches = [int(b) for b in args.batches.split(",")]
    args.stack = [int(k) for k in args.stack.split(",")]
    args.profile_runs = [int(k) for k in args.profile_runs.split(",")]
    args.minilm, args.data = str(Path(args.minilm).resolve()), str(Path(args.data).resolve())
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU visible; --smoke runs every part on CPU")
    report = header(args, device)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
    out = Path(args.out or ROOT / "benchmarks" / f"profile-{report['device'].replace(' ', '_')}-{stamp}.json")
    parts = args.parts.split(",")
    t0 = time.time()

    def save():  # after every measured point: a run cut short keeps what it measured
        report["script_wall_s"] = time.time() - t0
        write_json(out, report)

    if "a" in parts:
        step_profiles(args, device, report.setdefault("step_profile", []), save)
    if "b" in parts:
        batch_scaling(args, device, report.get("step_profile", []), report.setdefault("batch_scaling", []), save)
    if "c" in parts:
        report["real_run"] = guarded(real_run, args, device, label={})
    if "d" in parts:
        stacking(args, device, report.setdefault("stacking", []), save)
    save()
    print(markdown(report))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
