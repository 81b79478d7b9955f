"""The tiled attention kernels (``tiled_attention.flash``: forward + backward, keyed dropout 0.1) on packed rows at
XSum's and SQuAD's shapes, for several tilings (``tiled_attention.TILES``), each checked against the reference first.

    python scripts/bench_attention.py [--tiles 64x64x4,128x64x4,128x64x8,64x128x4] [--docs 64] [--out DIR]
    python scripts/bench_attention.py --smoke        # tiny shapes, 2 tilings; with TRITON_INTERPRET=1 on a CPU

A tiling is ``MxNxW[xS]``: M query rows by N keys a tile, W warps (S pipeline stages; Triton's default without).
The shapes, bf16, 12 heads of 64 (BART-base's and RoBERTa-base's), packed rows as the packed steps lay them out:
  * ``xsum_encoder``: ``--docs`` sources drawn from the XSum length model (``dynrank.bench.xsum_lengths``, the
    seq2seq bench's), self-attention, each source its own length;
  * ``xsum_decoder``: their summaries, causal;
  * ``xsum_cross``: each summary's queries against its own source's rows;
  * ``squad``: 32 windows of 384 tokens (SQuAD's, full).
Each is timed with CUDA events (the median of ``--steps`` after ``--warmup``). FLOPs are the sequences' own:
4 x Lq x Lk x dh a head forward (half of it causal) and 2.5 times that backward (FlashAttention-2's count: the
recomputed scores included). Writes ``<out>/attention-<device>-<date>.json`` and prints a table; the fastest
correct tiling of each shape is the one to put in ``tiled_attention.TILES``; the forward and the backward are timed
apart, so where another tiling's backward is faster it goes into ``tiled_attention.BWD_TILES``. Each tiling is checked
first: sequence 0's output and its q, k and v gradients against the reference.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dynrank import tiled_attention  # noqa: E402
from dynrank.bench import xsum_lengths  # noqa: E402
from dynrank.results import write_json  # noqa: E402

HEADS, DH = 12, 64


def tilings(spec: str) -> list[dict]:
    out = []
    for t in spec.split(","):
        m, n, w, *s = (int(x) for x in t.split("x"))
        out.append({"BLOCK_M": m, "BLOCK_N": n, "num_warps": w, "num_stages": s[0] if s else None})
    return out


def packed(lengths: list[int], device) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(start, lens, width, rows) of sequences of ``lengths`` laid end to end."""
    lens = torch.tensor(lengths, dtype=torch.int64)
    start = torch.cumsum(lens, 0) - lens
    return start.to(device), lens.to(device), max(lengths), int(lens.sum())


def shapes(docs: int, smoke: bool) -> dict[str, tuple[list[int], list[int], bool]]:
    """name -> (query lengths, key lengths, causal); key lengths of their own rows only for cross-attention."""
    pairs = [(70, 9), (33, 20), (5, 3)] if smoke else xsum_lengths(docs, seed=0)
    sources, summaries = [s for s, _ in pairs], [t for _, t in pairs]
    out = {"xsum_encoder": (sources, [], False), "xsum_decoder": (summaries, [], True),
           "xsum_cross": (summaries, sources, False)}
    if not smoke:
        out["squad"] = ([384] * 32, [], False)
    return out


def flops(q_lens: list[int], k_lens: list[int], causal: bool) -> float:
    fwd = sum(4 * lq * lk * DH * HEADS * (0.5 if causal else 1.0) for lq, lk in zip(q_lens, k_lens or q_lens))
    return 3.5 * fwd


def run_shape(q_lens, k_lens, causal, tiles: dict, device, dtype, steps: int, warmup: int, heads: int, dh: int):
    """(ms of the forward, ms of the backward (None untimed on a CPU); whether sequence 0's output and gradients
    matched the reference) for one tiling of both passes (no kernel here: (None, None, None))."""
    g = torch.Generator(device="cpu").manual_seed(0)
    qs, ql, qw, qt = packed(q_lens, device)
    cross = packed(k_lens, device) if k_lens else None
    kt = cross[3] if cross else qt
    q = torch.randn(1, qt, heads * dh, generator=g).to(device, dtype).requires_grad_()
    k, v = (torch.randn(1, kt, heads * dh, generator=g).to(device, dtype).requires_grad_() for _ in range(2))
    seeds, step = torch.tensor([1], device=device), torch.tensor(3, device=device)
    args = dict(scale=dh ** -0.5, seeds=seeds, step=step, site=2, p=0.1, positions=1024, causal=causal,
                packed=(qs, ql, heads, qw), kv=cross[:3] if cross else None)
    saved, saved_bwd = dict(tiled_attention.TILES), tiled_attention.BWD_TILES
    tiled_attention.TILES.update(tiles)
    tiled_attention.BWD_TILES = None  # the tiling times both passes
    try:
        out = tiled_attention.flash(q, k, v, **args)
        if out is None:
            return None, None, None
        grad = torch.randn_like(out)
        ok = _matches(out, grad, q, k, v, q_lens[0], (k_lens or q_lens)[0], causal, heads, dh, args)
        if device.type != "cuda":  # the interpreter: one pass each way, untimed
            return None, None, ok
        fwd, bwd = [], []
        for i in range(warmup + steps):
            marks = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
            marks[0].record()
            o = tiled_attention.flash(q, k, v, **args)
            marks[1].record()
            torch.autograd.grad(o, (q, k, v), grad)
            marks[2].record()
            torch.cuda.synchronize()
            if i >= warmup:
                fwd.append(marks[0].elapsed_time(marks[1]))
                bwd.append(marks[1].elapsed_time(marks[2]))
        return statistics.median(fwd), statistics.median(bwd), ok
    finally:
        tiled_attention.TILES.update(saved)
        tiled_attention.BWD_TILES = saved_bwd


def _matches(out, grad, q, k, v, lq: int, lk: int, causal: bool, heads: int, dh: int, args: dict) -> bool:
    """Sequence 0's output and its q, k and v gradients against ``tiled_attention.reference`` on its padded view,
    each within 2% of the reference's norm in bf16 (its rounding), 1e-4 in fp32 (the keyed masks key a sequence by
    its index in its run's batch: 0 in both)."""
    tol = 2e-2 if q.dtype == torch.bfloat16 else 1e-4

    def view(x, L):
        return x[0, :L].view(L, heads, dh).transpose(0, 1)[None].float()

    def close(a, b):
        return bool((a - b).norm() <= tol * b.norm())

    grads = torch.autograd.grad(out, (q, k, v), grad)
    leaves = [view(x, L).detach().requires_grad_() for x, L in ((q, lq), (k, lk), (v, lk))]
    ref = tiled_attention.reference(*leaves, scale=args["scale"], seeds=args["seeds"], step=args["step"],
                                    site=args["site"], p=args["p"], positions=args["positions"], causal=causal)
    ref_grads = torch.autograd.grad(ref, leaves, view(grad, lq))
    # the gradients of sequence 0's rows come from sequence 0 alone (its keys are its own rows)
    return close(view(out.detach(), lq), ref) and all(
        close(view(g, L), r) for g, L, r in zip(grads, (lq, lk, lk), ref_grads))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", default="64x64x4,128x64x4,128x64x8,64x128x4,128x128x8")
    ap.add_argument("--docs", type=int, default=64, help="XSum documents (LoRA's batch, Table 8)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes and two tilings (a CPU test, interpreted)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks"))
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype, heads, dh = (torch.bfloat16, HEADS, DH) if cuda else (torch.float32, 2, 16)
    specs = tilings("64x64x4,16x32x4" if args.smoke else args.tiles)
    rows = []
    for name, (q_lens, k_lens, causal) in shapes(args.docs, args.smoke).items():
        for tiles in specs:
            fwd, bwd, ok = run_shape(q_lens, k_lens, causal, tiles, device, dtype, args.steps, args.warmup, heads,
                                     dh)
            ms = fwd + bwd if fwd is not None else None
            rows.append({"shape": name, **tiles, "ms": ms, "fwd_ms": fwd, "bwd_ms": bwd, "matches_reference": ok,
                         "tflops": flops(q_lens, k_lens, causal) / (ms * 1e-3) / 1e12 if ms else None,
                         "sequences": len(q_lens), "mean_query_length": statistics.mean(q_lens)})
            print(f"{name:13s} {tiles['BLOCK_M']:>4d}x{tiles['BLOCK_N']:<4d} warps {tiles['num_warps']} "
                  f"stages {tiles['num_stages'] or '-'}: "
                  + (f"{ms:8.3f} ms (forward {fwd:7.3f}, backward {bwd:7.3f})  {rows[-1]['tflops']:6.1f} TFLOP/s"
                     if ms is not None else "no kernel here" if ok is None else "untimed")
                  + ("  DIFFERS FROM THE REFERENCE" if ok is False else ""))
    device_name = torch.cuda.get_device_name(0) if cuda else "cpu"
    report = {"device": device_name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": "python scripts/bench_attention.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "versions": {"torch": torch.__version__}, "smoke": args.smoke, "heads": heads, "head_dim": dh,
              "dropout": 0.1, "rows": rows}
    if not args.smoke:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
        out = Path(args.out) / f"attention-{device_name.replace(' ', '_')}-{stamp}.json"
        write_json(out, report)
        print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
