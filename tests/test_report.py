"""Tables from runs: presets compose, a tiny multirun through `make reproduce-tables`' script, and the report's
Markdown / CSV / LaTeX cells checked against means and sample stds computed here from the results JSON files."""
from __future__ import annotations

import csv
import json
import math
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CONF, ROOT, SHARED_GLUE, compose, make_glue
from dynrank import report

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
    ("table2_r8", "roberta_base", "r8", {"task": 8, "method": 7, "seed": 5}),
    ("table2_r2", "roberta_base", "r2", {"task": 8, "method": 5, "seed": 5}),
    ("table3_r8", "roberta_base", "r8", {"task": 2, "method": 7, "seed": 5}),
    ("table3_r2", "roberta_base", "r2", {"task": 2, "method": 5, "seed": 5}),
    ("table4_r8", "bart_base", "r8", {"task": 1, "method": 4, "seed": 5}),
    ("table4_r2", "bart_base", "r2", {"task": 1, "method": 3, "seed": 5}),
    ("table5_dem", "roberta_base", "r8", {"task": 3, "seed": 5}),
    ("table5_nodem", "roberta_base", "r8", {"task": 3, "seed": 5}),
    ("table6", "roberta_base", "r2", {"task": 3, "method.initial_budget": 5, "seed": 5}),
    ("table9", "roberta_base", "r8", {"method": 7, "seed": 1}),
])
def test_presets_name_existing_configs_and_the_papers_grid(name, model, budget, grid):
    cfg, params = _grid(name)
    assert {k: len(v) for k, v in params.items()} == grid
    assert cfg.model.id == model and cfg.budget.name == budget
    assert params["seed"] == [str(s) for s in range(1, grid["seed"] + 1)]  # the paper's seeds 1-5
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
def _write_run(store, model, task, method, budget, seed, dev, metric, variant=None, **extra):
    cell = f"{method}-{budget}" + (f"-{variant}" if variant else "")
    res = {"model": model, "task": task, "method": method, "budget": budget, "variant": variant, "seed": seed,
           "metric": metric, "best": {"epoch": 1, "dev": dev}, "params": {"adapter": 1_330_000},
           "time_per_epoch_s": [60.0], "peak_gpu_memory_mib": None, "device": "cpu", **extra}
    p = Path(store) / model / task / cell / f"seed{seed}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(res))


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
         "task=cola,sst2", "method=full,lora", "seed=1,2,3",  # replace the smoke preset's sweep values
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
            assert md["r8", method, "Δ"][col] == f"{m - float(paper):+.2f}"
            c = csv_by[f"r8 {method}", task]
            assert c["n"] == "3" and c["seeds"] == "1 2 3" and c["variant"] == ""
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
    with pytest.raises(SystemExit):
        reproduce_tables.main(["--tables", "table7"])
