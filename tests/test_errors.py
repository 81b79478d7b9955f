"""Every bad input ends with one line ``error: ...`` (exit status 2) and leaves every file of an existing run as it
was; runs cannot clobber each other (a per-run lock; identities that cover every result-changing key).

Most cases run the real CLI in a subprocess against a finished run (a module fixture) and compare its files,
byte for byte, before and after.
"""
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_GLUE, cli

CELL = "tiny/cola/lora-r8"


def _args(tmp: Path, *extra) -> list[str]:
    return ["task=cola", "method=lora", "model=tiny", f"data.dir={SHARED_GLUE}", "train.epochs=2",
            f"data.cache_dir={tmp / 'cache'}", f"results.store={tmp / 'store'}", "train.progress=false",
            "data.max_train_samples=48", "data.max_eval_samples=32", *extra]


def _snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under ``roots``, path -> bytes."""
    return {str(p): p.read_bytes() for r in roots for p in sorted(r.rglob("*")) if p.is_file()}


def _one_error_line(p: subprocess.CompletedProcess) -> str:
    """The process ended as a user error: exit status 2 and one line ``error: ...`` on stderr (no traceback)."""
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run (2 epochs, adapter exported) in ``<tmp>/run``, its results in ``<tmp>/store``."""
    tmp = tmp_path_factory.mktemp("finished")
    # data.cache_dir: the same directory as _args(tmp) names, through an interpolation only a Hydra job resolves
    p = cli([*_args(tmp, f"hydra.run.dir={tmp / 'run'}", "train.export=true"),
             "data.cache_dir=${hydra:runtime.cwd}/cache"], cwd=tmp)
    assert p.returncode == 0, p.stderr
    assert (tmp / "run/results.json").exists() and (tmp / "run/.hydra/config.yaml").exists()
    return tmp


def _cola(root: Path, n: int = 12, bad: dict | None = None) -> Path:
    """A classic-layout CoLA (``<root>/CoLA/{train,dev}.tsv``, ``n`` rows); ``bad``: train.tsv line -> bytes."""
    d = root / "CoLA"
    d.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev"):
        lines = [f"gj04\t{i % 2}\t\tsentence number {i} is here .".encode() for i in range(n)]
        if split == "train":
            for lineno, text in (bad or {}).items():
                lines[lineno - 1] = text
        (d / f"{split}.tsv").write_bytes(b"\n".join(lines) + b"\n")
    return root


# --- bad values and keys: refused before Hydra starts, nothing created or touched ---------------------------

@pytest.mark.slow
@pytest.mark.parametrize("override, message", [
    ("train.lr=abc", "error: train.lr must be a number > 0 (got 'abc')"),
    ("train.lr=-1", "error: train.lr must be a number > 0 (got -1)"),
    ("train.batch_size=abc", "error: train.batch_size must be an integer >= 1 (got 'abc')"),
    ("budget.r=abc", "error: budget.r must be an integer >= 1 (got 'abc')"),
    ("seed=-1", "error: seed must be an integer in [0, 4294967295] (got -1)"),
    ("train.warmup_ratio=1.5", "error: train.warmup_ratio must be a number in [0, 1) (got 1.5)"),
    ("train.device=gpu", "error: train.device must be auto, cpu, cuda or cuda:<n> (got 'gpu')"),
    ("train.epoch=1", "error: unknown key train.epoch; did you mean train.epochs?"),
    ("+train.epoch=1", "error: unknown key train.epoch; did you mean train.epochs?"),
    ("+train.epochs=1", "error: train.epochs exists already: write train.epochs=1 (without the '+')"),
    ("trian.epochs=1", "error: unknown key trian.epochs; did you mean train.epochs?"),
    ("variant=../../x", "error: variant must be a name of letters, digits, '.', '_', '-' (no path separator, "
                        "no '..'), or null (got '../../x')"),
    ("variant=a/b", "error: variant must be a name of letters"),
    ("budget.name=../../x", "error: budget.name must be a name of letters, digits, '.', '_', '-' (no path "
                            "separator, no '..') (got '../../x')"),
    ("model.id=a/b", "error: model.id must be a name of letters"),
    ("seeds=[1,abc]", "error: seeds must be a list of integers in [0, 4294967295], or null (got [1, \"abc\"])"),
    ("seeds=[1,2,1]", "error: seeds lists seed 1 more than once (got [1, 2, 1]); list each seed once"),
    ("~train.epochs", "error: train.epochs is needed (an integer >= 1), but ~train.epochs removes it; drop that "
                      "override, or set train.epochs=<value>"),
    ("train=5", "error: train.lr is needed (a number > 0), but train=5 removes it"),
    ("task.name=foo", "error: conf/hparams/lora.yaml has no entry for task 'foo'; add one"),
    ("protocol=nope", "error: unknown protocol 'nope'; choose one of: paper_code, standard"),
    ("hydra/launcher=nope", "error: unknown hydra/launcher 'nope'; choose one of: basic, joblib, local_gpus"),
    ("seeds=[1,2", "error: cannot parse 'seeds=[1,2': no viable alternative at input '[1,2'; write key=value"),
    ("train.lr=1e-3,2e-3", "error: train.lr=1e-3,2e-3 gives several values: add -m to run one job per value, or "
                           "write train.lr=[1e-3,2e-3] for a list"),
    ("method=dylora method.export_rank=99", "error: method.export_rank must be in [1, method.r_max=8] (got 99)"),
    ("results.store={file}/store", "error: results.store={file}/store cannot be a directory: {file} is a file; "
                                   "set results.store to a directory"),
])
def test_bad_values_and_keys_are_one_line_and_touch_nothing(finished, tmp_path, override, message):
    file = finished / "run/results.json"  # an existing file where a directory is wanted
    override, message = override.format(file=file).split(" "), message.format(file=file)
    before = _snapshot(finished / "run", finished / "store")
    p = cli(_args(finished, f"hydra.run.dir={finished / 'run'}", *override), cwd=tmp_path)
    assert _one_error_line(p).startswith(message)
    assert _snapshot(finished / "run", finished / "store") == before
    p = cli(_args(tmp_path, *override), cwd=tmp_path)  # the run's own directory: not even created
    assert _one_error_line(p).startswith(message)
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "store").exists()


@pytest.mark.slow
def test_a_run_dir_that_cannot_be_created_is_one_line(finished, tmp_path):
    file = finished / "run/results.json"
    before = _snapshot(finished / "run", finished / "store")
    for flag, key in (([], "hydra.run.dir"), (["-m"], "hydra.sweep.dir")):
        p = cli([*flag, *_args(tmp_path, f"{key}={file}/run")], cwd=tmp_path)
        assert _one_error_line(p) == f"error: {key}={file}/run cannot be a directory: {file} is a file; set {key} " \
                                     "to a directory"
    assert _snapshot(finished / "run", finished / "store") == before


def test_a_results_store_without_write_permission_is_refused_up_front(tmp_path, monkeypatch):
    """As for a user without rights there (the tests run as root here: the permission is denied by hand)."""
    from dynrank import config
    from dynrank.errors import ConfigError

    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(ConfigError, match=rf"^results.store={tmp_path}/store cannot be written: no write permission "
                                          rf"on {tmp_path}; set results.store to a directory you can write to$"):
        config.check_command_line(_args(tmp_path))


def test_the_check_before_hydra_leaves_hydra_interpolations_and_multirun_mode_to_hydra(tmp_path):
    """What only resolves in a Hydra job (``${hydra:...}``) is not refused up front (the job checks it), and
    ``hydra.mode=MULTIRUN`` is a multirun as ``-m`` is (the ``finished`` fixture runs ``${hydra:runtime.cwd}``)."""
    from dynrank.config import check_command_line
    from dynrank.errors import ConfigError

    check_command_line(_args(tmp_path, "data.cache_dir=${hydra:runtime.cwd}/cache"))
    check_command_line(_args(tmp_path, "hydra.mode=MULTIRUN", "train.lr=1e-3,2e-3"))
    with pytest.raises(ConfigError, match=r"^train.lr must be a number > 0 \(got -1\) \(in the job train.lr=-1\)$"):
        check_command_line(_args(tmp_path, "hydra.mode=MULTIRUN", "train.lr=1e-3,-1"))


@pytest.mark.parametrize("override, message", [
    ("seeds=[]", "seeds=[] lists no seed; list the seeds to train (e.g. seeds=[1,2,3]), or leave seeds unset to "
                 "train seed=<k>"),  # trained seed 1 before
    ("hydra.job.chdir=true", "hydra.job.chdir=true is not supported: relative paths (data.dir, results.store, "
                             "model.path, ...) are read from the directory you launch in, and every run has its "
                             "own directory already (outputs/<run id>); drop hydra.job.chdir"),
    ("variant=" + "v" * 248, "variant makes the results path part lora-r8-vvvvvvvvvvvv... 256 bytes long, over the "
                             "filesystem's limit of 255 for a file name; shorten variant by 1 characters or more"),
], ids=["no-seeds", "chdir", "long-variant"])  # the long variant trained to the end, then failed at every write
def test_refused_before_hydra_starts(tmp_path, override, message):
    """As the CLI checks every job before Hydra starts (the CLI path: test_bad_values_and_keys_...)."""
    from dynrank.config import check_command_line
    from dynrank.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        check_command_line(_args(tmp_path, override))
    assert str(e.value) == message
    check_command_line(_args(tmp_path, "variant=" + "v" * 247, "hydra.job.chdir=false", "seeds=[1]"))


class _Trap:
    """A pickle that, when unpickled, creates the file ``marker``: loading it would run code from the file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def _model_dir(root: Path, weights: str) -> Path:
    """A local model directory (MiniLM's config and tokenizer) with ``weights``: 'truncated' (model.safetensors
    cut short) or 'pickle' (a pytorch_model.bin only, which would create ``<root>/unpickled`` when loaded)."""
    import pickle

    import torch
    from safetensors.torch import save_file

    d = root / "model"
    shutil.copytree(ROOT.parent / "shared/models/all-MiniLM-L6-v2", d, ignore=shutil.ignore_patterns("*.safetensors"))
    if weights == "truncated":
        save_file({"w": torch.zeros(64, 64)}, d / "model.safetensors")
        (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-100])
    else:
        (d / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(root / "unpickled")))
    return d


@pytest.mark.parametrize("weights, message", [
    ("truncated", "{d}/model.safetensors is damaged (Error while deserializing header: incomplete metadata, file not "
                  "fully covered); copy or download the model again, or set model.path to another directory"),
    ("pickle", "{d} holds pickled weights only (pytorch_model.bin), which dynrank does not load (unpickling runs "
               "code from the file); save the model as safetensors where you trust it (save_pretrained(dir, "
               "safe_serialization=True)), or set model.path to a directory with a model.safetensors"),
], ids=["truncated", "pickle"])
def test_damaged_or_pickled_model_weights_are_one_line_and_never_unpickled(tmp_path, weights, message):
    from transformers import AutoModelForSequenceClassification

    from dynrank.config import check_command_line, compose
    from dynrank.errors import ConfigError
    from dynrank.models import load_model

    d = _model_dir(tmp_path, weights)
    with pytest.raises(ConfigError) as e:
        check_command_line(_args(tmp_path, "model=minilm", f"model.path={d}"))
    assert str(e.value) == message.format(d=d)
    if weights == "pickle":  # and were the check passed by, the model would not load from the pickle either
        with pytest.raises(ConfigError, match=f"^could not load the model '{d}'.*no file named model.safetensors"):
            load_model(compose(["model=minilm", f"model.path={d}"]).model, AutoModelForSequenceClassification)
    assert not (tmp_path / "unpickled").exists()


@pytest.mark.slow
def test_initial_budget_is_checked_for_dora(finished, tmp_path):
    before = _snapshot(finished / "run", finished / "store")
    p = cli(_args(finished, "method=dora", "method.initial_budget=abc", f"hydra.run.dir={finished / 'run'}"),
            cwd=tmp_path)
    assert _one_error_line(p) == "error: method.initial_budget must be an integer >= 1, or null (got 'abc')"
    assert _snapshot(finished / "run", finished / "store") == before


@pytest.mark.slow
@pytest.mark.parametrize("sweep, message", [
    ("train.lr=0.002,-1", "train.lr must be a number > 0 (got -1) (in the job train.lr=-1)"),
    ("train.lr=1e-3,abc", "train.lr must be a number > 0 (got 'abc') (in the job train.lr=abc)"),
    ("seeds=[1,2],[1,abc]", 'seeds must be a list of integers in [0, 4294967295], or null (got [1, "abc"]) (in the job '
                            'seeds=[1,abc])'),
])
def test_a_bad_sweep_value_stops_the_multirun_before_its_first_job(tmp_path, sweep, message):
    p = cli(["-m", *_args(tmp_path, f"hydra.sweep.dir={tmp_path / 'multi'}"), sweep], cwd=tmp_path)
    assert _one_error_line(p) == "error: " + message
    assert not (tmp_path / "multi").exists() and not (tmp_path / "store").exists()


# --- bad data: named by file and line before training; a finished run is not touched -------------------------

@pytest.mark.slow
@pytest.mark.parametrize("line, expected", [
    (b"gj04\t7\t\tseven is no class .", "malformed row at {f}:3: label '7' is not 0 or 1; fix or remove that line"),
    (b"gj04\t-1\t\tminus one .", "malformed row at {f}:3: label '-1' is not 0 or 1; fix or remove that line"),
    (b"gj04\t1\t\tcaf\xe9 latin-1 .", "{f}:3 is not UTF-8 text (byte 0xe9 at column 12); save the file as UTF-8, "
                                       "or fix or remove that line"),
    (b"gj04\t1\t\t" + b"x" * 131_073, "malformed row at {f}:3 (field larger than field limit (131072)); "
                                      "fix or remove that line"),
], ids=["label-7", "label-minus-1", "not-utf8", "field-over-csv-limit"])
def test_bad_data_is_named_by_file_and_line(finished, tmp_path, line, expected):
    data = _cola(tmp_path / "glue", bad={3: line})
    before = _snapshot(finished / "run", finished / "store")
    # train.resume=false: the finished run would be trained again, but the data is read first
    p = cli(_args(finished, f"data.dir={data}", "train.resume=false", f"hydra.run.dir={finished / 'run'}"),
            cwd=tmp_path)
    assert _one_error_line(p) == "error: " + expected.format(f=data / "CoLA/train.tsv")
    assert _snapshot(finished / "run", finished / "store") == before


@pytest.mark.slow
def test_data_dir_root_is_one_line(finished, tmp_path):
    before = _snapshot(finished / "run", finished / "store")
    t0 = time.time()
    p = cli(_args(finished, "data.dir=/", "train.resume=false", f"hydra.run.dir={finished / 'run'}"), cwd=tmp_path)
    assert _one_error_line(p).startswith("error: no GLUE cola data under /: expected /CoLA/train.tsv")
    assert time.time() - t0 < 60  # a glance at /, not a walk of the disk
    assert _snapshot(finished / "run", finished / "store") == before


@pytest.mark.slow
def test_a_data_dir_without_the_tasks_files_is_one_line(finished, tmp_path):
    """A data dir with train.tsv but no dev.tsv (one with neither: ``test_data_dir_root_is_one_line``), given to
    the finished run's command (which checks the data before saying it is finished)."""
    d = tmp_path / "glue"
    (d / "CoLA").mkdir(parents=True)
    shutil.copy(SHARED_GLUE / "CoLA/train.tsv", d / "CoLA/train.tsv")
    before = _snapshot(finished / "run", finished / "store")
    p = cli(_args(finished, f"data.dir={d}", f"hydra.run.dir={finished / 'run'}"), cwd=tmp_path)
    assert _one_error_line(p) == f"error: missing file {d}/CoLA/dev.tsv for GLUE cola split 'validation'; fix data.dir"
    assert _snapshot(finished / "run", finished / "store") == before


def test_an_unreadable_data_dir_is_a_data_error(tmp_path, monkeypatch):
    """As for a user without rights under data.dir=/ (the tests run as root here: the listing fails by hand)."""
    from dynrank.data.cache import source_id
    from dynrank.errors import DataError

    def denied(self, pattern):
        raise PermissionError(13, "Permission denied", str(self / "secret"))

    monkeypatch.setattr(Path, "glob", denied)
    with pytest.raises(DataError, match=rf"^cannot read {tmp_path}/secret under data.dir={tmp_path} "
                                        r"\(Permission denied\); point data.dir at the data directory$"):
        source_id(tmp_path, "cola")


# --- resume: damaged checkpoints, other config, other data ----------------------------------------------------

@pytest.fixture
def killed(tmp_path):
    """A run killed (like kill -9) after epoch 1 of 2 on a CoLA of 12 rows: ``(args, run dir)``."""
    data = _cola(tmp_path / "glue")
    args = _args(tmp_path, f"data.dir={data}", "data.max_train_samples=null", f"hydra.run.dir={tmp_path / 'run'}")
    p = cli(args, cwd=tmp_path, kill_after_epoch=1)
    assert p.returncode == 137, p.stderr
    assert json.loads((tmp_path / "run/checkpoint/state.json").read_text())["epoch"] == 1
    return args, tmp_path / "run"


@pytest.mark.slow
@pytest.mark.parametrize("name, error", [("tensors.safetensors", "SafetensorError"),
                                         ("state.json", "JSONDecodeError")])
def test_truncated_checkpoint_is_one_line_and_kept(killed, tmp_path, name, error):
    args, run = killed
    f = run / "checkpoint" / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    before = _snapshot(run)
    p = cli(args, cwd=tmp_path)
    line = _one_error_line(p)
    assert line.startswith(f"error: the checkpoint in {run / 'checkpoint'} is damaged ({error}: ")
    assert "add train.resume=false to the command to start over" in line
    assert _snapshot(run) == before  # the damaged files are kept
    p = cli([*args, "train.resume=false"], cwd=tmp_path)  # the fix it names
    assert p.returncode == 0, p.stderr
    assert json.loads((run / "checkpoint/state.json").read_text())["epoch"] == 2


@pytest.mark.slow
def test_other_config_names_the_keys_that_differ(killed, tmp_path):
    args, run = killed
    before = _snapshot(run)
    p = cli([*args, "train.epochs=3", "method.alpha=32"], cwd=tmp_path)  # same directory (hydra.run.dir), other run
    assert _one_error_line(p) == (
        f"error: the checkpoint in {run / 'checkpoint'} was made with a different config (method.alpha: 16 -> 32); "
        "rerun with the values it was made with to resume it, or add train.resume=false "
        "to the command to start over")  # (another length is checked apart: train.extend, tests/test_extend.py)
    assert _snapshot(run) == before


@pytest.mark.slow
def test_changed_data_is_refused_on_resume(killed, tmp_path):
    args, run = killed
    train = tmp_path / "glue/CoLA/train.tsv"
    rows = train.read_text()
    before = _snapshot(run)
    train.write_text("".join(rows.splitlines(keepends=True)[:8]))  # 12 -> 8 rows
    p = cli(args, cwd=tmp_path)
    assert _one_error_line(p) == (
        f"error: the data changed since the checkpoint in {run / 'checkpoint'} was made (train: 12 -> 8 examples); "
        "restore the data it was made with to resume it, or add train.resume=false to the command to start over")
    train.write_text(rows.replace("sentence number 1 ", "sentence number one "))  # 12 rows, one edited
    p = cli(args, cwd=tmp_path)
    assert _one_error_line(p).startswith("error: the data changed since the checkpoint in "
                                         f"{run / 'checkpoint'} was made (train: same size, other content); ")
    assert _snapshot(run) == before
    train.write_text(rows)  # the data it was made with: it resumes
    p = cli(args, cwd=tmp_path)
    assert p.returncode == 0 and "resumed from" in p.stdout, p.stderr
    finished = _snapshot(run, tmp_path / "store")  # a finished run on other data: refused too, not "finished
    train.write_text("".join(rows.splitlines(keepends=True)[:8]))  # already" (its results in the store say so first)
    p = cli(args, cwd=tmp_path)
    stored = next((tmp_path / "store").rglob("seed1.json"))
    assert _one_error_line(p).startswith(f"error: the results store holds this config's results on other data "
                                         f"({stored}: train: 12 -> 8 examples); keep both with variant=<name> ")
    assert _snapshot(run, tmp_path / "store") == finished


@pytest.mark.slow
def test_resume_sums_wall_time_and_names_the_directory_it_loaded(killed, tmp_path):
    args, run = killed
    first = json.loads((run / "checkpoint/state.json").read_text())["extra"]["wall_time_s"]
    assert len(first) == 1 and first[0] > 0
    (run / "checkpoint").rename(run / "checkpoint.old")  # as if killed between the checkpoint's two renames
    p = cli(args, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert f"resumed from {run / 'checkpoint.old'} at epoch 1" in p.stdout  # Hydra logs to stdout
    res = json.loads((run / "results.json").read_text())
    assert res["wall_time_per_attempt_s"][0] == first[0] and len(res["wall_time_per_attempt_s"]) == 2
    assert res["wall_time_s"] == pytest.approx(sum(res["wall_time_per_attempt_s"]))
    assert res["train_time_s"] == pytest.approx(sum(res["time_per_epoch_s"])) and len(res["time_per_epoch_s"]) == 2


# --- finished runs are left alone ----------------------------------------------------------------------------

@pytest.mark.slow
def test_rerunning_a_finished_run_leaves_it_alone(finished, tmp_path):
    run, store = finished / "run", finished / "store"
    before = _snapshot(run, store)
    results = run / "results.json"
    p = cli(_args(finished, f"hydra.run.dir={run}", "train.export=true"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert f"finished already, left as it is: {results} (train.resume=false trains it again)" in p.stdout
    after = _snapshot(run, store)
    new = sorted(set(after) - set(before))  # only a log of this command's own, holding that line
    assert len(new) == 1 and new[0].startswith(str(run / "train.")) and new[0].endswith(".log"), new
    assert b"finished already, left as it is" in after.pop(new[0])
    assert after == before


@pytest.mark.slow
def test_finished_run_trains_again_when_asked(tmp_path):
    args = _args(tmp_path, f"hydra.run.dir={tmp_path / 'run'}", "train.epochs=1")
    assert cli(args, cwd=tmp_path).returncode == 0
    first = json.loads((tmp_path / "run/results.json").read_text())
    p = cli([*args, "train.resume=false"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    again = json.loads((tmp_path / "run/results.json").read_text())
    assert again["finished_at"] >= first["finished_at"] and again["wall_time_s"] != first["wall_time_s"]
    assert len(again["wall_time_per_attempt_s"]) == 1


@pytest.mark.slow
def test_files_get_the_umask_mode(finished, tmp_path):
    from dynrank.results import atomic_write_text

    mask = os.umask(0)
    os.umask(mask)
    expected = 0o666 & ~mask
    atomic_write_text(tmp_path / "x.json", "{}")
    store_file = next((finished / "store").rglob("seed1.json"))
    for f in (tmp_path / "x.json", finished / "run/results.json", store_file,
              finished / "run/adapter/adapter_config.json", finished / "run/adapter/adapter_model.safetensors"):
        assert f.stat().st_mode & 0o777 == expected, f


# --- one process per run: the lock ---------------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_process_on_a_run_in_use_stops(finished, tmp_path):
    run = finished / "run"
    before = _snapshot(run, finished / "store")
    with open(run / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # this test process holds the run
        p = cli(_args(finished, f"hydra.run.dir={run}", "train.resume=false"), cwd=tmp_path)
    assert _one_error_line(p) == (f"error: run {run} is in use by another process (pid {os.getpid()}); "
                                  "wait for it to end, or stop it, before running it again")
    assert _snapshot(run, finished / "store") == before


@pytest.mark.slow
def test_the_lock_goes_with_a_killed_process(tmp_path):
    code = ("import sys, time; from dynrank.lock import RunLock; lock = RunLock(sys.argv[1]); "
            "print('locked', flush=True); time.sleep(60)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        from dynrank.lock import RunLock
        from dynrank.errors import RunInUseError

        with pytest.raises(RunInUseError, match=rf"in use by another process \(pid {holder.pid}\)"):
            RunLock(tmp_path / "run")
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        with RunLock(tmp_path / "run"):  # the kernel dropped it with the process
            pass
    finally:
        holder.kill()


@pytest.mark.slow
def test_two_identical_commands_at_once_never_crash(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for attempt in range(2):
        run = tmp_path / f"run{attempt}"
        cmd = [sys.executable, "-m", "dynrank.train", *_args(tmp_path, f"hydra.run.dir={run}", "train.epochs=3")]
        procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        errs = [p.communicate(timeout=300)[1] for p in procs]
        codes = [p.returncode for p in procs]
        # the second stops at the lock, or (started after the first ended) finds the run finished
        assert sorted(codes) in ([0, 0], [0, 2]), (codes, errs)
        for p, other, err in zip(procs, reversed(procs), errs):
            if p.returncode == 2:
                assert err.strip().splitlines() == [f"error: run {run} is in use by another process (pid {other.pid}); "
                                                    "wait for it to end, or stop it, before running it again"], err
            else:
                assert "Traceback" not in err, err
        res = json.loads((run / "results.json").read_text())
        assert len(res["epochs"]) == 3 and res == json.loads(next((tmp_path / "store").rglob("seed1.json")).read_text())


# --- identities: an lr sweep keeps every rate's results; seeds side by side under a hand-set run dir -----------

@pytest.mark.slow
def test_lr_sweep_keeps_both_rates(tmp_path):
    p = cli(["-m", *_args(tmp_path, f"hydra.sweep.dir={tmp_path / 'multi'}", "train.epochs=1", "variant=sweep"),
             "train.lr=0.002,0.005"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    files = sorted((tmp_path / "store" / f"{CELL}-sweep").glob("lr*/seed1.json"))
    assert [f.parent.name.rsplit("-", 1)[0] for f in files] == ["lr2e-3", "lr5e-3"]
    assert [json.loads(f.read_text())["config"]["train"]["lr"] for f in files] == [0.002, 0.005]
    assert len(list((tmp_path / "multi").rglob("results.json"))) == 2


@pytest.mark.slow
def test_seeds_side_by_side_under_a_hand_set_run_dir(tmp_path):
    """As ``hydra.run.dir=/tmp/x/run-lora``: fewer path parts than a run id has (the IndexError of issue 12)."""
    top = Path(tempfile.mkdtemp(prefix="dynrank-", dir="/tmp"))
    try:
        x = top / "x"
        p = cli(_args(tmp_path, "seeds=[1,2]", f"hydra.run.dir={x}", "train.epochs=1"), cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        runs = sorted(x.rglob("results.json"))
        assert [r.parent.name for r in runs] == ["seed1", "seed2"]
        assert all(r.relative_to(x).parts[:3] == tuple(CELL.split("/")) for r in runs)
        assert [json.loads(f.read_text())["seed"] for f in sorted((tmp_path / "store").rglob("seed*.json"))] == [1, 2]
    finally:
        shutil.rmtree(top)


# --- Matthews correlation where it is undefined ------------------------------------------------------------

def test_undefined_matthews_is_zero_and_warned_once(caplog):
    from dynrank.metrics import glue

    glue._warned.discard("matthews")
    with caplog.at_level("WARNING", logger="dynrank"):
        a = glue.glue_metrics("cola", [1, 1, 1, 1], [0, 1, 0, 1])
        b = glue.glue_metrics("cola", [0, 1, 0, 1], [1, 1, 1, 1])
    assert a["matthews"] == 0.0 and b["matthews"] == 0.0 and a["accuracy"] == 0.5
    warnings = [r.getMessage() for r in caplog.records if "Matthews" in r.getMessage()]
    assert warnings == ["Matthews correlation undefined: the predictions hold one class only; counted as 0.0 "
                        "(warned once)"]
    assert glue.glue_metrics("cola", [1, 0, 1, 0], [1, 0, 0, 0])["matthews"] > 0
