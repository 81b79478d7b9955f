"""Table 3 and 4's workloads measured: BART-base training steps on XSum-shaped data (dynrank beside PEFT's LoRA),
RoBERTa-base steps on SQuAD's windows, and XSum's beam-search evaluation (model.generate beside dynrank's fast
search, dynrank/tasks/beam.py), in one process.

    python scripts/bench_seq2seq.py            # on a GPU: writes benchmarks/seq2seq-<device>-<date>.json
    python scripts/bench_seq2seq.py --quick    # tiny models, a few steps and documents: runs on a CPU too (tests)

Models have random weights (speed does not depend on them): BART-base's and RoBERTa-base's architectures from their
configs (dynrank/bench.py), no Hub. XSum's lengths follow its published statistics (Narayan et al. 2018, Table 1:
documents 431.07 words, summaries 23.26 words on average; the log-normal shape and the BPE tokens per word are
assumptions, dynrank/bench.py XSUM_WORDS); SQuAD's windows are the recorded SQuAD v1.1 dev windows
(benchmarks/squad_v1_dev_lengths.json). Training rows time the loop's own step (dynrank.step.make_stepper, graph-bf16 by
default: the GPU's default path) for 1 and several runs stacked (each run its own batch of the method's batch size),
XSum's both packed (``--layouts``: dynrank/packing_bart.py, the GPU's default) and padded, and PEFT's LoRA as its users
train it (eager, bf16 autocast); ``real_tokens_per_s`` counts source and summary tokens without padding
(``padded_tokens_per_s`` and ``us_per_padded_token``: per padded token, or per packed row, filler included), over timed
steps that cycle through the batches after every batch shape has been captured (``steady_real_tokens_per_s`` and
``us_per_padded_token``, which scripts/estimate.py reads: without the steps that met a new schedule phase, eager and
captured; ``us_per_padded_token_all_steps``: with them).
Beam rows run XsumTask.token_ids as the evaluation does (beam 3, 64 new tokens, no_repeat_ngram_size 3,
length-sorted batches, every run of a stack at once), for each of ``--beam-methods`` (lora by default):
``eval.beam_search=generate`` (model.generate, batches of train.eval_batch_size) and ``fast``; random weights never
choose EOS, so every summary runs to 64 tokens, the longest search (a trained model's summaries end sooner).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dynrank import bench  # noqa: E402
from dynrank.results import versions, write_json  # noqa: E402


def peak_mib(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset(device):
    gc.collect()
    if device.type == "cuda":
        torch._dynamo.reset()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def timed(step, batches, counts, args, device) -> dict:
    """Warm-up (each batch twice: its graph's eager step and capture), then ``args.steps`` timed steps. "Steady":
    the steps whose time per padded token is within twice the median's (a method entering a new schedule phase
    meets a new graph key: its eager step and capture are left out, as a long run amortises them)."""
    for i in range(2 * len(batches)):
        step(batches[i % len(batches)])
    bench.synchronize(device)
    dt, per_step, _, last = bench.timed_steps(step, batches, args.steps, device)
    tok = [counts[i % len(counts)] for i in range(args.steps)]
    real, padded = sum(r for r, _ in tok), sum(p for _, p in tok)
    keep = bench.steady_steps(per_step, [p for _, p in tok])
    steady_ms = sum(per_step[i] for i in keep)
    last = float(last.float().mean())
    return {"steps": args.steps, "real_tokens_per_s": real / dt, "padded_tokens_per_s": padded / dt,
            "steady_real_tokens_per_s": 1000 * sum(tok[i][0] for i in keep) / steady_ms,
            "step_ms": 1000 * dt / args.steps, "median_step_ms": sorted(per_step)[len(per_step) // 2],
            "mean_real_tokens_per_step": real / args.steps, "mean_padded_tokens_per_step": padded / args.steps,
            "us_per_padded_token": 1000 * steady_ms / sum(tok[i][1] for i in keep), "steady_steps": len(keep),
            "us_per_padded_token_all_steps": 1000 * 1000 * dt / padded, "peak_mem_mib": peak_mib(device),
            "final_loss": last, "finite": bool(math.isfinite(last))}


def xsum_train_row(impl, method, mode, runs, device, args, pairs, layout="padded") -> dict:
    total = 2 * args.batches + args.steps
    if impl == "peft":
        step, params = bench.peft_seq2seq_runner(mode, device, args.quick)
    else:
        step, params = bench.dynrank_seq2seq_runner(method, mode, device, total, runs, args.quick)
    vocab = step.model.config.vocab_size if hasattr(step.model, "config") else 50265
    batches, counts, per_run, multiple = bench.xsum_batches(method, device, runs, args.batches, pairs, vocab,
                                                            layout == "packed", args.batch)
    return {"batch_per_run": per_run, "pad_to_multiple": multiple, "adapter_params": params, "layout": layout,
            **timed(step, batches, counts, args, device)}


def squad_train_row(method, mode, runs, device, args, lengths) -> dict:
    from dynrank.config import compose
    from dynrank.device import fast_path

    cfg = compose([f"method={method}", "task=squad_v1"])
    per_run = args.batch or int(cfg.train.batch_size)
    multiple = fast_path(cfg, device)["pad_to_multiple"]
    model_config = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        vocab_size=1000) if args.quick else None
    step, params = bench.dynrank_runner(method, mode, device, 2 * args.batches + args.steps, model_config, runs)
    vocab = 1000 if args.quick else 50265
    batches = bench.make_batches("lengths", args.batches, device, vocab, lengths, multiple, batch_size=per_run * runs)
    counts = [(int(b["attention_mask"].sum()), b["attention_mask"].numel()) for b in batches]
    return {"batch_per_run": per_run, "pad_to_multiple": multiple, "adapter_params": params,
            **timed(step, batches, counts, args, device)}


def beam_row(impl, runs, device, args, sources, method: str = "lora") -> dict:
    """XsumTask.token_ids over ``sources`` (random ids of the sampled lengths) by a stack of ``runs`` runs of
    ``method``."""
    from dynrank.config import compose
    from dynrank.data.cache import Encoded
    from dynrank.device import fast_path
    from dynrank.tasks.xsum import XsumTask

    cfg = compose([f"method={method}", "task=xsum", "model=bart_base", f"eval.beam_search={impl}",
                   f"task.generate.max_new_tokens={args.max_new_tokens}"])
    bf16 = fast_path(cfg, device)["bf16"]
    step, _ = bench.dynrank_seq2seq_runner(method, "graph-bf16" if bf16 else "eager-fp32", device, 1, runs,
                                           args.quick)
    model = step.model.eval()
    task = XsumTask(cfg, SimpleNamespace(pad_token_id=1))
    if (task.beam_search(model, device, bf16) is None) != (impl == "generate"):
        raise RuntimeError("the fast beam search fell back to generate() (see the warning above)")
    g = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    feats = Encoded({"input_ids": [[0] + torch.randint(3, vocab, (n - 2,), generator=g).tolist() + [2]
                                   for n in sources]})
    warm = Encoded({"input_ids": feats.columns["input_ids"][:2]})
    for _ in task.token_ids(model, warm, device, bf16, runs):  # kernels, cuBLAS handles: not the evaluation's cost
        pass
    bench.synchronize(device)
    t0, batches, tokens = time.perf_counter(), 0, 0
    for _, seqs in task.token_ids(model, feats, device, bf16, runs):
        batches += 1
        tokens += int((seqs != 1).sum())
    bench.synchronize(device)
    dt = time.perf_counter() - t0
    return {"docs": len(sources), "seconds": dt, "docs_per_s": len(sources) / dt, "batches": batches,
            "gen_len": tokens / (runs * len(sources)), "num_beams": int(cfg.task.generate.num_beams),
            "max_new_tokens": args.max_new_tokens, "bf16": bf16,
            "graphs": impl == "fast" and fast_path(cfg, device)["cuda_graphs"], "peak_mem_mib": peak_mib(device)}


def squad_window_lengths(cap: int) -> list[int]:
    doc = json.loads((ROOT / "benchmarks" / "squad_v1_dev_lengths.json").read_text())
    return [min(int(n), cap) for n, c in doc["histogram"].items() for _ in range(int(c))]


def run_row(fn, head: dict, rows: list, device):
    reset(device)
    try:
        row = {**head, **fn()}
    except Exception as e:  # an OOM or a failed capture is reported, not fatal
        row = {**head, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    rows.append(row)
    print(json.dumps(row), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="dora,lora", help="dynrank methods timed on XSum and SQuAD (lora last: "
                                                               "its XSum batch of 64 needs the most memory)")
    ap.add_argument("--runs", default="1,5", help="runs stacked in one step (training rows) and one evaluation")
    ap.add_argument("--mode", default="graph-bf16", help="dynrank's mode (scripts/bench.py --modes)")
    ap.add_argument("--peft-mode", default="eager-bf16", help="PEFT's LoRA row on XSum (none: no PEFT row)")
    ap.add_argument("--parts", default="xsum,squad,beam", help="what to time: xsum (training), squad, beam")
    ap.add_argument("--beam-methods", default="lora", help="dynrank methods whose beam search is timed (the "
                    "estimate takes each method's own rate where measured, else lora's)")
    ap.add_argument("--layouts", default="packed,padded", help="dynrank's XSum training batches: packed "
                                                             "(packing_bart.py, the GPU's default) and/or padded")
    ap.add_argument("--batches", type=int, default=6, help="distinct batches per training row (cycled)")
    ap.add_argument("--steps", type=int, default=12, help="timed steps per training row")
    ap.add_argument("--batch", type=int, help="batch per run (default: the method's for the task, conf/hparams)")
    ap.add_argument("--eval-docs", type=int, default=2048, help="documents of the fast beam-search rows")
    ap.add_argument("--generate-docs", type=int, default=128, help="documents of the model.generate rows")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--tokens-per-word", type=float, default=bench.TOKENS_PER_WORD)
    ap.add_argument("--quick", action="store_true", help="tiny BART and RoBERTa, short sequences, a few steps: any "
                                                        "device (the CPU test)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks"))
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.quick:
        print("error: the benchmark needs a CUDA GPU (or --quick)", file=sys.stderr)
        sys.exit(2)
    if args.quick:
        args.batches, args.steps = min(args.batches, 2), min(args.steps, 2)
        args.eval_docs, args.generate_docs = min(args.eval_docs, 6), min(args.generate_docs, 4)
        args.max_new_tokens, args.batch = min(args.max_new_tokens, 8), args.batch or 2
    torch.backends.cuda.matmul.allow_tf32 = False
    caps = (64, 16, 64) if args.quick else (768, 64, 384)  # source, summary, SQuAD window (the tasks' max lengths)
    pairs = bench.xsum_lengths(4096, 0, args.tokens_per_word, caps[0], caps[1])
    sources = [s for s, _ in bench.xsum_lengths(args.eval_docs, 1, args.tokens_per_word, caps[0], caps[1])]
    methods, runs, parts = args.methods.split(","), [int(k) for k in args.runs.split(",")], args.parts.split(",")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = {"device": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": "python scripts/bench_seq2seq.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "versions": versions(), "python": platform.python_version(), "quick": args.quick,
              "xsum_lengths": {"source": bench.XSUM_SOURCE, "words": bench.XSUM_WORDS,
                               "tokens_per_word": args.tokens_per_word, "max_source": caps[0], "max_target": caps[1]},
              "rows": []}
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
    out = Path(args.out) / f"seq2seq-{name.replace(' ', '_')}-{stamp}.json"
    rows = report["rows"]

    def measure(fn, head):  # the file is rewritten after every row: a crash keeps what was measured
        run_row(fn, head, rows, device)
        write_json(out, report)

    # The smallest memory first: PEFT's single run, the evaluations, then training by runs stacked (SQuAD, XSum)
    if "xsum" in parts and args.peft_mode != "none":
        measure(lambda: xsum_train_row("peft", "lora", args.peft_mode, 1, device, args, pairs),
                {"kind": "train", "task": "xsum", "impl": "peft", "method": "peft_lora", "mode": args.peft_mode,
                 "runs": 1})
    for r in runs if "beam" in parts else []:
        for m in args.beam_methods.split(","):
            for impl, n in (("generate", args.generate_docs), ("fast", args.eval_docs)):
                measure(lambda: beam_row(impl, r, device, args, sources[:n], m),
                        {"kind": "beam", "task": "xsum", "impl": impl, "method": m, "runs": r})
    for r in runs:
        for m in methods if "squad" in parts else []:
            measure(lambda: squad_train_row(m, args.mode, r, device, args, squad_window_lengths(caps[2])),
                    {"kind": "train", "task": "squad_v1", "impl": "dynrank", "method": m, "mode": args.mode,
                     "runs": r})
        for m in methods if "xsum" in parts else []:
            for layout in args.layouts.split(","):
                measure(lambda: xsum_train_row("dynrank", m, args.mode, r, device, args, pairs, layout),
                        {"kind": "train", "task": "xsum", "impl": "dynrank", "method": m, "mode": args.mode,
                         "runs": r, "layout": layout})
    print_table(rows)
    print(f"wrote {out}")
    return report


def print_table(rows):
    print(f"{'kind':5} {'task':8} {'impl':8} {'method':9} {'runs':>4} {'layout':7} {'real tok/s':>11} {'step ms':>8} "
          f"{'docs/s':>8} {'peak MiB':>9}")
    for r in rows:
        head = f"{r['kind']:5} {r['task']:8} {r['impl']:8} {r['method']:9} {r['runs']:4d} {r.get('layout', ''):7}"
        if "error" in r:
            print(f"{head} error: {r['error'][:70]}")
            continue
        peak = f"{r['peak_mem_mib']:9.0f}" if r.get("peak_mem_mib") is not None else f"{'-':>9}"
        if r["kind"] == "train":
            print(f"{head} {r['real_tokens_per_s']:11.0f} {r['step_ms']:8.1f} {'':8} {peak}")
        else:
            print(f"{head} {'':11} {'':8} {r['docs_per_s']:8.1f} {peak}")


if __name__ == "__main__":
    main()
