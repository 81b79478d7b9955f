"""SQuAD answers and scores from per-window logits.

The standard post-processing (HF ``postprocess_qa_predictions``, Google BERT ``run_squad.py``): per window the ``n_best`` top start and end logits, spans of at most
``max_answer_length`` tokens inside the context, the best span over all windows of an example;
for v2.0 the null score is the CLS start+end logit (minimum over the windows) and the prediction is
"" when ``null score - best span score > null_threshold``. That difference is also the no-answer
score handed to the official v2.0 metric (``--na-prob-file``) for best_exact/best_f1 and their thresholds.

The authors' scoring (protocol ``paper_code``; github.com/MIkumikumi0116/DoRA @235e21f) comes from the same
forward pass over the same windows; only the post-processing differs. Every dev window counts (their v1.1 filter
of answerless windows never fires), each window is predicted on its own (``window_predictions``, the same span
search per window) with its own gold (the answers where it holds the first one, else ``""``), and the pairs go
through their evaluation loop's per-batch dict and zip, batches of the run's ``train.batch_size`` (their dev
loader's), then ``evaluate``'s squad/squad_v2 metrics (``paper_code_scores``;
``dynrank.metrics.squad.paper_code_references`` says what that loop does). Those scores are stored beside the
standard ones as ``exact@paper_code``, ``f1@paper_code``, ``n_eval@paper_code`` (the references scored), with
what a perfect model scores there at that batch (``paper_code_ceiling``: ``ceiling_exact@paper_code``,
``ceiling_f1@paper_code``) and the batch itself (``batch@paper_code``).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..metrics.squad import squad_v1_metrics, squad_v1_paper_code, squad_v2_metrics, squad_v2_paper_code


def _window_spans(s, e, o_s, o_e, n_best: int, max_answer_length: int) -> list[tuple[float, int, int]]:
    """Candidate answers of one window: ``(start logit + end logit, start char, end char)`` for the ``n_best``
    top start x ``n_best`` top end tokens that make a span inside the context of at most
    ``max_answer_length`` tokens, in the order start-major (as both run_qa.py and the authors loop)."""
    top_s = np.argsort(s)[::-1][:n_best]
    top_e = np.argsort(e)[::-1][:n_best]
    S, E = np.meshgrid(top_s, top_e, indexing="ij")
    ok = (o_s[S] >= 0) & (o_e[E] >= 0) & (E >= S) & (E - S + 1 <= max_answer_length)
    return [(s[a] + e[b], int(o_s[a]), int(o_e[b])) for a, b in zip(S[ok].tolist(), E[ok].tolist())]


def _answer(context: str, cands, null_score: float, with_negative: bool, null_threshold: float):
    """The best candidate's text and ``null score - best span score``; "" for v2.0 when that difference is
    above ``null_threshold`` or there is no candidate (a stable sort: ties keep the candidates' order)."""
    cands = sorted(cands, key=lambda c: -c[0])
    best_score, text = (cands[0][0], context[cands[0][1]:cands[0][2]]) if cands else (0.0, "")
    diff = float(null_score - best_score) if np.isfinite(null_score) else 0.0
    if with_negative and (not cands or diff > null_threshold):
        text = ""
    return text, diff


def _window(features, start_logits, end_logits, fi):
    return (np.asarray(start_logits[fi], dtype=np.float64), np.asarray(end_logits[fi], dtype=np.float64),
            np.asarray(features["offset_start"][fi]), np.asarray(features["offset_end"][fi]))


def postprocess(rows: list[dict], features, start_logits, end_logits, *, n_best: int = 20,
                max_answer_length: int = 30, with_negative: bool = False, null_threshold: float = 0.0):
    """Best answer text per question from per-window logits; returns ``(preds, null_diffs)``.

    ``features``: columns ``example_idx``, ``offset_start``, ``offset_end`` (as ``prepare_features``
    makes them); ``start_logits[i]``/``end_logits[i]``: 1-D arrays over window i's tokens.
    ``null_diffs[qid]`` = null score - best span score (v2.0's no-answer score; +: no answer).
    """
    by_example = defaultdict(list)
    for fi, ei in enumerate(features["example_idx"]):
        by_example[int(ei)].append(fi)
    preds, diffs = {}, {}
    for ei, row in enumerate(rows):
        null_score = np.inf
        cands = []  # over all windows of the question
        for fi in by_example.get(ei, ()):
            s, e, o_s, o_e = _window(features, start_logits, end_logits, fi)
            null_score = min(null_score, s[0] + e[0])
            cands += _window_spans(s, e, o_s, o_e, n_best, max_answer_length)
        preds[row["id"]], diffs[row["id"]] = _answer(row["context"], cands, null_score, with_negative, null_threshold)
    return preds, diffs


def window_predictions(rows: list[dict], features, start_logits, end_logits, *, n_best: int = 20,
                       max_answer_length: int = 30, with_negative: bool = False,
                       null_threshold: float = 0.0) -> list[str]:
    """The answer text of every WINDOW on its own (the authors' ``question_answering_eval_forward_func``):
    the same span search as ``postprocess``, the null score being that window's CLS start+end logit."""
    texts = []
    for fi, ei in enumerate(features["example_idx"]):
        s, e, o_s, o_e = _window(features, start_logits, end_logits, fi)
        cands = _window_spans(s, e, o_s, o_e, n_best, max_answer_length)
        texts.append(_answer(rows[int(ei)]["context"], cands, s[0] + e[0], with_negative, null_threshold)[0])
    return texts


def standard_scores(rows: list[dict], features, start_logits, end_logits, *, version: int, n_best: int = 20,
                    max_answer_length: int = 30, null_threshold: float = 0.0) -> dict:
    """The official scores of the per-question answers (``postprocess``) from per-window logits: ``exact``,
    ``f1``, ``n_eval`` (questions); v2.0 also the script's HasAns/NoAns and best-threshold entries."""
    preds, diffs = postprocess(rows, features, start_logits, end_logits, n_best=n_best,
                               max_answer_length=max_answer_length, with_negative=version == 2,
                               null_threshold=null_threshold)
    golds = {r["id"]: r["answers"] for r in rows}
    if version == 1:
        m = squad_v1_metrics(golds, preds)
        m = {"exact": m["exact_match"], "f1": m["f1"]}
    else:
        # exact/f1 score the predictions as made (null decided by task.null_threshold), so the script's
        # na_prob_thresh must not override them; the null-score differences drive only the best-threshold search.
        m = squad_v2_metrics(golds, preds, na_probs=diffs, na_prob_thresh=float("inf"))
    m["n_eval"] = len(rows)
    return m


def window_golds(rows: list[dict], features) -> tuple[list[str], list[list[str]]]:
    """Every window's question id and gold as the authors' code has them: the question's answers when the window
    holds the first one, else ``[""]`` (their answer_json of the label (0, 0))."""
    qids, golds = [], []
    for ei, inside in zip(features["example_idx"], features["answer_in_window"]):
        row = rows[int(ei)]
        qids.append(row["id"])
        golds.append(list(row["answers"]) if inside else [""])
    return qids, golds


# What a perfect v1.1 model states in a window without the question's first answer: it must give some span, and no
# span there is the answer (any text that matches no gold serves; this one is issue 20's, which measured the ceiling)
WRONG_SPAN = "a wrong answer"


def paper_code_ceiling(rows: list[dict], features, *, batch_size: int, version: int) -> dict:
    """A perfect model's ``{"exact", "f1", "total"}`` under the authors' scoring at ``batch_size``: every window that
    holds the question's first answer states it; the others state a wrong span (v1.1: a model always answers) or
    abstain, ``""`` (v2.0: their gold there is ``""``). Below 100 only through their evaluation loop's pairing of ids
    with other windows' golds (``paper_code_references``), which grows with the batch (more windows of one question
    share a batch): the table notes print it per cell (issue 30)."""
    qids, golds = window_golds(rows, features)
    miss = "" if version == 2 else WRONG_SPAN
    texts = [g[0] if inside else miss for g, inside in zip(golds, features["answer_in_window"])]
    return (squad_v1_paper_code if version == 1 else squad_v2_paper_code)(qids, golds, texts, batch_size)


def paper_code_scores(rows: list[dict], features, start_logits, end_logits, *, batch_size: int, version: int,
                      n_best: int = 20, max_answer_length: int = 30, null_threshold: float = 0.0) -> dict:
    """The authors' EM/F1 from per-window logits in dev order (module docstring): every window predicted on its
    own, scored in their evaluation loop's batches of ``batch_size``. ``{"exact", "f1", "total"}``: ``total`` =
    references scored (v1.1: one per distinct question of each batch; v2.0: one per question)."""
    texts = window_predictions(rows, features, start_logits, end_logits, n_best=n_best,
                               max_answer_length=max_answer_length, with_negative=version == 2,
                               null_threshold=null_threshold)
    qids, golds = window_golds(rows, features)
    return (squad_v1_paper_code if version == 1 else squad_v2_paper_code)(qids, golds, texts, batch_size)
