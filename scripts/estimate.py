"""Projected GPU time of a preset (or of any run), from what was measured on the device; no GPU needed.

    python scripts/estimate.py experiment=table2_r8 [task=cola] [method=lora,dora] [key=value ...] [--json out.json]
    python scripts/estimate.py --all-presets [--json out.json]   # benchmarks/README.md, "Projected time per preset"
    python scripts/estimate.py --record                          # re-record benchmarks/*_lengths.json from ../shared

The arguments are the Hydra overrides the training CLI takes. A preset's sweep (``hydra.sweeper.params``) is
expanded as Hydra's basic sweeper does (command-line values replace the preset's; the first key is the
outermost loop), every job is composed, and ``seeds=[...]`` / ``lr_search=true`` jobs count as several runs
(``dynrank.train.runs_of``; the table presets: one job per cell, its five seeds). Per run: steps = ceil(n /
batch) x epochs, and tokens after dynamic padding (each batch is padded to its longest sequence, rounded up to
``train.pad_to_multiple``): the expectation over random batches of the recorded length distribution, in closed form.

Time of one job on the measured device, with the defaults on a GPU (bf16, CUDA graphs, the job's runs stacked):
  * a training step of k runs stacked (each with its own batch, padded together to the longest of them) costs
    a_k + b_k x (padded tokens); a (ms per step) and b (us per token) are fitted per method through the two
    settings of the newest ``benchmarks/bench-*.json`` (graph-bf16, median step: L=128 at batch 32 per run and
    CoLA's real lengths at batch 16 per run), for 1 and 5 runs stacked, linear in k between them. The model is
    checked against the newest stacked training run measured end to end (``benchmarks/seeds-*.json``), and the
    check is printed;
  * evaluation after every epoch: the dev set in length-sorted batches of ``train.eval_batch_size``, every run at
    once, at 1/3 of a training step's cost (forward only); XSum adds beam search, an assumed cost per decoding step;
  * Table 3 and 4, where ``benchmarks/seq2seq-*.json`` exists (``scripts/bench_seq2seq.py`` on the GPU; newest, or
    ``--seq2seq FILE``): SQuAD's and XSum's steps at their measured cost per padded token (SQuAD's windows, XSum's
    length model: source + summary, each padded per batch) for the runs stacked, and XSum's evaluation at the
    measured beam-search documents per second instead of the assumptions above;
  * a checkpoint of every run after every epoch: trainable parameters + AdamW state (12 bytes per parameter) at
    1 GB/s;
  * per job, start-up and graph capture: measured in the same stacked run.
Full fine-tuning does not stack: its runs train side by side in one process, each step its own (a graphed
RoBERTa-base step keeps the GPU busy). An 8-GPU node (``hydra/launcher=ray_1gpu``): jobs start
in sweep order as GPUs free up. Every assumption is printed beside the tables.
"""
from __future__ import annotations

import argparse
import bisect
import heapq
import itertools
import json
import math
import random
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH = ROOT / "benchmarks"
SHARED = ROOT.parent / "shared"

from dynrank.config.command_line import sweep_jobs  # noqa: E402
from dynrank.config.presets import PAPER  # noqa: E402
from dynrank.errors import ConfigError, DynrankError  # noqa: E402

PRESETS = [*PAPER, "lr_search"]
EVAL_FRACTION = 1 / 3      # an evaluation batch costs a third of a training step (forward only)
CKPT_BYTES_PER_PARAM = 12  # fp32 parameter + AdamW's two moments
CKPT_GB_PER_S = 1.0
GEN_MS_PER_STEP = 25.0     # XSum: one beam-search decoding step of an eval batch (assumed, not measured)
HEAD_PARAMS = 592_130      # RoBERTa's classification head (768x768 + 768x2, biases), trained by every method
GPUS = 8

# --- the data: recorded length distributions, official sizes where the data is not here ----------------
# Recorded with the all-MiniLM-L6-v2 WordPiece tokenizer (a stand-in for RoBERTa's BPE, which is not
# available offline), pairs as sentence pairs, truncated at 512; the estimate clips them to task.max_length.
# Official sizes: GLUE (Wang et al., 2019, Table 1; exact counts from the nyu-mll/glue dataset card),
# SQuAD v1.1 / v2.0 (Rajpurkar et al. 2016 / 2018; rajpurkar/squad(_v2) cards), XSum (Narayan et al., 2018;
# EdinburghNLP/xsum card).
GLUE = {  # task: (train lengths, n train or None = the recorded count, [(dev lengths, n or None)], note)
    "cola": ("cola_train", None, [("cola_dev", None)], None),
    "sst2": ("sst2_train", None, [("sst2_dev", None)], None),
    "mrpc": ("mrpc_train", None, [("mrpc_dev", None)], None),
    "stsb": ("stsb_train", None, [("stsb_dev", None)], None),
    "rte": ("rte_train", None, [("rte_dev", None)], None),
    "qnli": ("qnli_dev", 104_743, [("qnli_dev", None)],
             "QNLI train: official size 104,743; lengths assumed = QNLI dev's (train not here)"),
    "qqp": ("stsb_train", 363_846, [("stsb_dev", 40_430)],
            "QQP: official sizes 363,846 / 40,430; lengths assumed = STS-B's (short sentence pairs; QQP not here)"),
    "mnli": ("mrpc_train", 392_702, [("mrpc_dev", 9_815), ("mrpc_dev", 9_832)],
             "MNLI: official sizes 392,702 / 9,815 + 9,832; lengths assumed = MRPC's (longer than MNLI's "
             "~22 + 11 words: errs high; MNLI not here)"),
}
SQUAD = {"squad_v1": (87_599, 10_570), "squad_v2": (130_319, 11_873)}  # questions: train, dev
XSUM = {"train": 204_045, "validation": 11_332, "test": 11_334}

Hist = dict  # length -> count


def load_lengths(name: str) -> Hist:
    """``benchmarks/<name>_lengths.json``: a raw list (``lengths``) or a histogram (``histogram``)."""
    path = BENCH / f"{name}_lengths.json"
    if not path.is_file():
        raise ConfigError(f"{path.relative_to(ROOT)} is missing; run python scripts/estimate.py --record")
    doc = json.loads(path.read_text())
    if "histogram" in doc:
        return {int(k): int(v) for k, v in doc["histogram"].items()}
    hist: Hist = {}
    for n in doc["lengths"]:
        hist[int(n)] = hist.get(int(n), 0) + 1
    return hist


def clip(hist: Hist, max_length: int) -> Hist:
    out: Hist = {}
    for n, c in hist.items():
        out[min(n, max_length)] = out.get(min(n, max_length), 0) + c
    return out


# --- dynamic padding ----------------------------------------------------------------------------------
def padded(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def expected_padded_max(hist: Hist, k: int, multiple: int = 1) -> float:
    """E[padded length of a batch of k examples drawn at random]: sum_L pad(L) (F(L)^k - F(L-)^k)."""
    total, cum, below, out = sum(hist.values()), 0, 0.0, 0.0
    for n in sorted(hist):
        cum += hist[n]
        at = (cum / total) ** k
        out += padded(n, multiple) * (at - below)
        below = at
    return out


def epoch_tokens(hist: Hist, n: int, batch: int, multiple: int = 1) -> float:
    """Padded tokens of one shuffled epoch of n examples: n // batch full batches and the rest."""
    full, rest = divmod(n, batch)
    out = full * batch * expected_padded_max(hist, batch, multiple)
    return out + (rest * expected_padded_max(hist, rest, multiple) if rest else 0.0)


def sorted_batches(hist: Hist, n: int, batch: int, multiple: int = 1) -> tuple[int, float]:
    """(batches, padded tokens) of n examples in length-sorted batches (evaluation), n drawn as quantiles."""
    lengths, cum = sorted(hist), list(itertools.accumulate(hist[k] for k in sorted(hist)))
    total = cum[-1]
    seq = [lengths[bisect.bisect_right(cum, i * total / n)] for i in range(n)]
    tokens = sum(len(seq[i:i + batch]) * padded(seq[min(i + batch, n) - 1], multiple) for i in range(0, n, batch))
    return math.ceil(n / batch), float(tokens)


_PACKED_CACHE: dict = {}


def packed_step_tokens(hist: Hist, k: int, batch: int, samples: int = 200) -> float:
    """E[rows a packed step multiplies] (``train.pack``, dynrank/packing.py): k x bucket(the most real tokens of the
    k runs' batches), each run's batch drawn at random from ``hist``; by simulation (a fixed seed)."""
    from dynrank.packed_batch import bucket

    key = (tuple(sorted(hist.items())), k, batch)  # by content: an id() is reused once its dict is freed
    if key not in _PACKED_CACHE:
        rng = random.Random(0)
        lengths, weights = zip(*sorted(hist.items()))
        cum = list(itertools.accumulate(weights))
        total = 0
        for _ in range(samples):
            most = max(sum(rng.choices(lengths, cum_weights=cum, k=batch)) for _ in range(k))
            total += k * bucket(most)
        _PACKED_CACHE[key] = total / samples
    return _PACKED_CACHE[key]


def real_step_tokens(hist: Hist, k: int, batch: int) -> float:
    """E[real tokens of a step of k runs of ``batch`` examples]."""
    return k * batch * sum(n * c for n, c in hist.items()) / sum(hist.values())


# --- the device: step cost fitted from the bench, start-up and side-by-side from the seeds run ---------
@dataclass
class Rate:
    a_ms: float  # per step
    b_us: float  # per padded token
    source: str

    def time_s(self, steps: float, tokens: float) -> float:
        """Seconds for ``steps`` steps carrying ``tokens`` padded tokens in all."""
        return (steps * self.a_ms + tokens * self.b_us / 1000) / 1000


def newest(pattern: str, keep=lambda doc: True) -> Path:
    """The newest (by its ``date``) of the ``benchmarks/<pattern>`` files whose contents ``keep`` accepts."""
    docs = [(p, json.loads(p.read_text())) for p in BENCH.glob(pattern)]
    files = sorted((d.get("date", ""), str(p)) for p, d in docs if keep(d))
    if not files:
        raise ConfigError(f"no benchmarks/{pattern}: this estimate projects from measurements")
    return Path(files[-1][1])


def step_bench() -> Path:
    """The newest bench with the default path (graph-bf16) measured in both settings (other benches try options)."""
    return newest("bench-*.json", lambda d: {"fixed", "cola"} <= {r.get("setting") for r in d["rows"]
                                                                   if r.get("mode") == "graph-bf16"})


def fit_rates(bench: Path) -> dict[tuple[str, int], Rate]:
    """Per (method, runs stacked), a + b x tokens through (L=128 x 32 per run) and (CoLA lengths x 16 per run, padded as
    bench.py pads: the longest of all the runs' sequences)."""
    doc = json.loads(bench.read_text())
    multiple = int(m.group(1)) if (m := re.search(r"--pad-multiple\s+(\d+)", doc.get("command", ""))) else 8
    cola = load_lengths("cola_train")
    steps: dict[tuple[str, int], dict[str, float]] = {}
    for r in doc["rows"]:
        if r["impl"] == "dynrank" and r["mode"] == "graph-bf16" and "error" not in r:
            steps.setdefault((r["method"], int(r.get("runs", 1))), {})[r["setting"]] = r["median_step_ms"]
    rates = {}
    for (method, k), s in steps.items():
        if not {"fixed", "cola"} <= s.keys():
            continue
        fixed_tokens, cola_tokens = k * 32 * 128, k * 16 * expected_padded_max(cola, k * 16, multiple)
        b = (s["fixed"] - s["cola"]) / (fixed_tokens - cola_tokens)
        rates[method, k] = Rate(s["cola"] - b * cola_tokens, 1000 * b,
                                f"{bench.name}: {k} run(s): {s['fixed']:.2f} ms at {fixed_tokens:,} tokens, "
                                f"{s['cola']:.2f} ms at {cola_tokens:,.0f}")
    if ("lora", 1) not in rates:
        raise ConfigError(f"{bench.name} has no graph-bf16 rows of lora in both settings (fixed, cola)")
    return rates


def _packed_rows(doc: dict) -> list[dict]:
    """A bench's packed rows of the default path (graph-bf16) that time steady steps, with every cut in place (rows
    of ``--ablate`` carry ``without``)."""
    return [r for r in doc["rows"] if r.get("layout") == "packed" and r.get("mode") == "graph-bf16"
            and "error" not in r and r.get("steady") is not False and not r.get("without")]


def packed_benches() -> list[Path]:
    """The benches with packed rows of the default path on real lengths, newest first, on the newest one's GPU."""
    docs = [(d.get("date", ""), p, d) for p in BENCH.glob("bench-*.json")
            if len(_packed_rows(d := json.loads(p.read_text()))) >= 2]
    docs.sort(key=lambda x: (x[0], str(x[1])), reverse=True)
    return [p for _, p, d in docs if d["device"] == docs[0][2]["device"]]


def fit_packed_rates(*benches: Path) -> dict[tuple[str, int, str], Rate]:
    """Packed steps (``train.pack``): per (method, runs stacked, family), a + b x (rows a step multiplies), least
    squares through the real-length GLUE settings (sst2, cola, mrpc, rte, stsb: 13 to 67 tokens a sequence) of the
    first of ``benches`` (newest first) that measured that method and stack at two lengths or more; SQuAD's windows
    (384 tokens) through its own row, b alone. A row's steady steps where the bench recorded them
    (``steady_step_ms``: the steps that replayed a CUDA graph); a row marked ``"steady": false`` (its mean carries
    captures: a schedule phase began inside the timed steps) is left out."""
    points: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
    source: dict[tuple[str, int, str], str] = {}
    for bench in benches:
        mine: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
        for r in _packed_rows(json.loads(bench.read_text())):
            family = "squad" if r["setting"] == "squad" else "glue"
            if "steady_step_ms" in r:
                ms, tokens = r["steady_step_ms"], r["steady_step_tokens"]
            else:
                ms, tokens = r["step_ms"], r["step_tokens_per_s"] * r["step_ms"] / 1000
            mine.setdefault((r["method"], int(r["runs"]), family), []).append((tokens, ms))
        for key, pts in mine.items():
            fits = key[2] == "squad" or len({x for x, _ in pts}) >= 2  # GLUE: a line needs two lengths
            if key not in points and fits:  # a newer bench measured it already
                points[key], source[key] = pts, bench.name
    rates = {}
    for key, pts in points.items():
        if len(pts) >= 2:
            n, sx, sy = len(pts), sum(x for x, _ in pts), sum(y for _, y in pts)
            sxx, sxy = sum(x * x for x, _ in pts), sum(x * y for x, y in pts)
            b = (n * sxy - sx * sy) / (n * sxx - sx * sx)
            a = (sy - b * sx) / n
        else:
            a, b = 0.0, pts[0][1] / pts[0][0]
        rates[key] = Rate(a, 1000 * b, f"{source[key]}: {key[1]} run(s) packed, {len(pts)} setting(s)")
    return rates


# Stacked full fine-tuning, not measured stacked: each run's own weights cost every step the memory traffic of the
# optimizer and what surrounds it, paid once per run (not shared as a frozen weight's GEMM launch is):
# RoBERTa-base's parameters (``stacking.FULL_PARAMETERS``) x 42 bytes (fused AdamW reads weight, gradient and both
# moments and writes three: 28; the gradient zeroed: 4; the clipping norm's read: 4; the step's bf16 copy, read and
# written: 6) at 2.7 TB/s (80% of an H100's HBM3 bandwidth): 1.94 ms a run a step.
STATE_BYTES = {"full": 42}
HBM_BYTES_PER_S = 2.7e12


def state_ms(method: str) -> float:
    """``method``'s per-run optimizer traffic a step (ms), paid by every run of a stack (0: none modelled)."""
    from dynrank.stacking import FULL_PARAMETERS

    return STATE_BYTES.get(method, 0) * FULL_PARAMETERS / HBM_BYTES_PER_S * 1e3


def rate_of(method: str, k: int, rates: dict[tuple[str, int], Rate], notes: set) -> Rate:
    """The step cost of ``k`` runs of ``method`` stacked: a and b interpolated linearly in k between the bench's
    1-run and 5-run rows (beyond 5: extrapolated); a method without rows takes lora's, without 5-run rows its own
    1-run rate scaled as lora's."""
    if (method, 1) not in rates:
        notes.add(f"{method}: not in the bench; lora's step cost used")
        method = "lora"
    one = rates[method, 1]
    if k == 1:
        return one
    if (method, 5) in rates:
        five = rates[method, 5]
    else:
        lo1, lo5 = rates["lora", 1], rates.get(("lora", 5), rates["lora", 1])
        s = state_ms(method)
        notes.add(f"{method}: no stacked rows in the bench; its 1-run cost scaled as lora's from 1 to 5 runs"
                  + (f", but for its weights' optimizer traffic ({s:.2f} ms a run a step, analytic) paid by every run"
                     if s else ""))
        five = Rate((one.a_ms - s) * lo5.a_ms / lo1.a_ms + 5 * s, one.b_us * lo5.b_us / lo1.b_us, "scaled")
    if k > 5:
        notes.add(f"up to {k} runs stacked: the step cost is extrapolated beyond the 5 measured")
    t = (k - 1) / 4
    return Rate(one.a_ms + t * (five.a_ms - one.a_ms), one.b_us + t * (five.b_us - one.b_us), f"{k} runs")


@dataclass
class Device:
    """What the projection reads off the measurements."""
    name: str
    rates: dict[tuple[str, int], Rate]  # (method, runs stacked) -> step cost
    params: dict[str, int]  # trainable adapter parameters per method (r8, RoBERTa-base), from the bench
    fixed_s: float          # per job: start-up (imports, model, data, final writes) and graph captures
    check: str              # the model against the measured stacked training run
    sources: list[str]
    seq2seq: Seq2seq | None = None  # Table 3 and 4's workloads measured (scripts/bench_seq2seq.py), when there are
    packed: dict = field(default_factory=dict)  # (method, runs, family) -> step cost of packed steps, if measured
    check_ratio: float = 1.0  # projected / measured training time of the checked stacked run
    xsum_check: str = ""      # the projection against the newest measured XSum job (scripts/bench_xsum_job.py)
    padded_on: str = ""       # the padded steps' GPU, where it is not the packed steps' (``name``)


    def ckpt_s(self, method: str) -> float:
        params = self.params.get(method, self.params.get("lora", 0)) + HEAD_PARAMS
        return params * CKPT_BYTES_PER_PARAM / (CKPT_GB_PER_S * 1e9)


# A seeds run with one of these overrides measured another path than the defaults this estimate projects
OFF_DEFAULTS = {"train.pack=false", "train.stack=false", "train.exact=true", "train.cuda_graphs=false",
                "train.bf16=false"}


def measured_device(seq2seq: Path | None = None) -> Device:
    """Step costs from the newest bench with graph-bf16 rows in both settings (the default path); start-up, captures and the check from the newest stacked seeds run of a
    RoBERTa-base-sized encoder (not the small real MiniLM: another step cost) on the default path."""
    bench = step_bench()
    stacked = newest("seeds-*.json", lambda d: "MiniLM" not in d.get("model", "") and d.get("stacked_runs", 1) > 1
                     and not set(d.get("overrides", [])) & OFF_DEFAULTS)
    b, s = (json.loads(p.read_text()) for p in (bench, stacked))
    rates = fit_rates(bench)
    params = {r["method"]: int(r["adapter_params"]) for r in b["rows"] if r["impl"] == "dynrank" and "error" not in r}
    dev = Device(b["device"], rates, params, 0.0, "", [bench.name, stacked.name])
    if pbs := packed_benches():
        dev.packed = fit_packed_rates(*pbs)
        packed_on = json.loads(pbs[0].read_text())["device"]
        if packed_on != dev.name:  # most projected steps are packed: the headline names their GPU
            dev.name, dev.padded_on = packed_on, dev.name
        dev.sources += sorted({r.source.split(":")[0] for r in dev.packed.values()})
    paths = [seq2seq] if seq2seq else seq2seq_benches()
    if paths:
        dev.seq2seq = load_seq2seq(*paths)
        dev.sources += dev.seq2seq.name.split(" + ")
    check_against(dev, s, stacked.name)
    if dev.seq2seq is not None:
        try:
            job = newest("xsum-job-*.json", lambda d: d.get("device") != "cpu")
        except ConfigError:  # no XSum job measured on a GPU: no check
            job = None
        if job is not None:
            dev.xsum_check = xsum_check(json.loads(job.read_text()), job.name, dev)
    return dev


def project_xsum_job(report: dict, dev: Device) -> dict:
    """A measured XSum job (``scripts/bench_xsum_job.py``'s report) projected with ``dev``: as it ran, its stacks as
    large as its GPU made them; the projected steps that replay a graph (``replayed_share``) plus the measured
    warm-up steps and captures, as the GLUE check does."""
    k = int(report.get("stacked_runs") or 1)
    e = estimate([*report["job"], f"train.max_stack={k}"], dev)
    steps, evals = sum(r["train_s"] for r in e.rows), sum(r["eval_s"] for r in e.rows)
    n_steps = sum(r["steps"] for r in e.rows)
    replayed = replayed_share(n_steps, report.get("training") or {})
    setup = float(report.get("measured_graph_setup_s") or 0.0)
    out = {"projected_steps_s": steps * replayed, "projected_train_s": steps * replayed + setup,
           "projected_eval_s": evals, "projected_steps": n_steps, "estimate_sources": dev.sources,
           "estimate_notes": sorted(e.notes)}
    out["train_ratio"] = out["projected_train_s"] / report["measured_train_s"]
    out["eval_ratio"] = evals / report["measured_eval_s"] if report.get("measured_eval_s") else None
    return out


def xsum_check(report: dict, name: str, dev: Device) -> str:
    p = project_xsum_job(report, dev)
    return (f"XSum check against {name} ({report['model']}, {report['data']}, {report['runs']} {report['job'][2]} "
            f"runs, {report['stacked_runs']} stacked, on {report['device']}): training projected "
            f"{p['projected_steps_s']:.1f} s of replayed steps + {report.get('measured_graph_setup_s') or 0:.1f} s "
            f"measured in its graphs' {warmups(report.get('training') or {})} warm-up steps and captures = "
            f"{p['projected_train_s']:.1f} s, measured "
            f"{report['measured_train_s']:.1f} s (projected / measured {p['train_ratio']:.2f}); beam-search "
            f"evaluation projected {p['projected_eval_s']:.1f} s, measured {report['measured_eval_s']:.1f} s "
            f"({p['eval_ratio']:.2f})")


def warmups(training: dict) -> int:
    """The steps a graphed job ran eagerly before capturing its graphs: recorded (``graph_warmup_steps``), or one a
    graph (``GraphedStep``'s warm-up, without torch.compile) in a record older than that field."""
    return int(training.get("graph_warmup_steps", training.get("graphs") or 0))


def replayed_share(steps: int, training: dict) -> float:
    """The share of a graphed job's ``steps`` that replayed a graph: its warm-up steps ran eagerly and their time is
    in the measured ``graph_setup_s``, so a projection that adds that setup counts only the others."""
    return max(0, steps - warmups(training)) / steps if steps else 1.0


def check_against(dev: Device, s: dict, name: str) -> None:
    """Start-up and graph captures (``fixed_s``) and the model's check from a stacked seeds run
    (scripts/bench_seeds.py: the real CLI on a real GLUE task, one job of k runs stacked and one run alone), each
    projected here with that job's own config (task, method, epochs, batch, the fast path's parts it set)."""
    from dynrank.config import compose

    notes: set = set()
    method, k, epochs, task = s["method"], int(s["stacked_runs"]), int(s["epochs"]), s.get("task", "rte")
    extra = [o for o in s.get("overrides", []) if o.split("=")[0] in ("train.pack", "train.stack", "train.exact",
                                                                    "train.batch_size", "train.max_stack")]
    cfg = compose([f"task={task}", f"method={method}", f"train.epochs={epochs}", *extra])
    many, one = estimate_job(cfg, k, dev, notes), estimate_job(cfg, 1, dev, notes)
    dev.fixed_s = s["wall_all_seeds_s"] - (many.train_s + many.eval_s + many.ckpt_s)
    measured = s["train_time_s_side_by_side"]
    training = s.get("training") or {}
    setup = training.get("graph_setup_s")  # the graphs' warm-up steps and captures, measured in the run
    replayed = many.train_s * (replayed_share(many.steps, training) if setup is not None else 1.0)
    projected = replayed + (setup or 0.0)
    dev.check_ratio = projected / measured
    steady = min(s["time_per_epoch_s_one_seed"][1:] or s["time_per_epoch_s_one_seed"])
    dev.check = (f"model check against {name} ({method}, {s['data']}, {s['model']}, batch {many.batch}, {epochs} "
                 f"epoch(s){', packed' if training.get('packed') else ''}): {k} runs stacked, training projected "
                 + (f"{replayed:.1f} s of replayed steps + {setup:.1f} s measured in its {training['graphs']} "
                    f"graphs' {warmups(training)} warm-up steps and captures = {projected:.1f} s" if setup is not None
                    else
                    f"{many.train_s:.1f} s") +
                 f", measured {measured:.1f} s (projected / measured {dev.check_ratio:.2f}"
                 f"{'' if setup is not None else '; graph captures in the measured time only'}); one run alone, "
                 f"an epoch projected {one.train_s / epochs:.2f} s, measured {steady:.2f} s "
                 f"({'the fastest epoch after the first' if epochs > 1 else 'its one epoch, graph captures included'}"
                 + (f"; {one_setup:.1f} s of them" if (one_setup := (s.get("training_one_seed") or {}).get(
                     "graph_setup_s")) is not None else "") + ")")


# --- Table 3 and 4 measured: scripts/bench_seq2seq.py ----------------------------------------------------------------
@dataclass
class Seq2seq:
    """Per-token training cost per (task, method, runs stacked) measured at the task's own lengths (XSum: BART-base on
    the XSum length model, source + summary tokens; SQuAD v1.1: RoBERTa-base on the recorded windows), and beam
    search documents per second per (method, runs stacked) (the fast search, dynrank/tasks/beam.py)."""
    us_per_token: dict[tuple[str, str, int], float]  # padded tokens, the timed steps' mean (graph replays)
    docs_per_s: dict[tuple[str, int], float]
    lengths: dict          # the XSum length model the bench drew from (its tokens per word, truncation)
    gen_len: float         # mean generated tokens per summary in the beam rows (random weights: all to the maximum)
    name: str
    packed_us_per_row: dict[tuple[str, str, int], float] = field(default_factory=dict)  # packed steps: per row

    def token_cost(self, task: str, method: str, k: int, dev: Device, notes: set,
                   layout: str = "padded") -> Rate | None:
        """The cost of a padded token (``layout="packed"``: of a row of a packed step, filler included) of ``task``
        for ``k`` runs of ``method`` stacked (None: not measured for the task and layout): piecewise linear in k
        between the measured stacks; a method not measured takes lora's, scaled by the two methods' per-token
        costs in the encoder bench at k runs."""
        costs = self.packed_us_per_row if layout == "packed" else self.us_per_token
        what = f"{task}{' packed' if layout == 'packed' else ''}"
        rows = {k_: v for (t, m, k_), v in costs.items() if t == task and m == method}
        if not rows:
            lora = {k_: v for (t, m, k_), v in costs.items() if t == task and m == "lora"}
            if not lora:
                return None
            one, other = rate_of("lora", k, dev.rates, notes), rate_of(method, k, dev.rates, notes)
            notes.add(f"{what} {method}: not in {self.name}; lora's measured cost x {method}/lora in the encoder "
                      f"bench ({other.b_us / one.b_us:.2f} at {k} runs)")
            return Rate(0.0, interpolate(lora, k, notes, f"{what} lora") * other.b_us / one.b_us, self.name)
        return Rate(0.0, interpolate(rows, k, notes, f"{what} {method}"), self.name)

    def seconds_per_doc(self, method: str, k: int, notes: set) -> float:
        """Beam-search evaluation seconds per document for a stack of ``k`` runs of ``method`` (every run summarises
        it); a method whose search was not measured at that of lora (the same decoder, another adapter)."""
        if not any(m == method for m, _ in self.docs_per_s):
            notes.add(f"beam search of {method}: not in {self.name}; lora's rate used")
            method = "lora"
        rows = {k_: 1 / v for (m, k_), v in self.docs_per_s.items() if m == method}
        return interpolate(rows, k, notes, f"beam search of {method}")


def interpolate(points: dict[int, float], k: int, notes: set, what: str) -> float:
    """``points`` (runs stacked -> value) at ``k``: linear between the nearest measured stacks, extrapolated along
    the last segment beyond them (said in the notes)."""
    ks = sorted(points)
    if k in points or len(ks) == 1:
        if k not in points:
            notes.add(f"{what}: measured at {ks[0]} run(s) only; used for {k}")
        return points.get(k, points[ks[0]])
    lo = max([x for x in ks if x < k], default=ks[0])
    hi = min([x for x in ks if x > k], default=ks[-1])
    if lo == hi:  # beyond the measured stacks
        lo, hi = (ks[-2], ks[-1]) if k > ks[-1] else (ks[0], ks[1])
        notes.add(f"{what}: {k} runs stacked extrapolated from the measured {lo} and {hi}")
    return points[lo] + (k - lo) * (points[hi] - points[lo]) / (hi - lo)


def seq2seq_json(m: Seq2seq | None) -> dict | None:
    if m is None:
        return None
    return {"name": m.name, "us_per_token": {f"{t} {meth} x{k}": v for (t, meth, k), v in m.us_per_token.items()},
            "docs_per_s": {f"{meth} x{k}": v for (meth, k), v in m.docs_per_s.items()}, "gen_len": m.gen_len,
            "lengths": m.lengths}


def seq2seq_benches() -> list[Path]:
    """The GPU ``benchmarks/seq2seq-*.json`` (not --quick runs), newest (by ``date``) first."""
    docs = [(json.loads(p.read_text()), p) for p in BENCH.glob("seq2seq-*.json")]
    return [p for d, p in sorted(((d, p) for d, p in docs if not d.get("quick") and d.get("device") != "cpu"),
                                 key=lambda x: x[0].get("date", ""), reverse=True)]


def load_seq2seq(*paths: Path) -> Seq2seq:
    """The dynrank rows of ``scripts/bench_seq2seq.py`` JSONs in the default mode (graph-bf16) and their fast beam
    rows, each (task, method, layout), with all its stacks, and each beam stack from the first of ``paths`` (newest
    first) that measured it (a bench of one part, e.g. ``--parts xsum``, leaves the others to older ones). An older
    bench's other stacks of a (task, method, layout) the newer one measured are not mixed in: the code under them
    may have changed (2026-12-07: packed XSum attention on the rows halved the packed rows' cost, and the older
    LoRA x5 row would have stayed 1.6x too high). Rows marked ``"steady": false`` (their timed steps were captures:
    a schedule phase began among them) are left out."""
    costs: dict[str, dict] = {"padded": {}, "packed": {}}
    docs_per_s: dict[tuple[str, int], float] = {}
    gen, lengths, used = [], {}, []
    for path in paths:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read the seq2seq bench {path}: {e}") from None
        train = [r for r in doc["rows"] if r["kind"] == "train" and r["impl"] == "dynrank"
                 and r.get("mode") == "graph-bf16"]
        taken = {(r["task"], r["method"], r.get("layout", "padded")) for r in train if "error" not in r}
        mine = {key for key in taken if not any(k[:2] == key[:2] for k in costs[key[2]])}  # no newer bench has it
        rows = [r for r in doc["rows"] if "error" not in r and r.get("steady") is not False]
        new = 0
        for r in rows:
            if r in train and (r["task"], r["method"], r.get("layout", "padded")) in mine:
                layout = costs[r.get("layout", "padded")]  # rows before --layouts (2026-12-07 14:30): padded
                layout[(r["task"], r["method"], int(r["runs"]))], new = float(r["us_per_padded_token"]), new + 1
            elif r["kind"] == "beam" and r["impl"] == "fast" and (r["method"], int(r["runs"])) not in docs_per_s:
                docs_per_s[r["method"], int(r["runs"])], new = float(r["docs_per_s"]), new + 1
                gen.append(r["gen_len"])
        if new:
            used.append(Path(path).name)
            lengths = lengths or doc.get("xsum_lengths", {})
    if not costs["padded"] or not docs_per_s:
        raise ConfigError(f"{' + '.join(Path(p).name for p in paths)}: no graph-bf16 training rows or no fast "
                          f"beam-search rows")
    return Seq2seq(costs["padded"], docs_per_s, lengths, sum(gen) / len(gen), " + ".join(used), costs["packed"])




# --- one run ---------------------------------------------------------------------------------------------
@dataclass
class Workload:
    n_train: int
    train: Hist                     # lengths of the training examples, clipped to task.max_length
    target_tokens: int              # XSum (assumed lengths): summary (decoder) tokens per example; else 0
    evals: list[tuple[int, Hist]]   # the dev sets scored after each epoch: (examples, lengths)
    gen_steps: int                  # XSum (assumed cost): beam-search decoding steps per eval batch; else 0
    notes: list[str] = field(default_factory=list)
    target: Hist | None = None      # XSum (measured): summary lengths, padded per batch as the sources are


def _limit(n: int, *limits) -> int:
    return min([n] + [int(x) for x in limits if x is not None])


def workload(cfg, seq2seq: Seq2seq | None = None) -> Workload:
    task, L = cfg.task, int(cfg.task.max_length)
    max_train, max_eval = cfg.data.get("max_train_samples"), cfg.data.get("max_eval_samples")
    if task.family == "glue":
        train, n, devs, note = GLUE[task.name]
        hist = clip(load_lengths(train), L)
        evals = [(_limit(m or sum(load_lengths(d).values()), max_eval), clip(load_lengths(d), L)) for d, m in devs]
        return Workload(_limit(n or sum(hist.values()), max_train), hist, 0, evals, 0, [note] if note else [])
    if task.family == "squad":
        doc = json.loads((BENCH / "squad_v1_dev_lengths.json").read_text())
        per_q, answer_q = doc["windows"] / doc["questions"], doc["answer_windows"] / doc["questions"]
        answer_only = task.name == "squad_v1" and cfg.protocol.get("squad_train_windows") == "answer_only"
        q_train, q_dev = SQUAD[task.name]
        q_train, q_dev = _limit(q_train, max_train), _limit(q_dev, max_eval, cfg.eval.get("max_samples"))
        hist = clip(load_lengths("squad_v1_dev"), L)
        notes = [f"SQuAD: official sizes v1.1 87,599 / 10,570, v2.0 130,319 / 11,873 questions; windows of "
                 f"{doc['max_length']} (stride {doc['stride']}) per question {per_q:.3f}, holding the answer "
                 f"{answer_q:.3f}, window lengths: SQuAD v1.1 dev (v2.0 assumed alike); post-processing not counted"]
        if answer_only:
            notes.append("squad_v1 trains on the windows holding the answer (protocol.squad_train_windows=answer_only)")
        if (L, int(task.doc_stride)) != (doc["max_length"], doc["stride"]):
            notes.append(f"{task.name}: windows per question recorded at {doc['max_length']}/{doc['stride']}, "
                         f"not re-derived for {L}/{task.doc_stride}")
        n_train = round(q_train * (answer_q if answer_only else per_q))
        return Workload(n_train, hist, 0, [(round(q_dev * per_q), hist)], 0, notes)
    if task.family == "xsum":
        n_dev = _limit(XSUM[str(task.eval_split)], max_eval, cfg.eval.get("max_samples"))
        if seq2seq is not None:  # the lengths the step cost was measured on: dynrank.bench's XSum length model
            from dynrank.bench import TOKENS_PER_WORD, XSUM_SOURCE, xsum_lengths

            tpw = float(seq2seq.lengths.get("tokens_per_word", TOKENS_PER_WORD))
            pairs = xsum_lengths(20000, 0, tpw, L, int(task.max_target_length))
            source: Hist = {}
            target: Hist = {}
            for a, b in pairs:
                source[a], target[b] = source.get(a, 0) + 1, target.get(b, 0) + 1
            notes = [f"XSum: official sizes 204,045 train / 11,332 validation / 11,334 test; lengths from the length "
                     f"model of {seq2seq.name} ({XSUM_SOURCE}: {tpw} BPE tokens per word), sources truncated at {L}, "
                     f"summaries at {task.max_target_length}, both padded per batch (or packed: train.pack)"]
            return Workload(_limit(XSUM["train"], max_train), source, 0, [(n_dev, source)], 0, notes, target)
        notes = [f"XSum: official sizes 204,045 train / 11,332 validation / 11,334 test; every batch assumed padded "
                 f"to the source truncation {L} and the summary length {task.max_target_length} (XSum not here); "
                 f"BART-base (6+6 layers) at RoBERTa-base's (12 layers) step cost per token; beam search assumed "
                 f"{GEN_MS_PER_STEP:.0f} ms per decoding step of an eval batch (not measured)"]
        return Workload(_limit(XSUM["train"], max_train), {L: 1}, int(task.max_target_length), [(n_dev, {L: 1})],
                        int(task.generate.max_new_tokens), notes)
    raise ConfigError(f"no workload model for task family '{task.family}'")


def cell_of(cfg) -> str:
    from dynrank.config import cell_of as cell

    return cell(cfg.method.name, cfg.budget.name, cfg.get("variant"))


@dataclass
class JobEstimate:
    """One job (one process): its runs, stacked into one model or side by side, and its time on the device."""
    task: str
    cell: str
    runs: int
    stacked: bool
    n_train: int
    batch: int      # per run
    epochs: int
    steps: int      # optimizer steps of the job (each step: every run's batch, when stacked)
    tokens: float   # padded training tokens of the job (XSum: source + summary)
    train_s: float
    eval_s: float
    ckpt_s: float
    fixed_s: float

    @property
    def total_s(self) -> float:
        return self.train_s + self.eval_s + self.ckpt_s + self.fixed_s


GPU_FREE_MIB = {"H200": 139 * 1024, "H100": 78 * 1024}  # free memory of an idle GPU of the projected kind (MiB)


def stacks(cfg, k: int, device_name: str = "H100") -> int:
    """How many of the job's k runs train as one model on a GPU (``train.stack``, the method's ``stacks``,
    ``stacking.stack_size`` with the free memory of the projected GPU); 1: side by side."""
    import torch

    from dynrank.stacking import stack_size, stacking

    free = next((m for kind, m in GPU_FREE_MIB.items() if kind in device_name), GPU_FREE_MIB["H100"])
    return min(k, stack_size(cfg, free_mib=free)) if stacking(cfg, torch.device("cuda")) else 1


def estimate_job(cfg, k: int, dev: Device, notes: set) -> JobEstimate:
    """One job of ``k`` runs on the measured device, trained as stacks of at most ``stacks(cfg, k)`` runs (one run
    alone: a stack of one; full fine-tuning: k of them side by side, each step its own, since a graphed RoBERTa-base
    step keeps the GPU busy): a step of a stack of j runs costs a_j + b_j x (padded tokens of every run's batch,
    padded to the longest of them), its evaluation every run's dev batches at once."""
    s2s = dev.seq2seq if cfg.task.family in ("xsum", "squad") else None
    w = workload(cfg, s2s)
    notes.update(w.notes)
    if cfg.model.id not in ("roberta_base", "bart_base"):
        notes.add(f"model={cfg.model.id}: projected at RoBERTa-base's measured step cost (no measurement of its own)")
    size = stacks(cfg, k, dev.name)
    sizes = [size] * (k // size) + ([k % size] if k % size else [])
    bs, epochs, multiple = int(cfg.train.batch_size), int(cfg.train.epochs), gpu_pad_multiple(cfg)
    steps = math.ceil(w.n_train / bs)
    train_s = eval_s = tokens = 0.0
    packed = packs(cfg, dev, notes)
    for j in sizes:  # one stack after another
        measured = s2s and s2s.token_cost(cfg.task.name if cfg.task.family == "xsum" else "squad_v1",
                                          cfg.method.name, j, dev, notes)
        rate = measured or rate_of(cfg.method.name, j, dev.rates, notes)  # padded steps (and evaluation)
        packed_xsum = measured and xsum_packed_cost(cfg, s2s, j, dev, notes)
        if packed:  # the rows a packed step multiplies, at the packed steps' cost
            step_rate = rate_of(cfg.method.name, j, packed, notes)
            t = steps * packed_step_tokens(w.train, j, bs)
        elif packed_xsum:  # sources and summaries packed apart (packed_batch.pack_seq2seq), each run's block bucketed
            step_rate = packed_xsum
            t = steps * (packed_step_tokens(w.train, j, bs) + packed_step_tokens(w.target, j, bs))
        else:
            step_rate = rate
            t = epoch_tokens(w.train, w.n_train * j, bs * j, multiple) + (
                epoch_tokens(w.target, w.n_train * j, bs * j, multiple) if w.target else j * w.n_train * w.target_tokens)
        train_s, tokens = train_s + step_rate.time_s(steps, t) * epochs, tokens + t * epochs
        for n, hist in w.evals:
            if measured and cfg.task.family == "xsum":  # beam search as measured, the encoder included
                eval_s += epochs * n * s2s.seconds_per_doc(cfg.method.name, j, notes)
                continue
            batches, eval_tokens = sorted_batches(hist, n, int(cfg.train.eval_batch_size), multiple)
            eval_s += epochs * (EVAL_FRACTION * rate.time_s(batches, j * eval_tokens)
                                + batches * w.gen_steps * GEN_MS_PER_STEP / 1000)
    return JobEstimate(cfg.task.name, cell_of(cfg), k, size > 1, w.n_train, bs, epochs, steps * epochs * len(sizes),
                       tokens, train_s, eval_s, k * dev.ckpt_s(cfg.method.name) * epochs, dev.fixed_s)


def xsum_packed_cost(cfg, s2s: Seq2seq, k: int, dev: Device, notes: set) -> Rate | None:
    """The cost of a row of XSum's packed steps (``train.pack``: dynrank/packing_bart.py) for ``k`` runs stacked,
    where its runs train packed on a GPU and the seq2seq bench measured packed rows; None: padded steps."""
    if cfg.task.family != "xsum" or not gpu_path(cfg)["pack"]:
        return None
    rate = s2s.token_cost(cfg.task.name, cfg.method.name, k, dev, notes, layout="packed")
    notes.add(f"XSum: packed steps (sources and summaries apart) at {s2s.name}'s packed rows" if rate else
              f"XSum: packed steps not in {s2s.name}; projected padded, at the padded steps' cost")
    return rate


def packs(cfg, dev: Device, notes: set) -> dict[tuple[str, int], Rate] | None:
    """The packed steps' costs of ``cfg``'s task family where its runs train packed on a GPU (``train.pack``: GLUE
    and SQuAD), by (method, runs stacked); None: padded steps."""
    family = cfg.task.family
    if family not in ("glue", "squad") or not gpu_path(cfg)["pack"]:
        return None
    rates = {(m, k): r for (m, k, f), r in dev.packed.items() if f == family}
    if ("lora", 1) not in rates:
        notes.add(f"{family}: packed steps not in the newest bench; projected at the padded steps' cost")
        return None
    m = cfg.method.name
    scaled = [k for k in (1, 5) if (m, k) not in rates and ("lora", k) in rates and (m, k) in dev.rates
              and ("lora", k) in dev.rates]
    for k in scaled:  # a stack the bench did not measure packed: lora's packed cost, scaled as the method's padded one
        f_a, f_b = (getattr(dev.rates[m, k], x) / getattr(dev.rates["lora", k], x) for x in ("a_ms", "b_us"))
        lo = rates["lora", k]
        rates[m, k] = Rate(lo.a_ms * f_a, lo.b_us * f_b, f"lora's packed x {m}'s padded / lora's")
    if scaled:
        notes.add(f"{m} x{', x'.join(map(str, scaled))}: no steady packed rows in the bench; lora's packed step cost "
                  f"scaled by {m}'s padded one relative to lora's")
    return rates


def gpu_path(cfg) -> dict:
    """The fast path's settings as a run of ``cfg`` on the GPU resolves them (``dynrank.device.fast_path``)."""
    import torch

    from dynrank.device import fast_path

    return fast_path(cfg, torch.device("cuda"))


def gpu_pad_multiple(cfg) -> int:
    """``train.pad_to_multiple`` as a run on the GPU resolves it (``auto``: ``dynrank.device.fast_path``)."""
    return gpu_path(cfg)["pad_to_multiple"]


# --- a preset's jobs: dynrank.config.command_line.sweep_jobs (Hydra's basic sweeper) ------------------------------
def _not_seed(job: list[str]) -> tuple[str, ...]:
    return tuple(o for o in job if not o.startswith("seed="))


def compose_jobs(jobs: list[list[str]]) -> dict[tuple[str, ...], object]:
    """One composed config per job without its seed: the seed changes nothing this estimate reads."""
    from hydra import compose

    out = {}
    for job in jobs:
        key = _not_seed(job)
        if key not in out:
            out[key] = compose(config_name="config", overrides=list(key))
    return out


def runs_in(cfg) -> int:
    """How many runs one job trains: ``len(dynrank.train.runs_of(cfg))``, counted without copying the config."""
    from dynrank.config import run_grid

    return len(run_grid(cfg))


def makespan(times: list[float], gpus: int) -> float:
    """Jobs started in order, each on the first GPU to free up (Ray's queue): when the last one ends."""
    free = [0.0] * gpus
    for t in times:
        heapq.heappush(free, heapq.heappop(free) + t)
    return max(free)


@dataclass
class Estimate:
    argv: list[str]
    jobs: int
    runs: int
    rows: list[dict]       # per (task, method cell): runs and one run's numbers
    wall_h: dict[str, float]
    parts_h: dict[str, float]  # GPU-hours spent in training steps, evaluation, checkpoints, start-up
    notes: list[str]


def estimate(argv: list[str], dev: Device) -> Estimate:
    """Every job of the sweep, composed; runs per job as the trainer counts them (``runs_in``)."""
    from hydra import initialize_config_dir

    import dynrank.config as config

    config.check_overrides(argv)
    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            jobs = sweep_jobs(argv)  # as the training command's own check expands them
            cfgs = compose_jobs(jobs)
    except DynrankError:
        raise
    except Exception as e:  # Hydra's own errors: a bad key or value on the command line
        raise ConfigError(str(e).splitlines()[0]) from None
    notes: set[str] = set()
    of_key = {key: estimate_job(c, runs_in(c), dev, notes) for key, c in cfgs.items()}
    per_job = [of_key[_not_seed(j)] for j in jobs]
    rows: dict[tuple, dict] = {}
    for job in per_job:  # one row per (task, cell): its jobs and runs
        row = rows.setdefault((job.task, job.cell, job.batch, job.epochs),
                              {"jobs": 0, **asdict(job), "runs": 0, "total_s": job.total_s})
        row["jobs"] += 1
        row["runs"] += job.runs
    times = [job.total_s for job in per_job]
    wall = {"gpu_hours": sum(times), "gpus8": makespan(times, GPUS)}
    parts = {p: sum(r["jobs"] * r[f"{p}_s"] / 3600 for r in rows.values()) for p in ("train", "eval", "ckpt", "fixed")}
    return Estimate(list(argv), len(jobs), sum(r["runs"] for r in rows.values()), list(rows.values()),
                    {k: v / 3600 for k, v in wall.items()}, parts, sorted(notes))


# --- output: Markdown (README-ready) and JSON --------------------------------------------------------------
TARGET = {"table2_r8": 6.0, "table4_r8": 12.0, "table4_r2": 9.0}  # GPU-hours on one H200 (issues 26, 27)


def preset_of(argv: list[str]) -> str | None:
    return next((a.split("=", 1)[1] for a in argv if a.startswith("experiment=")), None)


def hours(h: float) -> str:
    return f"{h:.2f}" if h < 10 else f"{h:.1f}"


def runs_table(est: Estimate) -> list[str]:
    out = ["| task | method | jobs | runs per job | stacked | train ex. | batch | epochs | steps/job | Mtok/job | "
           "h/job | GPU-h |", "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in est.rows:
        out.append(f"| {r['task']} | {r['cell']} | {r['jobs']} | {r['runs'] // r['jobs']} | "
                   f"{'yes' if r['stacked'] else 'no'} | {r['n_train']:,} | {r['batch']} | {r['epochs']} | "
                   f"{r['steps']:,} | {r['tokens'] / 1e6:,.1f} | {r['total_s'] / 3600:.2f} | "
                   f"{hours(r['jobs'] * r['total_s'] / 3600)} |")
    out.append(f"| **total** | | **{est.jobs}** | | | | | | | | | **{hours(est.wall_h['gpu_hours'])}** |")
    p = est.parts_h
    return out + ["", f"GPU-hours in training steps {hours(p['train'])}, evaluation {hours(p['eval'])}, "
                      f"checkpoints {hours(p['ckpt'])}, start-up and graph captures {hours(p['fixed'])}."]


def wall_table(ests: dict[str, Estimate], dev: Device) -> list[str]:
    out = [f"| preset | runs | jobs | GPU-h (1 GPU) | {GPUS} GPUs (ray_1gpu) |", "|---|---:|---:|---:|---:|"]
    for name, e in ests.items():
        w = e.wall_h
        out.append(f"| {name} | {e.runs} | {e.jobs} | {hours(w['gpu_hours'])} | {hours(w['gpus8'])} h |")
    return out


def verdicts(ests: dict[str, Estimate], dev: Device) -> list[str]:
    out = []
    for name, e in ests.items():
        if len(e.argv) == 1 and preset_of(e.argv) in TARGET:  # the preset as it stands, not narrowed
            t, h = TARGET[preset_of(e.argv)], e.wall_h["gpu_hours"]
            out.append(f"**{name}: {h:.1f} GPU-hours projected on one {dev.name}; target <= {t:.0f}: "
                       f"{'met' if h <= t else f'NOT met ({h / t:.2f}x the target)'}.**")
    return out


def assumptions(dev: Device, notes: list[str]) -> list[str]:
    rates = sorted(dev.rates.items())
    out = [f"Device: {dev.name}, the defaults on a GPU (fast path: bf16, CUDA graphs, padding to a multiple of 8; a "
           f"job's seeds or lr grid stacked into one model)"
           + (f"; padded steps measured on an {dev.padded_on} (where a packed step was not measured: SQuAD's, and "
              f"the ratio of a method's step to lora's)" if dev.padded_on else "") + "; measurements: "
           f"{', '.join(f'`benchmarks/{s}`' for s in dev.sources)}.",
           "- Training step of k runs stacked = a_k + b_k x padded tokens (every run's batch, padded to the longest "
           "of them), through the bench's two graph-bf16 settings for 1 and 5 runs, linear in k between them: "
           + "; ".join(f"{m} x{k} a={r.a_ms:.2f} ms, b={r.b_us:.2f} us/token" for (m, k), r in rates) + ".",
           f"- {dev.check}.",
           *([f"- {dev.xsum_check}."] if dev.xsum_check else []),
           f"- Per job, start-up and graph captures: {dev.fixed_s:.0f} s (the stacked seeds run's wall time less its "
           f"modelled training epochs, evaluations and checkpoints).",
           f"- Evaluation after every epoch: dev set in length-sorted batches of train.eval_batch_size per run, every "
           f"run at once, at {EVAL_FRACTION:.2f} of a training step's cost; checkpoint after every epoch: per run "
           f"(adapter + head) x {CKPT_BYTES_PER_PARAM} bytes at {CKPT_GB_PER_S:.0f} GB/s (full fine-tuning: "
           f"{dev.ckpt_s('full'):.1f} s).",
           "- Runs that do not stack (full fine-tuning, `train.stack=false`) train side by side: k runs' steps, "
           "evaluations and checkpoints, one start-up (a graphed RoBERTa-base step keeps the GPU 93% busy, "
           "`benchmarks/profile-*`: another run's steps have no idle time to fill).",
           f"- {GPUS} GPUs: `hydra/launcher=ray_1gpu`, one job per GPU, started in sweep order as GPUs free up.",
           "- Lengths: recorded with the all-MiniLM-L6-v2 WordPiece tokenizer as a stand-in for RoBERTa's BPE "
           "(`benchmarks/*_lengths.json`); padding to train.pad_to_multiple; expected padded length of a "
           "random batch in closed form.",
           "- Rank budget (r2 vs r8) and ablation variants run at the measured r8 step cost."]
    if dev.seq2seq is not None:
        m = dev.seq2seq
        cost = "; ".join(f"{t} {meth} x{k} {us:.3f} us/token" for (t, meth, k), us in sorted(m.us_per_token.items()))
        packed = "; ".join(f"{t} {meth} x{k} {us:.3f} us/row" for (t, meth, k), us in
                           sorted(m.packed_us_per_row.items()))
        out += [f"- Table 3 and 4 measured (`benchmarks/{m.name}`, each row from the newest bench that has it): a "
                f"training step of SQuAD (RoBERTa-base on the recorded windows) and of XSum (BART-base on the XSum "
                f"length model, source + summary tokens) costs its padded tokens x the measured cost per token of its "
                f"stack (graph-bf16, the timed steps' mean), piecewise linear in the runs stacked: {cost}"
                + (f"; a packed XSum step (`train.pack`, the GPU's default) its rows, filler included, x the packed "
                   f"rows' cost: {packed}." if packed else "."),
                "- XSum evaluation after every epoch: the dev documents at the measured beam-search rate of the fast "
                "search (dynrank/tasks/beam.py; encoder included), per method and runs stacked: "
                + "; ".join(f"{meth} x{k} {v:.1f} docs/s" for (meth, k), v in sorted(m.docs_per_s.items()))
                + f", measured with random weights: every summary ran to {m.gen_len - 1:.0f} new tokens, the longest "
                  "search (trained summaries end sooner: an upper bound)."]
    return out + [f"- {n}" for n in notes]


def markdown(ests: dict[str, Estimate], dev: Device) -> str:
    lines = wall_table(ests, dev) + [""] + verdicts(ests, dev) + [""] + assumptions(dev, sorted(
        {n for e in ests.values() for n in e.notes}))
    for name, e in ests.items():
        lines += ["", f"#### `{' '.join(e.argv)}`", ""] + runs_table(e)
    return "\n".join(lines) + "\n"


# --- recording the length distributions (needs ../shared; the estimate itself does not) ---------------------
def _write_hist(name: str, lengths: list[int], source: str, **extra) -> None:
    hist: Hist = {}
    for n in lengths:
        hist[n] = hist.get(n, 0) + 1
    doc = {"source": source, "n": len(lengths), **extra, "histogram": {str(k): hist[k] for k in sorted(hist)}}
    (BENCH / f"{name}_lengths.json").write_text(json.dumps(doc) + "\n")
    print(f"{name}: {len(lengths):,} examples, mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)}")


def record() -> None:
    """GLUE train/dev and SQuAD v1.1 dev windows with the MiniLM tokenizer; the seeds bench's RTE-shaped set
    with the tiny tokenizer it ran with."""
    import tempfile

    from transformers import AutoTokenizer

    from dynrank.data import glue as glue_data
    from dynrank.data.squad import from_json
    from dynrank.tasks.squad import prepare_features

    tok = AutoTokenizer.from_pretrained(str(SHARED / "models/all-MiniLM-L6-v2"))
    what = "all-MiniLM-L6-v2 WordPiece tokenizer (stand-in for RoBERTa's BPE), truncated at 512"
    for task, split, tsv in [("cola", "validation", "dev"), ("rte", "train", "train"), ("rte", "validation", "dev"),
                             ("mrpc", "train", "train"), ("mrpc", "validation", "dev"), ("stsb", "train", "train"),
                             ("stsb", "validation", "dev"), ("sst2", "train", "train"),
                             ("sst2", "validation", "dev"), ("qnli", "validation", "dev")]:
        spec = glue_data.GLUE[task]
        rows = glue_data.load_split(task, split, str(SHARED / "data/glue"))
        enc = tok([r["text_a"] for r in rows], [r["text_b"] for r in rows] if spec.text_b else None,
                  truncation=True, max_length=512)
        _write_hist(f"{task}_{tsv}", [len(x) for x in enc["input_ids"]],
                    f"GLUE {spec.dirname} {tsv} (../shared/data/glue/{spec.dirname}/{tsv}.tsv), {what}")
    rows = from_json(SHARED / "data/squad/dev-v1.1.json")
    feats = prepare_features(tok, rows, 384, 128, train=True)
    answer = sum(s != 0 for s in feats["start_positions"])  # 0: the [CLS] index, no answer in the window
    _write_hist("squad_v1_dev", [len(x) for x in feats["input_ids"]],
                f"SQuAD v1.1 dev windows (../shared/data/squad/dev-v1.1.json), question + context, windows of 384 "
                f"with stride 128 as dynrank.tasks.squad.prepare_features, {what.split(',')[0]}",
                questions=len(rows), windows=len(feats["input_ids"]), answer_windows=answer,
                max_length=384, stride=128)
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_seeds import write_rte_like

    tiny = AutoTokenizer.from_pretrained(str(ROOT / "dynrank/assets/tiny_tokenizer"))
    data = write_rte_like(Path(tempfile.mkdtemp()) / "glue")
    for split, tsv in (("train", "train"), ("validation", "dev")):
        rows = glue_data.load_split("rte", split, str(data))
        enc = tiny([r["text_a"] for r in rows], [r["text_b"] for r in rows], truncation=True, max_length=128)
        _write_hist(f"rte_synthetic_{tsv}", [len(x) for x in enc["input_ids"]],
                    f"scripts/bench_seeds.py's RTE-shaped {tsv} set (write_rte_like, seed 0), the tiny tokenizer "
                    f"it ran with (dynrank/assets/tiny_tokenizer), max_length 128")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=table2_r8 task=cola")
    ap.add_argument("--all-presets", action="store_true", help="every paper preset (and lr_search) in one report")
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    ap.add_argument("--record", action="store_true", help="re-record benchmarks/*_lengths.json from ../shared")
    ap.add_argument("--seq2seq", help="the scripts/bench_seq2seq.py JSON to project Table 3 and 4 from "
                                      "(default: the newest benchmarks/seq2seq-*.json, if any)")
    args = ap.parse_args(argv)
    try:
        if args.record:
            return record()
        dev = measured_device(Path(args.seq2seq) if args.seq2seq else None)
        if args.all_presets:
            ests = {p: estimate([f"experiment={p}", *args.overrides], dev) for p in PRESETS}
        else:
            ests = {" ".join(args.overrides) or "defaults": estimate(args.overrides, dev)}
    except DynrankError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(markdown(ests, dev), end="")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": dev.name, "sources": dev.sources,
                                               "rates": {f"{m} x{k}": asdict(r) for (m, k), r in dev.rates.items()},
                                               "fixed_s_per_job": dev.fixed_s,
                                               "seq2seq": seq2seq_json(dev.seq2seq),
                                               "presets": {k: asdict(e) for k, e in ests.items()}}, indent=1))


if __name__ == "__main__":
    main()
