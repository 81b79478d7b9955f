"""GLUE with RoBERTa: sequence classification (STS-B: regression), dev metrics per Table 2."""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F
from transformers import AutoModelForSequenceClassification

from ..data import glue as glue_data
from ..data.cache import Encoded, cached, fingerprint, source_id, tokenizer_id
from ..metrics.glue import glue_metrics
from ..models import load_model
from ..packed_batch import PACKED, pack
from ..packing import classification_logits, set_dropout_rows
from .base import Task, autocast, evaluating, mean_per_run, repeat_runs

# MNLI reports both dev sets; keys get a suffix for every split after the first.
SPLIT_SUFFIX = {"validation": "", "validation_matched": "", "validation_mismatched": "_mm"}


class GlueTask(Task):
    task_type = "seq_cls"

    def __init__(self, cfg, tokenizer):
        super().__init__(cfg, tokenizer)
        if self.name not in glue_data.GLUE:
            from ..errors import ConfigError
            raise ConfigError(f"unknown GLUE task '{self.name}'; known: {', '.join(glue_data.GLUE)}")
        self.spec = glue_data.GLUE[self.name]
        self.regression = self.name == "stsb"
        self.packs = cfg.model.family in ("roberta", "bert")

    def build_model(self):
        kw = {"num_labels": int(self.cfg.task.num_labels)}
        if self.regression:
            kw["problem_type"] = "regression"
        return load_model(self.cfg.model, AutoModelForSequenceClassification, self.tokenizer, **kw)

    def _encode(self, split: str, max_rows) -> Encoded:
        d = self.cfg.data
        key = fingerprint("glue", self.name, split, int(self.cfg.task.max_length), tokenizer_id(self.tokenizer),
                          source_id(d.dir, self.name, split))

        def build():
            rows = glue_data.load_split(self.name, split, d.dir)
            a = [r["text_a"] for r in rows]
            b = [r["text_b"] for r in rows] if self.spec.text_b else None
            enc = self.tokenizer(a, b, truncation=True, max_length=int(self.cfg.task.max_length))
            return Encoded({"input_ids": enc["input_ids"], "labels": [r["label"] for r in rows]})

        enc = cached(d.cache_dir, key, build)
        if max_rows is not None:
            enc = Encoded({k: v[: int(max_rows)] for k, v in enc.columns.items()})
        return enc

    def train_set(self):
        return self._encode("train", self.cfg.data.max_train_samples)

    def eval_sets(self):
        return {s: self._encode(s, self.cfg.data.max_eval_samples) for s in self.spec.eval_splits}

    def batch(self, dataset, indices):
        """The examples ``indices`` padded as ``pad_batch`` pads them, gathered at once (``Encoded.padded``)."""
        out = dataset.padded(indices, self.tokenizer.pad_token_id, self.pad_to_multiple)
        labels = dataset.columns["labels"]
        out["labels"] = torch.tensor([labels[j] for j in indices], dtype=torch.float32 if self.regression else torch.long)
        return out

    def packed_batch(self, dataset, per_run):
        """Every run's examples packed (``packed_batch.pack``), with their labels."""
        idx = [j for run in per_run for j in run]
        ids = dataset.columns["input_ids"]
        out = pack([ids[j] for j in idx], len(per_run), self.tokenizer.pad_token_id, self.position_offset(),
                   self.pad_to_multiple)
        labels = dataset.columns["labels"]
        out["labels"] = torch.tensor([labels[j] for j in idx], dtype=torch.float32 if self.regression else torch.long)
        return out

    def run_losses(self, model, batch, runs: int):
        return classification_losses(model, batch, runs, self.regression,
                                     float(self.cfg.train.get("label_smoothing") or 0.0))

    @torch.no_grad()
    def evaluate(self, model, eval_sets, device, amp, runs: int = 1) -> list[dict[str, float]]:
        metrics = [{} for _ in range(runs)]
        with evaluating(model):
            bs = int(self.cfg.train.eval_batch_size)
            for split, ds in eval_sets.items():
                order = np.argsort(ds.lengths(), kind="stable")  # batch similar lengths: less padding
                preds = np.empty((runs, len(ds)), dtype=np.float64 if self.regression else np.int64)
                for i in range(0, len(ds), bs):
                    idx = order[i:i + bs]
                    batch = self.batch(ds, idx)
                    batch.pop("labels")
                    batch = repeat_runs({k: v.to(device) for k, v in batch.items()}, runs)
                    with autocast(device, amp):
                        logits = model(**batch).logits.float().view(runs, len(idx), -1)
                    p = logits[..., 0] if self.regression else logits.argmax(-1)
                    preds[:, idx] = p.cpu().numpy()
                labels = np.asarray(ds.columns["labels"])
                for run, out in enumerate(metrics):
                    for k, v in glue_metrics(self.name, preds[run], labels).items():
                        out[k + SPLIT_SUFFIX.get(split, "_" + split)] = v
        return metrics


def classification_losses(model, batch, runs: int, regression: bool = False, label_smoothing: float = 0.0):
    """Cross-entropy (regression: squared error) per example, averaged per run (R,): a sequence classifier's own loss
    of each of the ``runs`` stacked runs (``label_smoothing`` as torch's ``cross_entropy``); ``batch`` padded or
    packed (``packing.py``)."""
    set_dropout_rows(model, batch, runs)
    if PACKED in batch:
        logits = classification_logits(model, batch).float()
    else:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
    labels = batch["labels"]
    if regression:
        per = (logits.squeeze(-1) - labels.float()).pow(2)
    else:
        per = F.cross_entropy(logits, labels, reduction="none", label_smoothing=label_smoothing)
    return mean_per_run(per, runs)


TASK = GlueTask
