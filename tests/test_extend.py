"""More epochs: a new length is a new run, unless ``train.extend=true`` continues the shorter one (copied, left as
it is, or in a hand-set run directory the same one); fewer epochs than trained are refused; one log and one stream
of TensorBoard steps per attempt."""
import json

import pytest

from conftest import SHARED_GLUE, cli
from test_run_outputs import scalars

ARGS = ["task=cola", "method=lora", "model=tiny", f"data.dir={SHARED_GLUE}", "data.max_train_samples=64",
        "data.max_eval_samples=64", "train.batch_size=32", "train.progress=false",  # 2 steps an epoch
        "train.log_every=1"]


def _args(tmp_path, *more):
    return [*ARGS, f"data.cache_dir={tmp_path / 'cache'}", f"results.store={tmp_path / 'store'}", *more]


@pytest.mark.slow
def test_a_longer_run_is_a_new_run_and_extend_continues_the_longest_shorter_one(tmp_path):
    assert cli(_args(tmp_path, "train.epochs=1"), cwd=tmp_path).returncode == 0
    assert cli(_args(tmp_path, "train.epochs=2"), cwd=tmp_path).returncode == 0  # from the start, its own home
    one, two = sorted((tmp_path / "outputs").rglob("results.json"),
                      key=lambda p: json.loads(p.read_text())["final"]["epoch"])
    assert one.parent != two.parent
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "cache" not in p.parts}
    r2 = json.loads(two.read_text())
    assert r2["schedule"] == [{"epochs": 2, "from_step": 0}]

    p = cli(_args(tmp_path, "train.epochs=3", "train.extend=true"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert f"extending {two.parent} (2 epochs trained) to 3 epochs" in p.stdout
    after = {p: p.read_bytes() for p in before if p.exists()}
    assert after == before  # the shorter runs, their results and checkpoints: untouched
    three = json.loads(next(p for p in (tmp_path / "outputs").rglob("results.json") if p not in before).read_text())
    assert three["epochs"][:2] == r2["epochs"] and len(three["epochs"]) == 3
    assert three["schedule"] == [{"epochs": 2, "from_step": 0}, {"epochs": 3, "from_step": 4}]
    assert three["config_hash"] not in {r2["config_hash"], json.loads(one.read_text())["config_hash"]}
    assert len(list((tmp_path / "store").rglob("seed1.json"))) == 3  # three runs, three results files


@pytest.mark.slow
def test_a_hand_set_run_dir_of_another_length_needs_extend(tmp_path):
    run = tmp_path / "run"
    args = _args(tmp_path, f"hydra.run.dir={run}")
    assert cli([*args, "train.epochs=1"], cwd=tmp_path).returncode == 0
    one = json.loads((run / "results.json").read_text())
    p = cli([*args, "train.epochs=2"], cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        f"error: the checkpoint in {run / 'checkpoint'} is of a 1-epoch run and train.epochs=2: add train.extend=true "
        "to continue it to 2 epochs (its schedules then span 2 epochs from step 2: README, More epochs), or add "
        "train.resume=false to the command to start over"], p.stderr
    assert json.loads((run / "results.json").read_text()) == one

    p = cli([*args, "train.epochs=2", "train.extend=true"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert f"resumed from {run / 'checkpoint'} at epoch 1 (step 2)" in p.stdout
    assert "the run's length changes from 1 to 2 epochs at epoch 1 (step 2 of 4)" in p.stdout
    two = json.loads((run / "results.json").read_text())
    assert two["epochs"][0] == one["epochs"][0] and len(two["epochs"]) == 2  # epoch 1 is the one trained before
    assert two["schedule"] == [{"epochs": 1, "from_step": 0}, {"epochs": 2, "from_step": 2}]
    assert two["config_hash"] != one["config_hash"]  # never averaged with runs trained 2 epochs from the start
    # the learning rate follows the 2-epoch schedule from step 2 on: linear to 0 over 4 steps (warm-up int(0.06 * 4) = 0)
    lr = dict(scalars(run / "tb")["train/lr"])  # (float32 in the event file)
    assert lr == {1: pytest.approx(4e-4 / 2), 2: 0, 3: pytest.approx(4e-4 / 4), 4: 0}
    # each attempt its own log
    assert "epoch 1/1" in (run / "train.log").read_text() and "length changes" not in (run / "train.log").read_text()
    assert "length changes" in (run / "train.2.log").read_text()  # (the refused attempt wrote no log)

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
