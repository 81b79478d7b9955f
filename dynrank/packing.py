"""Packed steps: the encoder (RoBERTa, BERT) over the real tokens of a stack's batches only.

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
steps per doubling, the longest sequence to the task's ``pad_to_multiple``.

The model's own modules do the work (``encode`` calls each layer's query/key/value, output blocks, intermediate
block and the task head), so every method's wrapped modules (LoRA family, bottleneck adapters, BitFit) run as they
do in transformers' padded forward; ``tests/test_packing.py`` checks packed = padded for every method.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import attend, packed_attention
from .dropout import MAX_POSITIONS

PACKED = "seq_start"  # the key that marks a packed batch


def bucket(n: int, minimum: int = 16) -> int:
    """``n`` rounded up to a multiple of max(``minimum``, 2^ceil(log2 n) / 16): at most 16 sizes per doubling, at
    most ~1/16 of filler."""
    step = max(minimum, (1 << max(0, (n - 1).bit_length())) // 16)
    return -(-n // step) * step


def encoder_of(model: nn.Module):
    """The BERT-family encoder inside a task model (``model.roberta`` / ``model.bert``), or None (BART)."""
    for name in ("roberta", "bert"):
        base = getattr(model, name, None)
        if base is not None:
            return base
    return None


def pack(rows: list[list[int]], runs: int, pad_id: int, position_offset: int, multiple: int = 8,
         token_types: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
    """The packed batch of ``rows`` (the token ids of every run's sequences, run-major, the same number per run).

    ``position_offset``: the position id of a sequence's first token (RoBERTa: padding_idx + 1 = 2; BERT: 0);
    ``multiple``: the longest sequence rounds up to it (the attention view's width). Keys: ``input_ids``,
    ``position_ids``, ``token_type_ids`` (T,) with T = runs * block; ``token_keys`` (T,) (``dropout``);
    ``seq_start`` (N,) each sequence's first row (its ``<s>``), ``seq_len`` (N,); ``gather`` (N * width,) the row
    of each slot of the attention view, ``valid`` (N, width) which slots hold a token; ``scatter`` (T,) the slot of
    each row (filler rows: slot 0)."""
    n = len(rows)
    per_run = n // runs
    lens = torch.tensor([len(r) for r in rows], dtype=torch.long)
    run_tokens = lens.view(runs, per_run).sum(1)
    block = bucket(int(run_tokens.max()))
    width = -(-int(lens.max()) // multiple) * multiple
    T = runs * block
    # each sequence's first row: run k's block starts at k * block, its sequences end to end
    within = torch.cumsum(lens.view(runs, per_run), 1) - lens.view(runs, per_run)
    start = (within + torch.arange(runs).unsqueeze(1) * block).view(-1)
    pos = torch.arange(width)
    valid = pos.unsqueeze(0) < lens.unsqueeze(1)  # (N, width)
    gather = torch.where(valid, start.unsqueeze(1) + pos, start.unsqueeze(1)).view(-1)
    rows_real = (start.unsqueeze(1) + pos)[valid]  # the rows of real tokens, sequence by sequence
    slots = (torch.arange(n).unsqueeze(1) * width + pos)[valid]
    scatter = torch.zeros(T, dtype=torch.long)
    scatter[rows_real] = slots
    ids = torch.full((T,), pad_id, dtype=torch.long)
    ids[rows_real] = torch.tensor([t for r in rows for t in r], dtype=torch.long)
    positions = torch.full((T,), max(position_offset - 1, 0), dtype=torch.long)  # filler: RoBERTa's padding_idx
    positions[rows_real] = pos.expand(n, width)[valid] + position_offset
    types = torch.zeros(T, dtype=torch.long)
    if token_types is not None:
        types[rows_real] = torch.tensor([t for r in token_types for t in r], dtype=torch.long)
    keys = torch.zeros(T, dtype=torch.long)
    keys[rows_real] = (seq_keys(n, runs).unsqueeze(1) * MAX_POSITIONS + pos)[valid]
    return {"input_ids": ids, "position_ids": positions, "token_type_ids": types, "token_keys": keys,
            PACKED: start, "seq_len": lens, "gather": gather, "valid": valid, "scatter": scatter}


def seq_keys(n: int, runs: int, device=None) -> torch.Tensor:
    """Each of ``n`` sequences' index in its run's batch (the runs' batches run-major, n // runs each): the key of
    its rows' dropout masks (``dropout.DropoutStream``)."""
    return torch.arange(n, device=device) % (n // runs)


def padded_keys(input_ids: torch.Tensor, runs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The dropout row keys of a padded batch (N, L), run-major: each sequence's index in its run's batch, and each
    position's token key."""
    N, L = input_ids.shape
    seq = seq_keys(N, runs, input_ids.device)
    tokens = seq.unsqueeze(1) * MAX_POSITIONS + torch.arange(L, device=input_ids.device)
    return seq, tokens.reshape(-1)


def set_dropout_rows(model, batch: dict, runs: int) -> None:
    """Tell the model's dropout stream (if any) the row keys of ``batch``, packed or padded."""
    stream = getattr(model, "dropout_stream", None)
    if stream is None:
        return
    if PACKED in batch:
        stream.set_rows(seq_keys(batch[PACKED].numel(), runs, batch[PACKED].device), batch["token_keys"])
    else:
        stream.set_rows(*padded_keys(batch["input_ids"], runs))


def encode(model, batch: dict) -> torch.Tensor:
    """The encoder's last hidden states of a packed batch, (T, hidden): transformers' forward, row by row."""
    base = encoder_of(model)
    h = base.embeddings(input_ids=batch["input_ids"][None], token_type_ids=batch["token_type_ids"][None],
                        position_ids=batch["position_ids"][None])
    view = (batch["gather"], batch["valid"], batch["scatter"], batch[PACKED], batch["seq_len"])
    for layer in base.encoder.layer:
        h = _layer(layer, h, view)
    return h[0]


def _layer(layer, h: torch.Tensor, view) -> torch.Tensor:
    """One encoder layer on rows (1, T, hidden): attention per sequence, the rest row-wise."""
    gather, valid, scatter, start, lens = view
    sa = layer.attention.self
    heads, dh = sa.num_attention_heads, sa.attention_head_size
    N, width = valid.shape
    q, k, v = sa.query(h), sa.key(h), sa.value(h)
    p = sa.dropout.p if sa.training else 0.0
    ctx = packed_attention(sa, q, k, v, start, lens, width, p, sa.scaling)  # a GPU kernel on the rows, or None
    if ctx is None:  # a padded view of each sequence around attention

        def seqs(x):  # (1, T, heads * dh) -> (N, heads, width, dh)
            return x[0].index_select(0, gather).view(N, width, heads, dh).transpose(1, 2)

        ctx = attend(sa, seqs(q), seqs(k), seqs(v), valid[:, None, None, :], p, sa.scaling)  # (N, heads, width, dh)
        ctx = ctx.transpose(1, 2).reshape(N * width, heads * dh).index_select(0, scatter)[None]
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
