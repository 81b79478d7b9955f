"""GLUE metrics computed offline: scikit-learn (accuracy, F1, Matthews) and scipy (Pearson, Spearman)."""
from __future__ import annotations

import logging

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


log = logging.getLogger("dynrank")
_warned = set()


def matthews(preds, labels) -> float:
    """Matthews correlation; where it is undefined (the predictions or the labels hold one class only, as early
    in training when a model predicts the majority class) it is 0.0, as scikit-learn returns and the paper's
    tables count it, with a warning, once per process, that says so."""
    if len(np.unique(preds)) < 2 or len(np.unique(labels)) < 2:
        if "matthews" not in _warned:
            _warned.add("matthews")
            which = "labels" if len(np.unique(labels)) < 2 else "predictions"
            log.warning("Matthews correlation undefined: the %s hold one class only; counted as 0.0 "
                        "(warned once)", which)
        return 0.0
    return float(matthews_corrcoef(labels, preds))


def classification(preds, labels) -> dict[str, float]:
    return {"accuracy": float(accuracy_score(labels, preds))}


def glue_metrics(task: str, preds, labels) -> dict[str, float]:
    """``preds``: class ids (or scores for STS-B); the first key of each task is its paper metric."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    if task == "cola":
        return {"matthews": matthews(preds, labels), **classification(preds, labels)}
    if task == "stsb":
        return {"pearson": float(pearsonr(preds, labels)[0]), "spearman": float(spearmanr(preds, labels)[0])}
    if task in ("mrpc", "qqp"):
        acc = classification(preds, labels)
        return {**acc, "f1": float(f1_score(labels, preds))}
    return classification(preds, labels)


def majority_class(task: str, train_labels, dev_labels) -> dict[str, float]:
    """The dev metrics of the majority-class baseline: the train set's most frequent label predicted for every
    dev example (STS-B, a regression: a constant score has no correlation, counted as 0.0)."""
    if task == "stsb":
        return {"pearson": 0.0}
    values, counts = np.unique(np.asarray(train_labels), return_counts=True)
    return glue_metrics(task, [values[counts.argmax()]] * len(dev_labels), dev_labels)
