"""Tables from runs: presets compose, a tiny multirun through `make reproduce-tables`' script, and the report's
Markdown / CSV / LaTeX cells checked against means and sample stds computed here from the results JSON files."""
from __future__ import annotations

import csv
import json
import math
import re
import statistics
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import CONF, ROOT, SHARED_GLUE, compose, make_glue
from dynrank import report
from dynrank.results import RunResults

PAPER = ROOT / "dynrank" / "paper"


def paper_value(csv_name, match: dict, column: str) -> str:
    with open(PAPER / csv_name, newline="") as f:
        for row in csv.DictReader(f):
            if all(row[k] == v for k, v in match.items()):
                return row[column]
    raise KeyError(match)


def md_table(path: Path) -> tuple[list[str], dict[tuple, list[str]]]:
    """Header and {(labels..., kind): cells} of the first Markdown table in the file."""
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    split = lambda ln: [c.strip() for c in ln.strip().strip("|").split("|")]  # noqa: E731
    header = split(lines[0])
    rows = {}
    for ln in lines[2:]:
        cells = split(ln)
        k = header.index("")  # the ours/paper/Δ column follows the label columns
        rows[tuple(cells[:k + 1])] = cells
    return header, rows


def tex_rows(path: Path) -> list[list[str]]:
    return [[c.strip() for c in ln.rstrip(" \\").split(" & ")] for ln in path.read_text().splitlines()
            if " & " in ln]


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def mean_std(xs):
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))  # sample std, ddof=1


# --- presets ------------------------------------------------------------------------------------------
def _grid(name):
    from hydra import compose as hcompose, initialize_config_dir

    import dynrank.config  # noqa: F401

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hcompose(config_name="config", overrides=[f"experiment={name}"], return_hydra_config=True)
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    return cfg, params


@pytest.mark.parametrize("name, model, budget, grid", [
    ("table2_r8", "roberta_base", "r8", {"task": 8, "method": 7}),
    ("table2_r2", "roberta_base", "r2", {"task": 8, "method": 5}),
    ("table3_r8", "roberta_base", "r8", {"task": 2, "method": 7}),
    ("table3_r2", "roberta_base", "r2", {"task": 2, "method": 5}),
    ("table4_r8", "bart_base", "r8", {"task": 1, "method": 4}),
    ("table4_r2", "bart_base", "r2", {"task": 1, "method": 3}),
    ("table5_dem", "roberta_base", "r8", {"task": 3}),
    ("table5_nodem", "roberta_base", "r8", {"task": 3}),
    ("table6", "roberta_base", "r2", {"task": 3, "method.initial_budget": 5}),
    ("table9", "roberta_base", "r8", {"method": 7, "seed": 1}),
])
def test_presets_name_existing_configs_and_the_papers_grid(name, model, budget, grid):
    cfg, params = _grid(name)
    assert {k: len(v) for k, v in params.items()} == grid
    assert cfg.model.id == model and cfg.budget.name == budget
    if name == "table9":  # timings: one run per job
        assert params["seed"] == ["1"] and not cfg.seeds
    else:  # one job per cell, the paper's seeds 1-5 in it (stacked on a GPU)
        assert list(cfg.seeds) == [1, 2, 3, 4, 5]
    for group in ("task", "method"):
        for choice in params.get(group, []):
            assert (CONF / group / f"{choice}.yaml").is_file(), f"{name}: no conf/{group}/{choice}.yaml"


def test_preset_variants_keep_ablation_runs_apart():
    nodem = compose(["experiment=table5_nodem"])
    assert nodem.method.name == "dora" and nodem.method.dem is False and nodem.variant == "nodem"
    assert compose(["experiment=table5_dem"]).variant is None  # = Table 2's dora-r8 runs
    t6 = compose(["experiment=table6", "method.initial_budget=4", "task=mrpc"])
    from dynrank.config import run_id, validate
    validate(t6)
    assert re.fullmatch(r"roberta_base/mrpc/dora-r2-r0-4/lr2\.5e-3-[0-9a-f]{8}/seed1", run_id(t6))
    t9 = compose(["experiment=table9"])
    assert t9.train.epochs == 1 and t9.task.name == "qnli" and run_id(t9).startswith("roberta_base/qnli/lora-r8-eff/lr")
    # a preset's own values beat config.yaml's, the command line beats the preset
    assert compose(["experiment=table9", "train.epochs=2", "model=tiny"]).train.epochs == 2


# --- report on synthetic results (exact numbers) ------------------------------------------------------
def _write_run(store, model, task, method, budget, seed, dev, metric, variant=None, lr=4e-4, config_hash="0123abcd",
               protocol="standard", epochs=None, pruning_end_step=None, **extra):
    """A results file as dynrank.trainer writes it now (per-epoch history, lr, config hash, protocol), under its
    run id ``<model>/<task>/<cell>/lr<lr>-<hash>/seed<k>``; ``epochs`` defaults to one epoch with ``dev``."""
    from dynrank.config import lr_tag

    cell = f"{method}-{budget}" + (f"-{variant}" if variant else "")
    epochs = epochs or [{"epoch": 1, "step": 10, "dev": dev}]
    best = max(epochs, key=lambda h: h["dev"].get(metric, float("-inf")))
    rid = f"{model}/{task}/{cell}/lr{lr_tag(lr)}-{config_hash}/seed{seed}"
    res = {"schema": 1, "run_id": rid, "model": model, "task": task, "method": method, "budget": budget,
           "variant": variant, "seed": seed, "lr": lr, "config_hash": config_hash, "protocol": protocol,
           "metric": metric, "best": {"epoch": best["epoch"], "dev": best["dev"]},
           "pruning_end_step": pruning_end_step, "final": {"epoch": epochs[-1]["epoch"], "dev": epochs[-1]["dev"]},
           "epochs": epochs, "params": {"adapter": 1_330_000}, "time_per_epoch_s": [60.0] * len(epochs),
           "peak_gpu_memory_mib": None, "device": "cpu", "config": {"train": {"lr": lr}}, **extra}
    p = Path(store) / (rid + ".json")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(res))
    return p


def _write_old_run(store, model, task, method, budget, seed, dev, metric, config=None):
    """A results file from before learning rates and protocols were recorded: no lr, config_hash, protocol,
    pruning_end_step; the old layout ``<model>/<task>/<cell>/seed<k>.json``."""
    res = {"schema": 1, "run_id": f"{model}/{task}/{method}-{budget}/seed{seed}", "model": model, "task": task,
           "method": method, "budget": budget, "variant": None, "seed": seed, "metric": metric,
           "best": {"epoch": 1, "dev": dev}, "final": {"epoch": 1, "dev": dev},
           "epochs": [{"epoch": 1, "step": 10, "dev": dev}], "params": {"adapter": 1_330_000},
           "time_per_epoch_s": [60.0], "peak_gpu_memory_mib": None, "device": "cpu", "config": config or {}}
    p = Path(store) / model / task / f"{method}-{budget}" / f"seed{seed}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(res))
    return p


def test_report_aggregates_synthetic_runs(tmp_path):
    store, out = tmp_path / "store", tmp_path / "tables"
    cola = [0.60, 0.63, 0.61, 0.70, 0.66]
    for s, v in enumerate(cola, 1):
        _write_run(store, "roberta_base", "cola", "lora", "r8", s, {"matthews": v, "accuracy": 0.8}, "matthews")
    # dora r8 on all 8 tasks, 2 seeds: an Avg; MNLI's matched accuracy, not mm
    glue = {"rte": "accuracy", "mrpc": "accuracy", "stsb": "pearson", "cola": "matthews", "sst2": "accuracy",
            "qnli": "accuracy", "qqp": "accuracy", "mnli": "accuracy"}
    for i, (task, metric) in enumerate(glue.items()):
        for s in (1, 2):
            _write_run(store, "roberta_base", task, "dora", "r8", s, {metric: 0.5 + 0.01 * i + 0.02 * s,
                                                                       "accuracy_mm": 0.1}, metric)
    # Table 5 without DEM, Table 9 timings (eff variant, with GPU memory)
    _write_run(store, "roberta_base", "cola", "dora", "r8", 1, {"matthews": 0.64}, "matthews", variant="nodem")
    _write_run(store, "roberta_base", "qnli", "lora", "r8", 1, {"accuracy": 0.9}, "accuracy", variant="eff",
               time_per_epoch_s=[420.0, 444.0], peak_gpu_memory_mib=4000.0, device="NVIDIA H100")
    # Figure 2: two seeds of dora rank maps
    rm = lambda c: {"rank_map": {"rows": ["query", "key"], "cols": ["0", "1"], "counts": c}}  # noqa: E731
    for s, counts in ((1, [[8, 6], [10, 8]]), (2, [[7, 9], [8, 8]])):
        _write_run(store, "roberta_base", "sst2", "dora", "r2", s, {"accuracy": 0.9}, "accuracy",
                   method_summary=rm(counts))

    assert report.main(["--store", str(store), "--out", str(out)]) == 0
    _, md = md_table(out / "table2.md")
    m, sd = mean_std([100 * v for v in cola])
    col = md_table(out / "table2.md")[0].index("CoLA")
    assert md["r8", "lora", "ours"][col] == f"{m:.2f} ± {sd:.2f} (n=5)"  # 5 seeds: no dagger
    assert md["r8", "lora", "paper"][col] == paper_value("table2_glue.csv", {"budget": "high", "method": "lora"},
                                                         "cola")
    assert md["r8", "lora", "Δ"][col] == f"{m - 63.54:+.2f}"
    assert md["r8", "lora", "ours"][-1] == "—" and md["r8", "lora", "paper"][-1] == "86.13"  # Avg needs all 8
    dora_means = [sum(100 * (0.5 + 0.01 * i + 0.02 * s) for s in (1, 2)) / 2 for i in range(8)]
    assert md["r8", "dora", "ours"][-1] == f"{sum(dora_means) / 8:.2f} (n=2)†"
    mnli = md_table(out / "table2.md")[0].index("MNLI")
    assert md["r8", "dora", "ours"][mnli].startswith(f"{dora_means[7]:.2f} ± ")
    assert md["r2", "dora", "ours"][col] == "—"
    # CSV: full precision, missing = empty (never 0)
    rows = {(r["row"], r["column"]): r for r in csv_rows(out / "table2.csv")}
    r = rows["r8 lora", "cola"]
    assert r["n"] == "5" and r["seeds"] == "1 2 3 4 5" and float(r["paper"]) == 63.54
    assert math.isclose(float(r["mean"]), m) and math.isclose(float(r["std"]), sd)
    assert math.isclose(float(r["diff"]), m - 63.54)
    assert rows["r8 lora", "rte"]["mean"] == "" and rows["r8 lora", "rte"]["n"] == "0"
    # Table 5: with DEM = the dora-r8 runs, without = the nodem variant
    _, t5 = md_table(out / "table5.md")
    assert t5["with DEM", "ours"][3] == f"{dora_means[3]:.2f} ± {mean_std([55.0, 57.0])[1]:.2f} (n=2)†"
    assert t5["without DEM", "ours"][3] == "64.00 (n=1)†" and t5["without DEM", "paper"][3] == "64.17"
    # Table 9: minutes per epoch = mean(time_per_epoch_s) / 60; memory; device named; one seed expected
    _, t9 = md_table(out / "table9.md")
    assert t9["lora", "ours"][2:] == ["7.20 (n=1)", "4000 (n=1)"]
    assert t9["lora", "Δ"][2:] == ["+0.00", "-94"] and t9["adalora", "ours"][2:] == ["—", "—"]
    # no eff run for dora: Table 2's QNLI dora-r8 runs stand in (60 s per epoch; no GPU memory on CPU)
    assert t9["dora", "ours"][2:] == ["1.00 ± 0.00 (n=2)", "—"]
    assert "NVIDIA H100" in (out / "table9.md").read_text()
    # Figure 2: mean counts over the two seeds
    fig = out / "figure2_roberta_base_sst2_r2"
    assert fig.with_suffix(".png").stat().st_size > 0
    assert csv_rows(fig.with_suffix(".csv")) == [{"matrix_type": "query", "0": "7.5", "1": "7.5"},
                                                 {"matrix_type": "key", "0": "9.0", "1": "8.0"}]


# --- a tiny multirun through the reproduce-tables script -----------------------------------------------
def _glue_fixture(root: Path, n=48):
    make_glue(root, n=n)  # every task, classic layout (SST-2 used here)
    for split in ("train", "dev"):  # CoLA: the first real rows when the shared copy is there
        src = SHARED_GLUE / "CoLA" / f"{split}.tsv"
        if src.is_file():
            with open(src, encoding="utf-8") as f:
                lines = [next(f) for _ in range(n)]
            (root / "CoLA" / f"{split}.tsv").write_text("".join(lines), encoding="utf-8")


@pytest.mark.slow
def test_tiny_multirun_report_matches_results_by_hand(tmp_path):
    """`make reproduce-tables` in small: the script runs the smoke preset narrowed on the command line to
    2 tasks x 2 methods x 3 seeds (one `python -m dynrank.train -m` process); the report's cells must equal
    the mean and sample std of the results files, computed here."""
    glue = tmp_path / "glue"
    _glue_fixture(glue)
    store, out = tmp_path / "store", tmp_path / "tables"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "reproduce_tables.py"), "--tables", "smoke", "--no-report",
         "model=tiny", "task=cola,sst2", "method=full,lora", "seed=1,2,3",  # replace the smoke preset's values
         f"data.dir={glue}", "data.max_train_samples=32", "data.max_eval_samples=32", f"results.store={store}",
         f"hydra.sweep.dir={tmp_path / 'multirun'}", f"data.cache_dir={tmp_path / 'cache'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    files = sorted(store.rglob("seed*.json"))
    assert len(files) == 12  # 2 tasks x 2 methods x 3 seeds, not the preset's grid
    assert report.main(["--store", str(store), "--out", str(out), "--model", "tiny"]) == 0  # in-process: faster

    runs = [json.loads(f.read_text()) for f in files]
    header, md = md_table(out / "table2.md")
    tex = {tuple(r[:3]): r for r in tex_rows(out / "table2.tex")}
    csv_by = {(r["row"], r["column"]): r for r in csv_rows(out / "table2.csv")}
    for task, label in (("cola", "CoLA"), ("sst2", "SST-2")):
        for method in ("full", "lora"):
            vals = [100 * r["best"]["dev"][r["metric"]] for r in sorted(runs, key=lambda r: r["seed"])
                    if r["task"] == task and r["method"] == method]
            assert len(vals) == 3
            m, sd = mean_std(vals)
            paper = paper_value("table2_glue.csv", {"budget": "high", "method": method}, task)
            col = header.index(label)
            assert md["r8", method, "ours"][col] == f"{m:.2f} ± {sd:.2f} (n=3)†"
            assert md["r8", method, "paper"][col] == paper
            assert ("r8", method, "Δ") not in md  # the paper's numbers are RoBERTa's: a reference, no difference
            c = csv_by[f"r8 {method}", task]
            assert c["n"] == "3" and c["seeds"] == "1 2 3" and c["variant"] == "" and c["diff"] == ""
            assert math.isclose(float(c["mean"]), m, abs_tol=1e-9) and math.isclose(float(c["std"]), sd, abs_tol=1e-9)
            assert float(c["paper"]) == float(paper)
            assert tex["r8", method, "ours"][col] == f"{m:.2f} $\\pm$ {sd:.2f} (n=3)$^\\dagger$"
    # missing cells are marked, never 0: other tasks, methods not run, the Avg
    for label in ("RTE", "MNLI", "Avg"):
        assert md["r8", "lora", "ours"][header.index(label)] == "—"
        assert tex["r8", "lora", "ours"][header.index(label)] == "--"
    assert set(md["r8", "dora", "ours"][3:]) == {"—"}
    assert md["r8", "lora", "paper"][header.index("Avg")] == "86.13"
    assert csv_by["r8 lora", "mnli"]["mean"] == "" and csv_by["r8 lora", "avg"]["mean"] == ""
    assert (out / "index.md").read_text().count("## Table") == 6


def test_script_dry_run_lists_presets(capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import reproduce_tables
    finally:
        sys.path.pop(0)
    assert reproduce_tables.main(["--dry-run", "--tables", "table2,table5", "model=tiny", "seed=1"]) == 0
    out = capsys.readouterr().out
    for preset in ("table2_r8", "table2_r2", "table5_dem", "table5_nodem"):
        assert f"experiment={preset} train.skip_done=true model=tiny seed=1" in out
    assert "--model tiny" in out and "table6" not in out
    assert "--out results/tables" in out
    assert reproduce_tables.main(["--dry-run", "--tables", "smoke"]) == 0  # its own store and tables
    assert "report: -m dynrank.report --store results/smoke/runs --out results/smoke/tables --model minilm" \
        in capsys.readouterr().out
    with pytest.raises(SystemExit):
        reproduce_tables.main(["--tables", "table7"])


@pytest.mark.slow
def test_script_offline_checks_sources_once_and_stops_before_the_first_preset(tmp_path, monkeypatch, capsys):
    """No Hub and nothing cached: one line and exit 2 before any preset runs (all tables, or narrowed), whether the
    model (roberta-base, bart-base) or the data (the Hub's GLUE, with model=minilm) is missing; the smoke preset,
    local model and data, passes the check."""
    import time

    from huggingface_hub import constants

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import reproduce_tables
    finally:
        sys.path.pop(0)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(reproduce_tables.subprocess, "run", lambda *a, **k: pytest.fail(f"a preset ran: {a}"))
    for argv, missing in ((["--tables", "all"], "'roberta-base' is not in the Hugging Face cache"),
                          (["--tables", "table4"], "'facebook/bart-base' is not in the Hugging Face cache"),
                          (["--tables", "table2,table6", "model=minilm"],
                           "nyu-mll/glue is not in the Hugging Face cache and HF_HUB_OFFLINE is set; pass data.dir=")):
        t = time.process_time()  # CPU time: the wall time of a loaded machine says little
        assert reproduce_tables.main(argv) == 2
        assert time.process_time() - t < 15  # composes each (task, model) once: ~2 s
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {missing}"), err
    reproduce_tables.check_sources(["smoke"], [])  # MiniLM and SST-2 from ../shared: nothing to fetch


# --- selection rules on hand-made per-epoch histories -----------------------------------------------------
def _epochs(*devs, steps=None):
    return [{"epoch": i + 1, "step": (steps[i] if steps else 10 * (i + 1)), "dev": d} for i, d in enumerate(devs)]


def test_selection_rules_best_epoch_after_pruning():
    """A dora run whose best epoch over all (epoch 1, Matthews .70) comes before pruning ends (step 20):
    standard takes it; paper_code takes the best epoch at or after step 20 (epoch 2's .65: its end step equals
    pruning_end_step, so the allocation is final there); a method without pruning: all epochs."""
    from dynrank.report.selection import PAPER_CODE, STANDARD

    hist = _epochs({"matthews": 0.70}, {"matthews": 0.65}, {"matthews": 0.60})
    dora = RunResults(method="dora", metric="matthews", epochs=hist, pruning_end_step=20)
    assert STANDARD.value(dora) == 0.70
    assert PAPER_CODE.value(dora) == 0.65
    assert PAPER_CODE.value(replace(dora, pruning_end_step=21)) == 0.60
    assert PAPER_CODE.value(replace(dora, method="lora", pruning_end_step=None)) == 0.70  # lora & co: all epochs


def test_paper_code_takes_every_epoch_of_adalora():
    """AdaLoRA prunes too (its runs record a pruning_end_step), but the authors' code has no AdaLoRA and cuts only
    runs that log 'prune finished' (their DoRA): paper_code takes its best over all epochs, as standard does."""
    from dynrank.report.selection import PAPER_CODE, STANDARD, candidate_epochs

    hist = _epochs({"matthews": 0.70}, {"matthews": 0.65}, {"matthews": 0.60})
    adalora = RunResults(method="adalora", metric="matthews", epochs=hist, pruning_end_step=20)
    assert candidate_epochs(adalora) == hist
    assert PAPER_CODE.value(adalora) == STANDARD.value(adalora) == 0.70
    assert PAPER_CODE.value(replace(adalora, method="dora")) == 0.65


def test_selection_rules_per_metric_maxima_and_paper_code_keys():
    from dynrank.report.selection import PAPER_CODE, STANDARD

    # XSum: ROUGE-1, -2, -L peak in three different epochs; standard reads all three off the best ROUGE-L epoch
    xsum = RunResults(metric="rougeL", pruning_end_step=None, epochs=_epochs(
        {"rouge1": 40.0, "rouge2": 18.0, "rougeL": 33.0},
        {"rouge1": 41.0, "rouge2": 17.0, "rougeL": 32.0},
        {"rouge1": 39.0, "rouge2": 17.5, "rougeL": 34.0}))
    assert [STANDARD.value(xsum, (k,)) for k in ("rouge1", "rouge2", "rougeL")] == [39.0, 17.5, 34.0]
    assert [PAPER_CODE.value(xsum, (k,)) for k in ("rouge1", "rouge2", "rougeL")] == [41.0, 18.0, 34.0]
    # SQuAD: EM and F1 apart; under paper_code the authors' variants `<key>@paper_code` are read where stored
    squad = RunResults(method="dora", metric="f1", pruning_end_step=15, epochs=_epochs(
        {"exact": 85.0, "f1": 90.0, "exact@paper_code": 86.0, "f1@paper_code": 91.0},   # before pruning ended
        {"exact": 80.0, "f1": 88.0, "exact@paper_code": 81.5, "f1@paper_code": 87.0},
        {"exact": 79.0, "f1": 89.0, "exact@paper_code": 80.5, "f1@paper_code": 89.5}))
    em, f1 = ("exact", "exact_match", "em"), ("f1",)
    assert (STANDARD.value(squad, em), STANDARD.value(squad, f1)) == (85.0, 90.0)  # epoch 1, plain keys
    assert (PAPER_CODE.value(squad, em), PAPER_CODE.value(squad, f1)) == (81.5, 89.5)  # epochs 2 and 3
    # an epoch without the variant falls back to the plain key
    del squad.epochs[1]["dev"]["exact@paper_code"]
    squad.epochs[1]["dev"]["exact"] = 83.0
    assert PAPER_CODE.value(squad, em) == 83.0


def test_selection_rules_std_ddof():
    from dynrank.report.selection import PAPER_CODE, STANDARD

    xs = [1.0, 2.0, 3.0, 4.0]
    assert math.isclose(STANDARD.std(xs), math.sqrt(5 / 3))    # sum of squares 5, / (n - 1)
    assert math.isclose(PAPER_CODE.std(xs), math.sqrt(5 / 4))  # / n, as numpy.std
    assert STANDARD.std([1.0]) is None and PAPER_CODE.std([1.0]) is None


def test_report_protocols_from_the_same_files(tmp_path):
    """One store, three reports: --protocol standard and paper_code read the same per-epoch histories
    differently (epoch choice and ddof); auto follows the protocol the runs were trained under."""
    store = tmp_path / "store"
    vals = {1: (0.70, 0.60), 2: (0.66, 0.62), 3: (0.74, 0.58)}  # per seed: (before, after pruning ended)
    for s, (before, after) in vals.items():
        _write_run(store, "roberta_base", "cola", "dora", "r8", s, None, "matthews", protocol="paper_code",
                   epochs=_epochs({"matthews": before}, {"matthews": after}), pruning_end_step=20)
    cells = {}
    for protocol in ("standard", "paper_code", "auto"):
        out = tmp_path / protocol
        assert report.main(["--store", str(store), "--out", str(out), "--tables", "table2", "--no-figures",
                            "--protocol", protocol]) == 0
        cells[protocol] = {(r["row"], r["column"]): r for r in csv_rows(out / "table2.csv")}["r8 dora", "cola"]
        text = (out / "table2.md").read_text()
        rule = "paper_code" if protocol != "standard" else "standard"
        assert f"selection `{rule}`" in text and f"selection (--protocol {protocol}" in text
        assert f"selection `{'standard' if rule == 'paper_code' else 'paper_code'}`" not in text
    std = [100 * b for b, _ in vals.values()]
    paper = [100 * a for _, a in vals.values()]
    assert math.isclose(float(cells["standard"]["mean"]), sum(std) / 3)
    assert math.isclose(float(cells["standard"]["std"]), statistics.stdev(std))
    assert math.isclose(float(cells["paper_code"]["mean"]), sum(paper) / 3)
    assert math.isclose(float(cells["paper_code"]["std"]), statistics.pstdev(paper))
    assert cells["auto"] == cells["paper_code"] and cells["auto"]["selection"] == "paper_code"


def test_report_reads_the_protocol_files(tmp_path, monkeypatch):
    """conf/protocol/<name>.yaml's best_epoch, metric_max and std_ddof are the report's rule: the standard file edited
    to the authors' values (after_pruning, per_metric, ddof 0) turns --protocol standard's cell into paper_code's."""
    from omegaconf import OmegaConf

    from dynrank.config import CONF_DIR
    from dynrank.report import selection

    assert selection.RULES == selection.load_rules(CONF_DIR / "protocol")
    edited = OmegaConf.load(CONF_DIR / "protocol" / "standard.yaml")
    edited.best_epoch, edited.metric_max, edited.std_ddof = "after_pruning", "per_metric", 0
    (tmp_path / "protocol").mkdir()
    OmegaConf.save(edited, tmp_path / "protocol" / "standard.yaml")
    rule = selection.load_rules(tmp_path / "protocol")["standard"]
    assert (rule.best_epoch, rule.metric_max, rule.ddof) == ("after_pruning", "per_metric", 0)

    store = tmp_path / "store"
    vals = {1: (0.70, 0.60), 2: (0.66, 0.62), 3: (0.74, 0.58)}  # per seed: (before, after pruning ended)
    for s, (before, after) in vals.items():
        _write_run(store, "roberta_base", "cola", "dora", "r8", s, None, "matthews",
                   epochs=_epochs({"matthews": before}, {"matthews": after}), pruning_end_step=20)

    def cell():
        out = tmp_path / "out"
        assert report.main(["--store", str(store), "--out", str(out), "--tables", "table2", "--no-figures",
                            "--protocol", "standard"]) == 0
        text = (out / "table2.md").read_text()
        return {(r["row"], r["column"]): r for r in csv_rows(out / "table2.csv")}["r8 dora", "cola"], text

    before, text = cell()
    assert math.isclose(float(before["mean"]), 100 * (0.70 + 0.66 + 0.74) / 3) and "(ddof=1)" in text
    monkeypatch.setitem(selection.RULES, "standard", rule)
    after, text = cell()
    paper = [100 * a for _, a in vals.values()]
    assert math.isclose(float(after["mean"]), sum(paper) / 3)
    assert math.isclose(float(after["std"]), statistics.pstdev(paper))
    assert "each metric's own maximum over the epochs after pruning ended" in text and "(ddof=0, numpy.std)" in text


# --- learning rates ------------------------------------------------------------------------------------------
LRS = (2e-4, 4e-4, 8e-4)


def _plant_grid(store, task="cola", method="lora", values=None):
    """3 rates x 3 seeds; the middle rate has the best mean, the largest rate the single best run."""
    values = values or {2e-4: (0.50, 0.52, 0.54), 4e-4: (0.60, 0.61, 0.62), 8e-4: (0.70, 0.40, 0.45)}
    for lr, vs in values.items():
        for s, v in enumerate(vs, 1):
            _write_run(store, "tiny", task, method, "r8", s, {"matthews": v}, "matthews", lr=lr)
    return values


def test_select_lr_picks_the_planted_best_rate(tmp_path, capsys):
    store, out = tmp_path / "store", tmp_path / "tables"
    values = _plant_grid(store)
    _write_run(store, "tiny", "cola", "full", "r8", 1, {"matthews": 0.3}, "matthews", lr=2e-5)  # one rate
    assert report.main(["--store", str(store), "--out", str(out), "--select-lr", "--model", "tiny"]) == 0
    printed = capsys.readouterr().out
    assert "## tiny/cola/lora-r8" in printed and "tiny/cola/full-r8" not in printed  # only cells with a grid
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in printed.splitlines()
            if re.match(r"\| [0-9]e-4 \|", ln)}
    for lr, tag in zip(LRS, ("2e-4", "4e-4", "8e-4")):
        m, sd = mean_std([100 * v for v in values[lr]])
        assert rows[tag] == [f"{m:.2f} ± {sd:.2f}", "3", "*" if tag == "4e-4" else ""]
    assert "ties: the smaller rate" in printed
    assert (out / "lr_search.md").read_text() in printed
    grid = csv_rows(out / "lr_search.csv")
    assert [(float(r["lr"]), r["chosen"], r["n"]) for r in grid] == [(2e-4, "0", "3"), (4e-4, "1", "3"),
                                                                     (8e-4, "0", "3")]
    # the tables use the chosen rate's runs and say so: marker, notes, CSV columns
    assert report.main(["--store", str(store), "--out", str(out), "--model", "tiny", "--tables", "table2",
                        "--no-figures"]) == 0
    header, md = md_table(out / "table2.md")
    col = header.index("CoLA")
    m, sd = mean_std([100 * v for v in values[4e-4]])
    assert md["r8", "lora", "ours"][col] == f"{m:.2f} ± {sd:.2f} (n=3)†‡"
    assert md["r8", "full", "ours"][col] == "30.00 (n=1)†"  # fixed rate: no ‡
    text = (out / "table2.md").read_text()
    assert "Here: 1 tuned, 1 fixed (metric cells with runs)." in text and "tuned: r8 lora: cola 4e-4 (of 3)." in text
    by = {(r["row"], r["column"]): r for r in csv_rows(out / "table2.csv")}
    assert (by["r8 lora", "cola"]["lr"], by["r8 lora", "cola"]["lr_source"], by["r8 lora", "cola"]["n_lrs"]) == \
        ("4e-4", "tuned", "3")
    assert (by["r8 full", "cola"]["lr"], by["r8 full", "cola"]["lr_source"]) == ("2e-5", "fixed")
    assert by["r8 lora", "rte"]["lr_source"] == ""  # no runs
    assert "$^\\ddagger$" in (out / "table2.tex").read_text()


def test_select_lr_tie_goes_to_the_smaller_rate(tmp_path):
    from dynrank.report import choose_all, index_runs
    from dynrank.results import load_runs

    store = tmp_path / "store"
    _plant_grid(store, values={2e-4: (0.50, 0.50, 0.50), 4e-4: (0.60, 0.55, 0.65), 8e-4: (0.65, 0.60, 0.55)})
    (c,) = choose_all(index_runs(load_runs(store))).values()
    assert c.tuned and c.lr == 4e-4 and [p.mean for p in c.grid][1] == c.grid[2].mean


def test_cell_uses_the_config_hash_with_the_most_seeds_and_says_so(tmp_path, caplog):
    """By distinct seeds, not files: 2 seeds at 3 rates (6 files) do not outnumber 3 seeds (issue 28: the cell took
    the smaller group); the warning and the table's note name the hash used."""
    store, out = tmp_path / "store", tmp_path / "tables"
    for s in (1, 2, 3):
        _write_run(store, "tiny", "cola", "lora", "r8", s, {"matthews": 0.5}, "matthews", config_hash="aaaa0000")
    for lr in LRS:
        for s in (1, 2):
            _write_run(store, "tiny", "cola", "lora", "r8", s, {"matthews": 0.9}, "matthews", config_hash="bbbb1111",
                       lr=lr)
    with caplog.at_level("WARNING", logger="dynrank"):
        assert report.main(["--store", str(store), "--out", str(out), "--model", "tiny", "--tables", "table2",
                            "--no-figures"]) == 0
    assert "tiny/cola/lora-r8: runs under several config hashes; using aaaa0000 (3 seeds), leaving out " \
           "bbbb1111 (2 seeds)" in caplog.text
    r = {(r["row"], r["column"]): r for r in csv_rows(out / "table2.csv")}["r8 lora", "cola"]
    assert (r["n"], float(r["mean"]), r["lr_source"]) == ("3", 50.0, "fixed")
    assert "- config hash: a cell's runs are those of one config hash, the one with the most seeds (ties: the hash " \
           "the current code gives their config); cells with runs under several here: r8 lora cola: using " \
           "aaaa0000 (3 seeds), leaving out bbbb1111 (2 seeds)." in (out / "table2.md").read_text()


def _recorded(method: str, seed: int = 1) -> tuple[dict, str]:
    """A tiny CoLA run's recorded config (resolved, as results files hold it) and its config hash."""
    from omegaconf import OmegaConf

    from dynrank.config import config_hash

    cfg = compose(["model=tiny", "task=cola", f"method={method}", f"seed={seed}"])
    return OmegaConf.to_container(cfg, resolve=True), config_hash(cfg)


@pytest.mark.parametrize("method", ["lora", "dylora"])  # dylora: method.seed is ${seed}
def test_the_current_codes_hash_of_a_recorded_config(method):
    from dynrank.report.selection import current_hash

    config, h = _recorded(method, seed=3)
    assert current_hash(RunResults(method=method, config=config, schedule=None)) == h
    config["train"]["epochs"] += 1
    assert current_hash(RunResults(method=method, config=config)) != h
    assert current_hash(RunResults(method=method, config={"train": {"lr": 1e-3}})) is None  # older files


def test_equal_seeds_go_to_the_hash_the_current_code_gives(tmp_path, caplog):
    """Two hashes of two seeds each: the one the current code gives the runs' config, not the first by name."""
    store, out = tmp_path / "store", tmp_path / "tables"
    config, h = _recorded("lora")
    for s in (1, 2):
        _write_run(store, "tiny", "cola", "lora", "r8", s, {"matthews": 0.5}, "matthews", config_hash="00000000",
                   config=config)  # what older code hashed otherwise
        _write_run(store, "tiny", "cola", "lora", "r8", s, {"matthews": 0.7}, "matthews", config_hash=h,
                   config=config)
    with caplog.at_level("WARNING", logger="dynrank"):
        assert report.main(["--store", str(store), "--out", str(out), "--model", "tiny", "--tables", "table2",
                            "--no-figures"]) == 0
    assert f"using {h} (2 seeds, the current code's hash), leaving out 00000000 (2 seeds)" in caplog.text
    r = {(r["row"], r["column"]): r for r in csv_rows(out / "table2.csv")}["r8 lora", "cola"]
    assert (r["n"], float(r["mean"])) == ("2", 70.0)


def test_a_stray_copy_is_a_duplicate_never_a_run(tmp_path, capsys, caplog):
    """``seed1_old.json`` beside ``seed1.json``, a copy in a subdirectory, and a second file of one run (same
    hash, rate and seed: an old-layout file) are never read: each a warning naming it, and ``--strict`` exit 2
    (issue 28: the copy replaced seed 1, and --strict exited 0)."""
    store, out = tmp_path / "store", tmp_path / "tables"
    values = [0.30, 0.32, 0.34, 0.31, 0.33]
    own = [_write_run(store, "tiny", "cola", "lora", "r8", s, {"matthews": v}, "matthews")
           for s, v in enumerate(values, 1)]
    stray = json.loads(own[0].read_text())
    stray["best"]["dev"]["matthews"] = stray["epochs"][0]["dev"]["matthews"] = 0.99
    copies = [own[0].parent / "seed1_old.json", own[0].parent / "old" / "seed1.json"]
    for c in copies:
        c.parent.mkdir(exist_ok=True)
        c.write_text(json.dumps(stray))
    second = json.loads(own[1].read_text())
    second["run_id"] = "tiny/cola/lora-r8/seed2"  # the old layout's own path: a run of the same identity
    (store / "tiny/cola/lora-r8/seed2.json").write_text(json.dumps(second))
    args = ["--store", str(store), "--out", str(out), "--model", "tiny", "--tables", "table2", "--no-figures"]
    with caplog.at_level("WARNING", logger="dynrank"):
        assert report.main([*args, "--strict"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"error: 3 results files in {store} the report cannot use (unreadable, or a duplicate "
                          "of a run; --strict): ") and not out.exists()
    rid = "tiny/cola/lora-r8/lr4e-4-0123abcd/seed1"
    for c in copies:
        assert f"skipping {c}: a duplicate of run {rid}, whose own file is {store / rid}.json" in caplog.messages
    assert f"skipping {store / 'tiny/cola/lora-r8/seed2.json'}: a duplicate of {own[1]} (the same config hash, " \
           "learning rate and seed)" in caplog.messages
    assert report.main(args) == 0
    r = {(r["row"], r["column"]): r for r in csv_rows(out / "table2.csv")}["r8 lora", "cola"]
    assert (r["n"], float(r["mean"]), float(r["std"])) == ("5", *map(pytest.approx, mean_std([100 * v for v in values])))


def test_rates_are_compared_over_the_seeds_they_share(tmp_path, caplog):
    """A killed search left one rate with seed 4 alone: it is compared with the others on seed 4, not its one
    run's number against their five-seed mean (issue 28: the one-seed rate won)."""
    from dynrank.report import choose_all, index_runs
    from dynrank.report.lr_search import lr_grids, lr_search_markdown
    from dynrank.results import load_runs

    store = tmp_path / "store"
    for s, v in enumerate([0.60, 0.62, 0.61, 0.70, 0.66], 1):
        _write_run(store, "tiny", "cola", "lora", "r8", s, {"matthews": v}, "matthews", lr=4e-4)
    _write_run(store, "tiny", "cola", "lora", "r8", 4, {"matthews": 0.68}, "matthews", lr=8e-4)  # > 0.638, < 0.70
    with caplog.at_level("WARNING", logger="dynrank"):
        choices = choose_all(index_runs(load_runs(store)))
    (c,) = choices.values()
    assert c.tuned and c.lr == 4e-4 and c.compared == (4,) and [int(r.seed) for r in c.runs] == [1, 2, 3, 4, 5]
    assert "tiny/cola/lora-r8: learning rates compared over the 1 seed every rate has (4): 4e-4 has 5, 8e-4 has 1" \
        in caplog.messages
    assert "chosen lr 4e-4 of 2, compared over seeds 4 (those every rate has)" in lr_search_markdown(lr_grids(choices))


def test_rates_that_share_no_seed_are_not_compared(tmp_path, caplog):
    from dynrank.report import choose_all, index_runs
    from dynrank.results import load_runs

    store = tmp_path / "store"
    _write_run(store, "tiny", "cola", "lora", "r8", 1, {"matthews": 0.5}, "matthews", lr=4e-4)
    _write_run(store, "tiny", "cola", "lora", "r8", 2, {"matthews": 0.9}, "matthews", lr=8e-4)
    _write_run(store, "tiny", "cola", "lora", "r8", 3, {"matthews": 0.9}, "matthews", lr=8e-4)
    with caplog.at_level("WARNING", logger="dynrank"):
        assert choose_all(index_runs(load_runs(store))) == {}
    assert "tiny/cola/lora-r8: no learning rate chosen: no seed has runs at every learning rate (4e-4: seed 1; " \
           "8e-4: seeds 2, 3), so the rates cannot be compared; train the missing seeds; the cell is left out" \
        in caplog.messages


def test_a_malformed_rate_is_skipped_with_a_warning(tmp_path, caplog):
    """A hand-edited ``"lr": "abc"`` formed a rate of its own and won (issue 28)."""
    from dynrank.report import choose_all, index_runs
    from dynrank.results import load_runs

    store = tmp_path / "store"
    _plant_grid(store)
    bad = _write_run(store, "tiny", "cola", "lora", "r8", 4, {"matthews": 0.99}, "matthews", lr=8e-4)
    bad.write_text(bad.read_text().replace('"lr": 0.0008', '"lr": "abc"'))
    skipped = []
    with caplog.at_level("WARNING", logger="dynrank"):
        (c,) = choose_all(index_runs(load_runs(store, skipped))).values()
    assert c.lr == 4e-4 and [p.lr for p in c.grid] == list(LRS)
    assert skipped == [(bad, 'its learning rate is "abc", not a number > 0')]
    assert f'skipping {bad}: its learning rate is "abc", not a number > 0' in caplog.messages


def test_old_results_files_still_load(tmp_path):
    """Files without lr, config_hash, protocol and pruning_end_step, in the old layout: standard, fixed lr
    (read from the resolved config when there, else unknown)."""
    store, out = tmp_path / "store", tmp_path / "tables"
    _write_old_run(store, "tiny", "cola", "lora", "r8", 1, {"matthews": 0.40}, "matthews",
                   config={"train": {"lr": 0.002}})
    _write_old_run(store, "tiny", "cola", "lora", "r8", 2, {"matthews": 0.50}, "matthews",
                   config={"train": {"lr": 0.002}})
    _write_old_run(store, "tiny", "rte", "lora", "r8", 1, {"accuracy": 0.6}, "accuracy")
    assert report.main(["--store", str(store), "--out", str(out), "--model", "tiny", "--tables", "table2",
                        "--no-figures"]) == 0
    by = {(r["row"], r["column"]): r for r in csv_rows(out / "table2.csv")}
    c = by["r8 lora", "cola"]
    assert (c["n"], c["lr"], c["lr_source"], c["selection"]) == ("2", "2e-3", "fixed", "standard")
    assert math.isclose(float(c["mean"]), 45.0) and math.isclose(float(c["std"]), statistics.stdev([40.0, 50.0]))
    assert (by["r8 lora", "rte"]["mean"], by["r8 lora", "rte"]["lr"]) == ("60.0", "?")


# --- bad results files ---------------------------------------------------------------------------------------
def _bad_store(store) -> list[Path]:
    _write_run(store, "tiny", "cola", "lora", "r8", 1, {"matthews": 0.5}, "matthews")
    good = _write_run(store, "tiny", "cola", "lora", "r8", 2, {"matthews": 0.6}, "matthews")
    cell = good.parent
    bad = {"seed3.json": good.read_text()[:40], "seed4.json": "not json at all", "seed5.json": "{}",
           "seed6.json": json.dumps({"model": "tiny", "task": "cola", "seed": 6}), "seed7.json": "[1, 2]"}
    for name, text in bad.items():
        (cell / name).write_text(text)
    return [cell / n for n in bad]


def test_bad_results_files_are_skipped_with_a_warning_naming_them(tmp_path, caplog):
    store, out = tmp_path / "store", tmp_path / "tables"
    bad = _bad_store(store)
    from dynrank.results import load_runs

    skipped = []
    with caplog.at_level("WARNING", logger="dynrank"):
        runs = load_runs(store, skipped)
    assert sorted(r.seed for r in runs) == [1, 2]
    assert [p for p, _ in skipped] == bad
    lines = [r.getMessage() for r in caplog.records]
    for p in bad:
        (line,) = [ln for ln in lines if str(p) in ln]
        assert "\n" not in line
    assert any(str(bad[2]) in ln and "empty" in ln for ln in lines)
    assert any(str(bad[3]) in ln and "no schema, method, budget" in ln for ln in lines)
    assert report.main(["--store", str(store), "--out", str(out), "--model", "tiny", "--tables", "table2",
                        "--no-figures"]) == 0
    assert {(r["row"], r["column"]): r for r in csv_rows(out / "table2.csv")}["r8 lora", "cola"]["n"] == "2"


def test_an_out_dir_that_cannot_be_created_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "tables"
    assert report.main(["--store", str(tmp_path / "store"), "--out", str(out), "--no-figures"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: --out={out} cannot be a directory: {tmp_path / 'file'} "
                                                    "is a file; set --out to a directory"]


@pytest.mark.slow
def test_strict_report_exits_2_naming_the_bad_files(tmp_path):
    store, out = tmp_path / "store", tmp_path / "tables"
    bad = _bad_store(store)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = lambda *a: subprocess.run([sys.executable, "-m", "dynrank.report", "--store", str(store), "--out",  # noqa
                                     str(out), "--model", "tiny", "--no-figures", *a], cwd=tmp_path, env=env,
                                    capture_output=True, text=True, timeout=120)
    p = run("--strict")
    assert p.returncode == 2, p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == len(bad) + 1 and err[-1].startswith("error: 5 results files")
    assert all(str(b) in err[-1] for b in bad) and not out.exists()  # nothing written
    for b, line in zip(bad, err):
        assert line.startswith(f"warning: skipping {b}: ")
    p = run()
    assert p.returncode == 0 and (out / "table2.md").is_file() and p.stderr.count("warning: skipping") == 5


# --- end to end on the tiny model: lr_search=true, then --select-lr ---------------------------------------------
@pytest.mark.slow
def test_lr_search_end_to_end_tiny(tmp_path, capsys):
    from conftest import cli, tiny_overrides

    from dynrank.config import lr_grid, lr_tag

    over = tiny_overrides(tmp_path, "task=cola", "method=lora")
    grid = lr_grid(compose(over))
    assert len(grid) >= 2
    p = cli(["-m", *over, "lr_search=true", "seeds=[1,2]", f"hydra.sweep.dir={tmp_path / 'multirun'}"], tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    files = sorted((tmp_path / "store").rglob("seed*.json"))
    got = sorted((json.loads(f.read_text())["lr"], json.loads(f.read_text())["seed"]) for f in files)
    assert got == sorted((lr, s) for lr in grid for s in (1, 2))  # one results file per rate x seed
    dirs = sorted(r.parent.relative_to(tmp_path / "multirun") for r in (tmp_path / "multirun").rglob("results.json"))
    assert [(d.parts[3].rsplit("-", 1)[0], d.parts[4]) for d in dirs] == sorted(
        (f"lr{lr_tag(lr)}", f"seed{s}") for lr in grid for s in (1, 2))  # and one run directory
    assert len({json.loads(f.read_text())["config_hash"] for f in files}) == 1  # the hash leaves the lr out
    out = tmp_path / "tables"
    assert report.main(["--select-lr", "--model", "tiny", "--store", str(tmp_path / "store"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = [ln for ln in printed.splitlines() if re.match(r"\| [0-9.]+e-[0-9]+ \|", ln)]
    assert [ln.split("|")[1].strip() for ln in rows] == [lr_tag(lr) for lr in sorted(grid)]
    assert all(ln.split("|")[3].strip() == "2" for ln in rows)  # 2 seeds per rate
    assert sum(ln.split("|")[4].strip() == "*" for ln in rows) == 1


def test_a_results_file_with_a_seed_that_is_no_integer_is_named(tmp_path, capsys, caplog):
    store, out = tmp_path / "store", tmp_path / "tables"
    _write_run(store, "tiny", "cola", "lora", "r8", 1, {"matthews": 0.5}, "matthews")
    bad = _write_run(store, "tiny", "cola", "lora", "r8", 2, {"matthews": 0.6}, "matthews")
    bad.write_text(bad.read_text().replace('"seed": 2', '"seed": "one"'))
    args = ["--store", str(store), "--out", str(out), "--model", "tiny", "--tables", "table2", "--no-figures"]
    with caplog.at_level("WARNING", logger="dynrank"):
        assert report.main([*args, "--strict"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: 1 results file in {store} the report cannot use (unreadable, or a duplicate of a run; --strict): "
        f"{bad}; fix or remove them, or drop --strict to skip them")
    assert not out.exists()
    assert f'skipping {bad}: not a results file: seed is "one", not an integer' in caplog.messages
    assert report.main(args) == 0
    assert {(r["row"], r["column"]): r for r in csv_rows(out / "table2.csv")}["r8 lora", "cola"]["n"] == "1"


def test_without_model_the_tables_are_of_the_models_in_the_store(tmp_path, capsys):
    """`make tables` after MiniLM runs only: MiniLM's tables (not empty RoBERTa ones), its paper column a reference
    without a difference; beside RoBERTa runs, RoBERTa's tables and a note naming the other model."""
    store, out = tmp_path / "store", tmp_path / "tables"
    for s in (1, 2):
        _write_run(store, "minilm", "cola", "dora", "r8", s, {"matthews": 0.5 + s / 100}, "matthews")
    args = ["--store", str(store), "--out", str(out), "--tables", "table2,table4", "--no-figures"]
    assert report.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("table2 (minilm): 2/108 cells with runs") and lines[1].startswith("table4 (bart_base)")
    assert not any(line.startswith("note:") for line in lines)
    header, md = md_table(out / "table2.md")
    paper = paper_value("table2_glue.csv", {"budget": "high", "method": "dora"}, "cola")
    assert md["r8", "dora", "ours"][header.index("CoLA")] == "51.50 ± 0.71 (n=2)†"
    assert md["r8", "dora", "paper"][header.index("CoLA")] == paper and ("r8", "dora", "Δ") not in md
    assert "the paper's numbers on roberta_base, a reference only (no Δ: ours are of minilm)" in \
        (out / "table2.md").read_text()

    _write_run(store, "roberta_base", "cola", "dora", "r8", 1, {"matthews": 0.6}, "matthews")
    assert report.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("table2 (roberta_base): 2/108 cells with runs")
    assert "note: tables of bart_base, roberta_base (--model not given); the store also holds runs of minilm: " \
           "--model <model> tabulates them" in lines
    header, md = md_table(out / "table2.md")
    assert md["r8", "dora", "Δ"][header.index("CoLA")] == f"{60 - float(paper):+.2f}"


# --- paired comparisons with dora, and the paper's claims (hand-made results, known answers) -----------------
T975 = {2: 4.302653, 3: 3.182446, 4: 2.776445}  # Student t quantile 0.975 by degrees of freedom (printed tables)


def test_paired_interval_and_marks_by_hand():
    from dynrank.report.paired import CONTRADICTED, SUPPORTED, UNRESOLVED, paired, text

    # seeds 1-3 paired (4 and 5 only on one side); d = 0.5, 1.0, 0.5: mean 2/3, sd sqrt(1/12), se sd/sqrt(3)
    p = paired({1: 1.0, 2: 2.0, 3: 3.0, 4: 9.0}, {1: 0.5, 2: 1.0, 3: 2.5, 5: 7.0}, paper=0.3)
    half = T975[2] * math.sqrt(1 / 12) / math.sqrt(3)
    assert (p.n, p.seeds, p.unpaired) == (3, (1, 2, 3), (4, 5))
    assert p.mean == pytest.approx(2 / 3) and (p.low, p.high) == pytest.approx((2 / 3 - half, 2 / 3 + half), abs=1e-5)
    assert p.mark == UNRESOLVED  # [-0.05, 1.38] contains 0
    # d = 1.0, 1.2, 0.8, 1.1, 0.9: mean 1, sd sqrt(0.025): [0.804, 1.196], clear of 0
    d = [1.0, 1.2, 0.8, 1.1, 0.9]
    half = T975[4] * math.sqrt(0.025) / math.sqrt(5)
    p = paired({s: 5 + x for s, x in enumerate(d, 1)}, {s: 5.0 for s in range(1, 6)}, paper=0.84)
    assert (p.low, p.high) == pytest.approx((1 - half, 1 + half), abs=1e-5) and p.mark == SUPPORTED
    behind = paired({s: 5 + x for s, x in enumerate(d, 1)}, {s: 5.0 for s in range(1, 6)}, paper=-0.5)
    assert behind.mark == CONTRADICTED
    assert text(p) == f"+1.00 [{1 - half:+.2f}, {1 + half:+.2f}] (n=5) ✓"
    # one pair: a difference, no interval, not resolved; no pair: nothing; no paper difference: no mark
    one = paired({1: 3.0, 2: 4.0}, {1: 2.0}, paper=1.0)
    assert (one.n, one.mean, one.low, one.high, one.mark) == (1, 1.0, None, None, UNRESOLVED)
    assert text(one) == "+1.00 (n=1, no interval) ~"
    none = paired({1: 3.0}, {2: 2.0}, paper=1.0)
    assert (none.n, none.mean, none.mark, none.unpaired, text(none)) == (0, None, "", (1, 2), "—")
    assert paired({1: 3.0, 2: 5.0}, {1: 2.0, 2: 2.0}, paper=None).mark == ""


def _paired_store(store):
    """Table 2 r8: lora and dora on CoLA (5 seeds, lora behind by d), STS-B (lora ahead), RTE (one seed each),
    MRPC (lora seeds 1-3, dora seeds 2-4)."""
    d = [0.010, 0.012, 0.008, 0.011, 0.009]
    for s in range(1, 6):
        _write_run(store, "roberta_base", "cola", "dora", "r8", s, {"matthews": 0.60 + d[s - 1]}, "matthews", lr=2e-3)
        _write_run(store, "roberta_base", "cola", "lora", "r8", s, {"matthews": 0.60}, "matthews")
        _write_run(store, "roberta_base", "stsb", "dora", "r8", s, {"pearson": 0.90}, "pearson", lr=3e-3)
        _write_run(store, "roberta_base", "stsb", "lora", "r8", s, {"pearson": 0.90 + d[s - 1]}, "pearson")
    _write_run(store, "roberta_base", "rte", "dora", "r8", 1, {"accuracy": 0.70}, "accuracy", lr=2e-3)
    _write_run(store, "roberta_base", "rte", "lora", "r8", 1, {"accuracy": 0.72}, "accuracy")
    for s, v in ((1, 0.80), (2, 0.81), (3, 0.85)):
        _write_run(store, "roberta_base", "mrpc", "lora", "r8", s, {"accuracy": v}, "accuracy")
    for s, v in ((2, 0.80), (3, 0.86), (4, 0.90)):
        _write_run(store, "roberta_base", "mrpc", "dora", "r8", s, {"accuracy": v}, "accuracy", lr=2.5e-3)


def test_report_pairs_each_method_with_dora_by_seed(tmp_path):
    store, out = tmp_path / "store", tmp_path / "tables"
    _paired_store(store)
    assert report.main(["--store", str(store), "--out", str(out), "--tables", "table2", "--no-figures"]) == 0
    rows = {(r["row"], r["column"]): r for r in csv_rows(out / "table2_paired.csv")}
    paper = lambda m, t: float(paper_value("table2_glue.csv", {"budget": "high", "method": m}, t))  # noqa: E731
    # CoLA: lora - dora = -1.0, -1.2, -0.8, -1.1, -0.9 (x100): mean -1, t interval, the paper's -1.81: supported
    half = T975[4] * math.sqrt(0.025) / math.sqrt(5)
    cola = rows["r8 lora", "cola"]
    assert (cola["reference"], cola["n"], cola["seeds"], cola["mark"]) == ("r8 dora", "5", "1 2 3 4 5", "supported")
    assert float(cola["mean_diff"]) == pytest.approx(-1.0)
    assert (float(cola["low"]), float(cola["high"])) == pytest.approx((-1 - half, -1 + half), abs=1e-5)
    assert float(cola["paper_diff"]) == pytest.approx(paper("lora", "cola") - paper("dora", "cola"))  # -1.81
    # STS-B: lora ahead by the same margins, the paper has it behind (-0.43): contradicted
    assert rows["r8 lora", "stsb"]["mark"] == "contradicted" and float(rows["r8 lora", "stsb"]["mean_diff"]) > 0
    # RTE: one seed each: +2.00, no interval, not resolved
    rte = rows["r8 lora", "rte"]
    assert (rte["n"], float(rte["mean_diff"]), rte["low"], rte["high"], rte["mark"]) == \
        ("1", pytest.approx(2.0), "", "", "not resolved")
    # MRPC: seeds 2 and 3 pair (1 and 4 are unpaired): d = +1, -1 -> mean 0, interval +-t_1 * sqrt(2) / sqrt(2)
    mrpc = rows["r8 lora", "mrpc"]
    assert (mrpc["n"], mrpc["seeds"], mrpc["unpaired"]) == ("2", "2 3", "1 4")
    assert float(mrpc["mean_diff"]) == pytest.approx(0.0, abs=1e-9) and mrpc["mark"] == "not resolved"
    assert float(mrpc["high"]) == pytest.approx(12.706205 * math.sqrt(2) / math.sqrt(2), abs=1e-4)
    # no runs: nothing to test; the reference row itself is not compared; avg needs all 8 tasks
    assert rows["r8 adalora", "cola"]["n"] == "0" and rows["r8 adalora", "cola"]["mark"] == ""
    assert not any(k[0] == "r8 dora" for k in rows) and rows["r8 lora", "avg"]["n"] == "0"
    # the Markdown section: ours minus dora, and the paper's difference beside it
    text = (out / "table2.md").read_text()
    section = tmp_path / "paired.md"
    section.write_text(text.split("### table2: paired with the paper's method", 1)[1])
    header, md = md_table(section)
    cola, rte = header.index("CoLA"), header.index("RTE")
    assert md["r8", "lora", "ours - r8 dora"][cola] == f"-1.00 [{-1 - half:+.2f}, {-1 + half:+.2f}] (n=5) ✓"
    assert md["r8", "lora", "paper - r8 dora"][cola] == "-1.81"
    assert md["r8", "lora", "ours - r8 dora"][rte] == "+2.00 (n=1, no interval) ~"
    assert "paired by seed over the seeds both have" in text and "one pair: no interval" in text
    assert "$\\surd$" in (out / "table2.tex").read_text()


def test_claims_section_by_hand(tmp_path):
    """dora ahead of lora by 1.0, 1.2, 0.8 (x100) on every GLUE task, seeds 1-3: the GLUE-average and CoLA claims
    at r=8 are supported (lora is the only, hence best, baseline); AdaLoRA, r=2, SQuAD, XSum: no runs."""
    store, out = tmp_path / "store", tmp_path / "tables"
    glue = {"rte": "accuracy", "mrpc": "accuracy", "stsb": "pearson", "cola": "matthews", "sst2": "accuracy",
            "qnli": "accuracy", "qqp": "accuracy", "mnli": "accuracy"}
    for task, metric in glue.items():
        for s, d in ((1, 0.010), (2, 0.012), (3, 0.008)):
            _write_run(store, "roberta_base", task, "lora", "r8", s, {metric: 0.7}, metric)
            _write_run(store, "roberta_base", task, "dora", "r8", s, {metric: 0.7 + d}, metric, lr=2e-3)
    assert report.main(["--store", str(store), "--out", str(out), "--no-figures"]) == 0
    claims = csv_rows(out / "claims.csv")
    by = {(r["claim"], r["baseline"], r["column"]): r for r in claims}
    half = T975[2] * 0.2 / math.sqrt(3)
    avg = by["GLUE average: DoRA over LoRA by 0.84 (r=8)", "lora", "avg"]
    assert (avg["n"], float(avg["mean_diff"]), float(avg["paper_diff"]), avg["verdict"]) == \
        ("3", pytest.approx(1.0), 0.84, "supported")
    assert (float(avg["low"]), float(avg["high"])) == pytest.approx((1 - half, 1 + half), abs=1e-5)
    cola = by["CoLA: DoRA over the best baseline by 1.48 (r=8)", "lora", "cola"]
    assert (cola["mark"], cola["verdict"], float(cola["paper_diff"])) == ("supported", "supported", 1.48)
    assert by["GLUE average: DoRA over AdaLoRA by 0.59 (r=8)", "adalora", "avg"]["verdict"] == ""
    r2 = by["GLUE average: DoRA over LoRA by 0.88 (r=2)", "lora", "avg"]
    assert (r2["n"], r2["mark"], r2["verdict"]) == ("0", "", "")  # no r2 runs at all
    squad = [r for r in claims if r["claim"].startswith("SQuAD: DoRA over every PEFT baseline (r=8)")]
    assert {r["baseline"] for r in squad} == {"bitfit", "houlsby", "pfeiffer", "lora", "adalora"}
    assert all(r["n"] == "0" and r["verdict"] == "" for r in squad)
    # paper differences of a PEFT claim: the paper's own table (dora - baseline, per metric)
    sq = {(r["baseline"], r["column"]): float(r["paper_diff"]) for r in squad}
    assert sq["lora", "squad_v1_em"] == pytest.approx(85.97 - 85.13)
    text = (out / "claims.md").read_text()
    assert "| GLUE average: DoRA over LoRA by 0.84 (r=8) | lora | avg |" in text and "supported" in text
    assert "# The paper's claims, tested on our runs" in (out / "index.md").read_text()


def test_claims_verdict_over_several_comparisons():
    from dynrank.report.paired import CONTRADICTED, SUPPORTED, UNRESOLVED, verdict

    assert verdict([SUPPORTED, SUPPORTED]) == SUPPORTED
    assert verdict([SUPPORTED, UNRESOLVED]) == UNRESOLVED
    assert verdict([SUPPORTED, ""]) == UNRESOLVED  # a baseline without runs: not every comparison made
    assert verdict([SUPPORTED, CONTRADICTED, ""]) == CONTRADICTED
    assert verdict(["", ""]) == ""


# --- the authors' per-metric learning rate (paper_code) ---------------------------------------------------------
def _squad_grid(store):
    """dora SQuAD v1.1 under paper_code at two rates: EM is best at 3e-3, F1 (the selection metric) at 5e-3."""
    for lr, (em, f1) in ((3e-3, (86.0, 90.0)), (5e-3, (85.0, 92.0))):
        for s in (1, 2):
            _write_run(store, "roberta_base", "squad_v1", "dora", "r8", s,
                       {"exact": em + s / 10, "f1": f1 + s / 10}, "f1", lr=lr, protocol="paper_code")


def test_per_metric_learning_rate_under_paper_code(tmp_path, capsys):
    store = tmp_path / "store"
    _squad_grid(store)
    cells = {}
    for choice in ("joint", "per_metric"):
        out = tmp_path / choice
        assert report.main(["--store", str(store), "--out", str(out), "--tables", "table3", "--no-figures",
                            "--lr-choice", choice]) == 0
        cells[choice] = {r["column"]: r for r in csv_rows(out / "table3.csv") if r["row"] == "r8 dora"}
        text = (out / "table3.md").read_text()
        assert f"(--lr-choice {choice})" in text
    joint, per = cells["joint"], cells["per_metric"]
    assert (joint["squad_v1_em"]["lr"], joint["squad_v1_f1"]["lr"]) == ("5e-3", "5e-3")  # one rate, by F1
    assert float(joint["squad_v1_em"]["mean"]) == pytest.approx(85.15)
    assert (per["squad_v1_em"]["lr"], per["squad_v1_f1"]["lr"]) == ("3e-3", "5e-3")      # each its own best
    assert float(per["squad_v1_em"]["mean"]) == pytest.approx(86.15)
    # --select-lr shows both choices
    assert report.main(["--store", str(store), "--out", str(tmp_path / "sel"), "--select-lr"]) == 0
    printed = capsys.readouterr().out
    assert "per metric: EM 3e-3, F1 5e-3; joint: 5e-3" in printed
    assert "| 3e-3 | 86.15 * | 90.15 |  |" in printed and "| 5e-3 | 85.15 | 92.15 * | * |" in printed


def test_per_metric_learning_rate_needs_paper_code(tmp_path, capsys):
    assert report.main(["--store", str(tmp_path), "--out", str(tmp_path / "t"), "--protocol", "standard",
                        "--lr-choice", "per_metric"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --lr-choice per_metric") and "--protocol paper_code" in err[0]


# --- issue 30: per-cell SQuAD ceilings, the paper's own best baseline, degenerate differences ------------------------
def test_zero_variance_difference_is_degenerate_no_verdict():
    from dynrank.report.paired import CONTRADICTED, DEGENERATE, SUPPORTED, UNRESOLVED, paired, text, verdict

    # every seed the same difference (both runs stuck at constant values): sd 0, scipy's interval is nan
    p = paired({s: 0.70 for s in range(1, 6)}, {s: 0.69 for s in range(1, 6)}, paper=1.48)
    assert (p.n, p.low, p.high, p.mark) == (5, None, None, DEGENERATE) and p.mean == pytest.approx(0.01)
    assert text(p) == "+0.01 (n=5, zero variance: no interval) ∅"
    assert paired({1: 1.0, 2: 1.0}, {1: 1.0, 2: 1.0}, paper=None).mark == DEGENERATE  # no difference at all, too
    # float noise of two metric reads is still zero variance; a real spread is not
    assert paired({1: 0.61, 2: 0.71}, {1: 0.60, 2: 0.70}, paper=1.0).mark == DEGENERATE
    assert paired({1: 0.62, 2: 0.71}, {1: 0.60, 2: 0.70}, paper=1.0).mark == UNRESOLVED
    # in a claim it gives no verdict (unless another comparison contradicts the claim)
    assert verdict([SUPPORTED, DEGENERATE]) == DEGENERATE and verdict([DEGENERATE]) == DEGENERATE
    assert verdict([DEGENERATE, CONTRADICTED]) == CONTRADICTED


def _squad_run(store, method, seed, exact, f1, batch=None, ceiling=None, paper_code=True, lr=1e-3):
    """A SQuAD v1.1 run under paper_code: the official scores, the authors' (exact - 2, f1 - 2), and, where given,
    the scoring batch and a perfect model's score there (what tasks/squad.py stores since issue 30)."""
    dev = {"exact": exact, "f1": f1, "n_eval": 10570}
    if paper_code:
        dev.update({"exact@paper_code": exact - 2, "f1@paper_code": f1 - 2})
        if ceiling is not None:
            dev.update({"ceiling_exact@paper_code": ceiling[0], "ceiling_f1@paper_code": ceiling[1],
                        "batch@paper_code": batch})
    p = _write_run(store, "roberta_base", "squad_v1", method, "r8", seed, dev, "f1", lr=lr, protocol="paper_code")
    res = json.loads(p.read_text())
    res["config"]["train"]["batch_size"] = batch
    p.write_text(json.dumps(res))


def test_report_on_a_hand_made_store_shows_ceilings_paper_best_baseline_and_degenerate(tmp_path):
    store, out = tmp_path / "store", tmp_path / "tables"
    # Table 3 under paper_code: dora (batch 16) and full (batch 48) read the authors' scores; bitfit stored them too
    # but its number was made by the official script; lora's runs predate the stored ceiling
    for s in (1, 2):
        _squad_run(store, "dora", s, 86.0 + s, 92.0 + s, batch=16, ceiling=(96.96, 96.97), lr=5e-3)
        _squad_run(store, "full", s, 85.0 + s, 91.0 + s, batch=48, ceiling=(94.49, 94.57), lr=1.5e-5)
        _squad_run(store, "bitfit", s, 82.0 + s, 89.0 + s, batch=16, ceiling=(96.96, 96.97))
        _squad_run(store, "lora", s, 84.0 + s, 90.0 + s, batch=16)
    # Table 2 CoLA r8: dylora (not in the paper) ahead of every paper row; lora behind dora by exactly 1.0 (x100) on
    # every seed (a degenerate difference); bitfit behind by a spread
    for s in (1, 2, 3):
        _write_run(store, "roberta_base", "cola", "dora", "r8", s, {"matthews": 0.60 + s / 100}, "matthews", lr=2e-3)
        _write_run(store, "roberta_base", "cola", "lora", "r8", s, {"matthews": 0.59 + s / 100}, "matthews")
        _write_run(store, "roberta_base", "cola", "bitfit", "r8", s, {"matthews": 0.50 + s * s / 100}, "matthews",
                   lr=1e-3)
        _write_run(store, "roberta_base", "cola", "dylora", "r8", s, {"matthews": 0.70}, "matthews")
    assert report.main(["--store", str(store), "--out", str(out), "--tables", "table2,table3", "--no-figures"]) == 0

    # (1) each cell read as its row's number was made, its ceiling per cell in the CSV and the note
    rows = {(r["row"], r["column"]): r for r in csv_rows(out / "table3.csv")}
    assert float(rows["r8 dora", "squad_v1_em"]["mean"]) == pytest.approx(85.5)     # the authors' (exact - 2)
    assert float(rows["r8 bitfit", "squad_v1_em"]["mean"]) == pytest.approx(83.5)   # the official exact
    assert (rows["r8 dora", "squad_v1_em"]["scoring"], rows["r8 dora", "squad_v1_em"]["ceiling"]) == \
        ("the authors' loop batch 16", "96.96")
    assert (rows["r8 full", "squad_v1_f1"]["scoring"], rows["r8 full", "squad_v1_f1"]["ceiling"]) == \
        ("the authors' loop batch 48", "94.57")
    assert (rows["r8 bitfit", "squad_v1_em"]["scoring"], rows["r8 bitfit", "squad_v1_em"]["ceiling"]) == \
        ("official script", "100.0")
    assert rows["r8 lora", "squad_v1_em"]["ceiling"] == "" and rows["r8 adalora", "squad_v1_em"]["scoring"] == ""
    note = next(line for line in (out / "table3.md").read_text().splitlines()
                if line.startswith("- perfect-model ceiling per cell"))
    assert "SQuAD v1.1 EM 96.96 (the authors' loop, batch 16): r8 dora" in note
    assert "SQuAD v1.1 EM 94.49 (the authors' loop, batch 48): r8 full" in note
    assert "SQuAD v1.1 F1 100.00 (official script): r8 bitfit" in note
    assert "SQuAD v1.1 EM not stored (runs from before issue 30) (the authors' loop, batch 16): r8 lora" in note
    assert "EM 96.96 / F1 96.97 there on v1.1 dev" not in (out / "table3.md").read_text()  # one number for all

    # (2) the CoLA claim's best baseline: the best of the paper's own rows (lora, not dylora); dylora beside as an
    # extra, outside the verdict
    cola = "CoLA: DoRA over the best baseline by 1.48 (r=8)"
    claims = [r for r in csv_rows(out / "claims.csv") if r["claim"] == cola]
    assert [(r["baseline"], r["extra"]) for r in claims] == [("lora", ""), ("dylora", "yes")]
    assert claims[1]["paper_diff"] == "" and claims[1]["mark"] == "" and claims[1]["verdict"] == ""
    assert "| dylora (extra) | cola |" in (out / "claims.md").read_text()

    # (3) lora - dora is -1.00 on every seed: degenerate, no interval, no verdict
    assert (claims[0]["mark"], claims[0]["low"], claims[0]["verdict"]) == ("degenerate", "", "degenerate")
    paired = {(r["row"], r["column"]): r for r in csv_rows(out / "table2_paired.csv")}
    assert paired["r8 lora", "cola"]["mark"] == "degenerate" and paired["r8 bitfit", "cola"]["mark"] != "degenerate"
    md = (out / "table2.md").read_text()
    assert "-1.00 (n=3, zero variance: no interval) ∅" in md and "∅ degenerate" in md
    assert "$\\emptyset$" in (out / "table2.tex").read_text()
