"""SQuAD v1.1 / v2.0 (extractive QA) with RoBERTa: Table 3's EM/F1.

Features: question + context pairs truncated on the context only, ``max_length`` 384 tokens with
overlapping windows (stride ``doc_stride`` 128 tokens), the character offsets of the context
tokens kept for evaluation. Training labels follow HF ``run_qa.py``: the first gold answer's start/end
tokens, or the ``<s>`` (CLS) token when the answer is not fully inside the window or the question
is unanswerable. Evaluation: the standard post-processing and the authors' (``paper_code``) beside it, both from
one forward pass (``squad_answers.py``).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F
from transformers import AutoModelForQuestionAnswering

from ..data import squad as squad_data
from ..data.cache import Encoded, cached, fingerprint, pad_batch, source_id, tokenizer_id
from ..errors import ConfigError
from ..models import load_model
from ..packed_batch import PACKED, pack
from ..packing import set_dropout_rows, token_logits
from .base import Task, autocast, evaluating, mean_per_run, repeat_runs
from .squad_answers import paper_code_ceiling, paper_code_scores, standard_scores


def prepare_features(tokenizer, rows: list[dict], max_length: int, stride: int, *, train: bool,
                     token_types: bool = False, chunk: int = 1000) -> dict[str, list]:
    """Tokenise (question, context) pairs into overlapping windows.

    Columns: ``input_ids``, ``example_idx`` (index of the row a window comes from), ``answer_in_window``
    (1 if the first gold answer lies wholly inside the window's context, else 0), then for training
    ``start_positions``/``end_positions``, for evaluation ``offset_start``/``offset_end`` (character span
    of each token in the context, -1 for question and special tokens).
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
            span = _answer_tokens(row, seq, offsets)
            cols["answer_in_window"].append(int(span is not None))
            if train:  # run_qa.py: a window without the answer trains towards CLS
                cls = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
                s, e = span if span is not None else (cls, cls)
                cols["start_positions"].append(s)
                cols["end_positions"].append(e)
            else:
                cols["offset_start"].append([o[0] if q == 1 else -1 for o, q in zip(offsets, seq)])
                cols["offset_end"].append([o[1] if q == 1 else -1 for o, q in zip(offsets, seq)])
    return dict(cols)


def _answer_tokens(row, seq, offsets) -> tuple[int, int] | None:
    """Token indices of the first gold answer if it lies wholly inside this window's context, else None.

    The test is run_qa.py's (and the authors' ``find_answer_token_index_range``): the context's first token
    starts at or before the answer and its last token ends at or after it."""
    if not row.get("answers"):  # unanswerable (v2.0), or a row given without answers
        return None
    start_char = row["answer_starts"][0]
    end_char = start_char + len(row["answers"][0])
    ts = 0
    while seq[ts] != 1:
        ts += 1
    te = len(seq) - 1
    while seq[te] != 1:
        te -= 1
    if not (offsets[ts][0] <= start_char and offsets[te][1] >= end_char):
        return None
    # run_qa.py's loop without the seq check walks past the context's last token onto </s> (offsets (0, 0))
    # when the answer starts at that last token; stopping at the context's end fixes that edge case only.
    while ts < len(offsets) and seq[ts] == 1 and offsets[ts][0] <= start_char:
        ts += 1
    while offsets[te][1] >= end_char:
        te -= 1
    return ts - 1, te + 1


def answer_windows(columns: dict[str, list]) -> dict[str, list]:
    """Only the windows that hold the first gold answer (``task.train_windows: answer_only``: what the authors'
    v1.1 filter was written to do; in their code it never drops a window)."""
    keep = [i for i, a in enumerate(columns["answer_in_window"]) if a]
    return {k: [v[i] for i in keep] for k, v in columns.items()}


@dataclass
class SquadEval:
    rows: list[dict]  # examples (question, context, gold answers)
    features: Encoded  # windows of those examples
    ceilings: dict = field(default_factory=dict)  # batch size -> paper_code_ceiling (the same every epoch)


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
        self.train_windows = str(t.get("train_windows") or "all")  # all | answer_only: config.SCHEMA
        if not 0 < self.stride < self.max_length:
            raise ConfigError(f"task.doc_stride must be in (0, task.max_length={self.max_length}) (got {self.stride})")
        if self.n_best < 1 or self.max_answer_length < 1:
            raise ConfigError("task.n_best and task.max_answer_length must be >= 1")
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError("SQuAD needs a fast tokenizer (offset mapping); the model's tokenizer is not one")
        self.token_types = cfg.model.family == "bert"  # RoBERTa has one token type; BERT uses segment ids
        self.packs = cfg.model.family in ("roberta", "bert")

    def build_model(self):
        return load_model(self.cfg.model, AutoModelForQuestionAnswering, self.tokenizer)

    def _rows(self, split):
        return squad_data.load_split(self.version, split, self.cfg.data.dir, self.name)

    def _features(self, split: str, rows_fn, train: bool) -> Encoded:
        """Windows of a split, cached; training windows without the answer dropped under ``answer_only``."""
        d = self.cfg.data
        windows = self.train_windows if train else "all"
        key = fingerprint("squad", "windows-v2", self.version, split, train, windows, self.max_length, self.stride,
                          self.token_types, tokenizer_id(self.tokenizer), source_id(d.dir, self.name, split))

        def build():
            cols = prepare_features(self.tokenizer, rows_fn(), self.max_length, self.stride, train=train,
                                    token_types=self.token_types)
            return Encoded(answer_windows(cols) if windows == "answer_only" else cols)
        return cached(d.cache_dir, key, build)

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
        out = pad_batch(batch, self.tokenizer.pad_token_id, multiple=self.pad_to_multiple)
        if self.token_types:
            tt = torch.zeros_like(out["input_ids"])
            for i, b in enumerate(batch):
                tt[i, :len(b["token_type_ids"])] = torch.as_tensor(b["token_type_ids"])
            out["token_type_ids"] = tt
        if "start_positions" in batch[0]:
            out["start_positions"] = torch.tensor([b["start_positions"] for b in batch], dtype=torch.long)
            out["end_positions"] = torch.tensor([b["end_positions"] for b in batch], dtype=torch.long)
        return out

    def packed_batch(self, dataset, per_run):
        """Every run's windows packed (``packed_batch.pack``), with their answer positions."""
        idx = [j for run in per_run for j in run]
        cols = dataset.columns
        out = pack([cols["input_ids"][j] for j in idx], len(per_run), self.tokenizer.pad_token_id,
                   self.position_offset(), self.pad_to_multiple,
                   [cols["token_type_ids"][j] for j in idx] if self.token_types else None)
        for key in ("start_positions", "end_positions"):
            out[key] = torch.tensor([cols[key][j] for j in idx], dtype=torch.long)
        return out

    def run_losses(self, model, batch, runs: int):
        """(start cross-entropy + end cross-entropy) / 2 per run over each window's own tokens, positions outside
        the window ignored: the loss of transformers' QA models, of each run, but that padding positions do not
        enter the softmax (padded or packed, a window's loss is the same whatever the longest window beside it)."""
        set_dropout_rows(model, batch, runs)
        if PACKED in batch:
            logits, valid = token_logits(model, batch).float(), batch["valid"]
        else:
            out = model(**{k: v for k, v in batch.items() if k not in ("start_positions", "end_positions")})
            logits = torch.stack((out.start_logits, out.end_logits), -1).float()
            valid = batch["attention_mask"].bool()
        logits = logits.masked_fill(~valid.unsqueeze(-1), torch.finfo(logits.dtype).min)
        total = 0.0
        for i, positions in enumerate((batch["start_positions"], batch["end_positions"])):
            ignored = logits.shape[1]
            positions = positions.clamp(0, ignored)
            per = F.cross_entropy(logits[..., i], positions, ignore_index=ignored, reduction="none")
            total = total + mean_per_run(per, runs, positions != ignored)
        return total / 2

    @torch.no_grad()
    def logits(self, model, features: Encoded, device, amp, runs: int = 1):
        """Start and end logits of every window (1-D float arrays) of each run, ``starts[k][i]``, in large
        length-sorted batches."""
        bs = int(self.cfg.train.eval_batch_size)
        lengths = features.lengths()
        order = np.argsort(lengths, kind="stable")
        starts = [[None] * len(features) for _ in range(runs)]
        ends = [[None] * len(features) for _ in range(runs)]
        for i in range(0, len(order), bs):
            idx = order[i:i + bs]
            batch = self.collate([{k: features.columns[k][j] for k in ("input_ids", "token_type_ids")
                                   if k in features.columns} for j in idx])
            with autocast(device, amp):
                out = model(**repeat_runs({k: v.to(device) for k, v in batch.items()}, runs))
            s = out.start_logits.float().view(runs, len(idx), -1).cpu().numpy()
            e = out.end_logits.float().view(runs, len(idx), -1).cpu().numpy()
            for k in range(runs):
                for r, j in enumerate(idx):
                    starts[k][j], ends[k][j] = s[k, r, :lengths[j]], e[k, r, :lengths[j]]
        return starts, ends

    @torch.no_grad()
    def evaluate(self, model, eval_sets, device, amp, runs: int = 1) -> list[dict[str, float]]:
        metrics = [{} for _ in range(runs)]
        with evaluating(model):
            for split, ev in eval_sets.items():
                all_starts, all_ends = self.logits(model, ev.features, device, amp, runs)
                for out, starts, ends in zip(metrics, all_starts, all_ends):
                    out.update(self._split_metrics(split, ev, starts, ends))
        return metrics

    def _split_metrics(self, split: str, ev: SquadEval, starts, ends) -> dict[str, float]:
        """One run's dev metrics on one split from its window logits: the official scores and the authors'."""
        spans = dict(version=self.version, n_best=self.n_best, max_answer_length=self.max_answer_length,
                     null_threshold=self.null_threshold)
        m = standard_scores(ev.rows, ev.features.columns, starts, ends, **spans)
        # the authors' loop batches the dev windows as their dev loader does (Finetune_And_Benchmark.py init_data:
        # DataLoader(dev_dataset, batch_size=self.config.batch_size)): the run's batch size
        batch = int(self.cfg.train.batch_size)
        paper = paper_code_scores(ev.rows, ev.features.columns, starts, ends, batch_size=batch, **spans)
        if batch not in ev.ceilings:
            ev.ceilings[batch] = paper_code_ceiling(ev.rows, ev.features.columns, batch_size=batch,
                                                    version=self.version)
        ceiling = ev.ceilings[batch]
        m.update({"exact@paper_code": paper["exact"], "f1@paper_code": paper["f1"],
                  "n_eval@paper_code": paper["total"], "ceiling_exact@paper_code": ceiling["exact"],
                  "ceiling_f1@paper_code": ceiling["f1"], "batch@paper_code": batch})
        suffix = "" if split == "validation" else "_" + split
        return {k + suffix: float(v) for k, v in m.items()}


def _first_examples(enc: Encoded, n) -> Encoded:
    """The windows of the first ``n`` examples (limits count questions, not windows)."""
    if n is None:
        return enc
    keep = [i for i, e in enumerate(enc.columns["example_idx"]) if e < int(n)]
    return Encoded({k: [v[i] for i in keep] for k, v in enc.columns.items()})


TASK = SquadTask
