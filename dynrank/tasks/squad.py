"""SQuAD v1.1 / v2.0 (extractive QA) with RoBERTa: Table 3's EM/F1.

Features: question + context pairs truncated on the context only, ``max_length`` 384 tokens with
overlapping windows (stride ``doc_stride`` 128 tokens), the character offsets of the context
tokens kept for evaluation. Training labels follow HF ``run_qa.py``: the first gold answer's start/end
tokens, or the ``<s>`` (CLS) token when the answer is not fully inside the window or the question
is unanswerable. Evaluation is the standard post-processing (HF ``postprocess_qa_predictions``,
Google BERT ``run_squad.py``): per window the ``n_best`` top start and end logits, spans of at most
``max_answer_length`` tokens inside the context, the best span over all windows of an example;
for v2.0 the null score is the CLS start+end logit (minimum over the windows) and the prediction is
"" when ``null score - best span score > null_threshold``. That difference is also the no-answer
score handed to the official v2.0 metric (``--na-prob-file``) for best_exact/best_f1 and their thresholds.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForQuestionAnswering

from ..data import squad as squad_data
from ..data.cache import Encoded, cached, fingerprint, pad_batch, source_id, tokenizer_id
from ..errors import ConfigError
from ..metrics.squad import squad_v1_metrics, squad_v2_metrics
from ..models import load_model
from .base import Task, autocast, evaluating


def prepare_features(tokenizer, rows: list[dict], max_length: int, stride: int, *, train: bool,
                     token_types: bool = False, chunk: int = 1000) -> dict[str, list]:
    """Tokenise (question, context) pairs into overlapping windows.

    Columns: ``input_ids``, ``example_idx`` (index of the row a window comes from), then for
    training ``start_positions``/``end_positions``, for evaluation ``offset_start``/``offset_end``
    (character span of each token in the context, -1 for question and special tokens).
    """
    cols: dict[str, list] = defaultdict(list)
    for c0 in range(0, len(rows), chunk):
        part = rows[c0:c0 + chunk]
        try:
            enc = tokenizer([r["question"].lstrip() for r in part], [r["context"] for r in part],
                            truncation="only_second", max_length=max_length, stride=stride,
                            return_overflowing_tokens=True, return_offsets_mapping=True)
        except Exception as e:  # e.g. stride too large for the room left by a long question
            raise ConfigError(f"could not split SQuAD contexts into windows of task.max_length={max_length} with "
                              f"task.doc_stride={stride} ({str(e).splitlines()[0]}); use a larger max_length "
                              "or a smaller doc_stride") from None
        for i, ids in enumerate(enc["input_ids"]):
            j = enc["overflow_to_sample_mapping"][i]
            row = part[j]
            seq = enc.sequence_ids(i)
            offsets = enc["offset_mapping"][i]
            cols["input_ids"].append(ids)
            cols["example_idx"].append(c0 + j)
            if token_types:
                cols["token_type_ids"].append(enc["token_type_ids"][i])
            if train:
                s, e = _span_tokens(row, seq, offsets, ids, tokenizer.cls_token_id)
                cols["start_positions"].append(s)
                cols["end_positions"].append(e)
            else:
                cols["offset_start"].append([o[0] if q == 1 else -1 for o, q in zip(offsets, seq)])
                cols["offset_end"].append([o[1] if q == 1 else -1 for o, q in zip(offsets, seq)])
    return dict(cols)


def _span_tokens(row, seq, offsets, ids, cls_id) -> tuple[int, int]:
    """Token indices of the first gold answer in this window; the CLS index if it is not inside (run_qa.py)."""
    cls = ids.index(cls_id) if cls_id in ids else 0
    if not row["answers"]:
        return cls, cls
    start_char = row["answer_starts"][0]
    end_char = start_char + len(row["answers"][0])
    ts = 0
    while seq[ts] != 1:
        ts += 1
    te = len(ids) - 1
    while seq[te] != 1:
        te -= 1
    if not (offsets[ts][0] <= start_char and offsets[te][1] >= end_char):
        return cls, cls
    # run_qa.py's loop without the seq check walks past the context's last token onto </s> (offsets (0, 0))
    # when the answer starts at that last token; stopping at the context's end fixes that edge case only.
    while ts < len(offsets) and seq[ts] == 1 and offsets[ts][0] <= start_char:
        ts += 1
    while offsets[te][1] >= end_char:
        te -= 1
    return ts - 1, te + 1


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
        cands = []  # (score, start char, end char)
        for fi in by_example.get(ei, ()):
            s, e = np.asarray(start_logits[fi], dtype=np.float64), np.asarray(end_logits[fi], dtype=np.float64)
            o_s, o_e = np.asarray(features["offset_start"][fi]), np.asarray(features["offset_end"][fi])
            null_score = min(null_score, s[0] + e[0])
            top_s = np.argsort(s)[::-1][:n_best]
            top_e = np.argsort(e)[::-1][:n_best]
            S, E = np.meshgrid(top_s, top_e, indexing="ij")
            ok = (o_s[S] >= 0) & (o_e[E] >= 0) & (E >= S) & (E - S + 1 <= max_answer_length)
            for a, b in zip(S[ok].tolist(), E[ok].tolist()):
                cands.append((s[a] + e[b], int(o_s[a]), int(o_e[b])))
        cands.sort(key=lambda c: -c[0])
        best_score, text = (cands[0][0], row["context"][cands[0][1]:cands[0][2]]) if cands else (0.0, "")
        diff = float(null_score - best_score) if np.isfinite(null_score) else 0.0
        if with_negative and (not cands or diff > null_threshold):
            text = ""
        preds[row["id"]], diffs[row["id"]] = text, diff
    return preds, diffs


@dataclass
class SquadEval:
    rows: list[dict]  # examples (question, context, gold answers)
    features: Encoded  # windows of those examples


def eval_limit(cfg):
    """Examples to evaluate: the smaller of data.max_eval_samples and eval.max_samples (None: all)."""
    ns = [n for n in (cfg.data.get("max_eval_samples"), OmegaConf.select(cfg, "eval.max_samples")) if n is not None]
    return min(int(n) for n in ns) if ns else None


class SquadTask(Task):
    task_type = "qa"

    def __init__(self, cfg, tokenizer):
        super().__init__(cfg, tokenizer)
        t = cfg.task
        self.version = 2 if t.get("version_2_with_negative") else 1
        self.max_length, self.stride = int(t.max_length), int(t.doc_stride)
        self.n_best, self.max_answer_length = int(t.n_best), int(t.max_answer_length)
        self.null_threshold = float(t.null_threshold)
        if not 0 < self.stride < self.max_length:
            raise ConfigError(f"task.doc_stride must be in (0, task.max_length={self.max_length}) (got {self.stride})")
        if self.n_best < 1 or self.max_answer_length < 1:
            raise ConfigError("task.n_best and task.max_answer_length must be >= 1")
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError("SQuAD needs a fast tokenizer (offset mapping); the model's tokenizer is not one")
        self.token_types = cfg.model.family == "bert"  # RoBERTa has one token type; BERT uses segment ids

    def build_model(self):
        return load_model(self.cfg.model, AutoModelForQuestionAnswering, self.tokenizer)

    def _rows(self, split):
        return squad_data.load_split(self.version, split, self.cfg.data.dir, self.name)

    def _features(self, split: str, rows_fn, train: bool) -> Encoded:
        d = self.cfg.data
        key = fingerprint("squad", self.version, split, train, self.max_length, self.stride, self.token_types,
                          tokenizer_id(self.tokenizer), source_id(d.dir, self.name, split))
        return cached(d.cache_dir, key, lambda: Encoded(prepare_features(
            self.tokenizer, rows_fn(), self.max_length, self.stride, train=train, token_types=self.token_types)))

    def train_set(self):
        enc = self._features("train", lambda: self._rows("train"), train=True)
        return _first_examples(enc, self.cfg.data.max_train_samples)

    def eval_sets(self):
        rows = self._rows("validation")
        feats = self._features("validation", lambda: rows, train=False)
        n = eval_limit(self.cfg)
        if n is not None:
            rows = rows[:n]
            feats = _first_examples(feats, n)
        return {"validation": SquadEval(rows, feats)}

    def collate(self, batch):
        out = pad_batch(batch, self.tokenizer.pad_token_id, multiple=int(self.cfg.train.get("pad_to_multiple", 1)))
        if self.token_types:
            tt = torch.zeros_like(out["input_ids"])
            for i, b in enumerate(batch):
                tt[i, :len(b["token_type_ids"])] = torch.as_tensor(b["token_type_ids"])
            out["token_type_ids"] = tt
        if "start_positions" in batch[0]:
            out["start_positions"] = torch.tensor([b["start_positions"] for b in batch], dtype=torch.long)
            out["end_positions"] = torch.tensor([b["end_positions"] for b in batch], dtype=torch.long)
        return out

    @torch.no_grad()
    def logits(self, model, features: Encoded, device, amp):
        """Start and end logits of every window (1-D float arrays), in large length-sorted batches."""
        bs = int(self.cfg.train.eval_batch_size)
        lengths = features.lengths()
        order = np.argsort(lengths, kind="stable")
        starts, ends = [None] * len(features), [None] * len(features)
        for i in range(0, len(order), bs):
            idx = order[i:i + bs]
            batch = self.collate([{k: features.columns[k][j] for k in ("input_ids", "token_type_ids")
                                   if k in features.columns} for j in idx])
            with autocast(device, amp):
                out = model(**{k: v.to(device) for k, v in batch.items()})
            s, e = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
            for r, j in enumerate(idx):
                starts[j], ends[j] = s[r, :lengths[j]], e[r, :lengths[j]]
        return starts, ends

    @torch.no_grad()
    def evaluate(self, model, eval_sets, device, amp) -> dict[str, float]:
        metrics = {}
        with evaluating(model):
            for split, ev in eval_sets.items():
                starts, ends = self.logits(model, ev.features, device, amp)
                preds, diffs = postprocess(ev.rows, ev.features.columns, starts, ends, n_best=self.n_best,
                                           max_answer_length=self.max_answer_length,
                                           with_negative=self.version == 2, null_threshold=self.null_threshold)
                golds = {r["id"]: r["answers"] for r in ev.rows}
                if self.version == 1:
                    m = squad_v1_metrics(golds, preds)
                    m = {"exact": m["exact_match"], "f1": m["f1"]}
                else:
                    # exact/f1 score the predictions as made (null decided by task.null_threshold), so the
                    # script's na_prob_thresh must not override them; the null-score differences drive
                    # only the best-threshold search.
                    m = squad_v2_metrics(golds, preds, na_probs=diffs, na_prob_thresh=float("inf"))
                m["n_eval"] = len(ev.rows)
                suffix = "" if split == "validation" else "_" + split
                metrics.update({k + suffix: float(v) for k, v in m.items()})
        return metrics


def _first_examples(enc: Encoded, n) -> Encoded:
    """The windows of the first ``n`` examples (limits count questions, not windows)."""
    if n is None:
        return enc
    keep = [i for i, e in enumerate(enc.columns["example_idx"]) if e < int(n)]
    return Encoded({k: [v[i] for i in keep] for k, v in enc.columns.items()})


TASK = SquadTask
