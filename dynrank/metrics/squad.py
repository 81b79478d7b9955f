"""SQuAD v1.1 and v2.0 metrics, computed offline.

Re-implemented from the official evaluation scripts, same logic and numbers:
  * ``evaluate-v1.1.py`` (https://rajpurkar.github.io/SQuAD-explorer/, "Official evaluation script for v1.1");
  * ``evaluate-v2.0.py`` ("Official evaluation script for SQuAD version 2.0", same site), including
    ``apply_no_ans_threshold``, ``make_eval_dict`` and ``find_best_thresh``/``find_all_best_thresh``.

Inputs are plain Python: ``golds[qid]`` = list of gold answer texts (an unanswerable v2.0 question
has an empty list), ``preds[qid]`` = predicted text ("" = no answer), ``na_probs[qid]`` = the
no-answer score (higher = more likely unanswerable). All numbers are percentages (x100) as the
scripts print them, except thresholds and totals.
"""
from __future__ import annotations

import collections
import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (both scripts)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


# --- v1.1 ------------------------------------------------------------------------------------
def f1_score_v1(prediction: str, ground_truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_tokens)
    recall = 1.0 * num_same / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


def exact_match_score_v1(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def squad_v1_metrics(golds: dict[str, list[str]], preds: dict[str, str]) -> dict[str, float]:
    """``evaluate-v1.1.py``'s ``evaluate``: every gold question counts; a missing prediction scores 0."""
    f1 = exact_match = total = 0
    for qid, ground_truths in golds.items():
        total += 1
        if qid not in preds:
            continue  # the script prints "Unanswered question ... will receive score 0."
        prediction = preds[qid]
        exact_match += max(exact_match_score_v1(prediction, gt) for gt in ground_truths)
        f1 += max(f1_score_v1(prediction, gt) for gt in ground_truths)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


# --- v2.0 ------------------------------------------------------------------------------------
def _get_tokens(s: str) -> list[str]:
    if not s:
        return []
    return normalize_answer(s).split()


def compute_exact(a_gold: str, a_pred: str) -> int:
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold: str, a_pred: str) -> float:
    gold_toks, pred_toks = _get_tokens(a_gold), _get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        # If either is no-answer, then F1 is 1 if they agree, 0 otherwise
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def _gold_v2(answers: list[str]) -> list[str]:
    gold = [a for a in answers if normalize_answer(a)]
    return gold or [""]  # For unanswerable questions, only correct answer is empty string


def get_raw_scores(golds, preds):
    exact_scores, f1_scores = {}, {}
    for qid, answers in golds.items():
        if qid not in preds:
            continue  # the script prints "Missing prediction for ..." and skips it
        gold_answers = _gold_v2(answers)
        a_pred = preds[qid]
        exact_scores[qid] = max(compute_exact(a, a_pred) for a in gold_answers)
        f1_scores[qid] = max(compute_f1(a, a_pred) for a in gold_answers)
    return exact_scores, f1_scores


def apply_no_ans_threshold(scores, na_probs, qid_to_has_ans, na_prob_thresh):
    new_scores = {}
    for qid, s in scores.items():
        pred_na = na_probs[qid] > na_prob_thresh
        new_scores[qid] = float(not qid_to_has_ans[qid]) if pred_na else s
    return new_scores


def make_eval_dict(exact_scores, f1_scores, qid_list=None) -> dict:
    if not qid_list:
        total = len(exact_scores)
        return {"exact": 100.0 * sum(exact_scores.values()) / total,
                "f1": 100.0 * sum(f1_scores.values()) / total, "total": total}
    total = len(qid_list)
    return {"exact": 100.0 * sum(exact_scores[k] for k in qid_list) / total,
            "f1": 100.0 * sum(f1_scores[k] for k in qid_list) / total, "total": total}


def find_best_thresh(preds, scores, na_probs, qid_to_has_ans):
    num_no_ans = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
    cur_score = num_no_ans
    best_score = cur_score
    best_thresh = 0.0
    qid_list = sorted(na_probs, key=lambda k: na_probs[k])
    for qid in qid_list:
        if qid not in scores:
            continue
        if qid_to_has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1 if preds[qid] else 0
        cur_score += diff
        if cur_score > best_score:
            best_score = cur_score
            best_thresh = na_probs[qid]
    return 100.0 * best_score / len(scores), best_thresh


def squad_v2_metrics(golds: dict[str, list[str]], preds: dict[str, str], na_probs: dict[str, float] | None = None,
                     na_prob_thresh: float = 1.0) -> dict[str, float]:
    """``evaluate-v2.0.py``'s ``main``: exact/f1/total, HasAns_*/NoAns_*, and, given ``na_probs``
    (the script's ``--na-prob-file``), best_exact/best_exact_thresh/best_f1/best_f1_thresh.

    As in the script, ``exact``/``f1`` count a question as "no answer" when its na_prob exceeds
    ``na_prob_thresh`` (default 1.0); without ``na_probs`` every na_prob is 0.
    """
    have_na_probs = na_probs is not None
    if not have_na_probs:
        na_probs = {k: 0.0 for k in preds}
    qid_to_has_ans = {qid: bool(_gold_v2(a)[0]) for qid, a in golds.items()}
    has_ans_qids = [k for k, v in qid_to_has_ans.items() if v]
    no_ans_qids = [k for k, v in qid_to_has_ans.items() if not v]
    exact_raw, f1_raw = get_raw_scores(golds, preds)
    exact_thresh = apply_no_ans_threshold(exact_raw, na_probs, qid_to_has_ans, na_prob_thresh)
    f1_thresh = apply_no_ans_threshold(f1_raw, na_probs, qid_to_has_ans, na_prob_thresh)
    out = make_eval_dict(exact_thresh, f1_thresh)
    if has_ans_qids:
        for k, v in make_eval_dict(exact_thresh, f1_thresh, qid_list=has_ans_qids).items():
            out[f"HasAns_{k}"] = v
    if no_ans_qids:
        for k, v in make_eval_dict(exact_thresh, f1_thresh, qid_list=no_ans_qids).items():
            out[f"NoAns_{k}"] = v
    if have_na_probs:  # find_all_best_thresh
        out["best_exact"], out["best_exact_thresh"] = find_best_thresh(preds, exact_raw, na_probs, qid_to_has_ans)
        out["best_f1"], out["best_f1_thresh"] = find_best_thresh(preds, f1_raw, na_probs, qid_to_has_ans)
    return out


# --- the authors' window-level scoring (protocol paper_code) -----------------------------------
# The authors' code (github.com/MIkumikumi0116/DoRA @235e21f, Finetune_And_Benchmark.py,
# question_answering_eval_forward_func) predicts every 384-token WINDOW on its own and hands one
# (prediction, reference) pair per window, both carrying the question's id, to Hugging Face
# ``evaluate``'s ``squad`` / ``squad_v2`` metrics. What those metrics do with an id that repeats decides
# the numbers; the two functions below reproduce that. ``windows`` lists ``(qid, gold answers of the
# window, predicted text)`` in dev order (the windows of a question consecutive, as the dev loader
# yields them).

def squad_v1_window_metrics(windows: list[tuple[str, list[str], str]]) -> dict[str, float]:
    """``evaluate``'s ``squad`` over window-level pairs (metrics/squad/squad.py ``_compute``).

    ``pred_dict = {id: prediction_text}``: the LAST window's prediction of a question wins; then every
    reference entry, one per window, is scored against ``pred_dict[id]`` (compute_score.py), so a question
    with k windows counts k times. Percentages; ``total`` = windows scored."""
    if not windows:
        return {"exact_match": 0.0, "f1": 0.0, "total": 0}
    pred_dict = {qid: pred for qid, _, pred in windows}
    exact_match = f1 = 0.0
    for qid, ground_truths, _ in windows:
        prediction = pred_dict[qid]
        exact_match += max(exact_match_score_v1(prediction, gt) for gt in ground_truths)
        f1 += max(f1_score_v1(prediction, gt) for gt in ground_truths)
    return {"exact_match": 100.0 * exact_match / len(windows), "f1": 100.0 * f1 / len(windows),
            "total": len(windows)}


def squad_v2_window_metrics(windows: list[tuple[str, list[str], str]]) -> dict[str, float]:
    """``evaluate``'s ``squad_v2`` over window-level pairs (metrics/squad_v2/squad_v2.py ``_compute``).

    Predictions and raw scores are keyed by id, so each question counts once, scored with its LAST
    window's gold (a window without the answer has gold ``['']``, i.e. no answer) against its LAST
    window's prediction. The authors pass ``no_answer_probability`` 0 with the default threshold 1.0,
    which never overrides a prediction: ``squad_v2_metrics`` without ``na_probs`` does the same."""
    golds = {qid: answers for qid, answers, _ in windows}
    preds = {qid: pred for qid, _, pred in windows}
    if not golds:
        return {"exact": 0.0, "f1": 0.0, "total": 0}
    m = squad_v2_metrics(golds, preds)
    return {"exact": m["exact"], "f1": m["f1"], "total": m["total"]}
