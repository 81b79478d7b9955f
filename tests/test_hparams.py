"""Every method trains at its own hyperparameters (conf/hparams/<method>.yaml), the lr search trains each
method's grid, and the protocol's training-time parts (LoRA's init) reach the runs."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import yaml

from conftest import CONF, compose

METHODS = ("full", "bitfit", "houlsby", "pfeiffer", "lora", "adalora", "dora", "dora_wd", "dylora")
TASKS = ("rte", "mrpc", "stsb", "cola", "sst2", "qnli", "qqp", "mnli", "squad_v1", "squad_v2", "xsum")
TABLE8 = Path(__file__).resolve().parent.parent.parent / "shared" / "paper" / "table8_hyperparameters.csv"


def _file(method):
    return yaml.safe_load((CONF / "hparams" / f"{method}.yaml").read_text())


@pytest.mark.parametrize("method", METHODS)
def test_every_task_has_its_own_rate_and_a_grid(method):
    h = _file(method)
    for task in TASKS:
        assert task in h, f"conf/hparams/{method}.yaml lacks {task}"
        lr, grid = h[task]["lr"], h[task]["grid"]
        assert isinstance(lr, float) and all(isinstance(x, float) for x in grid), (task, lr, grid)
        assert lr in grid and grid == sorted(grid) and 2 <= len(grid) <= 5, (task, lr, grid)


@pytest.mark.parametrize("method", METHODS)
def test_resolved_values_are_the_methods_own(method):
    h = _file(method)
    for task in ("cola", "squad_v1"):
        cfg = compose([f"method={method}", f"task={task}"])
        assert cfg.train.lr == h[task]["lr"]
        for key in ("batch_size", "epochs", "weight_decay", "warmup_ratio"):
            if key in h[task]:  # the method's own value beats the task's (Table 8)
                assert cfg.train[key] == h[task][key], (task, key)
        if "epochs" not in h[task]:
            assert cfg.train.epochs == cfg.task.epochs  # Table 8


def test_dora_keeps_table8_rates():
    rows = {r["task"]: float(r["learning_rate"]) for r in csv.DictReader(TABLE8.open())}
    for task, lr in rows.items():
        assert compose(["method=dora", f"task={task}"]).train.lr == pytest.approx(lr)


def test_command_line_beats_the_method_file():
    assert compose(["method=lora", "train.lr=1e-3"]).train.lr == 1e-3


def test_lr_search_trains_the_grid_side_by_side_with_the_table_runs_ids():
    from dynrank.config import run_id
    from dynrank.train import runs_of

    cfg = compose(["experiment=lr_search", "method=bitfit", "task=mrpc"])
    grid = _file("bitfit")["mrpc"]["grid"]
    runs = runs_of(cfg)
    assert [(c.train.lr, c.seed) for c in runs] == [(lr, s) for lr in grid for s in (1, 2, 3, 4, 5)]
    assert len({run_id(c) for c in runs}) == len(runs)
    # the run at the default rate is Table 2's run (same id): neither preset trains it twice
    default = next(c for c in runs if c.train.lr == cfg.train.lr and c.seed == 1)
    assert run_id(default) == run_id(compose(["experiment=table2_r8", "method=bitfit", "task=mrpc", "seed=1"]))


def test_identity_changes_with_results_not_with_bookkeeping():
    from dynrank.config import run_id

    base = ["method=lora", "task=cola", "model=tiny"]
    a = run_id(compose(base))
    assert run_id(compose([*base, "train.progress=false", "train.log_every=7", "data.cache_dir=/x"])) == a
    assert run_id(compose([*base, "train.cuda_graphs=true", "model.path=/y", "seed=1"])) == a
    for change in ("train.epochs=3", "train.batch_size=8", "method.dropout=0.2", "data.max_train_samples=5",
                   "protocol=paper_code", "train.extend=true"):  # paper_code changes LoRA's init
        assert (run_id(compose([*base, change])) != a) == (change != "train.extend=true"), change
    assert "/lr1e-3-" in run_id(compose([*base, "train.lr=1e-3"]))
    # GLUE under the other protocol trains the same dora run (only the report's rules differ)
    assert run_id(compose(["method=dora", "protocol=paper_code"])) == run_id(compose(["method=dora"]))


@pytest.mark.parametrize("protocol, a", [("standard", math.sqrt(5)), ("paper_code", 0.0)])
def test_lora_init_follows_the_protocol(protocol, a):
    from dynrank.methods.lora import LoRALinear

    cfg = compose(["method=lora", f"protocol={protocol}"])
    assert cfg.method.kaiming_a == pytest.approx(a)
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(400, 400), 1, 8, 8.0, 0.0, float(cfg.method.kaiming_a))  # one run, r 8
    bound = math.sqrt(6 / ((1 + a * a) * 400))  # kaiming_uniform_'s bound
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.95 * bound


# The cited rate of each method for two tasks (source beside it; docs/hyperparameters.md has every one).
CITED = {
    ("full", "rte"): 2e-5,      # fairseq examples/roberta finetuning/rte.yaml (RoBERTa, Liu et al. 2019)
    ("full", "mrpc"): 1e-5,     # fairseq finetuning/mrpc.yaml
    ("bitfit", "cola"): 1e-3,   # BitFit's official code default (benzakenelad/BitFit)
    ("bitfit", "rte"): 1e-3,
    ("houlsby", "cola"): 3e-4,  # Houlsby et al. 2019 grid {3e-5, 3e-4, 3e-3}; LoRA paper Table 9 adapter rows
    ("houlsby", "mrpc"): 3e-4,
    ("pfeiffer", "cola"): 1e-4,  # AdapterHub GLUE example
    ("pfeiffer", "stsb"): 1e-4,
    ("lora", "cola"): 4e-4,     # Hu et al. 2022, Table 9, RoBERTa-base
    ("lora", "rte"): 5e-4,
    ("adalora", "cola"): 5e-4,  # Zhang et al. 2023, DeBERTaV3-base table
    ("adalora", "stsb"): 2.2e-3,
    ("dora", "cola"): 2e-3,     # the DoRA paper's Table 8
    ("dora", "mrpc"): 2.5e-3,
    ("dora_wd", "cola"): 4e-4,  # Liu et al. 2024 (NVlabs/DoRA): LoRA's configuration
    ("dora_wd", "sst2"): 5e-4,
    ("dylora", "cola"): 4e-4,   # Valipour et al. 2023 official scripts (= LoRA's rates)
    ("dylora", "qqp"): 5e-4,
}


@pytest.mark.parametrize("method, task", sorted(CITED))
def test_resolved_rate_is_the_cited_one(method, task):
    assert compose([f"method={method}", f"task={task}"]).train.lr == pytest.approx(CITED[(method, task)])
