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
