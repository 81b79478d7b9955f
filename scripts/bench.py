"""Training throughput and peak memory of dynrank's methods beside HF PEFT's, on one GPU, in one process.

    python scripts/bench.py                       # everything (make bench)
    python scripts/bench.py --methods lora,dora --modes eager-bf16,compile-bf16 --settings fixed
    python scripts/bench.py --methods dora,peft_lora --runs 1,5 --settings fixed   # 5 runs stacked in one step

Settings: ``fixed`` = L=128, batch 32 (every sequence full length); ``cola`` = the real length
distribution of GLUE CoLA's training set (benchmarks/cola_train_lengths.json) with CoLA's batch size 16
and dynamic padding. The model is the RoBERTa-base architecture with random weights (speed does not
depend on the weights). dynrank runs time the loop's own step (``dynrank.step.make_stepper``), for ``--runs`` runs
stacked in one step (seeds of one cell, each with its own batch of the setting's size: a row's samples/s is the
aggregate of its runs, ``samples_per_s_per_run`` one run's share); PEFT runs
time the plain loop a PEFT user writes (autocast, backward, clip, AdamW, and AdaLoRA's
``update_and_allocate``). Samples/s is the mean over the timed steps after warm-up; "steady" is from the
median step (CUDA events on the GPU timeline), which leaves out the few steps where the CUDA-graph path
meets a new graph key (a new padded length, or DoRA/AdaLoRA entering a new schedule phase) and runs
eagerly or captures: a long training run is almost all steady steps.
Real-length settings (``--settings sst2,cola,mrpc,rte,stsb,qnli,squad``, ``dynrank.bench.REAL``): each run draws its
task's batch (Table 8's size) from the task's recorded lengths, laid out as the loop lays them out, ``--layouts
padded,packed`` (``train.pack``); a row gives ``real_tokens_per_s`` (tokens of the sequences themselves),
``step_tokens_per_s`` (what the GEMMs multiply: padding or filler included) and the real-token MFU against this
GPU's measured bf16 GEMM rate (``FLOP_PER_TOKEN``).
Writes ``benchmarks/bench-<device>-<date>.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dynrank.bench import (CUTS, REAL, cola_lengths, dynrank_runner, make_batches, peft_runner,  # noqa: E402
                           real_batches, steady_steps, synchronize, timed_steps, without)
from dynrank.methods import names  # noqa: E402
from dynrank.results import versions, write_json  # noqa: E402

DYNRANK = names()  # every method of conf/method/
# FLOPs of one real token of a RoBERTa-base training step (issue 26): the frozen backbone's forward and input-gradient
# GEMMs, 12 layers x 2 x 2 x (4 x 768^2 + 2 x 768 x 3072) = 0.340 G, plus attention and adapters at GLUE's lengths:
# 0.354 G; full fine-tuning adds the weight gradients: 0.51 G.
FLOP_PER_TOKEN = {"full": 0.51e9}
FLOP_PER_TOKEN_FROZEN = 0.354e9


def matmul_peak(device) -> float:
    """This GPU's bf16 GEMM rate (FLOP/s) on 8192^3 random matrices, measured here: MFU's denominator."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 10 * 2 * 8192 ** 3 / (start.elapsed_time(end) / 1000)


def measure_real(name, mode, setting, device, args, runs: int, layout: str, peak: float):
    """One row on a real length distribution: the loop's batches (packed or padded), real tokens per second."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    packed = layout == "packed"
    n = args.batches
    t_build = time.time()
    if name.startswith("peft_"):
        step, adapter_params = peft_runner(name, mode, device, 2 * n + args.steps)
    else:
        step, adapter_params = dynrank_runner(name, mode, device, 2 * n + args.steps, runs=runs)
    batches = real_batches(setting, n, device, 50265, runs, packed, args.pad_multiple)
    for i in range(2 * n):  # every shape: its eager warm-up, then its capture
        step(batches[i % n][0])
    synchronize(device)
    warm_s = time.time() - t_build
    _, ms, _, last = timed_steps(step, [b for b, _, _ in batches], args.steps, device)
    counts = [(r, t, len(b["labels"])) for b, r, t in (batches[i % n] for i in range(args.steps))]
    dt = sum(ms) / 1000
    real, step_tokens, samples = (sum(c[j] for c in counts) for j in range(3))
    keep = steady_steps(ms, [t for _, t, _ in counts])
    steady_s = sum(ms[i] for i in keep) / 1000
    steady_real, steady_tokens = sum(counts[i][0] for i in keep), sum(counts[i][1] for i in keep)
    last = float(last.float().mean())
    flop = FLOP_PER_TOKEN.get(name, FLOP_PER_TOKEN_FROZEN)
    return {"impl": "peft" if name.startswith("peft_") else "dynrank", "method": name, "mode": mode,
            "setting": setting, "layout": layout, "runs": runs, "batch_per_run": REAL[setting][1],
            "samples_per_s": samples / dt, "real_tokens_per_s": real / dt, "step_tokens_per_s": step_tokens / dt,
            "real_share": real / step_tokens, "step_ms": 1000 * dt / args.steps,
            "steady_steps": len(keep), "steady_step_ms": 1000 * steady_s / len(keep),
            "steady_real_tokens_per_s": steady_real / steady_s, "steady_step_tokens": steady_tokens / len(keep),
            "mfu_real": real / dt * flop / peak, "steady_mfu_real": steady_real / steady_s * flop / peak,
            "flop_per_token": flop, "peak_flops": peak,
            "peak_mem_mib": torch.cuda.max_memory_allocated(device) / 2**20, "adapter_params": adapter_params,
            "warmup_s": warm_s, "final_loss": last, "finite": bool(math.isfinite(last))}
PEFT = ["peft_lora", "peft_adalora", "peft_dora"]


def measure(name, mode, setting, device, args, lengths, runs: int = 1):
    """One row: ``runs`` runs of ``name`` stacked in one step (dynrank; PEFT: 1), each with the setting's batch."""
    total_steps = args.warmup + args.steps
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    t_build = time.time()
    if name.startswith("peft_"):
        step, adapter_params = peft_runner(name, mode, device, total_steps)
    else:
        step, adapter_params = dynrank_runner(name, mode, device, total_steps, runs=runs)
    per_run = 32 if setting == "fixed" else 16
    batches = make_batches(setting, 16, device, 50265, lengths, args.pad_multiple, batch_size=per_run * runs)
    for i in range(args.warmup):
        step(batches[i % len(batches)])
    torch.cuda.synchronize()
    warm_s = time.time() - t_build
    dt, per_step, samples, last = timed_steps(step, batches, args.steps, device)
    # The median is the steady state; the mean also carries the steps that ran eagerly or were captured
    # (each new graph key costs its eager warm-up steps and its capture).
    median_ms = sorted(per_step)[len(per_step) // 2]
    bs = batches[0]["input_ids"].shape[0]  # every run's samples
    last = float(last.float().mean())
    return {"impl": "peft" if name.startswith("peft_") else "dynrank", "method": name, "mode": mode,
            "setting": setting, "runs": runs, "samples_per_s": samples / dt, "step_ms": 1000 * dt / args.steps,
            "steady_samples_per_s": 1000 * bs / median_ms, "aggregate_samples_per_s": 1000 * bs / median_ms,
            "samples_per_s_per_run": 1000 * bs / median_ms / runs, "median_step_ms": median_ms,
            "peak_mem_mib": torch.cuda.max_memory_allocated(device) / 2**20, "adapter_params": adapter_params,
            "warmup_s": warm_s, "final_loss": last, "finite": bool(math.isfinite(last))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(DYNRANK + PEFT))
    ap.add_argument("--modes", default="eager-fp32,eager-bf16,graph-bf16",
                    help="dynrank modes: eager-fp32, eager-bf16, graph-fp32, graph-bf16 (CUDA graphs: the loop's "
                         "train.cuda_graphs=true), compile-bf16 (torch.compile, eager step), graph-compile-bf16 (torch.compile inside the CUDA graph); PEFT runs the eager ones")
    ap.add_argument("--peft-modes", help="modes of the PEFT rows (default: the eager ones of --modes)")
    ap.add_argument("--settings", default="fixed,cola")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--pad-multiple", type=int, default=8)
    ap.add_argument("--runs", default="1", help="dynrank rows: runs stacked in one step, e.g. 1,5 (a row per number; "
                                                "each run has the setting's batch, 32 or 16; PEFT rows: 1)")
    ap.add_argument("--layouts", default="padded", help="real-length settings (" + ",".join(REAL) + "): padded, "
                    "packed (train.pack), or both; PEFT rows: padded")
    ap.add_argument("--batches", type=int, default=24, help="real-length settings: distinct random steps, cycled")
    ap.add_argument("--ablate", default="none", help="dynrank rows again with cuts switched off, to see what each is "
                    "worth in one process: a comma list of cut sets, each 'none' or cuts joined by '+' from "
                    + ", ".join(CUTS) + " (dynrank.bench.CUTS), e.g. none,node,bind,share+bind+node")
    ap.add_argument("--out", default=str(ROOT / "benchmarks"))
    args = ap.parse_args(argv)
    ablations = [() if a == "none" else tuple(a.split("+")) for a in args.ablate.split(",")]
    unknown = {c for a in ablations for c in a} - set(CUTS)
    if unknown:
        ap.error(f"--ablate: unknown cut(s) {', '.join(sorted(unknown))}; choose from none, {', '.join(CUTS)}")
    if not torch.cuda.is_available():
        sys.exit("error: the benchmark needs a CUDA GPU")
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
    lengths = cola_lengths()
    peak = matmul_peak(device)
    print(f"bf16 GEMM peak (8192^3): {peak / 1e12:.0f} TFLOP/s", flush=True)
    rows = []
    device_name = torch.cuda.get_device_name(device)
    report = {"device": device_name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "bf16_gemm_peak_flops": peak,
              "command": "python scripts/bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "versions": versions(), "python": platform.python_version(), "rows": rows}
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
    out = Path(args.out) / f"bench-{device_name.replace(' ', '_')}-{stamp}.json"
    for setting in args.settings.split(","):
        for name in args.methods.split(","):
            peft = name.startswith("peft_")
            for mode in (args.peft_modes or args.modes).split(",") if peft else args.modes.split(","):
                if peft and not mode.startswith("eager"):
                    continue
                for runs in [1] if peft or name == "full" else [int(k) for k in args.runs.split(",")]:
                    layouts = args.layouts.split(",") if setting in REAL else ["padded"]
                    for layout, cuts in [(lay, c) for lay in (["padded"] if peft else layouts)
                                         for c in ([()] if peft else ablations)]:
                        try:
                            with without(*cuts):
                                if setting in REAL:
                                    r = measure_real(name, mode, setting, device, args, runs, layout, peak)
                                else:
                                    r = measure(name, mode, setting, device, args, lengths, runs)
                        except Exception as e:  # a missing method or a failed compile is reported, not fatal
                            r = {"impl": "peft" if peft else "dynrank", "method": name, "mode": mode, "runs": runs,
                                 "setting": setting, "layout": layout,
                                 "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
                        if cuts:
                            r["without"] = list(cuts)
                        rows.append(r)
                        print(json.dumps(r), flush=True)
                        write_json(out, report)  # after every row: a run cut short keeps what it measured
                        gc.collect()
                        torch._dynamo.reset()
                        torch.cuda.empty_cache()
    write_json(out, report)
    print_table(rows)
    print(f"wrote {out}")
    return report


def print_table(rows):
    print(f"{'setting':7} {'method':14} {'mode':11} {'runs':>4} {'samples/s':>9} {'steady/s':>9} {'per run':>8} "
          f"{'step ms':>8} {'peak MiB':>9}")
    for r in rows:
        name = r["method"] + ("-" + "-".join(r["without"]) if r.get("without") else "")
        head = f"{r['setting']:7} {name:14} {r['mode']:11} {r.get('runs', 1):4d}"
        if "real_tokens_per_s" in r:
            print(f"{head} {r['layout']:7} real tok/s {r['real_tokens_per_s']:9.0f} real share {r['real_share']:.2f} "
                  f"MFU {100 * r['mfu_real']:4.1f}% step {r['step_ms']:7.2f} ms peak {r['peak_mem_mib']:7.0f} MiB")
        elif "error" in r:
            print(f"{head} {'error: ' + r['error'][:60]}")
        else:
            print(f"{head} {r['samples_per_s']:9.0f} {r['steady_samples_per_s']:9.0f} "
                  f"{r['samples_per_s_per_run']:8.0f} {r['step_ms']:8.2f} {r['peak_mem_mib']:9.0f}")


if __name__ == "__main__":
    random.seed(0)
    main()
