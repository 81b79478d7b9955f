"""``python -m dynrank.merge``: bad inputs are one line before anything is merged; the merged model appears at
``--out`` whole or not at all (written beside it, then renamed), and what a killed merge left is cleaned up."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

from conftest import ROOT
from dynrank.merge import main as merge_main
from dynrank.methods import build


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """A LoRA adapter (PEFT format, B not zero) on a tiny RoBERTa saved as safetensors in ``<tmp>/base``."""
    tmp = tmp_path_factory.mktemp("merge")
    torch.manual_seed(0)
    base = RobertaForSequenceClassification(RobertaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=2))
    base.save_pretrained(tmp / "base")
    method = build(OmegaConf.create({"method": {"name": "lora", "alpha": 8, "dropout": 0.0, "kaiming_a": 5 ** 0.5},
                                     "budget": {"name": "r4", "r": 4}}), "roberta")
    model = method.wrap(base)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return method.export(tmp / "adapter", base_name=str(tmp / "base"), task_type="seq_cls")


def _copy(adapter: Path, tmp_path: Path) -> Path:
    shutil.copytree(adapter, tmp_path / "adapter")
    return tmp_path / "adapter"


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_merged_model_equals_the_adapter_and_leaves_nothing_beside_it(adapter, tmp_path, capsys):
    from peft import PeftModel

    out = tmp_path / "models" / "merged"
    assert merge_main([str(adapter), "--out", str(out)]) == 0
    assert capsys.readouterr().err == ""  # no load report, progress bar or FutureWarning
    assert sorted(p.name for p in out.parent.iterdir()) == ["merged"]
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
    base = AutoModelForSequenceClassification.from_pretrained(adapter.parent / "base")
    peft_model = PeftModel.from_pretrained(base, str(adapter)).eval()
    ids = torch.randint(3, 100, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, peft_model(input_ids=ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case, message", [
    ("out-is-a-file", "error: --out {out} is a file; pass a directory that does not exist yet"),
    ("out-not-empty", "error: --out {out} exists and is not empty; remove it or pass another directory"),
    ("config-not-json", "error: {a}/adapter_config.json is not valid JSON (Expecting value: line 1 column 15 (char "
                        "14)); export the adapter again (train.export=true)"),
    ("weights-truncated", "error: {a}/adapter_model.safetensors is damaged (Error while deserializing header: "
                          "incomplete metadata, file not fully covered); export the adapter again "
                          "(train.export=true)"),
    ("weights-pickled", "error: no adapter_model.safetensors in {a} (adapter_model.bin is pickled, which dynrank "
                        "does not load); export the adapter again (train.export=true)"),
], ids=["out-is-a-file", "out-not-empty", "config-not-json", "weights-truncated", "weights-pickled"])
def test_bad_inputs_are_one_line_before_the_merge(adapter, tmp_path, capsys, monkeypatch, case, message):
    import dynrank.merge

    a, out = _copy(adapter, tmp_path), tmp_path / "merged"
    if case == "out-is-a-file":
        out.write_text("keep me")
    elif case == "out-not-empty":
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
    elif case == "config-not-json":
        (a / "adapter_config.json").write_text('{"peft_type": ')  # cut short
    elif case == "weights-truncated":
        (a / "adapter_model.safetensors").write_bytes((a / "adapter_model.safetensors").read_bytes()[:-64])
    else:
        (a / "adapter_model.safetensors").rename(a / "adapter_model.bin")
    monkeypatch.setattr(dynrank.merge, "load_base", lambda *a, **k: pytest.fail("the base was loaded"))
    assert merge_main([str(a), "--out", str(out)]) == 2
    assert _error(capsys) == message.format(out=out, a=a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "merged"][:1 + out.exists()]
    if out.exists():
        assert (out.read_text() if out.is_file() else (out / "notes.txt").read_text()) == "keep me"


def test_ctrl_c_during_a_merge_is_one_line_and_leaves_nothing(adapter, tmp_path, capsys, monkeypatch):
    """Ctrl-C once the weights are written (before the rename): exit status 130 and one line, as training, and
    neither ``--out`` nor its staged directory left."""
    import dynrank.merge as m

    def ctrl_c(path):
        raise KeyboardInterrupt
    monkeypatch.setattr(m, "umask_mode", ctrl_c)
    out = tmp_path / "merged"
    assert merge_main([str(adapter), "--out", str(out)]) == 130
    assert capsys.readouterr().err.splitlines() == [
        f"interrupted (Ctrl-C): nothing was written to {out}; run the command again to merge"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_killed_merge_leaves_no_out_and_its_leftovers_go_with_the_next(adapter, tmp_path):
    """Killed (SIGKILL) while writing: no ``--out`` at all; the rerun completes it and removes what was left."""
    code = ("import sys, dynrank.merge as m\n"
            "save = m.umask_mode\n"
            "def slow(f):\n"  # the weights are written: die before the tokenizer and the rename
            "    open(sys.argv[3], 'w').close()\n"
            "    import time; time.sleep(60)\n"
            "m.umask_mode = slow\n"
            "sys.exit(m.main(sys.argv[1:3]))\n")
    out, ready = tmp_path / "merged", tmp_path / "ready"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-c", code, str(adapter), f"--out={out}", str(ready)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not ready.exists() and p.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert ready.exists(), "the merge never reached its weights"
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    left = [q.name for q in tmp_path.iterdir() if q.name not in ("ready",)]
    assert left == [f".merged.merging-{p.pid}"] and (tmp_path / left[0] / "model.safetensors").is_file()
    assert merge_main([str(adapter), "--out", str(out)]) == 0
    assert sorted(q.name for q in tmp_path.iterdir()) == ["merged", "ready"]
    assert json.loads((out / "config.json").read_text())["model_type"] == "roberta"
