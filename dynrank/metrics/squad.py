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


# --- the authors' scoring (protocol paper_code) ------------------------------------------------
# What the authors' code (github.com/MIkumikumi0116/DoRA @235e21f) computes, as a function of the dev windows in
# their order (the windows of a question consecutive) and the dev loader's batch size:
#  * Dataset_Tokenize.py keeps every window: its v1.1 filter ``label['answer_start_and_end_token_index'] != (0, 0)``
#    compares the list that ``datasets`` gives back with a tuple, which is never equal. A window's gold is the
#    question's answers when it holds the first one, else ``[""]`` (their ``answer_json`` for the label (0, 0)).
#  * Finetune_And_Benchmark.py, ``question_answering_eval_forward_func``, for each batch of the (unshuffled) dev
#    loader: ``batch_pred_dict[id] = prediction`` window by window (a question's last window in the batch wins,
#    kept at the place of its first), then ``zip(batch_pred_dict.items(), batch_index)`` pairs the k-th distinct
#    id of the batch with the gold of the batch's k-th WINDOW. Once a batch holds two windows of one question,
#    every later id of that batch is scored against another window's gold, and the batch's last windows get no
#    reference at all.
#  * HF ``evaluate``'s squad / squad_v2 metrics (metrics/squad*/) then score those references against
#    ``{id: prediction}`` over all batches (a question's last window wins): squad counts every reference,
#    squad_v2 keys its scores by id (a question once, its last reference).

def paper_code_references(qids: list[str], golds: list[list[str]], preds: list[str],
                          batch_size: int) -> tuple[dict[str, str], list[tuple[str, list[str]]]]:
    """The authors' evaluation loop over windows in dev order (``qids[i]``, ``golds[i]``, ``preds[i]``: window
    i's question id, gold answers, predicted text), in batches of ``batch_size``: ``({id: prediction},
    [(id, gold answers), ...])`` as it hands them to ``evaluate`` (the comment above)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    predictions, references = {}, []
    for start in range(0, len(qids), batch_size):
        windows = range(start, min(start + batch_size, len(qids)))
        batch = {}
        for w in windows:
            batch[qids[w]] = preds[w]
        references += [(qid, golds[w]) for qid, w in zip(batch, windows)]
        predictions.update(batch)
    return predictions, references


def squad_v1_paper_code(qids: list[str], golds: list[list[str]], preds: list[str], batch_size: int) -> dict:
    """``evaluate``'s ``squad`` (``compute_score``) over ``paper_code_references``: every reference counts,
    scored against its id's prediction. Percentages; ``total`` = references scored."""
    predictions, references = paper_code_references(qids, golds, preds, batch_size)
    exact_match = f1 = 0.0
    for qid, ground_truths in references:
        exact_match += max(exact_match_score_v1(predictions[qid], gt) for gt in ground_truths)
        f1 += max(f1_score_v1(predictions[qid], gt) for gt in ground_truths)
    n = len(references)
    return {"exact": 100.0 * exact_match / n if n else 0.0, "f1": 100.0 * f1 / n if n else 0.0, "total": n}


def squad_v2_paper_code(qids: list[str], golds: list[list[str]], preds: list[str], batch_size: int) -> dict:
    """``evaluate``'s ``squad_v2`` over ``paper_code_references``: raw scores keyed by id, so a question counts
    once, with its last reference's gold. The authors pass ``no_answer_probability`` 0 with the default threshold
    1.0, which never overrides a prediction: ``squad_v2_metrics`` without ``na_probs`` does the same."""
    predictions, references = paper_code_references(qids, golds, preds, batch_size)
    last = dict(references)
    if not last:
        return {"exact": 0.0, "f1": 0.0, "total": 0}
    m = squad_v2_metrics(last, predictions)
    return {"exact": m["exact"], "f1": m["f1"], "total": m["total"]}
