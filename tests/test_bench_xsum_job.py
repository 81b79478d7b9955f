"""scripts/bench_xsum_job.py: the synthetic XSum data follow the length model, and a --tiny job runs end to end
through the CLI with its projection beside it (CPU)."""
import importlib.util
import json
import sys

import pytest

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("bench_xsum_job", ROOT / "scripts" / "bench_xsum_job.py")
job = importlib.util.module_from_spec(_spec)
sys.modules["bench_xsum_job"] = job
_spec.loader.exec_module(job)


def test_synthetic_documents_have_the_length_models_token_counts(tmp_path):
    """Each document and summary tokenises (specials included) to the length model's draw, as XsumTask tokenises
    it (stripped, truncated at 768 / 64)."""
    from transformers import AutoTokenizer

    from dynrank import bench
    from dynrank.models import TINY_TOKENIZER

    tok = AutoTokenizer.from_pretrained(str(TINY_TOKENIZER))
    assert len(job.one_token_words(tok)) > 50
    job.write_data(tmp_path, tok, 40, 3, 768, 64)
    rows = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    want = bench.xsum_lengths(40, 0, max_source=768, max_target=64)
    got = [(len(tok(r["document"].strip())["input_ids"]), len(tok(text_target=r["summary"].strip())["input_ids"]))
           for r in rows]
    assert got == want
    assert len((tmp_path / "validation.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow
def test_tiny_job_measured_and_projected(tmp_path):
    report = job.main(["--tiny", "--train-docs", "16", "--eval-docs", "4", "--seeds", "1,2", "--method", "lora",
                       "--out", str(tmp_path)])
    (path,) = tmp_path.glob("xsum-job-cpu-*.json")
    assert json.loads(path.read_text())["train_ratio"] == pytest.approx(report["train_ratio"])
    assert report["runs"] == 2 and report["measured_train_s"] > 0 and report["measured_eval_s"] > 0
    assert report["projected_train_s"] > 0 and report["projected_eval_s"] > 0
    assert "seeds=[1,2]" in report["job"] and any("XSum" in n for n in report["estimate_notes"])
