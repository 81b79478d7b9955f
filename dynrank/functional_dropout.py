"""BART's dropout from each run's own stream: BART calls dropout as a function in every layer (``F.dropout`` on
hidden states and FFN activations, ``dropout_p`` of its SDPA attention), so its masks would come from the global
generator, drawn for the whole stack. ``functional`` routes each of those calls, while the training forward runs
(a ``TorchFunctionMode``), to the model's ``dropout.DropoutStream`` (``dropout.install_functional``): sites numbered
in call order (the same order for every model of one architecture and method, stacked or alone), rows keyed as
the encoders' (each sequence's index in its run's batch, each position). A run's masks then do not depend on the
runs stacked beside it, nor on how far the stack pads its batches.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from .attention import keyed
from .dropout import DropoutStream, seq_keys
from .packed_batch import PACKED


def functional(model: nn.Module, runs: int, inputs: list[torch.Tensor] | dict[str, torch.Tensor]):
    """The context of one training forward of ``model`` over padded ``inputs`` (each (N, L), run-major: BART's
    source and decoder ids) or a packed batch (``packed_batch.pack_seq2seq``: its rows' keys): every dropout the
    model calls, module or function, draws from ``model.dropout_stream``. Without a stream (none was installed:
    ``step.prepare_model``), nothing changes."""
    stream = getattr(model, "dropout_stream", None)
    if stream is None:
        return nullcontext()
    if isinstance(inputs, dict):
        start = inputs[PACKED]
        stream.set_rows(seq_keys(start.numel(), runs, start.device), inputs["token_keys"],
                        inputs["decoder_token_keys"])
    else:
        N = inputs[0].shape[0]
        stream.set_padded(seq_keys(N, runs, inputs[0].device), [int(x.shape[1]) for x in inputs])
    stream.site = 0
    return _FunctionalDropout(stream)


def active_stream() -> DropoutStream | None:
    """The stream of the ``functional`` context the current forward runs in, or None: a module that draws its
    dropout itself (``layers.LowRankLinear``'s one-node path) takes the next site from it, as ``F.dropout`` would."""
    return _ACTIVE[-1] if _ACTIVE else None


_ACTIVE: list[DropoutStream] = []


class _FunctionalDropout(TorchFunctionMode):
    """``F.dropout`` (``nn.Dropout`` calls it too) and SDPA's ``dropout_p`` from the stream. Attention with dropout
    is ``attention.keyed`` (in tiles on a GPU; elsewhere transformers' eager attention), its probabilities dropped
    with the run's keyed masks; without dropout (evaluation) SDPA runs as it was called."""

    def __init__(self, stream: DropoutStream):
        super().__init__()
        self.stream = stream

    def __enter__(self):
        _ACTIVE.append(self.stream)
        return super().__enter__()

    def __exit__(self, *exc):
        _ACTIVE.pop()
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.dropout:
            x, p, training = _bind(args, kwargs, ("input", None), ("p", 0.5), ("training", True))
            if training and p > 0:
                site = self.stream.next_site()
                if x.dim() == 4:  # attention probabilities (transformers' eager attention)
                    return self.stream.attention(x, site, p)
                return self.stream.apply(x, site, p)
        elif func is F.scaled_dot_product_attention:
            q, k, v, mask, p, causal, scale = _bind(args, kwargs, ("query", None), ("key", None), ("value", None),
                                                    ("attn_mask", None), ("dropout_p", 0.0), ("is_causal", False),
                                                    ("scale", None))
            if p > 0 and not kwargs.get("enable_gqa"):
                scale = q.shape[-1] ** -0.5 if scale is None else scale
                return keyed(q, k, v, self.stream, self.stream.next_site(), p, mask, scale, causal)
        return func(*args, **kwargs)


def _bind(args, kwargs, *params):
    """The values of ``params`` ((name, default), in the signature's order) from a call's args and kwargs."""
    return [args[i] if i < len(args) else kwargs.get(name, default) for i, (name, default) in enumerate(params)]
