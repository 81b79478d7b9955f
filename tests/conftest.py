"""Shared test helpers: compose configs without the CLI, build small GLUE fixtures in the classic layout."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
SHARED_GLUE = (ROOT.parent / "shared" / "data" / "glue").resolve()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from intra-op threads, and with the suite split over the cores (pytest -n)
# extra threads only oversubscribe them: one thread per test process, and in the CLI runs it starts.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)


_BASES: dict = {}


def compose(overrides: list[str]):
    """``dynrank.config.compose(overrides)``, each choice of config groups composed once per session (Hydra takes
    ~85 ms of CPU a compose; the suite composes hundreds): a copy of it, the key overrides applied as Hydra applies
    them (``command_line._Jobs``, which the command line's check uses the same way)."""
    import copy

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dynrank.config.command_line import _Jobs, compose as dynrank_compose

    jobs = _BASES.get("jobs")
    if jobs is None:
        jobs = _BASES["jobs"] = _Jobs(lambda _name, overrides: dynrank_compose(overrides), OverridesParser.create(),
                                      "config")
    return jobs.config(list(overrides))


def method_config(name: str, r: int = 8, **over):
    """``conf/method/<name>.yaml`` as a CoLA run at budget ``r`` resolves it, ``over`` on top: the methods take
    their values from there only (no defaults in the code)."""
    from omegaconf import OmegaConf

    cfg = compose([f"method={name}", "task=cola", "budget=r2" if r == 2 else "budget=r8", f"budget.r={r}"])
    return OmegaConf.create({**OmegaConf.to_container(cfg.method, resolve=True), **over})


def tiny_overrides(tmp_path: Path, *extra: str) -> list[str]:
    return ["model=tiny", f"data.dir={SHARED_GLUE}", f"data.cache_dir={tmp_path / 'cache'}",
            f"results.store={tmp_path / 'store'}", "train.progress=false", "train.epochs=1",
            "data.max_train_samples=64", "data.max_eval_samples=64", *extra]


def cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300,
        kill_after_epoch: int | None = None) -> subprocess.CompletedProcess:
    """``python -m dynrank.train <args>``; ``kill_after_epoch=N``: it dies like ``kill -9`` right after epoch N's
    checkpoints (tests/kill_after_epoch.py).

    A process of its own, forked from a server that imported torch, transformers, scikit-learn, scipy and dynrank
    once for the test process (``_forked``): a new interpreter spends ~7 s of a tiny run's ~10 s importing them, and
    the suite runs the CLI ~60 times. ``env`` (read at import time by some packages): a new interpreter."""
    if env is None:
        return _forked(args, cwd, timeout, kill_after_epoch)
    e = dict(os.environ)
    e.update(env)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    command = ["-m", "dynrank.train"] if kill_after_epoch is None else [
        str(ROOT / "tests" / "kill_after_epoch.py"), str(kill_after_epoch)]
    return subprocess.run([sys.executable, *command, *args], cwd=cwd, env=e, capture_output=True, text=True,
                          timeout=timeout)


# what the CLI imports on its way to a result (python -X importtime -m dynrank.train ...)
_PRELOAD = ["torch", "transformers", "transformers.activations", "transformers.models.roberta.modeling_roberta",
            "sklearn.metrics", "scipy.stats", "hydra", "torch.utils.tensorboard", "dynrank.config", "dynrank.driver",
            "dynrank.metrics.glue", "conftest"]
_SERVER: dict = {}


def _forked(args: list[str], cwd: Path, timeout: int, kill_after_epoch: int | None) -> subprocess.CompletedProcess:
    import multiprocessing
    import tempfile

    ctx = _SERVER.get("ctx")
    if ctx is None:
        ctx = _SERVER["ctx"] = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        proc = ctx.Process(target=_run_cli, args=(list(args), str(cwd), dict(os.environ), kill_after_epoch,
                                                   str(out), str(err)))
        proc.start()
        proc.join(timeout)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
            raise subprocess.TimeoutExpired(["dynrank.train", *args], timeout)
        code = proc.exitcode if proc.exitcode >= 0 else 128 - proc.exitcode  # killed by signal N: 128 + N, as a shell
        return subprocess.CompletedProcess(["dynrank.train", *args], code, out.read_text(), err.read_text())


def _run_cli(args: list[str], cwd: str, env: dict, kill_after_epoch: int | None, out: str, err: str) -> None:
    """The forked process: ``python -m dynrank.train <args>`` in ``cwd`` with ``env``, its stdout and stderr (the file
    descriptors: Hydra's log handlers and native code write there too) into the files ``out`` and ``err``."""
    import runpy

    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    if kill_after_epoch is not None:
        from kill_after_epoch import die_after_epoch

        die_after_epoch(kill_after_epoch)
    sys.argv = ["-m", *args]
    try:
        runpy.run_module("dynrank.train", run_name="__main__", alter_sys=True)  # as python -m
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def interpreted(script: Path, *args: str) -> subprocess.CompletedProcess:
    """``script`` run with Triton's interpreter (TRITON_INTERPRET=1: the GPU kernels on this CPU); the calling test
    is skipped without Triton (CPU builds of torch do not install it) or with a numpy the interpreter cannot use."""
    pytest.importorskip("triton")
    import numpy as np

    if tuple(int(x) for x in np.__version__.split(".")[:2]) >= (2, 3):  # int() of a 1-element array: an error
        pytest.skip("Triton's interpreter needs numpy < 2.3 (it converts 1-element arrays to scalars)")
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)})


def result_file(cell_dir: Path, seed: int = 1) -> Path:
    """The one results file of ``seed`` under a cell ``<store>/<model>/<task>/<method>-<budget>[-<variant>]``
    (run ids continue with ``lr<lr>-<config hash>/seed<k>``)."""
    found = sorted(Path(cell_dir).glob(f"lr*/seed{seed}.json"))
    assert len(found) == 1, f"expected one results file of seed {seed} under {cell_dir}, found {found}"
    return found[0]


# --- a small GLUE in the classic download layout -------------------------------------------------------

def _w(path: Path, lines: list[str]):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_glue(root: Path, n: int = 6) -> dict[str, dict[str, list]]:
    """Writes every GLUE task (classic TSV layout, real headers) with ``n`` rows per split.

    Returns the expected labels per task and split, as the Hub's label ids.
    """
    expect: dict[str, dict[str, list]] = {}
    s = [f"sentence number {i} is here ." for i in range(n)]
    t = [f"another sentence {i} there ." for i in range(n)]
    bin_labels = [i % 2 for i in range(n)]
    # CoLA: no header; source, label, original label, sentence
    for split in ("train", "dev"):
        _w(root / "CoLA" / f"{split}.tsv", [f"gj04\t{lab}\t{'*' if not lab else ''}\t{x}" for x, lab in zip(s, bin_labels)])
        _w(root / "SST-2" / f"{split}.tsv", ["sentence\tlabel"] + [f"{x}\t{lab}" for x, lab in zip(s, bin_labels)])
        _w(root / "MRPC" / f"{split}.tsv", ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
           + [f"{lab}\t{i}\t{i + 100}\t{a}\t{b}" for i, (a, b, lab) in enumerate(zip(s, t, bin_labels))])
        _w(root / "QQP" / f"{split}.tsv", ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"]
           + [f"{i}\t{i}\t{i + 1}\t{a}\t{b}\t{lab}" for i, (a, b, lab) in enumerate(zip(s, t, bin_labels))])
        _w(root / "STS-B" / f"{split}.tsv",
           ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"]
           + [f"{i}\tmain-news\tf\t2012\t{i}\tnone\tnone\t{a}\t{b}\t{i * 0.5:.3f}" for i, (a, b) in enumerate(zip(s, t))])
        _w(root / "QNLI" / f"{split}.tsv", ["index\tquestion\tsentence\tlabel"]
           + [f"{i}\t{a}\t{b}\t{'entailment' if lab == 0 else 'not_entailment'}" for i, (a, b, lab) in enumerate(zip(s, t, bin_labels))])
        _w(root / "RTE" / f"{split}.tsv", ["index\tsentence1\tsentence2\tlabel"]
           + [f"{i}\t{a}\t{b}\t{'entailment' if lab == 0 else 'not_entailment'}" for i, (a, b, lab) in enumerate(zip(s, t, bin_labels))])
    mnli_names = ("entailment", "neutral", "contradiction")
    train_head = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"
    dev_head = train_head.replace("label1\tgold_label", "label1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label")
    _w(root / "MNLI" / "train.tsv", [train_head] + [
        f"{i}\t1\t1e\tfiction\t( a )\t( b )\t(ROOT a)\t(ROOT b)\t{a}\t{b}\t{mnli_names[i % 3]}\t{mnli_names[i % 3]}"
        for i, (a, b) in enumerate(zip(s, t))])
    for split in ("dev_matched", "dev_mismatched"):
        _w(root / "MNLI" / f"{split}.tsv", [dev_head] + [
            f"{i}\t1\t1e\tfiction\t( a )\t( b )\t(ROOT a)\t(ROOT b)\t{a}\t{b}\t" + "\t".join([mnli_names[i % 3]] * 6)
            for i, (a, b) in enumerate(zip(s, t))])
    for task in ("cola", "sst2", "mrpc", "qqp", "qnli", "rte"):
        expect[task] = {"train": bin_labels, "validation": bin_labels}
    expect["stsb"] = {"train": [i * 0.5 for i in range(n)], "validation": [i * 0.5 for i in range(n)]}
    expect["mnli"] = {sp: [i % 3 for i in range(n)] for sp in ("train", "validation_matched", "validation_mismatched")}
    return expect


@pytest.fixture
def glue_dir(tmp_path):
    root = tmp_path / "glue_data"
    expect = make_glue(root)
    return root, expect
