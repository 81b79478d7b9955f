"""Packed steps: the encoder (RoBERTa, BERT) over the real tokens of a stack's batches only (the batch's layout:
``packed_batch.py``).

A padded step multiplies every sequence of every run to the stack's longest one; on GLUE's real lengths 23-60% of
those tokens are real (issue 26's table). A packed batch is one flat tensor of tokens instead of (batch, length):

    [ run 0's sequences, end to end | filler ][ run 1's sequences | filler ] ... [ run R-1's ... | filler ]

every run's block the same size (its real tokens, then filler up to ``bucket``(the largest run's count)), so the
rows of each run stay contiguous and equal in number and the per-run products of ``methods/layers.py`` stay batched
GEMMs (``by_run``). Every linear layer (frozen and adapter), layer norm, GELU, dropout and residual add of the
encoder runs over these rows; attention runs per sequence, so it sees exactly the sequence's own tokens: on a GPU a
Triton kernel reads each sequence's rows in place (``attention.packed_attention``, sequences up to 128 tokens),
elsewhere a padded view is gathered around ``attention.attend``. The filler rows are computed and never read.
The number of shapes (and so of CUDA graphs) is bounded by the buckets: the block size rounded up to at most 16
steps per doubling, the longest sequence to a power of two up to 128 tokens and beyond to the task's
``pad_to_multiple`` (``packed_batch.view_width``).

The model's own modules do the work (``encode`` calls each layer's query/key/value, output blocks, intermediate
block and the task head), so every method's wrapped modules (LoRA family, bottleneck adapters, BitFit) run as they
do in transformers' padded forward; in a training step the query, key and value projections run as one node where
they go together (``qkv.project``). ``tests/test_packing.py`` checks packed = padded for every method.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import attend, packed_attention
from .packed_batch import PACKED, seq_keys
from .qkv import project


def encoder_of(model: nn.Module):
    """The BERT-family encoder inside a task model (``model.roberta`` / ``model.bert``), or None (BART)."""
    for name in ("roberta", "bert"):
        base = getattr(model, name, None)
        if base is not None:
            return base
    return None


def set_dropout_rows(model, batch: dict, runs: int) -> None:
    """Tell the model's dropout stream (if any) the row keys of ``batch``, packed or padded."""
    stream = getattr(model, "dropout_stream", None)
    if stream is None:
        return
    if PACKED in batch:
        stream.set_rows(seq_keys(batch[PACKED].numel(), runs, batch[PACKED].device), batch["token_keys"])
    else:
        N, L = batch["input_ids"].shape
        stream.set_padded(seq_keys(N, runs, batch["input_ids"].device), [L])


class SequenceView:
    """One kind of sequence of a packed batch (``packed_batch.pack``'s keys, under ``prefix``: BART's summaries are
    ``decoder_``): where each sequence's rows sit (``start``, ``lens``) and the padded view attention reads around
    them (``gather`` / ``valid``, and back, ``scatter``)."""

    def __init__(self, batch: dict, prefix: str = ""):
        self.gather, self.valid, self.scatter = (batch[prefix + k] for k in ("gather", "valid", "scatter"))
        self.start, self.lens = batch[prefix + PACKED], batch[prefix + "seq_len"]
        self.n, self.width = self.valid.shape

    def seqs(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        """(1, T, heads * dh) rows -> (N, heads, width, dh): each sequence's tokens (slots past its end: its first)."""
        return x[0].index_select(0, self.gather).view(self.n, self.width, heads, -1).transpose(1, 2)

    def rows(self, ctx: torch.Tensor) -> torch.Tensor:
        """(N, heads, width, dh) -> (1, T, heads * dh) back onto the rows (filler rows: slot 0's)."""
        return ctx.transpose(1, 2).reshape(self.n * self.width, -1).index_select(0, self.scatter)[None]


def encode(model, batch: dict) -> torch.Tensor:
    """The encoder's last hidden states of a packed batch, (T, hidden): transformers' forward, row by row."""
    base = encoder_of(model)
    h = base.embeddings(input_ids=batch["input_ids"][None], token_type_ids=batch["token_type_ids"][None],
                        position_ids=batch["position_ids"][None])
    view = SequenceView(batch)
    for layer in base.encoder.layer:
        h = _layer(layer, h, view)
    return h[0]


def _layer(layer, h: torch.Tensor, view: SequenceView) -> torch.Tensor:
    """One encoder layer on rows (1, T, hidden): attention per sequence, the rest row-wise."""
    sa = layer.attention.self
    heads = sa.num_attention_heads
    qkv = project(sa, h)  # q, k and v as one tensor's thirds (one node), or None: apart
    q, k, v = (sa.query(h), sa.key(h), sa.value(h)) if qkv is None else qkv.split(qkv.shape[-1] // 3, -1)
    p = sa.dropout.p if sa.training else 0.0
    # a GPU kernel on the rows, or None
    ctx = packed_attention(sa, q, k, v, view.start, view.lens, view.width, p, sa.scaling, qkv=qkv)
    if ctx is None:  # a padded view of each sequence around attention
        ctx = attend(sa, view.seqs(q, heads), view.seqs(k, heads), view.seqs(v, heads),
                     view.valid[:, None, None, :], p, sa.scaling)  # (N, heads, width, dh)
        ctx = view.rows(ctx)
    h = layer.attention.output(ctx, h)
    return layer.output(layer.intermediate(h), h)


def classification_logits(model, batch: dict) -> torch.Tensor:
    """(N, labels): the sequence classifier's head on each sequence's ``<s>`` row (RoBERTa's head reads
    ``features[:, 0]``; BERT's pooler too, then its dropout and classifier)."""
    cls = encode(model, batch).index_select(0, batch[PACKED])[:, None]  # (N, 1, hidden)
    if hasattr(model, "roberta"):
        return model.classifier(cls)
    return model.classifier(model.dropout(model.bert.pooler(cls)))


def token_logits(model, batch: dict) -> torch.Tensor:
    """(N, width, 2): the QA head on every row, gathered per sequence (slots past a sequence's end: any value)."""
    logits = model.qa_outputs(encode(model, batch))  # (T, 2)
    N, width = batch["valid"].shape
    return logits.index_select(0, batch["gather"]).view(N, width, -1)
