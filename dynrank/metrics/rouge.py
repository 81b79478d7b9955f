"""ROUGE-1/2/L for XSum (Table 4): rouge-score's F-measure with Porter stemming, averaged, x100."""
from __future__ import annotations

from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean F-measure over pairs of ``RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)``,
    as percentages; ``references[i]`` is the gold summary of ``predictions[i]``."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return {k: 0.0 for k in ROUGE_TYPES}
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    sums = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)  # score(target, prediction)
        for k in ROUGE_TYPES:
            sums[k] += scores[k].fmeasure
    return {k: 100.0 * v / len(predictions) for k, v in sums.items()}
