"""The results file's record (``dynrank.results.RunResults``): what the trainer builds has the file's keys, and every
results file, stored or older, reads into a record and back unchanged."""
from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, compose
from dynrank.config import config_hash, run_id
from dynrank.results import FIELDS, RunResults, build_results

# The keys of a results file as dynrank.trainer writes it, in its order (``extra_evals``, ``export_dir``: where set).
KEYS = ["schema", "run_id", "model", "task", "method", "budget", "variant", "seed", "lr", "config_hash", "schedule",
        "protocol", "metric", "best", "pruning_end_step", "final", "epochs", "params", "time_per_epoch_s",
        "peak_gpu_memory_mib", "device", "gpu", "finished_at", "config", "versions", "git_commit", "data", "training",
        "wall_time_s", "wall_time_per_attempt_s", "train_time_s", "method_summary"]
OPTIONAL = ["extra_evals", "export_dir"]

STORED = sorted((ROOT / "results").rglob("seed*.json"))  # the results files of real runs checked in


def _built(**over) -> RunResults:
    cfg = compose(["model=tiny", "task=cola", "method=dora", "seed=2"])
    history = [{"epoch": 1, "step": 8, "train_loss": 0.7, "dev": {"matthews": 0.1}, "train_time_s": 3.0,
                "eval_time_s": 0.5},
               {"epoch": 2, "step": 16, "train_loss": 0.6, "dev": {"matthews": 0.3}, "train_time_s": 2.0,
                "eval_time_s": 0.5}]
    args = dict(params={"adapter": 10}, pruning_end_step=12, data={"train": "abc"},
                training={"stacked_runs": 1, "precision": "fp32", "cuda_graphs": False, "pad_to_multiple": None,
                          "packed": False},
                attempts_s=[4.0, 6.5], ended=1.7e9, method_summary={"rank_map": {}})
    schedule = [{"epochs": 2, "from_step": 0}]
    return build_results(cfg, OmegaConf.to_container(cfg, resolve=True), "matthews", history, schedule,
                         torch.device("cpu"), run_id=run_id(cfg), config_hash=config_hash(cfg, schedule),
                         **{**args, **over})


def test_a_built_record_has_the_results_files_keys_in_order():
    out = _built().to_json()
    assert list(out) == KEYS and list(FIELDS) == KEYS + OPTIONAL
    assert out["best"] == {"epoch": 2, "dev": {"matthews": 0.3}} and out["final"] == out["best"]
    assert (out["wall_time_s"], out["wall_time_per_attempt_s"], out["train_time_s"]) == (10.5, [4.0, 6.5], 5.0)
    assert (out["seed"], out["lr"], out["device"], out["peak_gpu_memory_mib"]) == (2, float(out["lr"]), "cpu", None)
    assert out["run_id"].startswith("tiny/cola/dora-") and out["run_id"].endswith("/seed2")
    assert list(_built(extra_evals={}).to_json()) == KEYS  # none: not in the file
    both = _built(extra_evals={"r4": {"matthews": 0.2}}, export_dir="/x/adapter").to_json()
    assert list(both) == KEYS + OPTIONAL and both["export_dir"] == "/x/adapter"


def test_a_built_record_reads_back_from_its_json():
    built = _built(export_dir="/x/adapter")
    text = json.dumps(built.to_json())
    again = RunResults.from_json(json.loads(text))
    assert again == built and json.dumps(again.to_json()) == text


@pytest.mark.parametrize("path", STORED, ids=[str(p.relative_to(ROOT)) for p in STORED])
def test_every_stored_results_file_round_trips(path):
    text = path.read_text()
    d = json.loads(text)
    r = RunResults.from_json(d)
    assert json.dumps(r.to_json(), indent=2) == json.dumps(d, indent=2)  # keys, values and order
    assert (r.model, r.seed, r.best) == (d["model"], d["seed"], d["best"]) and not r.other


def test_stored_results_files_are_there():
    assert len(STORED) > 200


@pytest.mark.parametrize("d", [
    {},
    {"model": "tiny", "task": "cola", "seed": 6},  # no schema: it stays absent
    {"schema": 1, "run_id": "tiny/cola/lora-r8/seed1", "model": "tiny", "task": "cola", "method": "lora",
     "budget": "r8", "variant": None, "seed": 1, "metric": "matthews", "best": {"epoch": 1, "dev": {}},
     "final": {"epoch": 1, "dev": {}}, "config": {}},  # before lr, config_hash, protocol, pruning_end_step
    {"schema": 1, "seed": 1, "wall_time_s": 3.0, "model": "m", "future_key": {"a": [1]}, "lr": "abc",
     "epochs": "not a list"},  # another order, a key this code does not know, values of the wrong type
])
def test_older_and_odd_files_round_trip(d):
    r = RunResults.from_json(d)
    assert json.dumps(r.to_json()) == json.dumps(d)
    assert r.protocol is None and r.pruning_end_step is None


def test_a_key_unknown_here_is_kept():
    r = RunResults.from_json({"schema": 1, "seed": 1, "future_key": 3})
    assert r.other == {"future_key": 3} and r.to_json()["future_key"] == 3
