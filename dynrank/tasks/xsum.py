"""XSum (abstractive summarisation) with BART: Table 4's ROUGE-1/2/L.

Documents and summaries ``strip()``ped (as the authors' Dataset_Tokenize.py), sources truncated to
``task.max_length`` (768) tokens, summaries (labels) to ``task.max_target_length`` (64), labels padded with
-100 (BART builds its decoder inputs by shifting them right). Evaluation generates with the settings of
``task.generate`` (beam search: ``num_beams`` 3, ``max_new_tokens`` 64, ``no_repeat_ngram_size`` 3,
``early_stopping``, ``length_penalty`` 1.0; only the token ids come from the checkpoint's generation config) and
scores ROUGE-1/2/L F-measure with stemming against the raw gold summaries (``dynrank.metrics.rouge``).
The search itself is ``dynrank.tasks.beam``'s (``eval.beam_search=fast``: generate()'s summaries token for token,
with shared encoder states, a static cache and CUDA graphs), or ``model.generate`` (``eval.beam_search=generate``,
and for settings the fast one does not port). ``eval.max_samples`` evaluates the first n documents; the dev
metrics record how many in ``n_eval``. ``task.metric`` (rougeL) picks the best epoch.

The same summaries are also scored as the authors' code scores them (github.com/MIkumikumi0116/DoRA @235e21f,
``summarization_eval_forward_func`` + ``evaluate.load('rouge')`` with its defaults): no stemming, against the
references decoded from the tokenised labels (so cut at ``task.max_target_length`` tokens, as theirs), stored
as ``rouge1@paper_code``, ``rouge2@paper_code``, ``rougeL@paper_code``. Their bootstrap aggregation (the
``mid`` of 1000 resampled means) is not reproduced: the plain mean is used.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F
from transformers import AutoModelForSeq2SeqLM

from .. import functional_dropout, packing_bart
from ..data import xsum as xsum_data
from ..data.cache import Encoded, cached, fingerprint, pad_batch, source_id, tokenizer_id
from ..errors import ConfigError
from ..device import fast_path
from ..dropout import functional_positions
from ..packed_batch import PACKED, pack_seq2seq
from ..metrics.rouge import rouge
from ..models import load_model
from . import beam
from .base import Task, autocast, evaluating, limit, mean_per_run, repeat_runs
from .squad import eval_limit

log = logging.getLogger(__name__)


def prepare_features(tokenizer, rows: list[dict], max_length: int, max_target_length: int) -> dict[str, list]:
    """Documents and summaries stripped (the authors' Summarization_Tokenizer), then tokenised and truncated."""
    src = tokenizer([r["document"].strip() for r in rows], max_length=max_length, truncation=True)
    tgt = tokenizer(text_target=[r["summary"].strip() for r in rows], max_length=max_target_length, truncation=True)
    return {"input_ids": src["input_ids"], "labels": tgt["input_ids"]}


@dataclass
class XsumEval:
    rows: list[dict]  # documents and gold summaries (raw text, the ROUGE references)
    features: Encoded  # tokenised sources


class XsumTask(Task):
    task_type = "seq2seq"

    def __init__(self, cfg, tokenizer):
        super().__init__(cfg, tokenizer)
        t = cfg.task
        self.max_length, self.max_target_length = int(t.max_length), int(t.max_target_length)
        self.eval_split = str(t.get("eval_split") or "validation")  # validation | test: config.SCHEMA
        self.generate_kwargs = OmegaConf.to_container(t.generate, resolve=True)  # validated by config.SCHEMA
        self.beam_mode = str(cfg.get("eval", {}).get("beam_search") or "fast")  # fast | generate: config.SCHEMA
        if min(self.max_length, self.max_target_length) < 1:
            raise ConfigError("task.max_length and task.max_target_length must be >= 1")
        self.packs = False  # sources and summaries packed (packing_bart.py): build_model reads the model's config
        if cfg.model.family != "bart":
            raise ConfigError(f"XSum needs an encoder-decoder model (model=bart_base or tiny_bart); "
                              f"model={cfg.model.id} is family '{cfg.model.family}'")

    def _encode(self, split: str, rows_fn) -> Encoded:
        d = self.cfg.data
        key = fingerprint("xsum", "stripped", split, self.max_length, self.max_target_length,
                          tokenizer_id(self.tokenizer), source_id(d.dir, self.name, split))
        return cached(d.cache_dir, key, lambda: Encoded(prepare_features(
            self.tokenizer, rows_fn(), self.max_length, self.max_target_length)))

    def train_set(self):
        enc = self._encode("train", lambda: xsum_data.load_split("train", self.cfg.data.dir))
        n = self.cfg.data.max_train_samples
        return enc if n is None else Encoded({k: v[: int(n)] for k, v in enc.columns.items()})

    def eval_sets(self):
        rows = xsum_data.load_split(self.eval_split, self.cfg.data.dir)
        enc = self._encode(self.eval_split, lambda: rows)
        n = eval_limit(self.cfg)
        rows = limit(rows, n)
        enc = Encoded({k: v[: len(rows)] for k, v in enc.columns.items()})
        return {self.eval_split: XsumEval(rows, enc)}

    def collate(self, batch):
        multiple = self.pad_to_multiple  # bounds the shapes a compiled model or CUDA graphs see
        out = pad_batch(batch, self.tokenizer.pad_token_id, multiple=multiple)
        if "labels" in batch[0]:
            width = -(-max(len(b["labels"]) for b in batch) // multiple) * multiple
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for i, b in enumerate(batch):
                labels[i, :len(b["labels"])] = torch.as_tensor(b["labels"])
            out["labels"] = labels
        return out

    def packed_batch(self, dataset, per_run):
        """Every run's sources and summaries packed (``packed_batch.pack_seq2seq``)."""
        idx = [j for run in per_run for j in run]
        cols = dataset.columns
        return pack_seq2seq([cols["input_ids"][j] for j in idx], [cols["labels"][j] for j in idx], len(per_run),
                            self.tokenizer.pad_token_id, self.decoder_start, self.pad_to_multiple, self.positions)

    def build_model(self):
        model = load_model(self.cfg.model, AutoModelForSeq2SeqLM, self.tokenizer)
        # what packed batches need from the model (its config: read once, before any wrapping)
        self.decoder_start = int(model.config.decoder_start_token_id)
        self.positions = functional_positions(model.config)  # the dropout keys' stride (dropout.install_functional)
        self.packs = packing_bart.walkable(model)  # a model with LayerDrop stays padded
        return model

    def run_losses(self, model, batch, runs: int):
        """Token cross-entropy over each run's summary tokens (labels -100 ignored), the decoder fed the labels
        shifted right: BART's own loss of each run (``train.label_smoothing`` as torch's ``cross_entropy``), every
        dropout mask from the run's own stream (``functional_dropout``: a run's masks do not depend on the runs
        stacked beside it, nor on the layout). A packed batch (``packing_bart``) computes the logits of its decoder
        rows only."""
        labels = batch["labels"]
        if PACKED in batch:
            with functional_dropout.functional(model, runs, batch):
                logits = packing_bart.logits(model, batch)
        else:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            decoder_ids = model.prepare_decoder_input_ids_from_labels(labels=labels)
            with functional_dropout.functional(model, runs, [inputs["input_ids"], decoder_ids]):
                logits = model(**inputs, decoder_input_ids=decoder_ids).logits
        per = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none",
                              label_smoothing=float(self.cfg.train.get("label_smoothing") or 0.0))
        return mean_per_run(per, runs, labels != -100)

    @torch.no_grad()
    def generate(self, model, features: Encoded, device, amp, runs: int = 1) -> list[list[str]]:
        """Summaries of every source by each run (``out[k][i]``) with ``task.generate``'s settings (``token_ids``)."""
        out: list[list[str | None]] = [[None] * len(features) for _ in range(runs)]
        self.gen_tokens = [0] * runs
        for idx, seqs in self.token_ids(model, features, device, amp, runs):
            for k in range(runs):
                self.gen_tokens[k] += int((seqs[k] != self.tokenizer.pad_token_id).sum())
                for j, text in zip(idx, self.tokenizer.batch_decode(seqs[k], skip_special_tokens=True)):
                    out[k][j] = text.strip()
        return out

    @torch.no_grad()
    def token_ids(self, model, features: Encoded, device, amp, runs: int = 1):
        """(sources, generated ids (runs, len(sources), length)) per batch of length-sorted sources, every run
        generating from each batch at once: by ``dynrank.tasks.beam`` (the same tokens, fast; batches as large as the
        GPU's memory allows) unless ``eval.beam_search=generate`` or it cannot reproduce the settings (then
        ``model.generate`` in batches of ``train.eval_batch_size`` sources, the reason logged)."""
        bs = int(self.cfg.train.eval_batch_size)
        fast = self.beam_search(model, device, amp)
        order = np.argsort(features.lengths(), kind="stable")[::-1]  # longest first: an OOM shows at once
        i = 0
        while i < len(order):
            n = bs if fast is None else fast.docs_per_batch(len(features.columns["input_ids"][order[i]]), runs,
                                                             device, bs)
            idx, i = order[i:i + n], i + n
            batch = {k: v.to(device) for k, v in pad_batch([{"input_ids": features.columns["input_ids"][j]}
                                                             for j in idx], self.tokenizer.pad_token_id).items()}
            if fast is not None:
                seqs = fast(batch, runs)
            else:
                with autocast(device, amp):
                    seqs = model.generate(**repeat_runs(batch, runs), **self.generate_kwargs)
            yield idx, seqs.cpu().view(runs, len(idx), -1)

    def beam_search(self, model, device, amp) -> beam.FastBeamSearch | None:
        """The fast beam search for this evaluation (CUDA graphs where the training graphs are on), or None."""
        if self.beam_mode == "generate":
            return None
        fast = beam.FastBeamSearch.build(model, self.generate_kwargs, device, amp,
                                         graphs=fast_path(self.cfg, device)["cuda_graphs"])
        if isinstance(fast, str):
            log.warning("XSum evaluation with model.generate(): the fast beam search cannot reproduce it: %s", fast)
            return None
        return fast

    def label_texts(self, features: Encoded) -> list[str]:
        """The authors' ROUGE references: the tokenised (truncated) labels decoded back to text."""
        texts = self.tokenizer.batch_decode(features.columns["labels"], skip_special_tokens=True)
        return [t.strip() for t in texts]

    @torch.no_grad()
    def evaluate(self, model, eval_sets, device, amp, runs: int = 1) -> list[dict[str, float]]:
        metrics = [{} for _ in range(runs)]
        with evaluating(model):
            for split, ev in eval_sets.items():
                for out, preds, tokens in zip(metrics, self.generate(model, ev.features, device, amp, runs),
                                              self.gen_tokens):
                    m = rouge(preds, [r["summary"] for r in ev.rows])
                    m.update({f"{k}@paper_code": v for k, v in
                              rouge(preds, self.label_texts(ev.features), use_stemmer=False).items()})
                    m["n_eval"] = float(len(ev.rows))
                    m["gen_len"] = tokens / max(1, len(ev.rows))  # mean generated tokens (with specials)
                    out.update(m)  # one eval split (task.eval_split): no suffix, so task.metric names the key
        return metrics


TASK = XsumTask
