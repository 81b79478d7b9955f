"""scripts/estimate.py: padded-token arithmetic, Hydra's sweep expansion and run counts, the fit to the bench."""
from __future__ import annotations

import importlib.util
import json
import math
import random
import sys

import pytest
import yaml

from conftest import CONF, ROOT, compose

_spec = importlib.util.spec_from_file_location("estimate", ROOT / "scripts" / "estimate.py")
est = importlib.util.module_from_spec(_spec)
sys.modules["estimate"] = est  # dataclasses look their module up
_spec.loader.exec_module(est)

METHODS = ["full", "bitfit", "houlsby", "pfeiffer", "lora", "adalora", "dora"]
TASKS = ["rte", "mrpc", "stsb", "cola", "sst2", "qnli", "qqp", "mnli"]


@pytest.fixture(scope="module")
def measured():
    """What benchmarks/ holds, as checked in."""
    return est.measured_device()


@pytest.fixture(scope="module")
def device(measured):
    """The measured device with padded steps only (no packed rows, no seq2seq bench): the arithmetic these tests
    check by hand."""
    import dataclasses

    return dataclasses.replace(measured, packed={}, seq2seq=None)


@pytest.mark.parametrize("job", [["task=cola", "method=dora"], ["task=sst2", "method=lora"],
                                 ["task=squad_v1", "method=dora"], ["task=xsum", "model=bart_base", "method=lora"]])
def test_the_checked_in_benchmarks_cost_every_family(measured, job):
    """benchmarks/ as checked in: the packed GLUE rows and the seq2seq bench are read, and a job of each family
    costs a positive time (a fit through rows that carried graph captures once gave dora negative costs)."""
    assert measured.packed and measured.seq2seq is not None
    assert any(s.startswith("bench-") and "H100" in s for s in measured.sources)
    e = est.estimate([*job, "seeds=[1,2,3,4,5]"], measured)
    assert e.rows and all(r["train_s"] > 0 for r in e.rows), job


def test_the_headline_names_the_gpu_of_the_packed_steps(measured):
    """Most projected steps are packed: the projection is labelled with their GPU, and says where the padded steps
    (SQuAD's, the methods' ratios to lora) were measured when that is another GPU."""
    packed_on = json.loads(est.packed_benches()[0].read_text())["device"]
    padded_on = json.loads(est.step_bench().read_text())["device"]
    assert measured.name == packed_on
    assert measured.padded_on == ("" if padded_on == packed_on else padded_on)
    text = est.assumptions(measured, [])[0]
    assert text.startswith(f"Device: {packed_on},") and (padded_on in text) == bool(measured.padded_on)


# --- dynamic padding on a hand-made distribution ----------------------------------------------------------
def test_expected_padded_max_by_hand():
    hist = {2: 1, 4: 1}  # two lengths, equally likely
    assert est.expected_padded_max(hist, 1) == pytest.approx(3.0)
    assert est.expected_padded_max(hist, 2) == pytest.approx(3.5)   # max is 2 only if both draws are 2: 1/4
    assert est.expected_padded_max(hist, 3) == pytest.approx(4 - 2 / 8)
    assert est.expected_padded_max(hist, 2, multiple=4) == pytest.approx(4.0)
    assert est.expected_padded_max(hist, 2, multiple=3) == pytest.approx(3 * 0.25 + 6 * 0.75)


def test_epoch_tokens_counts_the_short_last_batch():
    hist = {2: 1, 4: 1}
    # n=5, batch 2: two full batches (2 x 3.5 each) and one batch of 1 (3 on average)
    assert est.epoch_tokens(hist, 5, 2) == pytest.approx(2 * 2 * 3.5 + 1 * 3.0)
    assert est.epoch_tokens(hist, 4, 2) == pytest.approx(2 * 2 * 3.5)
    assert est.epoch_tokens(hist, 5, 2, multiple=4) == pytest.approx(5 * 4.0)


def test_epoch_tokens_match_the_trainers_shuffled_batches():
    """The closed form against the loop's own batching (dynrank.inputs.batches), simulated over many epochs."""
    from dynrank.inputs import batches

    rng = random.Random(0)
    lengths = [min(128, int(rng.lognormvariate(3.0, 0.6))) + 2 for _ in range(3000)]
    hist = {}
    for n in lengths:
        hist[n] = hist.get(n, 0) + 1
    simulated = [sum(len(b) * max(lengths[i] for i in b) for b in batches(lengths, 16, seed=1, epoch=e,
                                                                          group_by_length=False))
                 for e in range(30)]
    assert est.epoch_tokens(hist, len(lengths), 16) == pytest.approx(sum(simulated) / len(simulated), rel=0.01)
    assert est.epoch_tokens(hist, len(lengths), 16) > 1.5 * sum(lengths)  # padding is not free


def test_sorted_batches_pad_each_batch_to_its_longest():
    hist = {1: 2, 3: 1, 5: 1}
    assert est.sorted_batches(hist, 4, 2) == (2, 1 * 2 + 5 * 2)           # [1, 1] [3, 5]
    assert est.sorted_batches(hist, 8, 4) == (2, 1 * 4 + 5 * 4)           # twice as many, by quantile
    assert est.sorted_batches(hist, 4, 3) == (2, 3 * 3 + 5 * 1)           # [1, 1, 3] [5]
    assert est.sorted_batches(hist, 4, 2, multiple=4) == (2, 4 * 2 + 8 * 2)


def test_makespan():
    assert est.makespan([3, 3, 2, 2, 2], 2) == 7       # in order, each on the first GPU to free up
    assert est.makespan([1, 1, 10], 8) == 10           # the longest job bounds it


# --- the device model reproduces what was measured ---------------------------------------------------------
def test_fit_goes_through_both_bench_points(device):
    """Per method and number of runs stacked (1, 5): the line through the bench's two settings."""
    bench = json.loads(est.step_bench().read_text())
    rows = {(r["method"], r.get("runs", 1), r["setting"]): r["median_step_ms"] for r in bench["rows"]
            if r["impl"] == "dynrank" and r["mode"] == "graph-bf16" and "error" not in r}
    cola = est.load_lengths("cola_train")
    fitted = 0
    for (method, k), rate in device.rates.items():
        assert rate.a_ms > 0 and rate.b_us > 0, method
        cola_tokens = k * 16 * est.expected_padded_max(cola, k * 16, 8)  # every run's batch, padded together
        assert 1000 * rate.time_s(1, k * 4096) == pytest.approx(rows[method, k, "fixed"])
        assert 1000 * rate.time_s(1, cola_tokens) == pytest.approx(rows[method, k, "cola"])
        fitted += 1
    assert fitted >= 2 * 5 and device.fixed_s > 0
    notes = set()
    one, three, five = (est.rate_of("dora", k, device.rates, notes) for k in (1, 3, 5))
    assert one.a_ms < three.a_ms < five.a_ms and three.a_ms == pytest.approx((one.a_ms + five.a_ms) / 2)
    assert est.rate_of("pfeiffer", 5, device.rates, notes).a_ms > 0 and notes  # no rows: lora's, said so


# --- runs: steps per run and the preset expansion ----------------------------------------------------------
def test_one_run_steps_from_the_resolved_config(device):
    e = est.estimate(["task=cola", "method=lora"], device)
    cfg = compose(["task=cola", "method=lora"])
    (row,) = e.rows
    n = 8551  # CoLA train (benchmarks/cola_train_lengths.json)
    bs, epochs = int(cfg.train.batch_size), int(cfg.train.epochs)
    assert (row["n_train"], row["batch"], row["epochs"]) == (n, bs, epochs)
    assert row["steps"] == math.ceil(n / bs) * epochs
    # padded to a multiple of 8, as a run on a GPU pads (train.pad_to_multiple=auto: max(8, 128 / 16))
    assert row["tokens"] == pytest.approx(epochs * est.epoch_tokens(est.load_lengths("cola_train"), n, bs, 8))
    assert e.runs == e.jobs == 1 and not row["stacked"]


@pytest.mark.slow
def test_table2_r8_counts_280_runs_in_56_jobs(device):
    e = est.estimate(["experiment=table2_r8"], device)
    assert (e.runs, e.jobs) == (280, 8 * 7)  # one job per cell, its five seeds in it
    assert {(r["task"], r["cell"]) for r in e.rows} == {(t, f"{m}-r8") for t in TASKS for m in METHODS}
    assert all(r["runs"] == 5 and r["jobs"] == 1 for r in e.rows)
    assert all(r["stacked"] for r in e.rows)  # full fine-tuning too, on RoBERTa-base
    assert e.wall_h["gpu_hours"] / 8 <= e.wall_h["gpus8"] < e.wall_h["gpu_hours"]


def test_stacking_five_seeds_costs_less_than_five_runs(device):
    one = est.estimate(["task=cola", "method=dora"], device).wall_h["gpu_hours"]
    five = est.estimate(["task=cola", "method=dora", "seeds=[1,2,3,4,5]"], device).wall_h["gpu_hours"]
    alone = est.estimate(["task=cola", "method=dora", "seeds=[1,2,3,4,5]", "train.stack=false"], device)
    assert one < five < 5 * one and five < alone.wall_h["gpu_hours"]
    assert not alone.rows[0]["stacked"]


@pytest.mark.slow
def test_command_line_replaces_the_presets_sweep(device):
    assert est.estimate(["experiment=table2_r8", "task=cola", "method=lora"], device).runs == 5
    e = est.estimate(["experiment=table2_r8", "task=cola,rte", "seeds=[1]"], device)
    assert (e.runs, e.jobs) == (2 * 7, 2 * 7)


def test_sweep_jobs_order_first_key_outermost():
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        jobs = est.sweep_jobs(["experiment=table2_r8", "method=lora,dora"])
    assert len(jobs) == 8 * 2
    assert jobs[0] == ["task=rte", "method=lora", "experiment=table2_r8"]
    assert jobs[1][:2] == ["task=rte", "method=dora"]
    assert jobs[-1][:2] == ["task=mnli", "method=dora"]


@pytest.mark.parametrize("extra", [[], ["seeds=[1,2,3]"], ["lr_search=true"], ["lr_search=true", "seeds=[4,5]"]])
def test_runs_in_counts_as_the_trainer(extra):
    from dynrank.train import runs_of

    cfg = compose(["task=rte", "method=dora", *extra])
    assert est.runs_in(cfg) == len(runs_of(cfg))


@pytest.mark.slow
def test_lr_search_counts_grid_times_seeds(device):
    expected = 0
    for m in METHODS:
        grids = yaml.safe_load((CONF / "hparams" / f"{m}.yaml").read_text())
        expected += sum(len(grids[t]["grid"]) * 5 for t in TASKS)
    e = est.estimate(["experiment=lr_search"], device)
    assert e.jobs == 7 * 8
    assert e.runs == expected
    assert all(r["stacked"] for r in e.rows)  # each job's grid x seeds: one model (or as many as the GPU holds)


def test_bad_override_is_one_line_error(capsys):
    with pytest.raises(SystemExit) as exc:
        est.main(["experiment=table2_r8x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown experiment 'table2_r8x'") and "\n" not in err


# --- packed steps (train.pack) ---------------------------------------------------------------------------------
def test_packed_step_tokens_are_cached_by_the_distribution_itself():
    """The cache is keyed by the distribution's contents, not by the object holding it (Python gives a freed dict's
    id to the next one: an id-keyed cache answered for another task's lengths). One object, new contents: a new
    value."""
    hist = {8: 1}
    short = est.packed_step_tokens(hist, 2, 4)
    hist.clear()
    hist[100] = 1
    assert est.packed_step_tokens(hist, 2, 4) > short
    assert est.packed_step_tokens({8: 1}, 2, 4) == short


def test_packed_step_tokens_match_the_packed_batches():
    """The simulated rows of a packed step against dynrank.packed_batch.pack on batches drawn the same way."""
    from dynrank.packed_batch import pack

    rng = random.Random(1)
    lengths = [min(128, int(rng.lognormvariate(2.5, 0.6))) + 2 for _ in range(2000)]
    hist = {}
    for n in lengths:
        hist[n] = hist.get(n, 0) + 1
    got = est.packed_step_tokens(hist, 5, 32, samples=400)
    draws = []
    for _ in range(300):
        rows = [[0] * rng.choice(lengths) for _ in range(5 * 32)]
        draws.append(pack(rows, 5, pad_id=1, position_offset=2)["input_ids"].numel())
    assert got == pytest.approx(sum(draws) / len(draws), rel=0.02)
    real = est.real_step_tokens(hist, 5, 32)
    assert real < got < 1.25 * real  # filler: the bucket and the longest run's excess (~18% here), not padding
    assert got < 5 * 32 * est.expected_padded_max(hist, 5 * 32, 8)


def test_packed_rates_fit_the_bench_rows(tmp_path):
    """a + b x rows through the packed GLUE rows of a bench file; SQuAD through its own row."""
    rows = [{"impl": "dynrank", "method": "lora", "mode": "graph-bf16", "layout": "packed", "runs": 1,
             "setting": s, "step_ms": 1.0 + 0.002 * t, "step_tokens_per_s": t / ((1.0 + 0.002 * t) / 1000)}
            for s, t in (("sst2", 900), ("rte", 1200), ("cola", 400))]
    rows.append({"impl": "dynrank", "method": "lora", "mode": "graph-bf16", "layout": "packed", "runs": 1,
                 "setting": "squad", "step_ms": 12.0, "step_tokens_per_s": 6000 / 0.012})
    path = tmp_path / "bench-X-20990101-0000.json"
    path.write_text(json.dumps({"device": "X", "date": "2099", "rows": rows}))
    rates = est.fit_packed_rates(path)
    glue, squad = rates["lora", 1, "glue"], rates["lora", 1, "squad"]
    assert (glue.a_ms, glue.b_us) == (pytest.approx(1.0), pytest.approx(2.0))
    assert squad.time_s(1, 6000) == pytest.approx(0.012)


def test_packed_rates_skip_ablated_rows_and_benches_of_one_length(tmp_path):
    """A newer bench that timed GLUE at one length (an A/B) or with cuts switched off (--ablate) does not replace an
    older bench's line through several lengths."""
    def row(setting, tokens, ms, **extra):
        return {"impl": "dynrank", "method": "lora", "mode": "graph-bf16", "layout": "packed", "runs": 5,
                "setting": setting, "steady_step_ms": ms, "steady_step_tokens": tokens, **extra}
    old = tmp_path / "bench-X-20990101-0000.json"
    old.write_text(json.dumps({"device": "X", "date": "2099-01-01", "rows": [row("sst2", 1000, 3.0),
                                                                             row("rte", 2000, 5.0)]}))
    new = tmp_path / "bench-X-20990102-0000.json"
    new.write_text(json.dumps({"device": "X", "date": "2099-01-02", "rows": [
        row("sst2", 1000, 9.0), row("sst2", 1000, 9.5, without=["share"]), row("rte", 2000, 99.0, without=["qkv"])]}))
    rate = est.fit_packed_rates(new, old)["lora", 5, "glue"]
    assert (rate.a_ms, rate.b_us) == (pytest.approx(1.0), pytest.approx(2.0))
    assert rate.source.startswith(old.name)


def test_a_packed_job_costs_its_rows_not_its_padding(device):
    """Where packed steps are measured, a GLUE job is costed at the rows packing multiplies (fewer than padding's)."""
    cfg = compose(["task=sst2", "method=lora", "seeds=[1,2,3,4,5]"])
    notes = set()
    rate = est.Rate(1.0, 2.0, "test")
    dev = est.Device(device.name, device.rates, device.params, 0.0, "", [],
                     packed={(m, k, "glue"): rate for m in ("lora",) for k in (1, 5)})
    packed = est.estimate_job(cfg, 5, dev, notes)
    padded = est.estimate_job(cfg, 5, est.Device(device.name, device.rates, device.params, 0.0, "", []), set())
    assert packed.tokens < 0.5 * padded.tokens
    steps = packed.steps
    assert packed.train_s == pytest.approx(rate.time_s(steps, packed.tokens), rel=1e-6)


# --- Table 3 and 4 from scripts/bench_seq2seq.py's measurements (a hand-made bench) -------------------------------
def _seq2seq_json(path, quick=False, device="NVIDIA H200", date="2026-12-07T06:00:00+00:00", packed=()):
    def train(task, method, runs, us, impl="dynrank", mode="graph-bf16", layout="padded"):
        return {"kind": "train", "task": task, "impl": impl, "method": method, "mode": mode, "runs": runs,
                "us_per_padded_token": us, "layout": layout}

    def beam(impl, runs, docs_per_s, method="lora"):
        return {"kind": "beam", "task": "xsum", "impl": impl, "method": method, "runs": runs,
                "docs_per_s": docs_per_s, "gen_len": 65.0}

    rows = [train("xsum", "lora", 1, 0.5), train("xsum", "lora", 5, 0.3), train("squad_v1", "lora", 1, 0.2),
            train("squad_v1", "lora", 5, 0.12), train("xsum", "peft_lora", 1, 9.0, impl="peft", mode="eager-bf16"),
            train("xsum", "lora", 1, 7.0, mode="eager-bf16"), {**train("xsum", "dora", 1, 1.0), "error": "OOM"},
            beam("fast", 1, 200.0), beam("fast", 5, 60.0), beam("generate", 1, 3.0), beam("fast", 5, 40.0, "dora"),
            *(train(*row, layout="packed") for row in packed)]
    path.write_text(json.dumps({"device": device, "date": date, "quick": quick, "rows": rows,
                                "xsum_lengths": {"tokens_per_word": 1.2}}))
    return path


@pytest.fixture(scope="module")
def s2s_device(tmp_path_factory):
    return est.measured_device(_seq2seq_json(tmp_path_factory.mktemp("s2s") / "seq2seq-hand.json"))


def test_seq2seq_bench_is_read_as_measured(s2s_device):
    m = s2s_device.seq2seq
    assert m.us_per_token == {("xsum", "lora", 1): 0.5, ("xsum", "lora", 5): 0.3, ("squad_v1", "lora", 1): 0.2,
                              ("squad_v1", "lora", 5): 0.12}  # graph-bf16 dynrank rows only, errors left out
    assert m.docs_per_s == {("lora", 1): 200.0, ("lora", 5): 60.0, ("dora", 5): 40.0}
    assert "seq2seq-hand.json" in s2s_device.sources
    notes = set()
    assert m.token_cost("xsum", "lora", 3, s2s_device, notes).b_us == pytest.approx(0.4)  # halfway from 1 to 5
    assert m.seconds_per_doc("lora", 3, notes) == pytest.approx((1 / 200 + 1 / 60) / 2) and not notes
    assert m.seconds_per_doc("dora", 5, notes) == pytest.approx(1 / 40) and not notes  # its own search
    assert m.seconds_per_doc("adalora", 5, notes) == pytest.approx(1 / 60)  # not measured: lora's, said so
    assert any("beam search of adalora" in n for n in notes)
    notes.clear()
    assert m.token_cost("xsum", "lora", 7, s2s_device, notes).b_us == pytest.approx(0.2) and notes  # said so
    assert m.token_cost("glue", "lora", 1, s2s_device, notes) is None


def test_xsum_job_from_the_measured_costs(s2s_device):
    """XSum lora r8, one run: training = the length model's padded source + summary tokens x 0.5 us; evaluation =
    epochs x 11,332 documents / 200 docs/s; the assumptions' notes are gone."""
    from dynrank.bench import xsum_lengths

    e = est.estimate(["task=xsum", "model=bart_base", "method=lora"], s2s_device)
    (row,) = e.rows
    cfg = compose(["task=xsum", "model=bart_base", "method=lora"])
    bs, epochs, n = int(cfg.train.batch_size), int(cfg.train.epochs), 204_045
    src, tgt = {}, {}
    for a, b in xsum_lengths(20000, 0, 1.2):
        src[a], tgt[b] = src.get(a, 0) + 1, tgt.get(b, 0) + 1
    mult = est.gpu_pad_multiple(cfg)
    tokens = epochs * (est.epoch_tokens(src, n, bs, mult) + est.epoch_tokens(tgt, n, bs, mult))
    assert row["tokens"] == pytest.approx(tokens)
    assert row["train_s"] == pytest.approx(tokens * 0.5e-6)
    assert row["eval_s"] == pytest.approx(epochs * 11_332 / 200)
    assert not any("assumed padded" in x or "not measured" in x for x in e.notes)
    assert any("seq2seq-hand.json" in x for x in e.notes)


def test_xsum_packed_steps_from_the_packed_rows(tmp_path):
    """With packed XSum rows in the bench (bench_seq2seq --layouts packed), a job that packs (train.pack=auto on a
    GPU) costs the rows its packed steps multiply (sources and summaries packed apart, each run's block bucketed) at
    the packed rows' cost; train.pack=false keeps the padded tokens at the padded cost."""
    from dynrank.bench import xsum_lengths

    dev = est.measured_device(_seq2seq_json(tmp_path / "seq2seq-packed.json", packed=[("xsum", "lora", 1, 0.7)]))
    assert dev.seq2seq.packed_us_per_row == {("xsum", "lora", 1): 0.7}
    over = ["task=xsum", "model=bart_base", "method=lora"]
    e = est.estimate(over, dev)
    (row,) = e.rows
    cfg = compose(over)
    bs, epochs, n = int(cfg.train.batch_size), int(cfg.train.epochs), 204_045
    src, tgt = {}, {}
    for a, b in xsum_lengths(20000, 0, 1.2):
        src[a], tgt[b] = src.get(a, 0) + 1, tgt.get(b, 0) + 1
    rows = epochs * -(-n // bs) * (est.packed_step_tokens(src, 1, bs) + est.packed_step_tokens(tgt, 1, bs))
    assert row["tokens"] == pytest.approx(rows) and row["train_s"] == pytest.approx(rows * 0.7e-6)
    assert any("XSum: packed steps" in x and "seq2seq-packed.json" in x for x in e.notes)
    mult = est.gpu_pad_multiple(cfg)
    padded = epochs * (est.epoch_tokens(src, n, bs, mult) + est.epoch_tokens(tgt, n, bs, mult))
    assert rows < 0.8 * padded  # the length model's real tokens are ~60% of a padded batch's
    (off,) = est.estimate([*over, "train.pack=false"], dev).rows
    assert off["tokens"] == pytest.approx(padded) and off["train_s"] == pytest.approx(padded * 0.5e-6)


def test_xsum_check_counts_the_graphs_warm_up_steps_once(s2s_device):
    """A measured XSum job's projection: its steps that replayed a graph at the projected cost, plus the measured
    warm-up steps and captures; the warm-up steps (real steps, run eagerly) are not also projected."""
    job = ["task=xsum", "model=bart_base", "method=lora", "seeds=[1]", "train.epochs=1",
           "data.max_train_samples=3200", "eval.max_samples=512"]
    (row,) = est.estimate([*job, "train.max_stack=1"], s2s_device).rows
    report = {"job": job, "stacked_runs": 1, "measured_train_s": 10.0, "measured_eval_s": 2.0,
              "measured_graph_setup_s": 3.0, "training": {"graphs": 7, "graph_warmup_steps": 20},
              "model": "tiny", "data": "synthetic", "runs": 1, "device": "GPU"}
    p = est.project_xsum_job(report, s2s_device)
    n = row["steps"]  # 3200 documents in lora's batches
    assert p["projected_steps"] == n > 20
    assert p["projected_steps_s"] == pytest.approx(row["train_s"] * (n - 20) / n)
    assert p["projected_train_s"] == pytest.approx(p["projected_steps_s"] + 3.0)
    assert p["train_ratio"] == pytest.approx(p["projected_train_s"] / 10.0)
    del report["training"]["graph_warmup_steps"]  # an older record: one warm-up step a graph
    assert est.project_xsum_job(report, s2s_device)["projected_steps_s"] == pytest.approx(row["train_s"] * (n - 7) / n)
    assert "20 warm-up steps" not in est.xsum_check(report, "x.json", s2s_device)
    assert "7 warm-up steps" in est.xsum_check(report, "x.json", s2s_device)


def test_squad_and_unmeasured_methods_from_the_seq2seq_bench(s2s_device, device):
    """SQuAD's windows at the measured 0.2 us per padded token; dora (no XSum row: its row errored) at lora's cost x
    dora/lora of the encoder bench, said in the notes; without the seq2seq bench, XSum keeps the assumptions."""
    e = est.estimate(["task=squad_v1", "method=lora"], s2s_device)
    (row,) = e.rows
    assert row["train_s"] == pytest.approx(row["tokens"] * 0.2e-6)
    d = est.estimate(["task=xsum", "model=bart_base", "method=dora"], s2s_device)
    notes = set()
    ratio = est.rate_of("dora", 1, device.rates, notes).b_us / est.rate_of("lora", 1, device.rates, notes).b_us
    assert d.rows[0]["train_s"] == pytest.approx(d.rows[0]["tokens"] * 0.5e-6 * ratio)
    assert any("xsum dora: not in seq2seq-hand.json" in x for x in d.notes)
    old = est.estimate(["task=xsum", "model=bart_base", "method=lora"], device)
    assert any("assumed 25 ms per decoding step" in x for x in old.notes)


def test_seq2seq_benches_skip_quick_and_cpu_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(est, "BENCH", tmp_path)
    assert est.seq2seq_benches() == []
    gpu = _seq2seq_json(tmp_path / "seq2seq-a.json", date="2026-12-07T01:00:00+00:00")
    _seq2seq_json(tmp_path / "seq2seq-b.json", quick=True, device="cpu", date="2026-12-07T09:00:00+00:00")
    assert est.seq2seq_benches() == [gpu]


def test_seq2seq_benches_merge_newest_first(tmp_path, monkeypatch):
    """A newer bench of one part (XSum training only, packed and padded) takes its rows over, each measured (task,
    method, layout) whole: the older bench's other stacks of it are dropped (older code); what it did not measure
    (SQuAD, beam search) comes from the older one; both are named as sources."""
    monkeypatch.setattr(est, "BENCH", tmp_path)
    _seq2seq_json(tmp_path / "seq2seq-old.json", date="2026-12-07T01:00:00+00:00")
    new = {"device": "NVIDIA H200", "date": "2026-12-07T09:00:00+00:00", "quick": False, "rows": [
        {"kind": "train", "task": "xsum", "impl": "dynrank", "method": "lora", "mode": "graph-bf16", "runs": 1,
         "layout": layout, "us_per_padded_token": us} for layout, us in (("padded", 0.45), ("packed", 0.6))]}
    (tmp_path / "seq2seq-new.json").write_text(json.dumps(new))
    assert [p.name for p in est.seq2seq_benches()] == ["seq2seq-new.json", "seq2seq-old.json"]
    m = est.load_seq2seq(*est.seq2seq_benches())
    assert m.us_per_token == {("xsum", "lora", 1): 0.45, ("squad_v1", "lora", 1): 0.2, ("squad_v1", "lora", 5): 0.12}
    assert m.packed_us_per_row == {("xsum", "lora", 1): 0.6}
    assert m.docs_per_s == {("lora", 1): 200.0, ("lora", 5): 60.0, ("dora", 5): 40.0}
    assert m.name == "seq2seq-new.json + seq2seq-old.json"
    with pytest.raises(est.ConfigError, match="no fast beam-search rows"):
        est.load_seq2seq(tmp_path / "seq2seq-new.json")


def test_unreadable_seq2seq_bench_is_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        est.main(["task=xsum", "model=bart_base", "--seq2seq", str(tmp_path / "missing.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot read the seq2seq bench") and "\n" not in err


def test_a_measured_packed_stack_is_used_and_only_the_missing_one_scaled(device):
    """DoRA measured packed for 5 runs only: its x5 rate is the bench's, its x1 is LoRA's packed rate scaled as
    DoRA's padded cost is to LoRA's (the measured one is never replaced by the scaled one)."""
    cfg = compose(["task=sst2", "method=dora", "seeds=[1,2,3,4,5]"])
    measured = est.Rate(9.0, 3.0, "bench: dora x5")
    packed = {("lora", 1, "glue"): est.Rate(1.0, 2.0, "lora x1"), ("lora", 5, "glue"): est.Rate(2.0, 2.0, "lora x5"),
              ("dora", 5, "glue"): measured}
    dev = est.Device(device.name, device.rates, device.params, 0.0, "", [], packed=packed)
    notes = set()
    rates = est.packs(cfg, dev, notes)
    assert rates["dora", 5] is measured
    f_b = device.rates["dora", 1].b_us / device.rates["lora", 1].b_us
    assert rates["dora", 1].b_us == pytest.approx(2.0 * f_b)
    assert any(n.startswith("dora x1: no steady packed rows") for n in notes)
