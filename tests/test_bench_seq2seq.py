"""scripts/bench_seq2seq.py: the XSum length model, the seq2seq batches, and a --quick run end to end (CPU)."""
from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys

import pytest
import torch

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("bench_seq2seq", ROOT / "scripts" / "bench_seq2seq.py")
bs2s = importlib.util.module_from_spec(_spec)
sys.modules["bench_seq2seq"] = bs2s
_spec.loader.exec_module(bs2s)


def test_xsum_lengths_follow_the_published_means():
    """Untruncated, the model's mean document and summary are Narayan et al.'s words x the BPE factor (+2 specials);
    truncated at XsumTask's 768/64 tokens; the same draw for the same seed."""
    from dynrank import bench

    big = 10**9
    pairs = bench.xsum_lengths(40000, seed=3, tokens_per_word=1.0, max_source=big, max_target=big)
    assert statistics.mean(s for s, _ in pairs) == pytest.approx(431.07 + 2, rel=0.03)
    assert statistics.mean(t for _, t in pairs) == pytest.approx(23.26 + 2, rel=0.02)
    assert statistics.pstdev(s for s, _ in pairs) / 431.07 == pytest.approx(0.75, rel=0.1)
    cut = bench.xsum_lengths(2000, seed=3)
    assert max(s for s, _ in cut) == 768 and max(t for _, t in cut) <= 64 and min(t for _, t in cut) >= 3
    assert cut == bench.xsum_lengths(2000, seed=3)


def test_seq2seq_batches_are_collated_as_xsum_collates():
    from dynrank import bench

    pairs = [(5, 3), (9, 4), (2, 2)]
    batches, counts = bench.seq2seq_batches(pairs, 2, 3, torch.device("cpu"), 100, multiple=4)
    b = batches[0]  # pairs 0 and 1: sources 5, 9 -> padded to 12; summaries 3, 4 -> 4
    assert b["input_ids"].shape == (2, 12) and b["labels"].shape == (2, 4)
    assert b["attention_mask"].sum(1).tolist() == [5, 9] and (b["input_ids"][0, 5:] == 1).all()
    assert (b["labels"] != -100).sum(1).tolist() == [3, 4]
    assert counts[0] == (5 + 3 + 9 + 4, 2 * (12 + 4))
    assert counts[1] == (2 + 2 + 5 + 3, 2 * (8 + 4))  # pairs 2 and 0 (taken in turn)


def test_packed_seq2seq_batches_count_their_rows():
    """Packed (XsumTask.packed_batch's layout, two runs): the real tokens as padded, the computed ones the packed
    rows (each run's block bucketed), fewer than the padded batch's."""
    from dynrank import bench

    pairs = [(40, 6), (300, 9), (120, 20), (70, 4)]
    (b,), ((real, rows),) = bench.seq2seq_batches(pairs, 4, 1, torch.device("cpu"), 100, multiple=8, runs=2,
                                                  packed=True)
    assert real == sum(s + t for s, t in pairs)
    assert rows == b["input_ids"].numel() + b["labels"].numel() and real <= rows < 4 * (304 + 24)
    assert (b["labels"] != -100).sum() == sum(t for _, t in pairs) and b["seq_len"].tolist() == [s for s, _ in pairs]


@pytest.mark.slow
def test_quick_run_writes_every_row(tmp_path):
    """--quick on the CPU: tiny models, every kind of row measured (no errors) and the JSON written with its device,
    date, command and the length model."""
    report = bs2s.main(["--quick", "--runs", "1,2", "--methods", "lora", "--out", str(tmp_path)])
    (path,) = tmp_path.glob("seq2seq-cpu-*.json")
    doc = json.loads(path.read_text())
    assert doc["rows"] == json.loads(json.dumps(report["rows"])) and doc["quick"]
    assert doc["device"] == "cpu" and doc["command"].startswith("python scripts/bench_seq2seq.py --quick")
    assert doc["xsum_lengths"]["words"]["document"][0] == 431.07
    rows = doc["rows"]
    assert not [r for r in rows if "error" in r]
    assert {r["layout"] for r in rows if r["impl"] == "dynrank" and r["task"] == "xsum"} == {"packed", "padded"}
    kinds = {(r["kind"], r["task"], r["impl"], r["runs"]) for r in rows}
    assert kinds == {("train", "xsum", "dynrank", 1), ("train", "xsum", "dynrank", 2), ("train", "squad_v1",
                     "dynrank", 1), ("train", "squad_v1", "dynrank", 2), ("train", "xsum", "peft", 1),
                     ("beam", "xsum", "generate", 1), ("beam", "xsum", "fast", 1), ("beam", "xsum", "generate", 2),
                     ("beam", "xsum", "fast", 2)}
    for r in rows:
        if r["kind"] == "train":
            assert r["real_tokens_per_s"] > 0 and r["mean_real_tokens_per_step"] <= r["mean_padded_tokens_per_step"]
            assert math.isfinite(r["final_loss"])
        else:
            assert r["docs_per_s"] > 0 and r["gen_len"] == 1 + 8  # random weights: every summary to max_new_tokens


@pytest.mark.slow
def test_beam_rows_of_each_method(tmp_path):
    """--beam-methods: a beam row per method (the estimate reads each method's own search rate)."""
    report = bs2s.main(["--quick", "--parts", "beam", "--runs", "2", "--beam-methods", "lora,dora",
                        "--out", str(tmp_path)])
    rows = report["rows"]
    assert not [r for r in rows if "error" in r]
    assert {(r["method"], r["impl"]) for r in rows} == {(m, i) for m in ("lora", "dora") for i in ("fast", "generate")}
    assert all(r["docs_per_s"] > 0 and r["runs"] == 2 for r in rows)
