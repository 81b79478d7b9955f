"""ROUGE-1/2/L for XSum (Table 4): rouge-score's F-measure, averaged, x100; Porter stemming by default.

``use_stemmer=False`` is what the authors' code computes (``evaluate.load('rouge')`` with its defaults,
Finetune_And_Benchmark.py); their ``evaluate`` call also aggregates with rouge-score's BootstrapAggregator
and reports its ``mid`` F-measure, a resampling estimate of the mean: the plain mean is used here.
"""
from __future__ import annotations

from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(predictions: list[str], references: list[str], use_stemmer: bool = True) -> dict[str, float]:
    """Mean F-measure over pairs of ``RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=use_stemmer)``,
    as percentages; ``references[i]`` is the gold summary of ``predictions[i]``."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return {k: 0.0 for k in ROUGE_TYPES}
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    sums = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)  # score(target, prediction)
        for k in ROUGE_TYPES:
            sums[k] += scores[k].fmeasure
    return {k: 100.0 * v / len(predictions) for k, v in sums.items()}
