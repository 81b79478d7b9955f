"""GLUE loading from the local layouts: rows, labels and clear errors."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import SHARED_GLUE
from dynrank.data.glue import GLUE, load_split
from dynrank.errors import DataError

TASKS = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]


@pytest.mark.parametrize("task", TASKS)
def test_every_task_loads_from_classic_layout(glue_dir, task):
    root, expect = glue_dir
    for split in ("train", *GLUE[task].eval_splits):
        rows = load_split(task, split, str(root))
        assert [r["label"] for r in rows] == expect[task][split]
        assert rows[0]["text_a"].startswith("sentence number 0")
        if GLUE[task].text_b:
            assert rows[0]["text_b"].startswith("another sentence 0")
        else:
            assert rows[0]["text_b"] is None


def test_real_cola_row_counts():
    train = load_split("cola", "train", str(SHARED_GLUE))
    dev = load_split("cola", "validation", str(SHARED_GLUE / "CoLA"))  # the task dir itself works too
    assert len(train) == 8551 and len(dev) == 1043
    assert set(r["label"] for r in train) == {0, 1}
    assert train[0]["text_a"] == "Our friends won't buy this analysis, let alone the next one we propose."


def test_hub_parquet_saved_locally(tmp_path):
    d = tmp_path / "glue" / "mnli"
    d.mkdir(parents=True)
    table = pa.table({"premise": ["p0", "p1"], "hypothesis": ["h0", "h1"], "label": [2, 0], "idx": [0, 1]})
    pq.write_table(table, d / "validation_mismatched-00000-of-00001.parquet")
    rows = load_split("mnli", "validation_mismatched", str(tmp_path / "glue"))
    assert rows == [{"text_a": "p0", "text_b": "h0", "label": 2}, {"text_a": "p1", "text_b": "h1", "label": 0}]


def test_malformed_rows_name_file_and_line(glue_dir):
    root, _ = glue_dir
    path = root / "RTE" / "train.tsv"
    lines = path.read_text().splitlines()
    lines[3] = "2\tonly one sentence"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"malformed row at .*RTE/train.tsv:4: expected 4"):
        load_split("rte", "train", str(root))
    lines[3] = "2\ta\tb\tmaybe"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"RTE/train.tsv:4: label 'maybe' is not entailment, not_entailment"):
        load_split("rte", "train", str(root))


def test_missing_task_and_file(glue_dir, tmp_path):
    root, _ = glue_dir
    with pytest.raises(DataError, match="no GLUE rte data under"):
        load_split("rte", "train", str(tmp_path / "empty"))
    (root / "QNLI" / "dev.tsv").unlink()
    with pytest.raises(DataError, match=r"missing file .*QNLI/dev.tsv"):
        load_split("qnli", "validation", str(root))


@pytest.mark.parametrize("task, line", [
    ("cola", "gj04\t1\t\t\"a sentence\twith a tab\""),  # a tab in a quoted field: the sentence was cut at the tab
    ("mrpc", "1\t7\t107\t\"first\tsentence\"\tsecond sentence"),  # the columns were shifted, sentence 2 lost
], ids=["cola", "mrpc"])
def test_rows_with_extra_fields_name_file_and_line(glue_dir, task, line):
    root, _ = glue_dir
    path = root / GLUE[task].dirname / "train.tsv"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[2] = line
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    width = len(lines[0].split("\t"))
    with pytest.raises(DataError, match=rf"^malformed row at {path}:3: expected {width} tab-separated fields, got "
                                        rf"{width + 1} \(a tab inside a field\?\); fix or remove that line$"):
        load_split(task, "train", str(root))


def test_a_bom_before_the_header_is_not_part_of_its_first_column(glue_dir, tmp_path):
    from dynrank.data import squad, xsum

    root, expect = glue_dir
    path = root / "SST-2" / "train.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert [r["label"] for r in load_split("sst2", "train", str(root))] == expect["sst2"]["train"]
    (tmp_path / "train.csv").write_bytes(b"\xef\xbb\xbfdocument,summary\nthe document,the summary\n")
    assert xsum.from_file(tmp_path / "train.csv") == [{"document": "the document", "summary": "the summary"}]
    (tmp_path / "dev.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"data": [{"paragraphs": [
        {"context": "c", "qas": [{"id": "1", "question": "q", "answers": [{"text": "c", "answer_start": 0}]}]}]}]}
    ).encode())
    assert [r["id"] for r in squad.from_json(tmp_path / "dev.json")] == ["1"]


@pytest.mark.parametrize("case, message", [
    ("corrupt", r"^{f} is not a readable Parquet file \(ArrowInvalid: .*\); replace it \(e.g. with the Hub's file "
                r"again\)$"),
    ("no-column", r"^{f}: no column 'sentence' \(found: text, label\); is this the right file\?$"),
    ("null-sentence", r"^malformed row 1 of {f}: sentence is None, not a string; fix the file$"),
], ids=["corrupt", "no-column", "null-sentence"])
def test_bad_local_parquet_is_named_by_file_and_row(tmp_path, case, message):
    f = tmp_path / "glue" / "sst2" / "train-00000-of-00001.parquet"
    f.parent.mkdir(parents=True)
    column = "text" if case == "no-column" else "sentence"
    pq.write_table(pa.table({column: ["a fine film", None if case == "null-sentence" else "dull"], "label": [1, 0]}), f)
    if case == "corrupt":
        f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(DataError, match=message.format(f=f)):
        load_split("sst2", "train", str(tmp_path / "glue"))


@pytest.mark.parametrize("multiple", [1, 8])
def test_a_gathered_batch_is_pad_batchs(multiple):
    """GLUE batches come from ``Encoded.padded`` (one gather for a stacked step): the tensors ``pad_batch`` makes."""
    import random

    import torch

    from dynrank.data.cache import Encoded, pad_batch

    rng = random.Random(0)
    ds = Encoded({"input_ids": [[rng.randrange(3, 99) for _ in range(rng.randrange(1, 40))] for _ in range(50)],
                  "labels": [rng.randrange(2) for _ in range(50)]})
    for _ in range(5):
        idx = rng.sample(range(50), 12)
        got, want = ds.padded(idx, 1, multiple), pad_batch([ds[j] for j in idx], 1, multiple)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
