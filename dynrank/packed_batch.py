"""A packed batch: a stack's sequences end to end, one flat tensor of tokens instead of (batch, length).

    [ run 0's sequences, end to end | filler ][ run 1's sequences | filler ] ... [ run R-1's ... | filler ]

Every run's block is the same size (its real tokens, then filler up to ``bucket``(the largest run's count)), so the
rows of each run stay contiguous and equal in number. ``pack`` lays the batch out with what attention needs to see
each sequence on its own (each sequence's first row and length; the rows of a padded view, ``gather`` / ``valid``,
and back, ``scatter``) and each row's dropout key (``seq_keys``; a padded batch's: ``DropoutStream.set_padded``).
The encoder's forward over such a batch is ``packing.py``'s.
"""
from __future__ import annotations

import torch

from .dropout import MAX_POSITIONS, seq_keys

PACKED = "seq_start"  # the key that marks a packed batch


def bucket(n: int, minimum: int = 16) -> int:
    """``n`` rounded up to a multiple of max(``minimum``, 2^ceil(log2 n) / 16): at most 16 sizes per doubling, at
    most ~1/16 of filler."""
    step = max(minimum, (1 << max(0, (n - 1).bit_length())) // 16)
    return -(-n // step) * step


def run_block(lens: torch.Tensor, runs: int) -> int:
    """Each run's block of rows for sequences of ``lens`` tokens (run-major, the same number per run): ``bucket`` of
    the largest run's token count."""
    return bucket(int(lens.view(runs, -1).sum(1).max()))


TILE = 128  # the longest sequence the GPU's one-tile attention kernel takes (``attention.packed_attention``)


def view_width(longest: int, multiple: int) -> int:
    """The attention view's width for a longest sequence of ``longest`` tokens: rounded up to ``multiple``; where
    shapes are bucketed (``multiple`` > 1: CUDA graphs, one per shape) and the sequence fits one tile, to the next
    power of two (at least 16) instead, the block the kernel computes anyway: SST-2's widths 40 to 72 become 64 and
    128, half the shapes and so half the graph captures of a job."""
    if multiple > 1 and longest <= TILE:
        return max(16, 1 << (longest - 1).bit_length())
    return -(-longest // multiple) * multiple


def pack(rows: list[list[int]], runs: int, pad_id: int, position_offset: int, multiple: int = 8,
         token_types: list[list[int]] | None = None, positions: int = MAX_POSITIONS,
         block: int | None = None) -> dict[str, torch.Tensor]:
    """The packed batch of ``rows`` (the token ids of every run's sequences, run-major, the same number per run).

    ``position_offset``: the position id of a sequence's first token (RoBERTa: padding_idx + 1 = 2; BERT: 0);
    ``multiple``: the longest sequence rounds up to it (the attention view's width: ``view_width``);
    ``positions``: the dropout keys' stride of a sequence (``DropoutStream.positions``); ``block``: each run's rows
    (default ``run_block``). Keys:
    ``input_ids``, ``position_ids``, ``token_type_ids`` (T,) with T = runs * block; ``token_keys`` (T,) (``dropout``);
    ``seq_start`` (N,) each sequence's first row (its ``<s>``), ``seq_len`` (N,); ``gather`` (N * width,) the row
    of each slot of the attention view, ``valid`` (N, width) which slots hold a token; ``scatter`` (T,) the slot of
    each row (filler rows: slot 0)."""
    n = len(rows)
    per_run = n // runs
    lens = torch.tensor([len(r) for r in rows], dtype=torch.long)
    block = block or run_block(lens, runs)
    width = view_width(int(lens.max()), multiple)
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
    position_ids = torch.full((T,), max(position_offset - 1, 0), dtype=torch.long)  # filler: RoBERTa's padding_idx
    position_ids[rows_real] = pos.expand(n, width)[valid] + position_offset
    types = torch.zeros(T, dtype=torch.long)
    if token_types is not None:
        types[rows_real] = torch.tensor([t for r in token_types for t in r], dtype=torch.long)
    keys = torch.zeros(T, dtype=torch.long)
    keys[rows_real] = (seq_keys(n, runs).unsqueeze(1) * positions + pos)[valid]
    return {"input_ids": ids, "position_ids": position_ids, "token_type_ids": types, "token_keys": keys,
            PACKED: start, "seq_len": lens, "gather": gather, "valid": valid, "scatter": scatter}


def pack_seq2seq(sources: list[list[int]], targets: list[list[int]], runs: int, pad_id: int, decoder_start: int,
                 multiple: int, positions: int) -> dict[str, torch.Tensor]:
    """The packed batch of an encoder-decoder step (BART, ``packing_bart.py``): the sources packed as ``pack``
    packs them (positions from 0: BART's learned positions add their own offset), the decoder's inputs (each
    summary shifted right behind ``decoder_start``, as BART's ``shift_tokens_right``) packed the same way under
    ``decoder_``-prefixed keys, and ``labels`` (the summaries' tokens at their decoder rows, -100 on filler). The
    decoder's block is never the encoder's: the dropout stream tells the two kinds of rows apart by their count
    (``DropoutStream.set_rows``)."""
    enc = pack(sources, runs, pad_id, 0, multiple, positions=positions)
    shifted = [[decoder_start] + t[:-1] for t in targets]
    block = run_block(torch.tensor([len(t) for t in targets]), runs)
    if runs * block == enc["input_ids"].numel():
        block = bucket(block + 1)
    dec = pack(shifted, runs, pad_id, 0, multiple, positions=positions, block=block)
    labels = torch.full_like(dec["input_ids"], -100)
    N, width = dec["valid"].shape
    labels[dec["gather"].view(N, width)[dec["valid"]]] = torch.tensor([t for r in targets for t in r])
    enc.pop("token_type_ids")
    dec.pop("token_type_ids")
    return {**enc, **{"decoder_" + k: v for k, v in dec.items()}, "labels": labels}
