"""scripts/bench_seeds.py on CPU with the tiny model: both runs go through the real CLI on real RTE and the JSON says
what ran; a failing run ends the script with its own error line."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_GLUE

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["data.max_train_samples=32", "data.max_eval_samples=16"]


def _run(tmp_path, *extra):
    return subprocess.run([sys.executable, str(ROOT / "scripts/bench_seeds.py"), "--tiny", "--epochs", "1",
                           "--seeds", "1,2", "--data", str(SHARED_GLUE), "--out", str(tmp_path), *extra],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_one_seed_and_two_side_by_side_on_real_rte(tmp_path):
    p = _run(tmp_path, "--gpus", "0,1", "--extra", *SMALL)
    assert p.returncode == 0, p.stderr[-2000:]
    (out,) = tmp_path.glob("seeds-*.json")
    r = json.loads(out.read_text())
    assert r["data"].startswith("real GLUE RTE") and r["model"] == "model=tiny"
    assert r["results_files"] == 2 == r["runs"] and sorted(r["best_side_by_side"]) == ["1", "2"]
    assert r["stacked_runs"] == 1  # on a CPU the runs train side by side (train.stack=auto)
    assert r["wall_one_seed_s"] > 0 and r["ratio"] == r["wall_all_seeds_s"] / r["wall_one_seed_s"]
    assert "at the same time" in r["gpus"] and r["epochs"] == 1


@pytest.mark.slow
def test_a_failing_run_ends_with_its_error(tmp_path):
    p = _run(tmp_path, "--gpus", "0,1", "--extra", "train.lr=-1", *SMALL)
    assert p.returncode != 0
    assert "train.lr must be a number > 0 (got -1)" in p.stderr
    assert not list(tmp_path.glob("seeds-*.json"))
