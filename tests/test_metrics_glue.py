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
