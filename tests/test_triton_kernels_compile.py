"""Every Triton kernel of dynrank compiles for a GPU (an H100's target, sm_90) on this CPU, in fp32 and bf16.

Triton's interpreter (tests/test_packing.py) checks what the kernels compute but not that Triton's compiler accepts
them: a plain ``int`` global read inside a kernel runs in the interpreter and is refused by the compiler (Triton >=
3.2), which a GPU run found on 2026-12-07 (``_triton_attention``'s MAX_POSITIONS). Skipped without Triton (CPU builds
of torch do not install it: ``pip install triton`` to run this here; about 3 minutes on 2 cores)."""
import inspect
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

INDEX = {"start_ptr", "kstart_ptr", "len_ptr", "qlen_ptr", "klen_ptr", "seeds_ptr", "step_ptr", "keys_ptr"}
FLOAT32 = {"lse_ptr", "delta_ptr"}
ROOT = Path(__file__).resolve().parents[1]


def _signature(fn, constexprs: dict, dtype: str) -> dict:
    """Argument types by name: data pointers ``dtype``, index pointers int64, the mask uint8, scales fp32."""
    types = {}
    for name in inspect.signature(fn.fn).parameters:
        if name in constexprs:
            types[name] = "constexpr"
        elif name.endswith("_ptr"):
            types[name] = ("*i64" if name in INDEX else "*fp32" if name in FLOAT32 else "*u8" if name == "mask_ptr"
                           else f"*{dtype}")
        else:
            types[name] = "fp32" if name in ("scale", "drop_scale") else "i32"
    return types


def _kernels(dtype: str):
    """The kernels at the sizes they launch with; bf16 also at the taller and wider tiles scripts/bench_attention.py
    times (fp32 at 128-row tiles keeps ptxas busy for many minutes, and no fp32 run uses them)."""
    from dynrank import _triton_attention, _triton_dropout, _triton_flash

    tiled = dict(HAS_MASK=True, CAUSAL=True, DROPOUT=True, BLOCK_M=64, BLOCK_N=64, DH=64)
    return [(_triton_dropout.kernel, dict(BLOCK_R=16, BLOCK_C=256)),
            (_triton_attention._fwd, dict(DROPOUT=True, BLOCK=128, DH=64)),
            (_triton_attention._bwd, dict(DROPOUT=True, BLOCK=128, DH=64)),
            (_triton_flash._fwd, tiled), (_triton_flash._bwd_dq, tiled), (_triton_flash._bwd_dkdv, tiled)] + (
        [(_triton_flash._fwd, {**tiled, "BLOCK_M": 128}), (_triton_flash._bwd_dkdv, {**tiled, "BLOCK_N": 128})]
        if dtype == "bf16" else [])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_every_triton_kernel_compiles_for_a_gpu(dtype):
    target = GPUTarget("cuda", 90, 32)
    for fn, constexprs in _kernels(dtype):
        params = list(inspect.signature(fn.fn).parameters)
        constexprs = {**constexprs, **({"IEEE": dtype == "fp32"} if "IEEE" in params else {})}
        src = ASTSource(fn=fn, signature=_signature(fn, constexprs, dtype),
                        constexprs={(params.index(k),): v for k, v in constexprs.items()})
        try:
            triton.compile(src, target=target)
        except Exception as e:  # the compiler's message names the line
            pytest.fail(f"{fn.fn.__module__}.{fn.fn.__name__} ({dtype}) does not compile: {e}")


@pytest.mark.slow
def test_dropout_kernel_hashes_in_32_bit_integers():
    """The keyed dropout kernel compiled for sm_90 executes at most 26 instructions per element (a 16 x 256 block
    of a 768-wide row): its hash in 32-bit integers and one stream key per program. In 64-bit integers, with a
    stream key per row and a 1,024-wide block (a quarter of it past a 768-wide row), it took 44 (b898775,
    scripts/kernel_instructions.py)."""
    import sys

    from dynrank import _triton_dropout

    sys.path.insert(0, str(ROOT / "scripts"))
    from kernel_instructions import sass_counts

    n = sum(sass_counts(_triton_dropout.kernel, dict(BLOCK_R=16, BLOCK_C=256)).values())
    assert n / (16 * 256 / 128) <= 26, n
