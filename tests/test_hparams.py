"""Every method trains at its own hyperparameters (conf/hparams/<method>.yaml), the lr search trains each
method's grid, and the protocol's training-time parts (LoRA's init) reach the runs."""
from __future__ import annotations

import csv
import re
import math
from pathlib import Path

import pytest
import torch
import yaml

from conftest import CONF, compose
from dynrank.config import choices

METHODS = tuple(choices("method"))
TASKS = ("rte", "mrpc", "stsb", "cola", "sst2", "qnli", "qqp", "mnli", "squad_v1", "squad_v2", "xsum")
TABLE8 = Path(__file__).resolve().parent.parent.parent / "shared" / "paper" / "table8_hyperparameters.csv"


def _file(method):
    """conf/hparams/<method>.yaml as the run gets it: with what its defaults list inherits (dora_wd: lora.yaml)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose([f"method={method}"]).hparams)


@pytest.mark.parametrize("method", METHODS)
def test_every_task_has_its_own_rate_and_a_grid(method):
    h = _file(method)
    for task in TASKS:
        assert task in h, f"conf/hparams/{method}.yaml lacks {task}"
        lr, grid = h[task]["lr"], h[task]["grid"]
        assert isinstance(lr, float) and all(isinstance(x, float) for x in grid), (task, lr, grid)
        assert lr in grid and grid == sorted(grid) and 2 <= len(grid) <= 5, (task, lr, grid)


@pytest.mark.slow
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
        assert run_id(compose([*base, change])) != a, change  # (an extended run is not the run trained from the start)
    assert run_id(compose([*base, "train.extend=false"])) == a
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


@pytest.mark.slow
@pytest.mark.parametrize("method, task", sorted(CITED))
def test_resolved_rate_is_the_cited_one(method, task):
    assert compose([f"method={method}", f"task={task}"]).train.lr == pytest.approx(CITED[(method, task)])


# --- the rule: what the lr was tuned with comes from the lr's source (docs/hyperparameters.md) -------------------
TRAIN_KEYS = ("batch_size", "epochs", "weight_decay", "warmup_ratio", "schedule", "adam_betas", "adam_eps",
              "max_grad_norm", "label_smoothing", "no_decay")
METHOD_KEYS = ("alpha", "dropout", "activation")


def _cfg(method, task):
    return compose([f"method={method}", f"task={task}"] + (["model=bart_base"] if task == "xsum" else []))


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_value_of_the_method_file_reaches_the_run(method):
    """Each key of a task's entry, else of ``all_tasks``, is the composed run's value (none is silently ignored)."""
    h = _file(method)
    every = h.get("all_tasks", {})
    assert set(every) <= set(TRAIN_KEYS + METHOD_KEYS), set(every)
    for task in TASKS:
        assert set(h[task]) <= {"lr", "grid", *TRAIN_KEYS, *METHOD_KEYS}, (task, set(h[task]))
        cfg = _cfg(method, task)
        for key in TRAIN_KEYS + METHOD_KEYS:
            if key not in h[task] and key not in every:
                continue
            want = h[task].get(key, every.get(key))
            got = (cfg.train if key in TRAIN_KEYS else cfg.method)[key]
            got = list(got) if key == "adam_betas" else got
            assert got == want, (method, task, key, got, want)


def test_resolver_precedence_task_entry_then_all_tasks_then_task_config_then_default():
    from omegaconf import OmegaConf

    import dynrank.config  # noqa: F401  (registers ${hparams:...})

    cfg = OmegaConf.create({
        "method": {"name": "m"}, "task": {"name": "t", "epochs": 3, "batch_size": 32},
        "hparams": {"t": {"lr": 0.1, "batch_size": 8}, "all_tasks": {"batch_size": 4, "epochs": 7, "adam_eps": 1e-6}},
        "train": {"lr": "${hparams:lr}", "batch_size": "${hparams:batch_size}", "epochs": "${hparams:epochs}",
                  "adam_eps": "${hparams:adam_eps,1.0e-8}", "adam_betas": "${hparams:adam_betas,[0.9,0.999]}",
                  "max_grad_norm": "${hparams:max_grad_norm,1.0}"}})
    assert cfg.train.batch_size == 8 and cfg.train.epochs == 7 and cfg.train.adam_eps == 1e-6  # entry, all_tasks
    assert list(cfg.train.adam_betas) == [0.9, 0.999] and cfg.train.max_grad_norm == 1.0        # defaults
    del cfg.hparams.all_tasks.epochs
    assert cfg.train.epochs == 3  # the task config (Table 8)
    cfg.hparams.t.max_grad_norm = None
    assert cfg.train.max_grad_norm is None  # null in a source: no clipping, not the default


def test_the_defaults_are_the_dora_authors():
    """dora sets nothing but its lr: the DoRA authors' Build_Finetune_Config_List.py (AdamW, linear, 6% warm-up,
    weight decay 0.01, grad clip 1, lora_alpha 8, lora_dropout 0.1)."""
    cfg = compose(["method=dora", "task=rte"])
    t = cfg.train
    assert (t.weight_decay, t.warmup_ratio, t.schedule, list(t.adam_betas), t.adam_eps, t.max_grad_norm,
            t.label_smoothing) == (0.01, 0.06, "linear", [0.9, 0.999], 1e-8, 1.0, 0.0)
    assert (cfg.method.alpha, cfg.method.dropout) == (8, 0.1)


# A few values per method with their source (every one: the YAML comments, docs/hyperparameters.md).
SOURCED = [
    # BitFit's code: transformers AdamW (eps 1e-6, no weight decay), no scheduler, clip 1
    ("bitfit", "rte", "train", dict(schedule="constant", warmup_ratio=0.0, weight_decay=0.0, adam_eps=1e-6,
                                    max_grad_norm=1.0)),
    ("bitfit", "squad_v1", "train", dict(schedule="constant", warmup_ratio=0.0)),
    # fairseq RoBERTa GLUE configs: adam (0.9, 0.98), eps 1e-6, clip_norm 0; QQP warms up 25%
    ("full", "mrpc", "train", dict(adam_betas=[0.9, 0.98], adam_eps=1e-6, max_grad_norm=None, weight_decay=0.1)),
    ("full", "qqp", "train", dict(warmup_ratio=0.25)),
    # fairseq BART XSum: label smoothing 0.1, clip 0.1, (0.9, 0.999), eps 1e-8, 500 of 15000 warm-up updates
    ("full", "xsum", "train", dict(label_smoothing=0.1, max_grad_norm=0.1, adam_betas=[0.9, 0.999], adam_eps=1e-8,
                                   weight_decay=0.01, warmup_ratio=0.033)),
    # microsoft/LoRA roberta_base_*.sh: alpha 16, no dropout, batch per device x 8 GPUs (CoLA 2)
    ("lora", "rte", "method", dict(alpha=16, dropout=0.0)),
    ("lora", "rte", "train", dict(batch_size=256, weight_decay=0.1, warmup_ratio=0.06, max_grad_norm=1.0)),
    ("lora", "cola", "train", dict(batch_size=64)),
    ("dora_wd", "cola", "method", dict(alpha=16, dropout=0.0)),
    # AdaLoRA's scripts: lora_alpha per task, no dropout, their weight decay and warm-up steps
    ("adalora", "rte", "method", dict(alpha=32, dropout=0.0)),
    ("adalora", "sst2", "method", dict(alpha=16)),
    ("adalora", "cola", "train", dict(weight_decay=0.0, warmup_ratio=0.015)),
    ("adalora", "xsum", "train", dict(max_grad_norm=None, warmup_ratio=0.038, batch_size=64)),
    # DyLoRA's scripts: alpha 16, no dropout, the global batch
    ("dylora", "rte", "train", dict(batch_size=128)),
    ("dylora", "qnli", "train", dict(batch_size=256)),
    ("dylora", "mrpc", "method", dict(alpha=16, dropout=0.0)),
    # the LoRA repository's Adpt^H runs (T9): swish, 10% warm-up, no weight decay; AdapterHub's example: relu, none
    ("houlsby", "cola", "method", dict(activation="silu")),
    ("houlsby", "cola", "train", dict(warmup_ratio=0.1, weight_decay=0.0)),
    ("pfeiffer", "cola", "method", dict(activation="relu")),
    ("pfeiffer", "cola", "train", dict(warmup_ratio=0.0, weight_decay=0.0)),
]


@pytest.mark.slow
@pytest.mark.parametrize("method, task, group, values", SOURCED)
def test_sourced_values(method, task, group, values):
    node = _cfg(method, task)[group]
    for key, want in values.items():
        got = list(node[key]) if key == "adam_betas" else node[key]
        assert got == (pytest.approx(want) if isinstance(want, float) else want), (key, got, want)


@pytest.mark.slow
def test_budget_stays_equal_whatever_the_source():
    """What sets the budget is the paper's for every method: r from the budget, Table 8's max length."""
    for method in METHODS:
        for budget, r in (("r8", 8), ("r2", 2)):
            cfg = compose([f"method={method}", "task=rte", f"budget={budget}"])
            assert cfg.budget.r == r and cfg.task.max_length == 128


def test_dora_wd_inherits_loras_configuration():
    """conf/hparams/dora_wd.yaml is lora.yaml through Hydra's defaults list: for every task, under both protocols,
    dora_wd trains with LoRA's standard values (lora's paper_code entry, the DoRA authors' own LoRA, is not LoRA's
    configuration that NVlabs points to: dora_wd cancels it)."""
    from omegaconf import OmegaConf

    def values(method, protocol):
        cfg = OmegaConf.to_container(compose([f"method={method}", f"task={task}", f"protocol={protocol}"]),
                                     resolve=True)
        hparams = {k: v for k, v in cfg["hparams"].items() if k != "paper_code"}
        return cfg["train"], {k: cfg["method"][k] for k in ("alpha", "dropout")}, hparams

    file = yaml.safe_load((CONF / "hparams" / "dora_wd.yaml").read_text())
    assert file == {"defaults": ["lora", "_self_"], "paper_code": None}
    for task in TASKS:
        lora = values("lora", "standard")
        assert values("dora_wd", "standard") == lora and values("dora_wd", "paper_code") == lora, task


@pytest.mark.parametrize("override, message", [
    ("train.adam_eps=0", "train.adam_eps must be a number > 0"),
    ("train.label_smoothing=1.0", "train.label_smoothing must be a number in [0, 1)"),
    ("train.adam_betas=[0.9,1.0]", "train.adam_betas must be a list of number in [0, 1)"),
    ("train.max_grad_norm=0", "train.max_grad_norm must be a number > 0, or null"),
])
def test_new_training_keys_are_checked(override, message):
    from dynrank.config import validate
    from dynrank.errors import ConfigError

    validate(compose(["method=lora", "train.max_grad_norm=null"]))  # null: no clipping
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose(["method=lora", override]))


def test_one_preset_list_names_every_experiment_file():
    """dynrank.config.presets (read by make reproduce-tables and the estimate) and conf/experiment/ agree."""
    from dynrank.config.presets import BY_TABLE, ORDER, OTHER, PAPER

    files = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
    assert sorted(PAPER + OTHER) == files
    assert sorted(ORDER) == sorted(BY_TABLE)


@pytest.mark.parametrize("method, override, message", [
    ("adalora", "method.beta1=0", "method.beta1 must be a number in (0, 1)"),
    ("adalora", "method.deltaT=0", "method.deltaT must be an integer >= 1"),
    ("adalora", "method.orth_reg_weight=-1", "method.orth_reg_weight must be a number >= 0"),
    ("dora", "method.pruning_interval=0", "method.pruning_interval must be an integer >= 1"),
    ("houlsby", "method.bottleneck=0", "method.bottleneck must be an integer >= 1"),
])
def test_a_methods_key_is_checked_in_one_place_before_training(method, override, message):
    """Each key's range lives in config.schema only (the methods keep the checks that span keys or steps)."""
    from dynrank.config import validate
    from dynrank.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose([f"method={method}", override]))


# --- issue 28: the lr_search grid checked before Hydra starts; every method and task resolves ---------------

@pytest.mark.parametrize("override, message", [
    ("hparams.cola.grid=[]", "hparams.cola.grid=[] lists no learning rate; list the rates to search (e.g. "
                             "hparams.cola.grid=[2e-4,4e-4]), or drop lr_search=true"),  # was an IndexError
    ("~hparams.cola.grid", "lr_search=true trains the rates of hparams.cola.grid, which is not set "
                           "(conf/hparams/lora.yaml, or an override removed it); set hparams.cola.grid=[<lr>,...] "
                           "or drop lr_search=true"),  # was a ConfigAttributeError
    ("hparams.cola.grid=[4e-4,8e-4,0.0004]", "hparams.cola.grid lists learning rate 4e-4 more than once (got "
                                            "[0.0004, 0.0008, 0.0004]); list each rate once"),  # "in use by ..."
    ("hparams.cola.grid=[4e-4,abc]", 'hparams.cola.grid must be a list of numbers > 0 (got [0.0004, "abc"])'),
    ("hparams.cola.grid=[4e-4,0]", "hparams.cola.grid must be a list of numbers > 0 (got [0.0004, 0])"),
], ids=["empty", "removed", "twice", "not-a-number", "zero"])
def test_the_lr_search_grid_is_checked_before_hydra_starts(tmp_path, override, message):
    from dynrank.config import check_command_line
    from dynrank.errors import ConfigError

    args = ["method=lora", "task=cola", "lr_search=true", f"results.store={tmp_path / 'store'}"]
    with pytest.raises(ConfigError) as e:
        check_command_line([*args, override])
    assert str(e.value) == message
    check_command_line(args)  # the method's own grid
    check_command_line([a for a in args if a != "lr_search=true"] + [override])  # without it the grid is not read


@pytest.mark.parametrize("override, message", [
    ("seed=4294967296", "seed must be an integer in [0, 4294967295] (got 4294967296)"),  # numpy: 32 bits
    ("seeds=[1,4294967296]", "seeds must be a list of integers in [0, 4294967295], or null (got [1, 4294967296])"),
    ("seed=-1", "seed must be an integer in [0, 4294967295] (got -1)"),
])
def test_a_seed_beyond_32_bits_is_refused_before_hydra_starts(tmp_path, override, message):
    from dynrank.config import check_command_line
    from dynrank.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        check_command_line([f"results.store={tmp_path / 'store'}", override])
    assert str(e.value) == message
    check_command_line([f"results.store={tmp_path / 'store'}", "seed=4294967295"])


def test_every_method_and_task_resolves():
    """``OmegaConf.resolve`` as ``--cfg job --resolve`` does: every method with a GLUE and a generation task, and
    every task with dora (whose ``${hparams:adam_betas,[0.9,0.999]}`` default was a Python list: a crash)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf

    from dynrank.config import CONF_DIR

    pairs = sorted({(m, t) for m in METHODS for t in ("cola", "xsum")} | {("dora", t) for t in TASKS})
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for method, task in pairs:
            cfg = hydra_compose("config", overrides=[f"method={method}", f"task={task}"])
            OmegaConf.resolve(cfg)
            assert len(cfg.train.adam_betas) == 2, (method, task)


@pytest.mark.slow
def test_cfg_job_resolve_prints_the_resolved_config(tmp_path):
    """Hydra's documented way to see the resolved config, through the CLI."""
    from conftest import cli

    p = cli(["task=cola", "method=dora", "--cfg", "job", "--resolve"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert yaml.safe_load(p.stdout)["train"]["adam_betas"] == [0.9, 0.999]


# --- issue 30: weight decay where the source puts it; protocol=paper_code's LoRA is the authors' LoRA ------------
@pytest.mark.parametrize("method, rule", [("lora", "hf_trainer"), ("dylora", "hf_trainer"), ("adalora", "hf_trainer"),
                                          ("dora_wd", "hf_trainer"), ("dora", "none"), ("full", "none"),
                                          ("bitfit", "none")])
def test_no_decay_rule_follows_the_source(method, rule):
    assert compose([f"method={method}", "task=cola"]).train.no_decay == rule


def test_the_tiny_lora_optimizer_spares_the_heads_biases():
    """lora's HF Trainer rule reaches the optimizer: the classifier's biases take no weight decay, the adapters do."""
    from dynrank import methods
    from dynrank.models import load_model, load_tokenizer
    from dynrank.step import make_optimizer, prepare_model
    from transformers import AutoModelForSequenceClassification

    cfg = compose(["method=lora", "task=cola", "model=tiny"])
    tok = load_tokenizer(cfg.model)
    method = methods.build(cfg, cfg.model.family, runs=2)
    model = method.wrap(load_model(cfg.model, AutoModelForSequenceClassification, tok, num_labels=2))
    _, flat = prepare_model(model, method, torch.device("cpu"), bf16=False, compile_model=False)
    opt = make_optimizer(cfg.train, method, flat, [1e-3, 1e-3], total_steps=10)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    spared = {n for n, d in zip(names, opt.decay) if not d}
    assert spared and spared == {n for n in names if n.endswith("bias")} and all("classifier" in n for n in spared)
    cfg = compose(["method=dora", "task=cola", "model=tiny"])
    method = methods.build(cfg, cfg.model.family, runs=1)
    _, flat = prepare_model(method.wrap(load_model(cfg.model, AutoModelForSequenceClassification, tok, num_labels=2)),
                            method, torch.device("cpu"), bf16=False, compile_model=False)
    assert make_optimizer(cfg.train, method, flat, [1e-3], total_steps=10).decay is None  # the authors': all decay


def test_no_decay_leaves_the_hash_of_runs_it_does_not_change():
    from dynrank.config import identity

    assert "no_decay" not in identity(compose(["method=dora", "task=cola"]))["train"]          # none
    assert "no_decay" not in identity(compose(["method=lora", "task=squad_v1"]))["train"]      # weight decay 0
    assert identity(compose(["method=lora", "task=cola"]))["train"]["no_decay"] == "hf_trainer"  # 0.1: it acts


def test_paper_code_lora_is_the_authors_lora():
    """protocol=paper_code: alpha 8, dropout 0.1, A kaiming a=0, their optimizer settings (Build_Finetune_Config_List
    .py); the rate, batch and epochs stay LoRA's own (their code publishes none for LoRA); the command line wins."""
    for task in ("cola", "squad_v1"):
        std = compose(["method=lora", f"task={task}"])
        pc = compose(["method=lora", f"task={task}", "protocol=paper_code"])
        assert (pc.method.alpha, pc.method.dropout, pc.method.kaiming_a) == (8, 0.1, 0.0)
        assert (pc.train.weight_decay, pc.train.warmup_ratio, pc.train.no_decay, pc.train.max_grad_norm) == \
            (0.01, 0.06, "none", 1.0)
        assert (pc.train.lr, pc.train.batch_size, pc.train.epochs) == (std.train.lr, std.train.batch_size,
                                                                     std.train.epochs)
        assert (std.method.alpha, std.method.dropout) == (16, 0.0)
    assert compose(["method=lora", "protocol=paper_code", "method.alpha=16"]).method.alpha == 16
    # the other methods are untouched by the protocol
    assert compose(["method=dora_wd", "protocol=paper_code"]).method.alpha == 16
