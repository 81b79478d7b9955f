"""Packed steps of BART (XSum): the encoder over the sources' real tokens, the decoder over the summaries', and the
LM head over the decoder's rows only (the batch's layout: ``packed_batch.pack_seq2seq``).

A padded XSum step multiplies every source to the batch's longest (768 tokens, truncated, in most batches of 16 or
64 documents of ~430 tokens on average) and every summary to the longest summary, and the LM head (50,265 outputs)
runs on every padded summary slot. Packed, every linear layer (frozen and adapter), layer norm, GELU, dropout and
residual add runs over the real rows, the runs' rows contiguous and equal in number (``packing.py``'s layout, so
the per-run products stay batched GEMMs). Attention stays per sequence, on a padded view gathered around it:
encoder self-attention (each source's own tokens), causal decoder self-attention (each summary's), and
cross-attention (each summary's queries against its own source's tokens); with dropout it is the model's SDPA call
as BART makes it, so ``functional_dropout`` drops the probabilities with the runs' keyed masks (``attention.keyed``:
the tiled kernels on a GPU).

The walk is BART's forward (transformers' ``BartEncoderLayer`` / ``BartDecoderLayer``, post-norm), module by
module and in its order of dropout calls, so every method's wrapped linears run as they do padded and every
dropout site draws the mask it draws padded: ``tests/test_xsum.py`` checks packed = padded for every method with
dropout on. Not walked: LayerDrop (``encoder_layerdrop`` / ``decoder_layerdrop`` > 0 draw from the global
generator; ``XsumTask`` keeps such models padded) and fp16's overflow clamp (the fast path trains in bf16).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .packing import SequenceView


def walkable(model) -> bool:
    """Whether ``logits`` reproduces the model's training forward: BART without LayerDrop."""
    c = model.config
    return not (getattr(c, "encoder_layerdrop", 0.0) or getattr(c, "decoder_layerdrop", 0.0))


def logits(model, batch: dict) -> torch.Tensor:
    """(1, decoder rows, vocab): the LM head's logits of a packed batch (``packed_batch.pack_seq2seq``), every
    decoder row, filler rows any value."""
    base = model.model
    src = SequenceView(batch)
    tgt = SequenceView(batch, "decoder_")
    h = _embed(base.encoder, batch["input_ids"], batch["position_ids"])
    for layer in base.encoder.layers:
        h = _encoder_layer(layer, h, src)
    y = _embed(base.decoder, batch["decoder_input_ids"], batch["decoder_position_ids"])
    for layer in base.decoder.layers:
        y = _decoder_layer(layer, y, h, tgt, src)
    return model.lm_head(y) + model.final_logits_bias.to(y.device)


def _embed(part, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """BART's embeddings of (T,) ids: scaled tokens + learned positions (offset 2), layer norm, dropout."""
    pos = part.embed_positions
    h = part.embed_tokens(ids[None]) + nn.Embedding.forward(pos, positions[None] + pos.offset)
    h = part.layernorm_embedding(h)
    return F.dropout(h, p=part.dropout, training=part.training)


def _attention(attn, x: torch.Tensor, kv: torch.Tensor, q_view: SequenceView, kv_view: SequenceView,
               causal: bool) -> torch.Tensor:
    """``BartAttention`` on rows: q from ``x``, k and v from ``kv`` (itself, or the encoder's rows), each sequence
    against its own keys (``kv_view``'s valid slots; ``causal``: keys up to the query's position), out_proj."""
    heads = attn.num_heads
    q = q_view.seqs(attn.q_proj(x), heads)
    k, v = kv_view.seqs(attn.k_proj(kv), heads), kv_view.seqs(attn.v_proj(kv), heads)
    # causal: the view's slots past a summary's end only follow its real tokens, so the causal mask alone keeps
    # each real query on its own real keys (as BART's padded decoder, which has no padding mask)
    mask = None if causal else kv_view.valid[:, None, None, :]
    ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=attn.dropout if attn.training else 0.0,
                                         is_causal=causal, scale=attn.scaling)
    return attn.out_proj(q_view.rows(ctx))


def _residual(layer, h: torch.Tensor, out: torch.Tensor, norm) -> torch.Tensor:
    return norm(h + F.dropout(out, p=layer.dropout, training=layer.training))


def _feed_forward(layer, h: torch.Tensor) -> torch.Tensor:
    x = F.dropout(layer.activation_fn(layer.fc1(h)), p=layer.activation_dropout, training=layer.training)
    return _residual(layer, h, layer.fc2(x), layer.final_layer_norm)


def _encoder_layer(layer, h: torch.Tensor, src: SequenceView) -> torch.Tensor:
    h = _residual(layer, h, _attention(layer.self_attn, h, h, src, src, False), layer.self_attn_layer_norm)
    return _feed_forward(layer, h)


def _decoder_layer(layer, y: torch.Tensor, h: torch.Tensor, tgt: SequenceView, src: SequenceView) -> torch.Tensor:
    y = _residual(layer, y, _attention(layer.self_attn, y, y, tgt, tgt, True), layer.self_attn_layer_norm)
    y = _residual(layer, y, _attention(layer.encoder_attn, y, h, tgt, src, False), layer.encoder_attn_layer_norm)
    return _feed_forward(layer, y)
