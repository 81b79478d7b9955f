"""What a run says and leaves: --help, TensorBoard scalars and steps, the rank-map figure."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, compose, tiny_overrides
from dynrank import runlog
from dynrank.config import choices


def scalars(tb_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar event in ``tb_dir``, all files, as written (no purging of repeated steps)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tb_dir), purge_orphaned_data=False)
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


@pytest.mark.slow
def test_help_lists_tasks_methods_models_and_common_keys(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "dynrank.train", "--help"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "task: cola, mnli, mrpc, qnli, qqp, rte, squad_v1, squad_v2, sst2, stsb, xsum" in lines
    assert f"method: {', '.join(choices('method'))}" in lines
    assert any(line.startswith("model: ") and "minilm" in line and "roberta_base" in line for line in lines)
    for key in ("data.dir=", "train.epochs=", "train.export=true", "train.resume=false", "model.path="):
        assert key in p.stdout
    assert "== Config ==" not in p.stdout and len(lines) < 50  # not Hydra's dump of the whole config


def test_trim_cuts_later_steps_and_empty_files(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path))
    for step in range(1, 7):
        w.add_scalar("train/loss", 1.0 / step, step)
    w.close()
    runlog.trim(tmp_path, 3)
    assert scalars(tmp_path) == {"train/loss": [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]}
    runlog.trim(tmp_path, 0)
    assert not list(tmp_path.glob("events.out.tfevents.*"))


@pytest.mark.slow
@pytest.mark.parametrize("method, final", [("dora", 96), ("adalora", 24)])
def test_budget_scalars_and_rank_map_figure(tmp_path, monkeypatch, method, final):
    """DoRA: 12 matrices x r0 = 12 components, budget 144 -> 96 (r = 8); AdaLoRA logs its rank budget the same way."""
    from dynrank import rankmap
    from dynrank.driver import run

    drawn, draw = {}, rankmap.draw_rank_map

    def capture(rank_map, path, title=None, vmax=None):
        drawn.update(title=title, vmax=vmax)
        return draw(rank_map, path, title, vmax)
    monkeypatch.setattr(rankmap, "draw_rank_map", capture)
    monkeypatch.setattr(f"dynrank.methods.{method}.draw_rank_map", capture, raising=False)
    budget = "r8" if method == "dora" else "r2"
    res = run(compose(tiny_overrides(tmp_path, f"method={method}", f"budget={budget}", "train.log_every=1",
                                     "data.max_train_samples=256")), tmp_path / "run")
    tb = scalars(tmp_path / "run" / "tb")
    steps = res["epochs"][-1]["step"]
    budgets = tb[f"{method}/budget"]
    assert [s for s, _ in budgets] == list(range(1, steps + 1))
    assert budgets[0][1] == 12 * (12 if method == "dora" else 3) and budgets[-1][1] == final
    assert all(a >= b for (_, a), (_, b) in zip(budgets, budgets[1:]))  # the schedule only lowers it
    surviving = res["method_summary"]["surviving"] if method == "dora" else res["method_summary"]["budget"]["surviving"]
    assert tb[f"{method}/surviving"][-1][1] == surviving
    if method == "dora":
        assert all(v > 0 for _, v in tb["dora/dem"])
    # the figure names the run, and its scale runs from 0 to r0
    assert drawn["title"].startswith(f"{'DoRA' if method == 'dora' else 'AdaLoRA'} on tiny, cola, budget {budget}, seed 1")
    assert drawn["vmax"] == (12 if method == "dora" else 3)
    fig = rankmap.heatmap(res["method_summary"]["rank_map"]["counts"], res["method_summary"]["rank_map"]["rows"],
                          res["method_summary"]["rank_map"]["cols"], vmax=drawn["vmax"])
    image, bar = fig.axes[0].images[0], fig.axes[1]
    assert image.norm.vmin == 0 and image.norm.vmax == drawn["vmax"]
    ticks = [t for t in bar.get_yticks() if 0 <= t <= drawn["vmax"]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert json.loads((tmp_path / "run" / "rank_map.json").read_text())["rank_map"] == res["method_summary"]["rank_map"]


def test_progress_bar_only_on_a_terminal(tmp_path, monkeypatch):
    """train.progress defaults to whether stderr is a terminal: a bar redrawn several times a second would flood
    a log file that stderr goes to (Slurm, nohup, 2>&1); train.progress=true still asks for it anywhere."""

    class Terminal:
        def isatty(self):
            return True

    over = [o for o in tiny_overrides(tmp_path) if not o.startswith("train.progress=")]
    assert compose(over).train.progress is False  # pytest's stderr: not a terminal
    assert compose([*over, "train.progress=true"]).train.progress is True
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert compose(over).train.progress is True


def test_a_pretrained_model_loads_quietly_and_says_once_what_it_lacks(capfd, caplog):
    """transformers' load report ("classifier MISSING", a table on every load) and its progress bar are off; one
    log line per process and model says the head is new."""
    from transformers import AutoModelForSequenceClassification

    from dynrank import models

    path = str(ROOT.parent / "shared/models/all-MiniLM-L6-v2")
    mcfg = compose(["model=minilm", f"model.path={path}"]).model
    models._reported.discard(path)
    with caplog.at_level("INFO", logger="dynrank"):
        for _ in range(2):
            models.load_model(mcfg, AutoModelForSequenceClassification, num_labels=2)
    out, err = capfd.readouterr()
    assert out == err == ""
    assert caplog.messages == [f"loaded {path}; new task head: classifier.bias, classifier.weight"]


def test_what_the_readme_writes_is_ignored_by_git():
    """Run directories, the results store and tables, the smoke and demo outputs, merged models and a killed
    merge's leftovers never show up as files to commit."""
    paths = ["outputs/x/train.log", "multirun/x/train.log", "results/runs/x.json", "results/tables/table2.md",
             "results/smoke/tables/table2.md", "results/demo/x.json", "merged/model.safetensors",
             ".merged.merging-123/model.safetensors", "models/.big.merging-7/config.json"]
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    p = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True)
    assert p.stdout.split() == paths


@pytest.mark.slow
def test_a_multi_seed_command_logs_in_each_run_directory_and_makes_no_other(tmp_path):
    """``seeds=[2,3]`` created ``.../seed1/`` holding only ``.hydra/`` and the log of seeds 2 and 3 (a directory
    named after a run never trained), and the jobs of ``-m 'seeds=[1,2],[3]'`` shared it. Now each run directory
    the command trains has its own log and ``.hydra/`` (its own config), as a run alone's, and no other is made."""
    from conftest import cli

    over = tiny_overrides(tmp_path, "data.max_train_samples=16", "data.max_eval_samples=16", "train.batch_size=8")
    p = cli([*over, "seeds=[2,3]"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    lr_dir = next((tmp_path / "outputs").rglob("seed2")).parent
    assert sorted(d.name for d in lr_dir.iterdir()) == ["seed2", "seed3"]
    for seed in (2, 3):
        run = lr_dir / f"seed{seed}"
        assert sorted(f.name for f in run.iterdir() if f.name.startswith((".hydra", "train"))) == [".hydra",
                                                                                                 "train.log"]
        assert f"| seed 2 lr 0.0004 | 2 steps" in (run / "train.log").read_text()  # (the command's log: both runs')
        assert compose_seed(run) == seed
    p = cli(["-m", *over, "seeds=[1,2],[3]", f"hydra.sweep.dir={tmp_path / 'multirun'}"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    runs = {d.name: d for d in (tmp_path / "multirun").rglob("seed*") if d.is_dir()}
    assert sorted(runs) == ["seed1", "seed2", "seed3"]
    for seed, run in runs.items():
        logs = sorted(f.name for f in run.glob("train*.log"))
        assert logs == ["train.log"], (seed, logs)  # one attempt each: no job wrote in another's run directory
        text = (run / "train.log").read_text()
        assert f"seed {seed[4:]} lr" in text and ("seed 3 lr" in text) == (seed == "seed3"), seed
        assert compose_seed(run) == int(seed[4:])


def compose_seed(run_dir) -> int:
    """The seed of the config in a run directory's ``.hydra/config.yaml``."""
    from omegaconf import OmegaConf

    return int(OmegaConf.load(run_dir / ".hydra/config.yaml").seed)
