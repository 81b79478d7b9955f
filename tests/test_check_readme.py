"""scripts/check_readme.py: each README claim beside its measurement; a claim that moved or vanished fails."""
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
try:
    import check_readme
finally:
    sys.path.pop(0)


def test_compare_flags_a_moved_a_missing_and_an_unmeasured_claim(capsys):
    text = "make demo  # learns SST-2 (0.84 vs 0.51)\nmeasured here (cold tokenisation cache): 1 min 48 s in all"
    rows = [("demo accuracy", r"learns SST-2 \(([\d.]+) vs", [0.817], 0.005),
            ("majority", r"learns SST-2 \([\d.]+ vs ([\d.]+)\)", [0.509], 0.005),
            ("gone", r"dev accuracy ([\d.]+); the adapter loads", [0.845], 0.005),
            ("broken", r"vs ([\d.]+)\)", RuntimeError("no data"), 0.005),
            ("time", r"\(cold tokenisation cache\): ([\d a-z]+?) in all", [130.0, 120.0], None)]
    assert check_readme.compare(text, rows) == 3
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "DIFFERS  demo accuracy: README 0.84 | measured 0.817"
    assert out[1] == "ok       majority: README 0.51 | measured 0.509"
    assert out[2].startswith("MISSING  gone: the README no longer says it")
    assert out[3].startswith("FAILED   broken: could not measure (RuntimeError: no data)")
    assert out[4] == "info     time: README 1 min 48 s (108 s) | measured 2 min 10 s (130 s wall, 120 s CPU)"


@pytest.mark.slow
def test_the_fast_part_agrees_with_the_readme(capsys):
    """Every claim of the fast part (counts, majority class, GPU-hours) is in README.md and agrees with the code."""
    assert check_readme.main([]) == 0, capsys.readouterr().out
