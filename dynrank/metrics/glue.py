"""GLUE metrics computed offline: scikit-learn (accuracy, F1, Matthews) and scipy (Pearson, Spearman)."""
from __future__ import annotations

import logging

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


log = logging.getLogger("dynrank")
_warned = set()


def undefined(key: str, what: str) -> float:
    """0.0 for a metric that is undefined on these predictions and labels, with a warning, once per process and
    ``key``, that says so (``what``: the metric and why)."""
    if key not in _warned:
        _warned.add(key)
        log.warning("%s; counted as 0.0 (warned once)", what)
    return 0.0


def matthews(preds, labels) -> float:
    """Matthews correlation; where it is undefined (the predictions or the labels hold one class only, as early
    in training when a model predicts the majority class) it is 0.0, as scikit-learn returns and the paper's
    tables count it, with a warning, once per process, that says so."""
    if len(np.unique(preds)) < 2 or len(np.unique(labels)) < 2:
        which = "labels" if len(np.unique(labels)) < 2 else "predictions"
        return undefined("matthews", f"Matthews correlation undefined: the {which} hold one class only")
    return float(matthews_corrcoef(labels, preds))


def correlations(preds, labels) -> dict[str, float]:
    """STS-B's Pearson and Spearman correlations. Where they are undefined (fewer than 2 dev examples, e.g.
    ``data.max_eval_samples=1``; constant labels; constant predictions, as early in training) both are 0.0, by
    the rule of ``matthews``: a constant has no correlation; one warning per process says why."""
    why = (f"{len(labels)} dev example{'s' if len(labels) != 1 else ''} (at least 2 are needed)" if len(labels) < 2
           else "the labels are constant" if np.ptp(labels) == 0
           else "the predictions are constant" if np.ptp(preds) == 0 else None)
    if why is None:
        return {"pearson": float(pearsonr(preds, labels)[0]), "spearman": float(spearmanr(preds, labels)[0])}
    value = undefined("correlation", f"Pearson and Spearman correlations undefined: {why}")
    return {"pearson": value, "spearman": value}


def classification(preds, labels) -> dict[str, float]:
    return {"accuracy": float(accuracy_score(labels, preds))}


def glue_metrics(task: str, preds, labels) -> dict[str, float]:
    """``preds``: class ids (or scores for STS-B); the first key of each task is its paper metric."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    if task == "cola":
        return {"matthews": matthews(preds, labels), **classification(preds, labels)}
    if task == "stsb":
        return correlations(preds, labels)
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
