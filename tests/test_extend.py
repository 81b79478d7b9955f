"""More epochs: a new length is a new run, unless ``train.extend=true`` continues the shorter one (copied, left as
it is, or in a hand-set run directory the same one); fewer epochs than trained are refused; one log and one stream
of TensorBoard steps per attempt."""
import json
import shutil
from pathlib import Path

import pytest

from conftest import SHARED_GLUE, cli, compose, tiny_overrides
from test_run_outputs import scalars
from dynrank.config import run_id
from dynrank.errors import TrainingError
from dynrank.trainer import Trainer
from dynrank.driver import run

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


# --- in process: which run an extension continues, and where it lives ----------------------------------------

def _cfg(tmp_path, *more):
    return compose(tiny_overrides(tmp_path, "data.max_train_samples=16", "data.max_eval_samples=16",
                                  "train.batch_size=8", *more))  # 2 steps an epoch


def _home(tmp_path, *more) -> Path:
    return tmp_path / "outputs" / run_id(_cfg(tmp_path, *more))


def _train(tmp_path, *more) -> dict:
    return run(_cfg(tmp_path, *more), _home(tmp_path, *more))


def _files(root: Path) -> dict:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_an_extended_run_and_one_trained_from_the_start_have_homes_of_their_own(tmp_path, caplog):
    """A 1-epoch run extended to 2 lived in the home of the 2-epoch run trained from the start: the extension found
    that run's checkpoint and answered "finished already" with its results (or, the other way round, replaced them in
    the store). Now each has its own run directory and results file, and each command again leaves its own run as
    it is; the plain command in the extended run's directory is refused, not answered with the extended results."""
    caplog.set_level("INFO", logger="dynrank")
    _train(tmp_path, "train.epochs=1")
    scratch = _train(tmp_path, "train.epochs=2")
    before = _files(tmp_path / "store")
    extended = _train(tmp_path, "train.epochs=2", "train.extend=true")
    assert extended["schedule"] == [{"epochs": 1, "from_step": 0}, {"epochs": 2, "from_step": 2}]
    assert extended["run_id"] != scratch["run_id"] and extended["config_hash"] != scratch["config_hash"]
    assert _home(tmp_path, "train.epochs=2", "train.extend=true") != _home(tmp_path, "train.epochs=2")
    after = _files(tmp_path / "store")
    assert {p: after[p] for p in before} == before and len(after) == 3  # three runs, three results files
    for more, results in ((["train.epochs=2"], scratch), (["train.epochs=2", "train.extend=true"], extended)):
        caplog.clear()
        again = _train(tmp_path, *more)
        assert "finished already" in caplog.text and again["finished_at"] == results["finished_at"], more
    assert _files(tmp_path / "store") == after
    there = _home(tmp_path, "train.epochs=2", "train.extend=true")  # as hydra.run.dir=<the extended run's dir>
    with pytest.raises(TrainingError) as e:
        run(_cfg(tmp_path, "train.epochs=2"), there)
    assert str(e.value) == (f"the checkpoint in {there / 'checkpoint'} is of a run extended from 1 to 2 epochs "
                            "(train.extend=true), not one trained 2 epochs from the start: add train.extend=true to "
                            "continue or keep it, or add train.resume=false to the command to start over")
    assert _files(tmp_path / "store") == after


@pytest.mark.slow
def test_extend_refuses_a_shorter_run_without_a_whole_checkpoint(tmp_path):
    """train.extend=true beside a shorter run that kept no checkpoint, or whose checkpoint is damaged, trained from
    the start ("no shorter run"): now refused in one line naming the run and why, leaving nothing behind."""
    _train(tmp_path, "train.epochs=1", "train.keep_checkpoint=none")
    short, longer = _home(tmp_path, "train.epochs=1"), ["train.epochs=2", "train.extend=true"]
    drop = (f"drop train.extend=true to train 2 epochs from the start, or move {short} away to continue another "
            "shorter run")
    with pytest.raises(TrainingError) as e:
        _train(tmp_path, *longer)
    assert str(e.value) == (f"train.extend=true: the shorter run {short} kept no checkpoint "
                            f"(train.keep_checkpoint=none): there is nothing to continue; {drop}")
    assert not _home(tmp_path, *longer).parent.exists()
    _train(tmp_path, "train.epochs=1", "train.resume=false")  # again, keeping its checkpoint
    tensors = short / "checkpoint/tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:200])
    with pytest.raises(TrainingError) as e:
        _train(tmp_path, *longer)
    assert str(e.value).startswith(f"train.extend=true: the shorter run {short} has a damaged checkpoint ("
                                   f"{short / 'checkpoint'}: SafetensorError: Error while deserializing header: ")
    assert str(e.value).endswith(f"); {drop}") and len(str(e.value).splitlines()) == 1
    (short / "checkpoint/state.json").write_text("{")
    with pytest.raises(TrainingError, match=rf"^train.extend=true: the shorter run {short} has a damaged checkpoint "
                                            r"\(.*JSONDecodeError"):
        _train(tmp_path, *longer)
    with pytest.raises(TrainingError) as e:
        _train(tmp_path, *longer, "seed=2")
    assert str(e.value) == ("train.extend=true: no shorter run of this config (the same learning rate, seed and every "
                            f"key but train.epochs) beside {_home(tmp_path, *longer, 'seed=2')} to continue to 2 "
                            "epochs; drop train.extend=true to train 2 epochs from the start")
    assert not _home(tmp_path, *longer).parent.exists()


@pytest.mark.slow
def test_only_a_run_planned_shorter_lends_its_checkpoint(tmp_path, monkeypatch):
    """A 3-epoch run stopped after its first epoch lent its checkpoint to a 2-epoch extension (whose first epoch had
    followed a 3-epoch schedule), and between runs that trained as many epochs the path order chose. Now only runs
    planned shorter lend; one that ended as planned before one stopped early; runs alike are refused."""
    end = Trainer.end_epoch

    def end_then_interrupt(self):
        end(self)
        raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "end_epoch", end_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, "train.epochs=3")
    monkeypatch.undo()
    stopped = _home(tmp_path, "train.epochs=3")
    assert json.loads((stopped / "checkpoint/state.json").read_text())["epoch"] == 1
    with pytest.raises(TrainingError, match=r"^train.extend=true: no shorter run of this config"):
        _train(tmp_path, "train.epochs=2", "train.extend=true")
    _train(tmp_path, "train.epochs=1")
    # for 4 epochs both trained 1 epoch and are planned shorter: the run that ended as planned lends
    four = _train(tmp_path, "train.epochs=4", "train.extend=true")
    assert four["schedule"] == [{"epochs": 1, "from_step": 0}, {"epochs": 4, "from_step": 2}]
    # a copy of the 1-epoch run under another hash: two runs alike, refused rather than chosen by path
    one = _home(tmp_path, "train.epochs=1")
    twin = one.parent.with_name(one.parent.name.rsplit("-", 1)[0] + "-00000000") / one.name
    shutil.copytree(one, twin)
    with pytest.raises(TrainingError) as e:
        _train(tmp_path, "train.epochs=2", "train.extend=true")
    assert str(e.value) == (f"train.extend=true: {twin} and {one} are shorter runs of this config alike (epochs "
                            "trained: 1); move all but the one to continue away")
