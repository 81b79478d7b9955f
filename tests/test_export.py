"""Exports load anywhere: the adapter records an absolute base (or the saved tiny base), from any directory."""
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import ROOT, SHARED_GLUE, cli, compose, tiny_overrides
from dynrank import export, tasks


@pytest.mark.slow
def test_tiny_export_loads_and_merges_from_another_directory(tmp_path, monkeypatch):
    from peft import PeftModel

    from dynrank.merge import main as merge_main

    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    data = ["task=cola", "model=tiny", f"data.dir={SHARED_GLUE}", "data.max_train_samples=128",
            "data.max_eval_samples=64", f"data.cache_dir={tmp_path / 'cache'}"]
    p = cli([*data, "method=dora", "train.epochs=1", "train.export=true", "train.progress=false",
             "results.store=store", "hydra.run.dir=run"], cwd=here)  # relative paths, as a user types them
    assert p.returncode == 0, p.stderr
    run, adapter = here / "run", (here / "run" / "adapter").resolve()
    lines = p.stdout.strip().splitlines()  # Hydra's console log
    assert any(line.endswith(f"adapter (PEFT format): {adapter} (base: {adapter / 'base_model'})") for line in lines)
    assert lines[-1].endswith(f"run directory: {run} (adapter/, checkpoint/, rank_map.json, rank_map.png, "
                              "results.json, tb/, train.log)"), lines[-1]
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str(adapter / "base_model")

    monkeypatch.chdir(elsewhere)
    peft_model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base),
                                           str(adapter)).eval()
    # the loaded adapter computes what the run computed: its dev metrics, through the run's own evaluation
    cfg = compose(tiny_overrides(tmp_path, *data[:2]))
    task = tasks.build(cfg, AutoTokenizer.from_pretrained(base))
    dev, = task.evaluate(peft_model, task.eval_sets(), torch.device("cpu"), False)  # one run
    assert dev == json.loads((run / "results.json").read_text())["final"]["dev"]
    # merged with the base it records, from another directory: the same logits as the adapter
    assert merge_main([str(adapter), "--out", "merged"]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained("merged").eval()
    x = AutoTokenizer.from_pretrained("merged")(["the cat sat on the mat .", "cats mat ."], padding=True,
                                                return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(merged(**x).logits, peft_model(**x).logits, atol=1e-5, rtol=0)


def test_a_local_base_is_recorded_as_an_absolute_path(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = compose(["model=minilm", "model.path=../shared/models/all-MiniLM-L6-v2"])
    name = export.base_name(cfg.model, None, None, "unused")
    assert Path(name).is_absolute() and Path(name) == (ROOT.parent / "shared/models/all-MiniLM-L6-v2").resolve()
    assert export.base_name(compose(["model=roberta_base"]).model, None, None, "unused") == "roberta-base"
