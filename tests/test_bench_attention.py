"""scripts/bench_attention.py: every shape and tiling it times is checked against the reference first; here its
smoke run under Triton's interpreter (skipped without Triton, as in CI: CPU builds of torch do not install it)."""
import pytest

from conftest import ROOT, interpreted


@pytest.mark.slow
def test_smoke_run_checks_every_shape_and_tiling_against_the_reference():
    out = interpreted(ROOT / "scripts" / "bench_attention.py", "--smoke")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if "x" in line and "warps" in line]
    assert len(lines) == 6 and all(line.endswith("untimed") for line in lines), out.stdout  # 3 shapes x 2 tilings
