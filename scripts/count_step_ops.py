"""Operations one training step dispatches, with and without the low-rank layers' shared operands
(``groups.shared_operands``) and with and without their factors read in place from the optimizer's buffer
(``groups.bind_groups``), counted on a CPU: no GPU needed.

    python scripts/count_step_ops.py [--methods dora,lora] [--runs 5] [--layers 12]

The step is the loop's (``dynrank.bench.dynrank_runner``: RoBERTa-base's architecture, random weights, ``--runs``
stacked runs, 2 sequences of 16 tokens each) with what the GPU's path adds to the adapters' operands: bf16 autocast
(the casts) and the rank padded to a multiple of 8 (DoRA's r0 = 12 -> 16). Every operation that reaches a kernel
is counted (views left out), and so are the CPU's own stand-ins that a GPU does not run (the keyed dropout's hash as
torch integer ops: one Triton kernel on a GPU; the frozen weights' casts: stored in bf16 on a GPU), which are the
same with and without sharing: the difference is what sharing removes, not a count of a GPU's kernels.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dynrank import bench  # noqa: E402
from dynrank import step as stepmod  # noqa: E402
from dynrank.methods import layers  # noqa: E402


class Count(TorchDispatchMode):
    """Operations that are not views, as dispatched."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.n += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def gpu_like(share: bool, bind: bool = True):
    """The GPU's bf16 autocast and rank padding to 8 on this CPU, the shared operands and the bound groups on or off
    (``bench.without``); restored after."""
    real = layers.low_rank_operands
    saved = layers.low_rank_operands, stepmod.autocast
    layers.low_rank_operands = lambda A, B, scale, device, align=None: real(A, B, scale, device, 8)
    stepmod.autocast = lambda device, amp: torch.autocast("cpu", dtype=torch.bfloat16)
    try:
        with bench.without(*(["share"] if not share else []), *(["bind"] if not bind else [])):
            yield
    finally:
        layers.low_rank_operands, stepmod.autocast = saved


VARIANTS = {"per_layer": (False, False), "shared": (True, False), "shared_bound": (True, True)}  # (share, bind)


def count(method: str, runs: int, n_layers: int, share: bool, bind: bool = True) -> int:
    """Operations of one step (the second: the first allocates what later ones reuse)."""
    with gpu_like(share, bind):
        step, _ = bench.dynrank_runner(method, "eager-fp32", torch.device("cpu"), 10,
                                       model_config={"num_hidden_layers": n_layers}, runs=runs)
        ids = torch.randint(5, 900, (2 * runs, 16), generator=torch.Generator().manual_seed(0))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                 "labels": torch.zeros(2 * runs, dtype=torch.long)}
        step(batch)
        with Count() as c:
            step(batch)
    return c.n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="dora,lora")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--layers", type=int, default=12)
    args = ap.parse_args(argv)
    out = {}
    for method in args.methods.split(","):
        n = out[method] = {name: count(method, args.runs, args.layers, *flags) for name, flags in VARIANTS.items()}
        print(f"{method}: {n['per_layer']} operations a step with each layer's own operands, {n['shared']} shared "
              f"({n['per_layer'] - n['shared']} fewer), {n['shared_bound']} shared and read in place from the "
              f"optimizer's buffer ({n['shared'] - n['shared_bound']} fewer again)")
    return out


if __name__ == "__main__":
    main()
