"""More epochs continue a run (an extension); fewer than it has trained are refused; one log and one stream of
TensorBoard steps per attempt."""
import json

import pytest

from conftest import SHARED_GLUE, cli
from test_run_outputs import scalars


def test_more_epochs_continue_the_run_and_fewer_are_refused(tmp_path):
    run = tmp_path / "run"
    args = ["task=cola", "method=lora", "model=tiny", f"data.dir={SHARED_GLUE}", "data.max_train_samples=64",
            "data.max_eval_samples=64", "train.progress=false", "train.log_every=1", f"hydra.run.dir={run}",
            f"data.cache_dir={tmp_path / 'cache'}", f"results.store={tmp_path / 'store'}"]
    assert cli([*args, "train.epochs=1"], cwd=tmp_path).returncode == 0
    one = json.loads((run / "results.json").read_text())
    p = cli([*args, "train.epochs=2"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert f"resumed from {run / 'checkpoint'} at epoch 1 (step 2)" in p.stdout
    assert "the run's length changes from 1 to 2 epochs at epoch 1 (step 2 of 4)" in p.stdout
    two = json.loads((run / "results.json").read_text())
    assert two["epochs"][0] == one["epochs"][0] and len(two["epochs"]) == 2  # epoch 1 is the one trained before
    assert two["schedule"] == [{"epochs": 1, "from_step": 0}, {"epochs": 2, "from_step": 2}]
    assert two["run_id"] == one["run_id"] and len(list((tmp_path / "store").rglob("seed1.json"))) == 1
    assert two["config_hash"] != one["config_hash"]  # never averaged with runs trained 2 epochs from the start
    # the learning rate follows the 2-epoch schedule from step 2 on: linear to 0 over 4 steps (warm-up int(0.06 * 4) = 0)
    lr = dict(scalars(run / "tb")["train/lr"])  # (float32 in the event file)
    assert lr == {1: pytest.approx(4e-4 / 2), 2: 0, 3: pytest.approx(4e-4 / 4), 4: 0}
    # each attempt its own log
    assert "epoch 1/1" in (run / "train.log").read_text() and "length changes" not in (run / "train.log").read_text()
    assert "length changes" in (run / "train.2.log").read_text()

    p = cli([*args, "train.epochs=1"], cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        f"error: the checkpoint in {run / 'checkpoint'} has trained 2 epochs, more than train.epochs=1; set "
        "train.epochs=2 or more to keep it, or add train.resume=false to the command to start over"], p.stderr
    assert json.loads((run / "results.json").read_text()) == two

    # starting over: the earlier attempts' TensorBoard steps are cut, every step is there once
    assert cli([*args, "train.epochs=2", "train.resume=false"], cwd=tmp_path).returncode == 0
    again = json.loads((run / "results.json").read_text())
    assert again["schedule"] == [{"epochs": 2, "from_step": 0}] and again["config_hash"] != two["config_hash"]
    for tag, points in scalars(run / "tb").items():
        assert [s for s, _ in points] == sorted({s for s, _ in points}), tag
    assert [s for s, _ in scalars(run / "tb")["train/loss"]] == [1, 2, 3, 4]
