"""The logger group (dynrank/trackers.py): MLflow, W&B and CSV get the scalars TensorBoard gets, the config and the
results, one tracker run per dynrank run, continued (every step once) after a kill."""
import csv
import json
import os

import pytest

from conftest import SHARED_GLUE, cli, compose, result_file, tiny_overrides
from dynrank import trackers
from dynrank.errors import ConfigError
from test_run_outputs import scalars


def _csv_rows(run_dir) -> list[tuple[int, str, float]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [(int(r["step"]), r["tag"], float(r["value"])) for r in csv.DictReader(f)]


def _tracker(tmp_path, resumed: bool, logger="csv"):
    cfg = compose(tiny_overrides(tmp_path, f"logger={logger}"))
    return trackers.open_tracker(cfg, tmp_path / "run", resumed)


def test_tracker_sends_what_a_checkpoint_covers_and_a_resume_skips_steps_sent(tmp_path):
    (tmp_path / "run").mkdir()
    t = _tracker(tmp_path, resumed=False)
    t.add_scalar("train/loss", 0.9, 1)
    assert not (tmp_path / "run/csv/metrics.csv").exists()  # waits for the checkpoint's flush
    t.add_scalar("train/loss", 0.8, 2)
    t.flush()  # a checkpoint at step 2
    t.add_scalar("train/loss", 0.7, 3)
    t.flush()  # sent before a checkpoint at step 3 that the kill did not let land
    assert json.loads((tmp_path / "run/tracker.json").read_text())["logged_through"] == 3
    # the next attempt resumes the step-2 checkpoint: it trains step 3 again (same value), then step 4
    t = _tracker(tmp_path, resumed=True)
    for step, value in ((3, 0.7), (4, 0.6)):
        t.add_scalar("train/loss", value, step)
    t.results({"final": {"epoch": 2, "dev": {"accuracy": 0.5}}})
    assert _csv_rows(tmp_path / "run") == [(1, "train/loss", 0.9), (2, "train/loss", 0.8), (3, "train/loss", 0.7),
                                           (4, "train/loss", 0.6)]
    assert json.loads((tmp_path / "run/csv/results.json").read_text())["final"]["dev"]["accuracy"] == 0.5
    assert "task:" in (tmp_path / "run/csv/config.yaml").read_text()
    # a start-over (train.resume=false) is a new history: the old rows go at its first flush
    t = _tracker(tmp_path, resumed=False)
    t.add_scalar("train/loss", 1.5, 1)
    t.flush()
    assert _csv_rows(tmp_path / "run") == [(1, "train/loss", 1.5)]


def test_logger_is_no_part_of_a_runs_identity():
    from dynrank.config import run_id

    base = ["model=tiny", f"data.dir={SHARED_GLUE}"]
    assert {run_id(compose([*base, f"logger={name}"])) for name in ("tensorboard", "csv", "mlflow", "wandb")} == \
        {run_id(compose(base))}


def test_a_logger_whose_package_is_missing_is_a_config_error(monkeypatch):
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else find(name, *a))
    with pytest.raises(ConfigError, match=r"logger=mlflow needs the mlflow package.*pip install -e '\.\[mlflow\]'"):
        trackers.check_installed("mlflow")
    trackers.check_installed("csv")


def _tb_history(run_dir) -> dict:
    return {tag: [(s, pytest.approx(v, rel=1e-6)) for s, v in events] for tag, events in scalars(run_dir / "tb").items()}


@pytest.mark.slow
def test_mlflow_file_store_holds_one_continuous_history_after_a_kill(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="logger=mlflow needs mlflow (pip install -e '.[mlflow]')")
    from mlflow.tracking import MlflowClient

    run_dir, store = tmp_path / "run", tmp_path / "mlruns"
    args = [*tiny_overrides(tmp_path, "train.epochs=3", "train.log_every=1", "seeds=[1,2]", "train.stack=true",
                            "logger=mlflow",
                            f"logger.dir={store}"), f"hydra.run.dir={run_dir}"]
    killed = cli(args, cwd=tmp_path, kill_after_epoch=2)
    assert killed.returncode == 137, killed.stderr
    dirs = {int(f.parent.name.removeprefix("seed")): f.parent for f in run_dir.rglob("tracker.json")}
    assert sorted(dirs) == [1, 2]  # the stacked runs each have their own tracker run
    first = {seed: json.loads((d / "tracker.json").read_text())["run_id"] for seed, d in dirs.items()}
    resumed = cli(args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # (the runs set it themselves) MLflow 3 asks for it
    client = MlflowClient(tracking_uri=store.as_uri())
    runs = client.search_runs([client.get_experiment_by_name("dynrank").experiment_id])
    assert len(runs) == 2  # one per seed, each continued, not a second one after the kill
    for seed in (1, 2):
        rdir = dirs[seed]
        run_id = json.loads((rdir / "tracker.json").read_text())["run_id"]
        assert run_id == first[seed]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        tb = _tb_history(rdir)
        assert {"train/loss", "train/lr", "dev/accuracy", "dev/matthews"} <= set(tb)
        for tag, events in tb.items():  # every step once, the values TensorBoard has
            assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, tag)) == events, tag
        results = json.loads(result_file(tmp_path / "store/tiny/cola/lora-r8", seed).read_text())
        assert run.data.metrics["final/dev/accuracy"] == pytest.approx(results["final"]["dev"]["accuracy"])
        assert run.data.params["seed"] == str(seed) and run.data.params["train.epochs"] == "3"
        artifacts = {a.path for a in client.list_artifacts(run_id)}
        assert {"config.yaml", "results.json"} <= artifacts


@pytest.mark.slow
def test_wandb_offline_run_gets_the_scalars_and_results(tmp_path):
    pytest.importorskip("wandb", reason="logger=wandb needs wandb (pip install -e '.[wandb]')")
    run_dir = tmp_path / "run"
    p = cli([*tiny_overrides(tmp_path, "train.epochs=2", "logger=wandb", "logger.mode=offline"),
             f"hydra.run.dir={run_dir}"], cwd=tmp_path, env={"WANDB_SILENT": "true", "WANDB_API_KEY": ""})
    assert p.returncode == 0, p.stderr
    state = json.loads((run_dir / "tracker.json").read_text())
    assert state["logger"] == "wandb" and state["logged_through"] > 0
    offline = list((run_dir / "wandb").glob(f"offline-run-*-{state['run_id']}"))
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb"))
