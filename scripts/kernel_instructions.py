"""Machine instructions a Triton kernel of dynrank executes per element, compiled for an H100 (sm_90) on a CPU.

No GPU needed: Triton compiles the kernel (``triton.compile``, the launch's divisibility-by-16 specialisation of
the pointers and widths) and its bundled ``nvdisasm`` lists the SASS. The keyed dropout kernel has no loop, so the
static count is what each thread executes; divided by the elements a thread handles it says how much integer work
the hash costs per element, which decides whether the kernel is bound by memory or by its arithmetic
(benchmarks/README.md, round nine). Needs ``pip install triton``.

    python scripts/kernel_instructions.py [--blocks 16x256,4x1024]
"""
from __future__ import annotations

import argparse
import inspect
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sass_counts(fn, constexprs: dict, dtype: str = "bf16", divisible=("width", "counter_width")) -> Counter:
    """Opcode -> count of ``fn`` compiled for sm_90 (pointers and ``divisible`` ints specialised as multiples of 16,
    as a launch on 768- or 3,072-wide rows specialises them)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    params = list(inspect.signature(fn.fn).parameters)
    signature = {n: "constexpr" if n in constexprs else
                 ("*i64" if n in ("keys_ptr", "seeds_ptr", "step_ptr") else f"*{dtype}") if n.endswith("_ptr") else
                 "fp32" if n == "scale" else "i32" for n in params}
    attrs = {(params.index(n),): [["tt.divisibility", 16]] for n in params
             if n.endswith("_ptr") or n in divisible}
    src = ASTSource(fn=fn, signature=signature, constexprs={(params.index(k),): v for k, v in constexprs.items()},
                    attrs=attrs)
    cubin = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["cubin"]
    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([str(nvdisasm), f.name], capture_output=True, text=True, check=True).stdout
    ops = (re.search(r"/\*[0-9a-f]{4,}\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_]+)", line) for line in sass.splitlines())
    return Counter(m.group(2) for m in ops if m)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", default="16x256", help="BLOCK_RxBLOCK_C tilings of the dropout kernel")
    ap.add_argument("--threads", type=int, default=128, help="threads a program (4 warps, Triton's default)")
    args = ap.parse_args(argv)
    from dynrank import _triton_dropout

    for spec in args.blocks.split(","):
        br, bc = (int(v) for v in spec.split("x"))
        ops = sass_counts(_triton_dropout.kernel, dict(BLOCK_R=br, BLOCK_C=bc))
        n = sum(ops.values())
        per = br * bc / args.threads
        useful = {w: per * (w / (-(-w // bc) * bc)) for w in (768, 3072)}  # lanes past the row's end do nothing
        print(f"dropout kernel {br}x{bc}: {n} instructions a thread, {n / per:.1f} per element; per element of a "
              + ", ".join(f"{w}-wide row {n / u:.1f}" for w, u in useful.items())
              + "; most: " + ", ".join(f"{k} {v}" for k, v in ops.most_common(5)))


if __name__ == "__main__":
    main()
