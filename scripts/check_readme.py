#!/usr/bin/env python
"""Re-measure the numbers README.md states and print each claim beside its measurement (``make check-readme``).

    python scripts/check_readme.py            # the fast part (~30 s of CPU, no training): CI or a hook may run it
    python scripts/check_readme.py --slow     # also what trains: make demo, the MiniLM dora example, the smoke
                                              # preset, make test-fast's time (~10 min on 2 idle CPU cores)

Each claim is read from README.md by a pattern (a claim the README no longer states is reported as missing), then
measured as the README says it was. One line per claim: ``ok`` where the measurement agrees within the claim's
tolerance (exact for counts; 0.005 for an accuracy, the third digit moving across CPU kernels; 0.1 for a projection),
``DIFFERS`` where it does not, ``info`` for wall times (the machine's load decides them: never a failure). Exit
status 1 if any claim differs or is missing, so a change that moves a number is caught before it lands; then
update the README's sentence (with its date, device and commit) or find what moved it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
README = ROOT / "README.md"

import yaml  # noqa: E402

from dynrank.config import choices  # noqa: E402
GLUE = ROOT.parent / "shared" / "data" / "glue"


@dataclass
class Claim:
    name: str
    pattern: str          # a regex over README.md; its groups are the claimed numbers
    tolerance: float | None  # None: informative only (a wall time)
    slow: bool = False


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def _minutes(text: str) -> float:
    """'1 min 48 s', '25 s', '~2 min' -> seconds."""
    m = re.fullmatch(r"~?(?:(\d+) min)?\s*(?:(\d+) s)?", text.strip())
    return 60 * int(m.group(1) or 0) + int(m.group(2) or 0)


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _run(cmd: list[str], cwd=ROOT) -> tuple[str, float, float]:
    """Run ``cmd``; its output, wall seconds and CPU seconds (its children's user + system time)."""
    before, t = os.times(), time.monotonic()
    p = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    wall, after = time.monotonic() - t, os.times()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {p.returncode}): {(p.stderr or p.stdout)[-2000:]}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return p.stdout + p.stderr, wall, cpu


# --- the measurements ------------------------------------------------------------------------------------------

def majority_class() -> float:
    """SST-2 dev accuracy of the majority class of the demo's 6,000 training sentences."""
    from dynrank.data import glue
    from dynrank.metrics.glue import majority_class as majority

    train = [r["label"] for r in glue.load_split("sst2", "train", str(GLUE))[:6000]]
    dev = [r["label"] for r in glue.load_split("sst2", "validation", str(GLUE))]
    return majority("sst2", train, dev)["accuracy"]


METHODS = choices("method")


def _each(value, scale: float = 1.0):
    """A measurement as the list ``compare`` takes (an exception stays one)."""
    return value if isinstance(value, Exception) else [scale * value]


def _pick(value, *keys):
    """The measurement's ``keys`` as the list ``compare`` takes (an exception stays one)."""
    return value if isinstance(value, Exception) else [value[k] for k in keys]


def param_counts() -> dict[tuple[str, str], int]:
    """Trainable adapter parameters of each method on the RoBERTa-base architecture (meta device: no weights)."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from dynrank import methods
    from dynrank.config import compose

    out = {}
    for name in METHODS:
        for budget in ("r8", "r2"):
            cfg = compose([f"method={name}", f"budget={budget}", "model=roberta_base", "task=cola"])
            method = methods.build(cfg, "roberta")
            model_cfg = RobertaConfig(num_labels=2, max_position_embeddings=514, type_vocab_size=1)
            try:
                with torch.device("meta"):
                    method.wrap(RobertaForSequenceClassification(model_cfg))
            except (NotImplementedError, RuntimeError):  # a method that computes on its weights at wrap time
                method = methods.build(cfg, "roberta")
                method.wrap(RobertaForSequenceClassification(model_cfg))
            c = method.param_counts()
            out[name, budget] = c["trainable"] if name == "full" else c["adapter"]
    return out


def gpu_hours(*overrides: str) -> float:
    out, _, _ = _run([sys.executable, "scripts/estimate.py", "experiment=table2_r8", *overrides])
    return float(re.search(r"^\| \*\*total\*\* \|.*\*\*([\d.]+)\*\* \|\s*$", out, re.M).group(1))


def demo(tmp: Path) -> dict:
    """``make demo`` in a fresh store and run directory: its accuracy and majority class, wall and CPU time."""
    out, wall, cpu = _run([sys.executable, "scripts/demo.py", f"results.store={tmp / 'demo'}",
                           f"hydra.run.dir={tmp / 'demo-run'}"])
    m = re.search(r"demo: sst2 dev accuracy ([\d.]+) vs majority class ([\d.]+)", out)
    return {"accuracy": float(m.group(1)), "majority": float(m.group(2)), "wall": wall, "cpu": cpu}


DORA_EXAMPLE = ["task=sst2", "method=dora", "model=minilm", f"data.dir={GLUE}", "data.max_train_samples=6000",
                "train.epochs=1", "train.batch_size=16", "train.lr=5e-3", "train.export=true"]


def dora_example(tmp: Path) -> dict:
    _, wall, cpu = _run([sys.executable, "-m", "dynrank.train", *DORA_EXAMPLE, f"results.store={tmp / 'dora'}",
                         f"hydra.run.dir={tmp / 'dora-run'}", "train.progress=false"])
    res = json.loads((tmp / "dora-run" / "results.json").read_text())
    return {"accuracy": res["final"]["dev"]["accuracy"], "wall": wall, "cpu": cpu}


SMOKE_METHODS = str(yaml.safe_load((ROOT / "conf" / "experiment" / "smoke.yaml").read_text())  # what it trains
                    ["hydra"]["sweeper"]["params"]["method"]).split(",")


def smoke(tmp: Path) -> dict:
    """The smoke preset in a fresh store: SST-2 dev accuracy (x100) mean and std over its seeds, per method."""
    _, wall, cpu = _run([sys.executable, "scripts/reproduce_tables.py", "--tables", "smoke", "--no-report",
                         f"results.store={tmp / 'smoke'}", f"hydra.sweep.dir={tmp / 'smoke-multirun'}"])
    by = {}
    for f in (tmp / "smoke").rglob("seed*.json"):
        r = json.loads(f.read_text())
        by.setdefault(r["method"], []).append(100 * r["best"]["dev"]["accuracy"])
    out = {m: (statistics.mean(v), statistics.stdev(v)) for m, v in by.items()}
    return {**out, "wall": wall, "cpu": cpu}


def test_fast() -> dict:
    _, wall, cpu = _run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "not slow", "-q"])
    return {"wall": wall, "cpu": cpu}


# --- claims: what the README says, and what to compare it with -----------------------------------------------

def _measured(fn, *args):
    """``fn(*args)``, or the exception it raised (reported as FAILED beside its claims; the others still run)."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001  (a measurement that fails is a line of the report, not the end of it)
        print(f"  {getattr(fn, '__name__', fn)} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return e


def fast_claims() -> list[tuple[str, str, object, float | None]]:
    """(claim, pattern, measured value(s), tolerance) of the part that trains nothing."""
    rows = []
    majority = _measured(majority_class)
    rows.append(("make demo's majority class (quick start)", r"learns SST-2 \([\d.]+ vs ([\d.]+)\)",
                 _each(majority), 0.005))
    rows.append(("make demo's majority class (Models)", r"demo: sst2 dev accuracy [\d.]+ vs majority class\s+([\d.]+)",
                 _each(majority), 0.0005))
    rows.append(("smoke: majority class", r"against ([\d.]+) for the majority class", _each(_measured(_smoke_majority), 100),
                 0.05))
    counts = _measured(param_counts)
    for name, budget in [(m, b) for m in METHODS for b in ("r8", "r2")]:
        col = r"([\d,]+)" if budget == "r8" else r"[\d,]+ / [^|]+\| ([\d,]+)"
        if budget == "r2" and name in ("full", "bitfit"):
            continue  # one count: no rank
        rows.append((f"parameters of {name} {budget} (Methods table)", rf"\| `{name}` \|[^|]+\| {col}",
                     counts if isinstance(counts, Exception) else [counts[name, budget]], 0))
    rows.append(("Table 2 r8 GPU-hours (Reproducing the tables)", r"\(Table 2 r8: ([\d.]+) GPU-hours", _each(_measured(gpu_hours)),
                 0.1))
    rows.append(("Table 2 r8 GPU-hours, train.stack=false",
                 r"GPU-hours on one H[0-9]+ with these defaults; ([\d.]+) with",
                 _each(_measured(gpu_hours, "train.stack=false")), 0.1))
    return rows


def _smoke_majority() -> float:
    """The SST-2 dev accuracy of the majority class of the smoke preset's training sentences."""
    from dynrank.config import compose
    from dynrank.data import glue
    from dynrank.metrics.glue import majority_class as majority

    cfg = compose(["experiment=smoke"])
    train = [r["label"] for r in glue.load_split("sst2", "train", str(GLUE))[:cfg.data.max_train_samples]]
    dev = [r["label"] for r in glue.load_split("sst2", "validation", str(GLUE))[:cfg.data.max_eval_samples]]
    return majority("sst2", train, dev)["accuracy"]


def _shown(what: str, value):
    """Say a slow measurement as soon as it is made (the comparison comes at the end)."""
    print(f"  {what}: {value if isinstance(value, Exception) else json.dumps(value)}", file=sys.stderr, flush=True)
    return value


def slow_claims(tmp: Path) -> list[tuple[str, str, object, float | None]]:
    rows = []
    d = _shown("make demo", _measured(demo, tmp))
    rows.append(("make demo's accuracy (quick start)", r"learns SST-2 \(([\d.]+) vs", _pick(d, "accuracy"), 0.005))
    rows.append(("make demo's accuracy (Models)", r"demo: sst2 dev accuracy ([\d.]+) vs majority", _pick(d, "accuracy"),
                 0.005))
    rows.append(("make demo's wall time (Models)", r"majority class\s+0\.\d+`, [\d a-z]+? of CPU, ([\d a-z]+?) wall",
                 _pick(d, "wall", "cpu"), None))
    e = _shown("dora example", _measured(dora_example, tmp))
    rows.append(("MiniLM dora example's accuracy", r"the paper's method on the same data, measured [^:]+: dev accuracy\s+#?\s*([\d.]+)", _pick(e, "accuracy"),
                 0.005))
    rows.append(("MiniLM dora example's wall time", r"the paper's method on the same data, measured [^:]+: dev accuracy\s+#?\s*[\d.]+ in ([\d a-z]+?) wall",
                 _pick(e, "wall", "cpu"), None))
    s = _shown("smoke preset", _measured(smoke, tmp))
    for m in SMOKE_METHODS:
        rows.append((f"smoke: {m} mean, std", rf"([\d.]+) ± ([\d.]+)\s+\({m}\)", s if isinstance(s, Exception) else list(s[m]), 0.05))
    rows.append(("smoke: wall time", r"keeps its runs[\s\S]*?measured [^:]+: ([\d a-z]+?) wall", _pick(s, "wall", "cpu"), None))
    t = _shown("make test-fast", _measured(test_fast))
    rows.append(("make test-fast's time (quick start)", r"make test-fast +# the tests not marked slow, ~(\d+ s) of CPU",
                 _pick(t, "wall", "cpu"), None))
    rows.append(("make test-fast's time (Tests)", r"no training, no subprocess \(~(\d+ s) of CPU\)", _pick(t, "wall", "cpu"), None))
    return rows


def compare(text: str, rows) -> int:
    """Print each claim beside its measurement; the number of claims that differ or are missing."""
    bad = 0
    for name, pattern, measured, tol in rows:
        m = re.search(pattern, text)
        if isinstance(measured, Exception):
            print(f"FAILED   {name}: could not measure ({type(measured).__name__}: {str(measured)[:200]})")
            bad += 1
            continue
        if m is None:
            print(f"MISSING  {name}: the README no longer says it (pattern {pattern!r})")
            bad += 1
            continue
        claimed = [_minutes(g) if tol is None else _num(g) for g in m.groups()]
        shown = ", ".join(f"{v:.4g}" if isinstance(v, float) else f"{v:,}" for v in measured)
        if tol is None:  # a time: measured = [wall, CPU] seconds
            print(f"info     {name}: README {', '.join(m.groups())} ({claimed[0]:.0f} s) | measured "
                  f"{_clock(measured[0])} ({measured[0]:.0f} s wall, {measured[1]:.0f} s CPU)")
            continue
        ok = all(math.isclose(c, v, abs_tol=tol + 1e-9) for c, v in zip(claimed, measured))
        bad += not ok
        print(f"{'ok' if ok else 'DIFFERS':8s} {name}: README {', '.join(m.groups())} | measured {shown}")
    return bad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python scripts/check_readme.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--slow", action="store_true", help="also train: make demo, the dora example, the smoke preset, "
                                                        "make test-fast")
    args = ap.parse_args(argv)
    text = README.read_text()
    rows = fast_claims()
    if args.slow:
        with tempfile.TemporaryDirectory(prefix="check_readme-") as tmp:
            rows += slow_claims(Path(tmp))
    bad = compare(text, rows)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    print(f"measured {time.strftime('%Y-%m-%d', time.gmtime())} at commit {commit.strip() or '?'} on "
          f"{os.cpu_count()} CPU cores; {bad} claim(s) differ or are missing")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
