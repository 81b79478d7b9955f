"""GLUE metrics against values worked out by hand."""
import math

import pytest

from dynrank.metrics.glue import glue_metrics


def test_matthews_by_hand():
    # TP=2, TN=1, FP=1, FN=1: MCC = (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    preds, labels = [1, 1, 1, 0, 0], [1, 1, 0, 1, 0]
    m = glue_metrics("cola", preds, labels)
    assert m["matthews"] == pytest.approx(1 / 6)
    assert m["accuracy"] == pytest.approx(3 / 5)


def test_accuracy_and_f1_by_hand():
    # precision 2/3, recall 2/3 -> F1 2/3
    m = glue_metrics("mrpc", [1, 1, 1, 0, 0], [1, 1, 0, 1, 0])
    assert m == {"accuracy": pytest.approx(0.6), "f1": pytest.approx(2 / 3)}
    assert glue_metrics("rte", [0, 1, 1, 1], [0, 1, 0, 0]) == {"accuracy": 0.5}


def test_pearson_spearman_by_hand():
    x, y = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]
    # means 2.5; cov sum = (-1.5)(-1.5)+(-.5)(.5)+(.5)(-.5)+(1.5)(1.5) = 4; var sums 5 and 5 -> r = 0.8
    m = glue_metrics("stsb", x, y)
    assert m["pearson"] == pytest.approx(0.8)
    # ranks equal the values here, so Spearman = Pearson of ranks = 0.8
    assert m["spearman"] == pytest.approx(0.8)
    assert not math.isnan(m["pearson"])


def test_majority_class_baseline_predicts_the_train_sets_most_frequent_label():
    from dynrank.metrics.glue import majority_class

    # train: label 0 most frequent; dev: mostly 1, so the baseline is the minority of dev (not dev's own majority)
    assert majority_class("sst2", [0, 0, 1], [1, 1, 1, 0]) == {"accuracy": 0.25}
    mrpc = majority_class("mrpc", [1, 1, 0], [1, 0, 1, 1])
    assert mrpc["accuracy"] == 0.75 and abs(mrpc["f1"] - 6 / 7) < 1e-12  # precision 3/4, recall 1
    assert majority_class("cola", [1, 1, 0], [1, 0])["matthews"] == 0.0  # one class predicted: undefined -> 0
    assert majority_class("stsb", [0.5, 4.0], [1.0, 2.0]) == {"pearson": 0.0}


@pytest.mark.parametrize("preds, labels, why", [
    ([0.5, 3.1, 4.2], [2.0, 2.0, 2.0], "the labels are constant"),  # a constant-label dev set: NaN in results before
    ([1.0, 1.0, 1.0], [0.5, 3.1, 4.2], "the predictions are constant"),
    ([0.3], [2.0], "1 dev example (at least 2 are needed)"),  # data.max_eval_samples=1: a scipy ValueError before
], ids=["constant-labels", "constant-predictions", "one-example"])
def test_undefined_correlations_are_zero_and_warned_once(caplog, preds, labels, why):
    from dynrank.metrics import glue

    glue._warned.discard("correlation")
    with caplog.at_level("WARNING", logger="dynrank"):
        assert glue_metrics("stsb", preds, labels) == {"pearson": 0.0, "spearman": 0.0}
        assert glue_metrics("stsb", preds, labels) == {"pearson": 0.0, "spearman": 0.0}
    assert [r.getMessage() for r in caplog.records] == [
        f"Pearson and Spearman correlations undefined: {why}; counted as 0.0 (warned once)"]


def test_results_json_is_strict(tmp_path):
    import json

    import numpy as np
    import torch

    from dynrank.results import write_json

    write_json(tmp_path / "r.json", {"dev": {"pearson": float("nan"), "spearman": np.float32("inf")},
                                     "epochs": [{"loss": torch.tensor(float("-inf"))}, {"loss": np.float64(0.5)}]})

    def bare(constant):
        raise AssertionError(f"bare {constant} in the results file")

    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=bare) == {
        "dev": {"pearson": None, "spearman": None}, "epochs": [{"loss": None}, {"loss": 0.5}]}
