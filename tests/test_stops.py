"""A command stopped however it stops leaves every run whole, and the next one continues each exactly: SIGTERM
checkpoints every run where it stands (mid-epoch too), Ctrl-C and a full disk leave each at its last checkpoint, a
kill during a checkpoint's swap is recovered, a start-over killed early leaves the finished run as it was, and an
error after the start leaves no empty run directory. Each for a run alone, runs side by side and stacked runs (in
process: the CLI only maps the outcome to one line and an exit status, ``test_cli_outcomes``)."""
import errno
import json
import os
import re
import signal

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from conftest import compose, tiny_overrides
from test_run_outputs import scalars
from dynrank.config import run_id
from dynrank.errors import DataError, TrainingError
from dynrank.trainer import Trainer
from dynrank.preempt import Preempted
from dynrank.driver import run_side_by_side
from dynrank.train import runs_of

# 24 examples in batches of 8: 3 steps an epoch, 2 epochs
MODES = {"alone": [], "side_by_side": ["seeds=[1,2]", "train.stack=false"],
         "stacked": ["seeds=[1,2,3]", "train.stack=true"]}


@pytest.fixture(autouse=True)
def info(caplog):
    caplog.set_level("INFO", logger="dynrank")


def job(root, mode: str, *extra):
    """The runs of ``mode`` under ``root`` (run dirs ``root/seed<k>``, store ``root/store``): their results."""
    cfg = compose(tiny_overrides(root, "train.epochs=2", "data.max_train_samples=24", "data.max_eval_samples=16",
                                 "train.batch_size=8", "train.log_every=1", f"results.store={root / 'store'}",
                                 *MODES[mode], *extra))
    cfgs = runs_of(cfg)
    return run_side_by_side(cfgs, [root / f"seed{c.seed}" for c in cfgs])


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """Each mode's runs trained without a stop, once: ``whole(mode)`` -> their root."""
    done = {}

    def get(mode):
        if mode not in done:
            done[mode] = tmp_path_factory.mktemp(f"whole-{mode}")
            job(done[mode], mode)
        return done[mode]
    return get


def after_step(monkeypatch, step: int, act) -> None:
    """``act()`` once, right after the first trainer to reach optimizer step ``step`` has taken it."""
    take, done = Trainer.train_step, []

    def step_then_act(self, i, idx):
        take(self, i, idx)
        if self.step == step and not done:
            done.append(step)
            act()
    monkeypatch.setattr(Trainer, "train_step", step_then_act)


def assert_same_runs(a_root, b_root):
    """Each run's per-epoch losses and dev metrics, and its final checkpoint's every tensor (parameters, AdamW
    moments, method state, RNG states), equal to the last bit."""
    runs = sorted(p.name for p in a_root.glob("seed*"))
    assert runs == sorted(p.name for p in b_root.glob("seed*")) and runs
    for name in runs:
        a, b = (json.loads((r / name / "results.json").read_text()) for r in (a_root, b_root))
        assert [h["train_loss"] for h in a["epochs"]] == [h["train_loss"] for h in b["epochs"]], name
        assert [h["dev"] for h in a["epochs"]] == [h["dev"] for h in b["epochs"]], name
        ta, tb = (load_file(str(r / name / "checkpoint/tensors.safetensors")) for r in (a_root, b_root))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
        assert sorted(s for s, _ in scalars(b_root / name / "tb")["train/loss"]) == list(range(1, 7))  # each once


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_sigterm_checkpoints_every_run_mid_epoch_and_the_rerun_continues_exactly(tmp_path, monkeypatch, whole,
                                                                                  mode, caplog):
    after_step(monkeypatch, 4, lambda: os.kill(os.getpid(), signal.SIGTERM))  # epoch 2, batch 1 of 3
    with pytest.raises(Preempted, match="every run was checkpointed where it stood"):
        job(tmp_path, mode)
    assert "SIGTERM: checkpoint at epoch 2, batch 1 (step 4)" in caplog.text
    for d in tmp_path.glob("seed*"):
        state = json.loads((d / "checkpoint/state.json").read_text())
        assert (state["epoch"], state["step"], state["position"]["batch"]) == (1, 4, 1), d
        assert not (d / "results.json").exists()
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler went with the command
    job(tmp_path, mode)
    assert "within epoch 2, after batch 1 (step 4)" in caplog.text
    assert_same_runs(whole(mode), tmp_path)
    res = json.loads((tmp_path / "seed1/results.json").read_text())
    assert len(res["wall_time_per_attempt_s"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["alone", "stacked"])
def test_ctrl_c_during_a_checkpoint_swap_after_checkpoint_every(tmp_path, monkeypatch, whole, mode, caplog):
    """train.checkpoint_every=2 checkpoints at step 2 and 4 (step 3 ends epoch 1); Ctrl-C at step 5 leaves each run
    at step 4, here as a kill during that checkpoint's swap would: only its complete ``checkpoint.tmp/``. The next
    command puts it in place (it restarted from scratch before) and continues exactly."""
    def ctrl_c():
        raise KeyboardInterrupt
    after_step(monkeypatch, 5, ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        job(tmp_path, mode, "train.checkpoint_every=2")
    for d in tmp_path.glob("seed*"):
        assert json.loads((d / "checkpoint/state.json").read_text())["step"] == 4
        (d / "checkpoint").rename(d / "checkpoint.tmp")
    monkeypatch.undo()
    job(tmp_path, mode, "train.checkpoint_every=2")
    assert caplog.text.count("was stopped during its swap; its complete checkpoint (epoch 1, step 4)") == \
        len(list(tmp_path.glob("seed*"))) and "after batch 1 (step 4)" in caplog.text
    assert_same_runs(whole(mode), tmp_path)
    assert not list(tmp_path.glob("seed*/checkpoint.tmp"))


@pytest.mark.slow
def test_a_start_over_killed_before_its_first_checkpoint_leaves_the_finished_run_as_it_was(tmp_path, monkeypatch,
                                                                                           caplog):
    mode = "stacked"
    job(tmp_path, mode)
    runs = sorted(tmp_path.glob("seed*"))
    before = {d: (scalars(d / "tb"), (d / "results.json").read_text()) for d in runs}

    def ctrl_c():
        raise KeyboardInterrupt
    after_step(monkeypatch, 2, ctrl_c)  # before the start-over's first checkpoint (step 3)
    with pytest.raises(KeyboardInterrupt):
        job(tmp_path, mode, "train.resume=false")
    monkeypatch.undo()
    job(tmp_path, mode)  # still finished: left as it is, its TensorBoard history too (it was wiped)
    assert caplog.text.count("finished already, left as it is") == len(runs)
    assert {d: (scalars(d / "tb"), (d / "results.json").read_text()) for d in runs} == before


@pytest.mark.slow
@pytest.mark.parametrize("where", ["store", "checkpoint"])
def test_a_full_disk_is_one_line_and_the_rerun_completes(tmp_path, monkeypatch, where):
    """ENOSPC at the results store (after the whole training; stacked runs), or in safetensors at a checkpoint
    (a run alone): a TrainingError saying what to do, and after it the same command completes the runs."""
    mode = "stacked" if where == "store" else "alone"
    if where == "store":
        fsync = os.fsync

        def full(fd):
            if f"{tmp_path}/store/" in os.readlink(f"/proc/self/fd/{fd}"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            fsync(fd)
        monkeypatch.setattr(os, "fsync", full)
    else:
        def full(tensors, path):
            raise SafetensorError('Error while serializing: I/O error: No space left on device (os error 28) at '
                                  f'path "{path}.tmp"')  # as safetensors 0.8 words it
        monkeypatch.setattr("safetensors.torch.save_file", full)
    with pytest.raises(TrainingError) as e:
        job(tmp_path, mode)
    wrote = (f"{tmp_path}/store/tiny/cola/lora-r8/lr[^/]+/seed1.json" if where == "store" else
             f"{tmp_path}/seed1/checkpoint.tmp/tensors.safetensors")
    assert re.fullmatch(f"no space left on the device writing {wrote}; free some and run the command again: it "
                        "continues from the last checkpoint and completes the runs", str(e.value)), str(e.value)
    monkeypatch.undo()
    done = job(tmp_path, mode)
    assert [r["seed"] for r in done] == ([1, 2, 3] if mode == "stacked" else [1])
    for d in tmp_path.glob("seed*"):
        mine = json.loads((d / "results.json").read_text())
        assert json.loads(next(tmp_path.glob(f"store/**/{d.name}.json")).read_text()) == mine


@pytest.mark.slow
def test_a_store_made_read_only_while_runs_train_is_one_line_and_the_rerun_completes(tmp_path, monkeypatch):
    """The store refuses writes once the runs have trained (as ``chmod -w`` or a read-only remount; the tests run as
    root, so refused by hand): one line saying where the runs are, and the same command then completes them."""
    import tempfile

    store, mkstemp = f"{tmp_path}/store", tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if str(dir).startswith(store):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return mkstemp(*args, dir=dir, **kwargs)
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(TrainingError) as e:
        job(tmp_path, "stacked")
    assert re.fullmatch(f"the results store {store} cannot be written \\(Permission denied: {store}/tiny/cola/"
                        "lora-r8/lr[^/]+\\); the runs are safe in their run directories: make the store writable and "
                        "run the command again, which completes them", str(e.value)), str(e.value)
    monkeypatch.undo()
    done = job(tmp_path, "stacked")
    assert [r["seed"] for r in done] == [1, 2, 3]
    for d in tmp_path.glob("seed*"):
        assert json.loads(next(tmp_path.glob(f"store/**/{d.name}.json")).read_text()) == \
            json.loads((d / "results.json").read_text())


@pytest.mark.parametrize("message", [
    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })',
    'Error while serializing: I/O error: No space left on device (os error 28) at path "{tmp}/.tmpAbC12"',
], ids=["debug-form", "display-form"])  # safetensors < 0.5, and 0.5 and later (the traceback)
def test_a_full_disk_in_safetensors_is_the_oserror_of_its_errno(tmp_path, monkeypatch, message):
    """``save_tensors`` (every checkpoint, exported adapter) raises an error of the system as the ``OSError`` of
    its errno, naming the file, whichever way safetensors words it: a full disk is then the one line above."""
    from dynrank.results import save_tensors

    path = tmp_path / "tensors.safetensors"
    with pytest.raises(OSError) as e:  # the installed safetensors' own words: no such directory, errno 2
        save_tensors({"w": torch.zeros(2)}, tmp_path / "missing" / "x.safetensors")
    assert (e.value.errno, e.value.filename) == (errno.ENOENT, str(tmp_path / "missing" / "x.safetensors"))

    def full(tensors, where):
        raise SafetensorError(message.replace("{tmp}", str(tmp_path)))
    monkeypatch.setattr("safetensors.torch.save_file", full)
    with pytest.raises(OSError) as e:
        save_tensors({"w": torch.zeros(2)}, path)
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(path))


@pytest.mark.parametrize("mode", ["alone", "stacked"])
def test_an_error_after_the_start_leaves_no_run_directory(tmp_path, mode):
    """Bad data found once the runs are opened (each locked): no directory is left holding only ``.lock``, nor the
    empty ones of its run id, also where Hydra made the run directory before the job started."""
    from conftest import make_glue

    glue = tmp_path / "glue"
    make_glue(glue)
    (glue / "CoLA/train.tsv").write_text((glue / "CoLA/train.tsv").read_text() + "gj04\t7\t\tseven .\n")
    out = tmp_path / "outputs"
    cfgs = runs_of(compose(tiny_overrides(tmp_path, f"data.dir={glue}", *MODES[mode])))
    dirs = [out / run_id(c) for c in cfgs]
    dirs[0].mkdir(parents=True)  # as Hydra does
    with pytest.raises(DataError, match="label '7' is not 0 or 1"):
        run_side_by_side(cfgs, dirs)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("stop, code, line", [
    (KeyboardInterrupt(), 130, "interrupted (Ctrl-C): each run is at its last checkpoint; run the command again to "
                               "continue"),
    (Preempted("SIGTERM: every run was checkpointed where it stood; run the command again to continue"), 143,
     "stopped: SIGTERM: every run was checkpointed where it stood; run the command again to continue"),
    (TrainingError("no space left"), 2, "error: no space left"),
], ids=["ctrl-c", "sigterm", "error"])
def test_cli_outcomes(capsys, stop, code, line):
    """What the CLI makes of a command's end (``dynrank.train.guarded``): one line on stderr and the exit status."""
    from dynrank.train import guarded

    def work():
        raise stop
    with pytest.raises(SystemExit) as e:
        guarded(work)
    assert e.value.code == code
    assert capsys.readouterr().err.splitlines() == [line]
