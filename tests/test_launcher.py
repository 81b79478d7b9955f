"""Hydra launchers on CPU: submitit's local mode (one process per job), and the local_gpus preset (joblib, one
job per GPU: the GPUs faked through CUDA_VISIBLE_DEVICES, the claim logic with fake GPU ids)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import CONF, ROOT, cli, make_glue, result_file


@pytest.mark.slow
def test_submitit_local_runs_a_two_job_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install hydra-submitit-launcher")
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


# --- hydra/launcher=local_gpus ------------------------------------------------------------------------

def _compose_hydra(overrides):
    from hydra import compose, initialize_config_dir

    import dynrank.train  # noqa: F401  (registers ${run_id:} and ${dynrank_gpus:})

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


@pytest.mark.slow
def test_local_gpus_preset_runs_one_job_per_visible_gpu(monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[dev]'")
    cfg = _compose_hydra(["hydra/launcher=local_gpus", "model=tiny"])
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.job.env_set == {"DYNRANK_CLAIM_GPU": "1"}
    # n_jobs is resolved at launch, from the GPUs visible then
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    assert cfg.hydra.launcher.n_jobs == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaaa, GPU-bbbb")
    assert cfg.hydra.launcher.n_jobs == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU: the jobs run one after another, on the CPU
    assert cfg.hydra.launcher.n_jobs == 1
    assert _compose_hydra(["hydra/launcher=local_gpus", "hydra.launcher.n_jobs=4"]).hydra.launcher.n_jobs == 4
    # the CLI composes it too (what a user checks with --cfg hydra)
    p = cli(["hydra/launcher=local_gpus", "model=tiny", "--cfg", "hydra"], cwd=ROOT)
    assert p.returncode == 0 and "n_jobs: ${dynrank_gpus:}" in p.stdout, p.stderr[-2000:]


def test_no_claim_unless_the_preset_asks(monkeypatch):
    from dynrank import gpus

    monkeypatch.delenv(gpus.ASK_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert gpus.claim_if_asked() is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1" and gpus._held is None


# A process that claims one of two fake GPUs, prints what it got and what it now sees, and holds the claim
# until its stdin closes.
_CLAIMER = ("import os, sys; from dynrank import gpus; "
            "g = gpus.claim(['0', '1'], sys.argv[1], poll_s=0.05, timeout_s=float(sys.argv[2])); "
            "print(g, os.environ['CUDA_VISIBLE_DEVICES'], flush=True); sys.stdin.read()")


def _claimer(locks, timeout_s):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", _CLAIMER, str(locks), str(timeout_s)], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_processes_claim_different_gpus_and_a_third_waits_for_a_free_one(tmp_path):
    locks = tmp_path / "locks"
    first, second = _claimer(locks, 30), _claimer(locks, 30)
    try:
        got = [first.stdout.readline().split(), second.stdout.readline().split()]
        assert sorted(got) == [["0", "0"], ["1", "1"]]  # each sees only its own GPU
        # all taken: a claim with a time limit fails with one clear line naming the holders
        third = _claimer(locks, 0.3)
        _, err = third.communicate(timeout=60)
        assert third.returncode != 0
        assert "GpuBusy: no free GPU after 0.3 s" in err and f"pid {first.pid}" in err and f"pid {second.pid}" in err
        # one waiting gets the GPU the first one releases when it exits
        waiter = _claimer(locks, 30)
        first.stdin.close()
        first.wait(timeout=30)
        assert waiter.stdout.readline().split() == got[0]
        waiter.stdin.close()
        waiter.wait(timeout=30)
    finally:
        for p in (first, second):
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.slow
def test_local_gpus_sweep_puts_each_job_on_its_own_gpu(tmp_path):
    """Two jobs (lora, dora), each training seeds=[1,2] in one process, on two faked GPUs: both jobs run at
    once in their own worker, on different GPUs, and all four results files are complete."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[dev]'")
    glue = tmp_path / "glue"
    make_glue(glue, n=24)
    store = tmp_path / "store"
    p = cli(["-m", "hydra/launcher=local_gpus", "task=cola", "method=lora,dora", "seeds=[1,2]", "model=tiny",
             f"data.dir={glue}", "train.epochs=1", "train.progress=false", "data.max_train_samples=16",
             "data.max_eval_samples=16", f"data.cache_dir={tmp_path / 'cache'}", f"results.store={store}",
             f"hydra.sweep.dir={tmp_path / 'multirun'}"], cwd=tmp_path, timeout=300,
            env={"CUDA_VISIBLE_DEVICES": "0,1", "DYNRANK_GPU_LOCKS": str(tmp_path / "locks")})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in p.stdout + p.stderr
    runs = [json.loads(f.read_text()) for f in sorted(store.rglob("seed*.json"))]
    assert sorted((r["method"], r["seed"]) for r in runs) == [("dora", 1), ("dora", 2), ("lora", 1), ("lora", 2)]
    assert all(r["best"]["dev"] and r["device"] == "cpu" for r in runs)
    gpu_of = {r["method"]: r["gpu"]["claimed"] for r in runs}  # the seeds of one job share its GPU
    assert all(r["gpu"] == {"claimed": gpu_of[r["method"]], "visible": gpu_of[r["method"]], "uuid": None}
               for r in runs)
    assert sorted(gpu_of.values()) == ["0", "1"]
