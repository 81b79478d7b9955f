"""What a run keeps, and whose it is: a results store holds a config's runs on one data (other data is refused);
train.extend never copies a run being trained; a finished run exports its adapter when asked; and
train.keep_checkpoint=none keeps a finished run's results only. In process, on stacked runs (two seeds as one model):
each run's bookkeeping is its own, as a run alone's (``resume.Run``)."""
import fcntl
import os

import pytest
import torch
from safetensors.torch import load_file

from conftest import compose, tiny_overrides
from dynrank.config import run_id
from dynrank.errors import ConfigError, RunInUseError, TrainingError
from dynrank.driver import run_side_by_side
from dynrank.train import runs_of

STACKED = ["seeds=[1,2]", "train.stack=true"]


@pytest.fixture(autouse=True)
def info(caplog):
    caplog.set_level("INFO", logger="dynrank")


def cola(root, words: str):
    """A classic-layout CoLA of 16 rows (train and dev) whose sentences use ``words``."""
    d = root / "CoLA"
    d.mkdir(parents=True)
    rows = "".join(f"gj04\t{i % 2}\t\t{words} number {i} .\n" for i in range(16))
    for split in ("train", "dev"):
        (d / f"{split}.tsv").write_text(rows)
    return root


def cfgs_of(tmp, *extra):
    return runs_of(compose(tiny_overrides(tmp, "data.max_train_samples=16", "data.max_eval_samples=16",
                                          "train.batch_size=8", *STACKED, *extra)))


def empty(d) -> bool:
    """Nothing there: no run directory left by a refused command."""
    return not d.exists() or not any(d.iterdir())


def train(cfgs, root):
    """The runs ``cfgs``, each in ``root/<its run id>`` (as under ``outputs/``)."""
    return run_side_by_side(cfgs, [root / run_id(c) for c in cfgs])


@pytest.mark.slow
def test_the_store_refuses_a_config_on_other_data(tmp_path):
    """The same config on a data.dir of other content has the same run id and results path: it overwrote the first
    one's results, train.skip_done skipped it as done, the report averaged both. Now: refused, naming the file and
    what differs; a variant (or another store) keeps both."""
    a, b = cola(tmp_path / "a", "one"), cola(tmp_path / "b", "another")
    first = train(cfgs_of(tmp_path, f"data.dir={a}"), tmp_path / "a-runs")
    assert all(r["data"]["train"]["examples"] == 16 for r in first)
    store = sorted((tmp_path / "store").rglob("seed*.json"))
    before = {p: p.read_text() for p in store}
    for extra in ([], ["train.skip_done=true"], ["train.resume=false"]):
        with pytest.raises(TrainingError) as e:
            train(cfgs_of(tmp_path, f"data.dir={b}", *extra), tmp_path / "b-runs")
        assert str(e.value) == (
            f"the results store holds this config's results on other data ({store[0]}: train: same size, other "
            "content, validation: same size, other content); keep both with variant=<name> or results.store=<dir>, "
            f"or remove {store[0].parent.parent}/lr*-{store[0].parent.name.rsplit('-', 1)[1]} to train it again here")
        assert {p: p.read_text() for p in store} == before and empty(tmp_path / "b-runs")
    train(cfgs_of(tmp_path, f"data.dir={b}", "variant=b"), tmp_path / "b-runs")
    assert len(list((tmp_path / "store").rglob("seed*.json"))) == 2 * len(store)


def test_runs_trained_together_differ_only_in_seed_and_lr(tmp_path):
    """run_side_by_side trains every run on the first one's data: runs on other data are refused, not stacked."""
    a, b = cola(tmp_path / "a", "one"), cola(tmp_path / "b", "another")
    cfgs = [cfgs_of(tmp_path, f"data.dir={a}")[0], cfgs_of(tmp_path, f"data.dir={b}")[1]]  # seed 1 on a, 2 on b
    with pytest.raises(ConfigError, match=r"^runs trained in one process must differ only in seed and train.lr; these "
                                          r"differ in data.dir too: train them apart$"):
        train(cfgs, tmp_path / "runs")


@pytest.mark.slow
def test_extend_never_copies_a_run_in_use(tmp_path):
    """train.extend=true copied the shorter run's live checkpoint without its lock (mixed states were resumed)."""
    shorter = cfgs_of(tmp_path, "train.epochs=1")
    assert all(len(r["epochs"]) == 1 for r in train(shorter, tmp_path / "runs"))
    longer = cfgs_of(tmp_path, "train.epochs=2", "train.extend=true")
    busy = tmp_path / "runs" / run_id(shorter[0])
    with open(busy / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a process still training it
        with pytest.raises(RunInUseError) as e:
            train(longer, tmp_path / "runs")
    assert str(e.value) == (f"train.extend=true: run {busy} is in use by another process (pid {os.getpid()}); "
                            "wait for it to end, or stop it, before running it again")
    assert not (tmp_path / "runs" / run_id(longer[0])).parent.exists()  # nothing copied, no directory left
    done = train(longer, tmp_path / "runs")  # free: extended
    assert [r["schedule"][0]["epochs"] for r in done] == [1] * len(done) and all(len(r["epochs"]) == 2 for r in done)


@pytest.mark.slow
def test_a_finished_run_exports_its_adapter_when_asked(tmp_path, caplog):
    """A finished run rerun with train.export=true exited 0 without an adapter; now it is exported from the final
    checkpoint (as the run would have at its end), its results left as they are; the tiny base saved beside it gets
    the umask's mode (it was 0600)."""
    cfgs = cfgs_of(tmp_path)
    train(cfgs, tmp_path / "runs")
    results = {p: p.read_text() for p in (tmp_path / "runs").rglob("results.json")}
    train(cfgs_of(tmp_path, "train.export=true"), tmp_path / "runs")
    assert caplog.text.count("its adapter is exported from its final checkpoint") == len(results)
    assert {p: p.read_text() for p in results} == results
    direct = train(cfgs_of(tmp_path, "train.export=true", f"results.store={tmp_path / 'direct'}"),
                   tmp_path / "direct")  # exported at the end of training
    mask = os.umask(0)
    os.umask(mask)
    assert len(direct) == len(cfgs)
    for c in cfgs:
        a, b = (load_file(str(tmp_path / d / run_id(c) / "adapter/adapter_model.safetensors"))
                for d in ("runs", "direct"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        base = tmp_path / "runs" / run_id(c) / "adapter/base_model/model.safetensors"
        assert base.stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.slow
def test_keep_checkpoint_none_keeps_the_results_only(tmp_path, caplog):
    cfgs = cfgs_of(tmp_path, "train.keep_checkpoint=none")
    first = train(cfgs, tmp_path / "runs")
    runs = sorted((tmp_path / "runs").rglob("seed*"))
    assert len(runs) == len(first) and all(sorted(p.name for p in d.iterdir()) == [".lock", "results.json", "tb"]
                                           for d in runs)
    before = {d: (d / "results.json").read_text() for d in runs}
    again = train(cfgs, tmp_path / "runs")  # finished: left as it is, not trained again
    assert [r["final"] for r in again] == [r["final"] for r in first]
    assert caplog.text.count("finished already, left as it is") == len(runs)
    assert {d: (d / "results.json").read_text() for d in runs} == before
    with pytest.raises(TrainingError, match=r"is of a run that kept no checkpoint \(train.keep_checkpoint=none\): "
                                            r"there is no adapter to export; add train.resume=false"):
        train(cfgs_of(tmp_path, "train.keep_checkpoint=none", "train.export=true"), tmp_path / "runs")


def test_keep_checkpoint_is_checked():
    from dynrank.config import validate

    with pytest.raises(ConfigError, match=r"^train.keep_checkpoint must be last or none \(got 'all'\)$"):
        validate(compose(["model=tiny", "train.keep_checkpoint=all"]))
