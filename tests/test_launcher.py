"""Hydra launchers: a 2-job sweep through hydra-submitit-launcher's local mode (one process per job) on CPU."""
from __future__ import annotations

import json

import pytest

from conftest import cli, make_glue, result_file

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install hydra-submitit-launcher")


def test_submitit_local_runs_a_two_job_sweep(tmp_path):
    glue = tmp_path / "glue"
    make_glue(glue, n=24)
    sweep = tmp_path / "multirun"
    p = cli(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "task=cola", "method=lora",
             "model=tiny", "seed=1,2", f"data.dir={glue}", "train.epochs=1", "train.progress=false",
             "data.max_train_samples=16", "data.max_eval_samples=16", f"data.cache_dir={tmp_path / 'cache'}",
             f"results.store={tmp_path / 'store'}", f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for seed in (1, 2):
        res = json.loads(result_file(tmp_path / "store/tiny/cola/lora-r8", seed).read_text())
        assert res["seed"] == seed and res["run_id"].startswith("tiny/cola/lora-r8/lr")
        assert (sweep / res["run_id"] / "results.json").is_file()  # hydra.sweep.subdir = run id
    # each job ran as its own submitit process, with its own log and pickled result
    results = sorted(sweep.glob(".submitit/*/*_result.pkl"))
    assert len(results) == 2 and len({r.parent.name for r in results}) == 2
