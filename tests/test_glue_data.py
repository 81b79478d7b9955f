"""GLUE loading from the local layouts: rows, labels and clear errors."""
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
