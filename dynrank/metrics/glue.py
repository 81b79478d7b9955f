"""GLUE metrics computed offline: scikit-learn (accuracy, F1, Matthews) and scipy (Pearson, Spearman)."""
from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def classification(preds, labels) -> dict[str, float]:
    return {"accuracy": float(accuracy_score(labels, preds))}


def glue_metrics(task: str, preds, labels) -> dict[str, float]:
    """``preds``: class ids (or scores for STS-B); the first key of each task is its paper metric."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    if task == "cola":
        return {"matthews": float(matthews_corrcoef(labels, preds)), **classification(preds, labels)}
    if task == "stsb":
        return {"pearson": float(pearsonr(preds, labels)[0]), "spearman": float(spearmanr(preds, labels)[0])}
    if task in ("mrpc", "qqp"):
        acc = classification(preds, labels)
        return {**acc, "f1": float(f1_score(labels, preds))}
    return classification(preds, labels)
