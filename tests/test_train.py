"""The runner end to end: CLI, results JSON, seed multirun, kill-and-resume, and clear errors."""
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import SHARED_GLUE, cli, compose, result_file, tiny_overrides
from dynrank.errors import ConfigError, DataError, TrainingError
from dynrank.driver import run


def _cli_args(tmp_path, *extra):
    return ["task=cola", "method=lora", "model=tiny", f"data.dir={SHARED_GLUE}", "train.epochs=1",
            f"data.cache_dir={tmp_path / 'cache'}", f"results.store={tmp_path / 'store'}", "train.progress=false",
            "data.max_train_samples=96", "data.max_eval_samples=64", *extra]


@pytest.mark.slow
def test_cli_writes_results_json(tmp_path):
    p = cli(_cli_args(tmp_path, f"hydra.run.dir={tmp_path / 'run'}"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    res = json.loads(result_file(tmp_path / "store/tiny/cola/lora-r8").read_text())
    assert json.loads((tmp_path / "run/results.json").read_text()) == res
    assert res["metric"] == "matthews" and len(res["epochs"]) == 1
    dev = res["best"]["dev"]
    assert -1 <= dev["matthews"] <= 1 and 0 <= dev["accuracy"] <= 1
    assert res["params"]["adapter"] > 0 and res["params"]["head"] > 0
    assert res["config"]["train"]["lr"] == 4e-4  # LoRA Table 9, CoLA
    assert res["config"]["train"]["batch_size"] == 64  # LoRA's CoLA script: 32 per device x 2 GPUs
    assert res["versions"]["torch"] and len(res["time_per_epoch_s"]) == 1
    assert (tmp_path / "run/checkpoint/tensors.safetensors").exists()


@pytest.mark.slow
def test_seed_multirun_writes_five_results(tmp_path):
    p = cli(["-m", *_cli_args(tmp_path, "data.max_train_samples=32", "data.max_eval_samples=32",
                              f"hydra.sweep.dir={tmp_path / 'multi'}"), "seed=1,2,3,4,5"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    files = sorted((tmp_path / "store/tiny/cola/lora-r8").glob("lr*/seed*.json"))
    assert [f.name for f in files] == [f"seed{k}.json" for k in range(1, 6)]
    seeds = [json.loads(f.read_text())["seed"] for f in files]
    assert seeds == [1, 2, 3, 4, 5]
    assert len({json.loads(f.read_text())["final"]["dev"]["accuracy"] for f in files} |
               {json.loads(f.read_text())["epochs"][0]["train_loss"] for f in files}) > 1  # seeds differ


@pytest.mark.slow
def test_kill_and_resume_gives_identical_metrics(tmp_path):
    args = _cli_args(tmp_path, "train.epochs=3", "data.max_train_samples=64")
    full = cli([*args, f"hydra.run.dir={tmp_path / 'a'}", f"results.store={tmp_path / 'sa'}"], cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    killed = cli([*args, f"hydra.run.dir={tmp_path / 'b'}", f"results.store={tmp_path / 'sb'}"], cwd=tmp_path,
                 kill_after_epoch=2)
    assert killed.returncode == 137
    assert not list((tmp_path / "sb").rglob("seed1.json"))
    state = json.loads((tmp_path / "b/checkpoint/state.json").read_text())
    assert state["epoch"] == 2
    resumed = cli([*args, f"hydra.run.dir={tmp_path / 'b'}", f"results.store={tmp_path / 'sb'}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr + resumed.stdout
    a = json.loads(result_file(tmp_path / "sa/tiny/cola/lora-r8").read_text())
    b = json.loads(result_file(tmp_path / "sb/tiny/cola/lora-r8").read_text())
    assert [e["dev"] for e in a["epochs"]] == [e["dev"] for e in b["epochs"]]
    assert [e["train_loss"] for e in a["epochs"]] == [e["train_loss"] for e in b["epochs"]]
    assert a["final"] == b["final"]


@pytest.mark.slow
@pytest.mark.parametrize("arg, message", [
    ("task=colaa", "error: unknown task 'colaa'; choose one of: cola,"),
    ("method=lorra", "error: unknown method 'lorra'; choose one of:"),
    ("model=robbie", "error: unknown model 'robbie'; choose one of:"),
])
def test_unknown_names_fail_with_one_line(tmp_path, arg, message):
    p = cli([*_cli_args(tmp_path), arg], cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip().startswith(message) and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_missing_data_dir_via_cli_is_one_line_and_keeps_results(tmp_path):
    store = tmp_path / "store/tiny/cola/lora-r8/lr4e-4-00000000"
    store.mkdir(parents=True)
    (store / "seed1.json").write_text('{"kept": true}')
    p = cli([*_cli_args(tmp_path), f"data.dir={tmp_path / 'nope'}"], cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"error: data directory not found: {tmp_path / 'nope'} (set data.dir "
                                             "to an existing directory, or leave it unset to download from the Hub)"]
    assert json.loads((store / "seed1.json").read_text()) == {"kept": True}


def test_bad_inputs_raise_clear_errors(tmp_path, glue_dir):
    root, _ = glue_dir
    (root / "RTE" / "dev.tsv").unlink()
    with pytest.raises(DataError, match=r"missing file .*RTE/dev.tsv"):
        run(compose(tiny_overrides(tmp_path, "task=rte", f"data.dir={root}")), tmp_path / "r1")
    bad = root / "SST-2" / "train.tsv"
    bad.write_text(bad.read_text() + "no label here\n")
    with pytest.raises(DataError, match=r"malformed row at .*SST-2/train.tsv:8"):
        run(compose(tiny_overrides(tmp_path, "task=sst2", f"data.dir={root}")), tmp_path / "r2")
    with pytest.raises(ConfigError, match=r"train.epochs must be an integer >= 1 \(got 0\)"):
        run(compose(tiny_overrides(tmp_path, "train.epochs=0")), tmp_path / "r3")
    with pytest.raises(ConfigError, match="model directory not found"):
        run(compose(tiny_overrides(tmp_path, "model=minilm", f"model.path={tmp_path / 'no-model'}")), tmp_path / "r4")


@pytest.mark.slow
def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    cfg = compose(tiny_overrides(tmp_path, "method=full", "train.epochs=2", "data.max_train_samples=32"))
    run(cfg, tmp_path / "run")  # a good run leaves a checkpoint at epoch 2
    before = (tmp_path / "run/checkpoint/state.json").read_text()
    cfg = compose(tiny_overrides(tmp_path, "method=full", "train.epochs=2", "train.lr=1e30",
                                 "data.max_train_samples=32", "train.log_every=1", "seed=2"))
    with pytest.raises(TrainingError, match=r"loss became NaN/inf by step \d+ \(epoch 1, seed 2, lr 1e\+30\); "
                                            r"lower train.lr"):
        run(cfg, tmp_path / "run2")
    assert not (tmp_path / "run2/checkpoint").exists()
    assert (tmp_path / "run/checkpoint/state.json").read_text() == before


@pytest.mark.slow
def test_cpu_runs_are_deterministic(tmp_path):
    cfg = compose(tiny_overrides(tmp_path, "data.max_train_samples=48"))
    a = run(cfg, tmp_path / "a")
    b = run(cfg, tmp_path / "b")
    assert a["epochs"][0]["train_loss"] == b["epochs"][0]["train_loss"]
    assert a["final"]["dev"] == b["final"]["dev"]
    assert math.isfinite(a["epochs"][0]["train_loss"])


@pytest.mark.slow
def test_mnli_reports_matched_and_mismatched(tmp_path, glue_dir):
    root, _ = glue_dir
    res = run(compose(tiny_overrides(tmp_path, "task=mnli", f"data.dir={root}")), tmp_path / "m")
    assert set(res["final"]["dev"]) == {"accuracy", "accuracy_mm"}
    res = run(compose(tiny_overrides(tmp_path, "task=stsb", f"data.dir={root}")), tmp_path / "s")
    assert set(res["final"]["dev"]) == {"pearson", "spearman"}


def test_dynamic_padding_pads_to_batch_max():
    from dynrank.data.cache import pad_batch

    out = pad_batch([{"input_ids": [0, 5, 2]}, {"input_ids": [0, 2]}], pad_id=1)
    assert out["input_ids"].tolist() == [[0, 5, 2], [0, 2, 1]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert torch.is_tensor(out["input_ids"])


@pytest.mark.slow
def test_seeds_side_by_side_equal_separate_runs(tmp_path):
    from dynrank.driver import run_side_by_side
    from dynrank.train import runs_of

    over = tiny_overrides(tmp_path, "train.epochs=2", "data.max_train_samples=48")
    together = run_side_by_side(runs_of(compose([*over, "seeds=[1,2]"])), [tmp_path / f"together{s}" for s in (1, 2)])
    alone = [run(compose([*over, f"seed={s}", f"results.store={tmp_path / 'alone'}"]), tmp_path / f"alone{s}")
             for s in (1, 2)]
    for a, b in zip(together, alone):
        assert [e["train_loss"] for e in a["epochs"]] == [e["train_loss"] for e in b["epochs"]]
        assert a["final"] == b["final"] and a["seed"] == b["seed"]
    assert together[0]["epochs"][0]["train_loss"] != together[1]["epochs"][0]["train_loss"]
    assert (tmp_path / "together2/checkpoint/state.json").exists()


@pytest.mark.slow
def test_gpu_speed_options_leave_the_cpu_path_unchanged(tmp_path):
    """bf16, CUDA graphs and torch.compile are GPU-only: on CPU a run with them is the plain fp32 run."""
    base = tiny_overrides(tmp_path, "method=dora", "data.max_train_samples=48", "train.epochs=2")
    plain = run(compose(base), tmp_path / "plain")
    fast = run(compose([*base, "train.bf16=true", "train.cuda_graphs=true", "train.compile=true",
                        f"results.store={tmp_path / 'fast'}"]), tmp_path / "fast")
    assert [e["train_loss"] for e in plain["epochs"]] == [e["train_loss"] for e in fast["epochs"]]
    assert plain["final"] == fast["final"]
