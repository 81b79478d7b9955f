"""Packed steps of BART (XSum): the encoder over the sources' real tokens, the decoder over the summaries', and the
LM head over the decoder's rows only (the batch's layout: ``packed_batch.pack_seq2seq``).

A padded XSum step multiplies every source to the batch's longest (768 tokens, truncated, in most batches of 16 or
64 documents of ~430 tokens on average) and every summary to the longest summary, and the LM head (50,265 outputs)
runs on every padded summary slot. Packed, every linear layer (frozen and adapter), layer norm, GELU, dropout and
residual add runs over the real rows, the runs' rows contiguous and equal in number (``packing.py``'s layout, so
the per-run products stay batched GEMMs). Attention stays per sequence: encoder self-attention (each source's own
tokens), causal decoder self-attention (each summary's), and cross-attention (each summary's queries against its
own source's tokens). On a GPU the tiled kernels run on the rows themselves (``tiled_attention.flash``, packed), a
sequence's tiles only up to its length, its probabilities dropped with its run's keyed masks; elsewhere the same
masks (``attention.keyed``) on a padded view gathered around each sequence. Either takes the dropout site the
padded step's SDPA call takes (``functional_dropout``).

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

from .attention import keyed
from .methods.layers import frozen_derived
from .packing import SequenceView
from .tiled_attention import flash


def walkable(model) -> bool:
    """Whether ``logits`` reproduces the model's training forward: BART without LayerDrop."""
    c = model.config
    return not (getattr(c, "encoder_layerdrop", 0.0) or getattr(c, "decoder_layerdrop", 0.0))


def logits(model, batch: dict) -> torch.Tensor:
    """(1, decoder rows, vocab): the LM head's logits of a packed batch (``packed_batch.pack_seq2seq``), every
    decoder row, filler rows any value."""
    base = model.model
    stream = getattr(model, "dropout_stream", None)
    src = SequenceView(batch)
    tgt = SequenceView(batch, "decoder_")
    h = _embed(base.encoder, batch["input_ids"], batch["position_ids"])
    for layer in base.encoder.layers:
        h = _encoder_layer(layer, h, src, stream)
    y = _embed(base.decoder, batch["decoder_input_ids"], batch["decoder_position_ids"])
    for layer in base.decoder.layers:
        y = _decoder_layer(layer, y, h, tgt, src, stream)
    return lm_head(model, y)


def vocab_multiple(device: torch.device) -> int:
    """The vocabulary side of the LM head's GEMMs rounded up to this: 8 on a GPU, 1 (as it is) elsewhere."""
    return 8 if device.type == "cuda" else 1


def lm_head(model, y: torch.Tensor) -> torch.Tensor:
    """``lm_head(y) + final_logits_bias``. BART's 50,265 outputs make each row of the logits (and of their gradient)
    an odd number of bf16 elements, which cuBLAS cannot load 16 bytes at a time: the forward and input-gradient
    GEMMs fell back to a generic kernel, 2.7 ms of a 58 ms packed LoRA XSum step on an H100 (round seven's
    profile). With a frozen head the GEMM runs on the weight padded with zero rows to ``vocab_multiple`` (a copy
    made once, ``_padded_weight``) and the logits are its first 50,265 columns: the same products, the bias added as
    before."""
    W = model.lm_head.weight
    multiple = vocab_multiple(y.device)
    vocab = W.shape[0]
    bias = model.final_logits_bias.to(y.device)
    if multiple == 1 or vocab % multiple == 0 or W.requires_grad or model.lm_head.bias is not None:
        return model.lm_head(y) + bias
    return F.linear(y, _padded_weight(model, multiple))[..., :vocab] + bias


def _padded_weight(model, multiple: int) -> torch.Tensor:
    """The LM head's weight padded with zero rows to a multiple of ``multiple``; made once per weight (its storage
    and version: a new or changed weight makes it again)."""
    W = model.lm_head.weight
    return frozen_derived(model, "_padded_lm_head", [W],
                          lambda: F.pad(W.detach(), (0, 0, 0, -(-W.shape[0] // multiple) * multiple - W.shape[0])))


def _embed(part, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """BART's embeddings of (T,) ids: scaled tokens + learned positions (offset 2), layer norm, dropout."""
    pos = part.embed_positions
    h = part.embed_tokens(ids[None]) + nn.Embedding.forward(pos, positions[None] + pos.offset)
    h = part.layernorm_embedding(h)
    return F.dropout(h, p=part.dropout, training=part.training)


def _attention(attn, x: torch.Tensor, kv: torch.Tensor, q_view: SequenceView, kv_view: SequenceView,
               causal: bool, stream) -> torch.Tensor:
    """``BartAttention`` on rows: q from ``x``, k and v from ``kv`` (itself, or the encoder's rows), each sequence
    against its own keys (``kv_view``'s; ``causal``: keys up to the query's position), out_proj. On a GPU the tiled
    kernels read and write the rows (``tiled_attention.flash``, packed: no padded view, no tile past a sequence's
    end), the probabilities dropped with the run's keyed masks of the site the padded step's SDPA call takes."""
    heads = attn.num_heads
    q, k, v = attn.q_proj(x), attn.k_proj(kv), attn.v_proj(kv)
    p = attn.dropout if attn.training else 0.0
    ctx = None
    if stream is not None:
        site = stream.next_site() if p > 0 else 0
        cross = None if kv_view is q_view else (kv_view.start, kv_view.lens, kv_view.width)
        ctx = flash(q, k, v, scale=attn.scaling, seeds=stream.seeds, step=stream.step, site=site, p=p,
                    positions=stream.positions, causal=causal, packed=(q_view.start, q_view.lens, heads, q_view.width),
                    kv=cross)
        if ctx is None and p > 0:  # no kernel here (a CPU) or it failed: the same masks on the gathered views
            ctx = q_view.rows(keyed(*_views(q, k, v, q_view, kv_view, heads), stream, site, p,
                                    _mask(kv_view, causal), attn.scaling, causal))
    if ctx is None:  # no dropout (or no stream: the model's own), SDPA as BART calls it, on gathered views
        ctx = q_view.rows(F.scaled_dot_product_attention(*_views(q, k, v, q_view, kv_view, heads),
                                                         attn_mask=_mask(kv_view, causal), dropout_p=p,
                                                         is_causal=causal, scale=attn.scaling))
    return attn.out_proj(ctx)


def _views(q, k, v, q_view: SequenceView, kv_view: SequenceView, heads: int):
    """q, k and v rows gathered into each sequence's padded view (N, heads, width, dh)."""
    return q_view.seqs(q, heads), kv_view.seqs(k, heads), kv_view.seqs(v, heads)


def _mask(kv_view: SequenceView, causal: bool):
    # causal: the view's slots past a summary's end only follow its real tokens, so the causal mask alone keeps
    # each real query on its own real keys (as BART's padded decoder, which has no padding mask)
    return None if causal else kv_view.valid[:, None, None, :]


def _residual(layer, h: torch.Tensor, out: torch.Tensor, norm) -> torch.Tensor:
    return norm(h + F.dropout(out, p=layer.dropout, training=layer.training))


def _feed_forward(layer, h: torch.Tensor) -> torch.Tensor:
    x = F.dropout(layer.activation_fn(layer.fc1(h)), p=layer.activation_dropout, training=layer.training)
    return _residual(layer, h, layer.fc2(x), layer.final_layer_norm)


def _encoder_layer(layer, h: torch.Tensor, src: SequenceView, stream) -> torch.Tensor:
    h = _residual(layer, h, _attention(layer.self_attn, h, h, src, src, False, stream), layer.self_attn_layer_norm)
    return _feed_forward(layer, h)


def _decoder_layer(layer, y: torch.Tensor, h: torch.Tensor, tgt: SequenceView, src: SequenceView,
                   stream) -> torch.Tensor:
    y = _residual(layer, y, _attention(layer.self_attn, y, y, tgt, tgt, True, stream), layer.self_attn_layer_norm)
    y = _residual(layer, y, _attention(layer.encoder_attn, y, h, tgt, src, False, stream),
                  layer.encoder_attn_layer_norm)
    return _feed_forward(layer, y)
