"""One dropout stream per run: masks that depend on the run's seed, the step and the element, not on the stack.

``torch.nn.Dropout`` draws its masks from one generator, in the order the kernels run: in a stack of R runs (one
model, ``methods/layers.py``) every run's mask would depend on the runs beside it and on how the batch is laid out
(padded or packed). Here a mask is a function of its coordinates (counter-based, as Philox is, Salmon et al. 2011):

    keep(run k, step s, site i, element) = u >= p,
    u = hash(counter ^ K(seed_k, s, i)) / 2^32,     counter = row key * width + column,

where the row key names the row by what it is, not where it sits: a token is (its sequence's index in run k's
batch) * ``MAX_POSITIONS`` + its position; an attention-probability row is that of its query token and head; a
head's input row (one per sequence) is its ``<s>`` token's. A site is one dropout module of the model (its index
in model order). So run k draws the same masks for the same step whether it trains alone or stacked, padded or
packed, and resumes without a generator state to restore: seed 3 inside ``seeds=[1,2,3,4,5]`` is seed 3 alone.

An encoder's dropout is its modules' (``install``: every ``nn.Dropout`` a ``KeyedDropout``; attention through
``attention.attend``). BART calls dropout as a function in every layer: ``functional_dropout`` routes those calls
to the stream (``install_functional``), rows keyed as the encoders' (the position stride ``positions`` is the
model's, 1024 for BART-base, so that a 768-token source keeps distinct keys).

The hash is ``lowbias32`` (Chris Wellons' integer hash, a murmur3-style finaliser). A CPU (and reference)
implementation in numpy's uint32, and on a GPU a Triton kernel (``_keyed_kernel``) that applies the mask in one
pass and recomputes it in the backward pass (no mask is stored); ``tests/test_gpu.py`` checks they agree bit for bit.
"""
from __future__ import annotations

import functools
import importlib

import numpy as np
import torch
from torch import nn

MAX_POSITIONS = 512  # counter stride of a sequence: RoBERTa/BERT's position embeddings (514 / 512 rows)
M32 = 0xFFFFFFFF
_C1, _C2, _GOLDEN = 0x7FEB352D, 0x846CA68B, 0x9E3779B9


def _mix(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding uint32 values (products wrap in int64; the low 32 bits are exact)."""
    x = x ^ (x >> 16)
    x = (x * _C1) & M32
    x = x ^ (x >> 15)
    x = (x * _C2) & M32
    return x ^ (x >> 16)


def stream_keys(seeds: torch.Tensor, step: torch.Tensor, site: int) -> torch.Tensor:
    """K(seed_k, s, i) for every run (R,) int64: the key of run k's masks at step ``step`` and site ``site``."""
    k = _mix(seeds & M32)
    k = _mix(k ^ (step & M32))
    return _mix(k ^ ((site * _GOLDEN) & M32))


def keep_mask(rows: int, width: int, row_keys: torch.Tensor, counter_width: int, seeds: torch.Tensor,
              step: torch.Tensor, site: int, p: float) -> torch.Tensor:
    """The keep mask (rows, width) bool, rows run-major (rows // R of each run, in order), on ``row_keys``' device:
    the implementation without Triton and the reference of the GPU kernel. ``row_keys`` (rows,) int64; column j's
    counter is ``row_key * counter_width + j``. On a CPU in numpy's uint32, whose products wrap modulo 2^32 by
    definition; on a GPU in torch's int64 (the low 32 bits of a wrapped product are exact), graph-safe."""
    R = seeds.numel()
    K = stream_keys(seeds, step, site)
    if row_keys.is_cuda:
        return _keep_mask_torch(width, row_keys, counter_width, K.repeat_interleave(rows // R), p)
    u = row_keys.numpy().astype(np.uint32)[:, None] * np.uint32(counter_width)
    u = u + np.arange(width, dtype=np.uint32)
    u ^= K.numpy().astype(np.uint32).repeat(rows // R)[:, None]
    u ^= u >> 16
    u *= np.uint32(_C1)
    u ^= u >> 15
    u *= np.uint32(_C2)
    u ^= u >> 16
    return torch.from_numpy((u >> 8) >= _threshold(p))


def _keep_mask_torch(width: int, row_keys: torch.Tensor, counter_width: int, K: torch.Tensor, p: float):
    """``keep_mask`` in torch's int64 ops on the keys' device (each row's stream key ``K`` given)."""
    u = (row_keys.unsqueeze(1) * counter_width + torch.arange(width, device=row_keys.device)) & M32
    return (_mix(u ^ K.unsqueeze(1)) >> 8) >= _threshold(p)


def _threshold(p: float) -> int:
    """Keep where the top 24 bits of the hash are >= this: probability 1 - p, to 2^-24."""
    return int(round(p * (1 << 24)))


def keyed_dropout(x: torch.Tensor, row_keys: torch.Tensor, counter_width: int, seeds: torch.Tensor,
                  step: torch.Tensor, site: int, p: float) -> torch.Tensor:
    """Dropout of ``x`` (..., width; rows = x.numel() // width, run-major) with the keyed masks, scaled by 1/(1-p)."""
    return keyed_dropout_kept(x, row_keys, counter_width, seeds, step, site, p)[0]


def keyed_dropout_kept(x: torch.Tensor, row_keys: torch.Tensor, counter_width: int, seeds: torch.Tensor,
                       step: torch.Tensor, site: int, p: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``keyed_dropout``, and its mask where torch's ops made it (a caller's backward then passes it to
    ``keyed_dropout_add_``, as autograd keeps a mask); None where the GPU kernel ran (it recomputes the mask from
    its keys in the backward: nothing stored)."""
    y = _on_kernel(x, lambda: _KeyedDropoutFn.apply(x, row_keys, counter_width, seeds, step, site, p))
    if y is not None:
        return y, None
    width = x.shape[-1]
    mask = keep_mask(x.numel() // width, width, row_keys, counter_width, seeds, step, site, p).view(x.shape)
    return _dropped(x, mask, p), mask


def keyed_dropout_add_(out: torch.Tensor, x: torch.Tensor, row_keys: torch.Tensor, counter_width: int,
                       seeds: torch.Tensor, step: torch.Tensor, site: int, p: float,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """``out += keyed_dropout(x, ...)`` in place (``out`` contiguous, x's shape and dtype): the backward of a dropout
    whose input gradient has another part already in ``out`` (``layers.LowRankLinear``'s adapter beside the frozen
    weight). With ``mask`` (``keyed_dropout_kept``'s) torch's ops on it; on a GPU one kernel (the mask, the scale and
    the add); the same numbers as the two torch ops."""
    if mask is not None:
        return out.add_(_dropped(x, mask, p))
    if out.is_contiguous() and out.dtype == x.dtype and _on_kernel(
            x, lambda: _triton()(x, row_keys, counter_width, seeds, step, site, p, out=out)) is not None:
        return out
    return out.add_(keyed_dropout(x, row_keys, counter_width, seeds, step, site, p))


def _dropped(x: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    return x * mask * (1.0 / (1.0 - p))


class DropoutStream:
    """What every ``KeyedDropout`` of one model reads: each run's seed and the step (device tensors, so a captured
    CUDA graph reads the step ``set_step`` wrote before its replay) and the row keys of the current forward pass
    (``set_rows``: the task sets them from the batch's layout before it calls the model)."""

    def __init__(self, seeds: list[int], device, positions: int = MAX_POSITIONS):
        self.seeds = torch.tensor(seeds, dtype=torch.int64, device=device)
        self.step = torch.zeros((), dtype=torch.int64, device=device)
        self.runs = len(seeds)
        self.positions = positions  # the counter stride of a sequence's rows (>= its length)
        self.rows: dict[int, torch.Tensor] = {}
        self.seq_keys: torch.Tensor | None = None
        self.site = 0  # the next site of a functional forward (``functional_dropout``: sites in call order)

    def set_step(self, step: int) -> None:
        self.step.fill_(int(step))

    def next_site(self) -> int:
        """A functional forward's next dropout site (``functional_dropout.functional`` starts each forward at 0)."""
        self.site += 1
        return self.site - 1

    def set_rows(self, seq_keys: torch.Tensor, *token_keys: torch.Tensor) -> None:
        """Row keys of this forward pass: ``seq_keys`` (N,) each sequence's index in its run's batch, run-major;
        ``token_keys`` (T,) each token row's key (``seq_key * positions + position``; padding and filler rows any
        key), one tensor per packed sequence kind (BART: the sources' rows, then the summaries', of different
        counts: ``packed_batch.pack_seq2seq``). A dropout input with N rows (a head's input) takes the sequences'
        ``<s>`` keys, one with T rows the tokens' of that count."""
        self.seq_keys = seq_keys
        self.rows = {keys.numel(): keys for keys in token_keys}
        self.rows[seq_keys.numel()] = seq_keys * self.positions

    def set_padded(self, seq_keys: torch.Tensor, lengths: list[int]) -> None:
        """Row keys of a padded forward pass whose inputs are (N, L) for each L in ``lengths`` (BART: the source's
        and the summary's): row (n, i) has key ``seq_key_n * positions + i`` at every length."""
        self.seq_keys = seq_keys
        pos = {L: torch.arange(L, device=seq_keys.device) for L in lengths}
        self.rows = {seq_keys.numel() * L: (seq_keys.unsqueeze(1) * self.positions + p).reshape(-1)
                     for L, p in pos.items()}
        self.rows.setdefault(seq_keys.numel(), seq_keys * self.positions)

    def row_keys(self, x: torch.Tensor, site: int) -> torch.Tensor:
        """The keys of ``x``'s rows (x.numel() // width of them) in this forward pass."""
        rows = x.numel() // x.shape[-1]
        keys = self.rows.get(rows)
        if keys is None:
            raise RuntimeError(f"dropout site {site}: no row keys for {rows} rows "
                               f"(the task sets them: DropoutStream.set_rows)")
        return keys

    def apply(self, x: torch.Tensor, site: int, p: float) -> torch.Tensor:
        return keyed_dropout(x, self.row_keys(x, site), x.shape[-1], self.seeds, self.step, site, p)

    def attention(self, probs: torch.Tensor, site: int, p: float) -> torch.Tensor:
        """Dropout of attention probabilities (N, heads, Lq, Lk): row (n, h, i) has key
        ``(seq_key_n * heads + h) * positions + i``, column j counter ``row_key * positions + j``."""
        N, H, Lq, _ = probs.shape
        P = self.positions
        keys = ((self.seq_keys.view(N, 1, 1) * H + torch.arange(H, device=probs.device).view(1, H, 1))
                * P + torch.arange(Lq, device=probs.device).view(1, 1, Lq)).reshape(-1)
        return keyed_dropout(probs, keys, P, self.seeds, self.step, site, p)


class KeyedDropout(nn.Module):
    """``nn.Dropout(p)`` whose masks come from the model's ``DropoutStream`` (site ``site``)."""

    def __init__(self, p: float, site: int, stream: DropoutStream):
        super().__init__()
        self.p, self.site = float(p), site
        self._stream = [stream]  # a list: not a submodule, not in the state dict

    @property
    def stream(self) -> DropoutStream:
        return self._stream[0]

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        return self.stream.apply(x, self.site, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, site={self.site}"


def install(model: nn.Module, seeds: list[int], device) -> DropoutStream:
    """Every ``nn.Dropout`` of ``model`` becomes a ``KeyedDropout`` reading one ``DropoutStream`` (sites numbered in
    model order, the same for every model of one architecture and method); ``model.dropout_stream`` is it."""
    stream = DropoutStream(seeds, device)
    site = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, child_name, KeyedDropout(child.p, site, stream))
                site += 1
    model.dropout_stream = stream
    return stream


def seq_keys(n: int, runs: int, device=None) -> torch.Tensor:
    """Each of ``n`` sequences' index in its run's batch (the runs' batches run-major, n // runs each): the key of
    its rows' dropout masks."""
    return torch.arange(n, device=device) % (n // runs)


def functional_positions(config) -> int:
    """The position stride of a functional stream's row keys (``install_functional``): the model's positions, at
    least ``MAX_POSITIONS``; packed batches key their rows with it too (``packed_batch.pack_seq2seq``)."""
    return max(MAX_POSITIONS, int(getattr(config, "max_position_embeddings", 0) or 0))


def install_functional(model: nn.Module, seeds: list[int], device) -> DropoutStream:
    """A ``DropoutStream`` for a model that calls dropout as a function (BART), position stride its positions;
    ``model.dropout_stream`` is it, and ``functional_dropout.functional`` applies it around each training forward."""
    model.dropout_stream = DropoutStream(seeds, device, functional_positions(model.config))
    return model.dropout_stream


# --- the GPU kernels ---------------------------------------------------------------------------------------------
@functools.cache
def triton_kernels(name: str):
    """``dynrank.<name>`` (a module of Triton kernels), or None where Triton is not installed (CPU builds of torch)."""
    try:
        return importlib.import_module(f"dynrank.{name}")
    except ImportError:
        return None


def interpreting() -> bool:
    """Whether Triton interprets its kernels here (TRITON_INTERPRET=1: on a CPU, the tests of the kernels)."""
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


_AGREES: set = set()


def _kernel_agrees(dtype, device) -> bool:
    """Once per process and dtype, before the kernel's first use: it keeps exactly the elements ``keep_mask`` keeps
    (torch's ops on the device) on a check tensor of 2 runs, and scales them by 1/(1-p)."""
    if (dtype, str(device)) in _AGREES:
        return True
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(64, 300, generator=g) + 0.5).to(device, dtype)  # no zeros: a zero is dropped or kept alike
    keys, seeds = (torch.arange(64) * 7).to(device), torch.tensor([5, 2**31 + 9]).to(device)
    step = torch.tensor(11).to(device)
    y = _triton()(x, keys, 300, seeds, step, 3, 0.1)
    mask = _keep_mask_torch(300, keys, 300, stream_keys(seeds, step, 3).repeat_interleave(32), 0.1)
    ok = torch.equal(y != 0, mask) and torch.allclose(y[mask].float(), x[mask].float() / 0.9, rtol=1e-2)
    if ok:
        _AGREES.add((dtype, str(device)))
    return ok


def kernel_failed(name: str, e: Exception) -> None:
    """A Triton kernel that fails here (at its first, eager call: compile errors) is not used again in this process;
    the torch implementation computes the same masks (one warning). Out of memory is not the kernel's failure: it is
    raised again (the caller's handling of it: a bench row, the beam search's halved batch), and the kernel stays
    in use (the torch fallback would need more memory, and be several times slower for the rest of the process)."""
    if isinstance(e, torch.OutOfMemoryError):
        raise e
    import logging

    logging.getLogger("dynrank").warning("the Triton kernels of %s failed (%s: %s); using torch's ops instead", name,
                                         type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    _FAILED.add(name)


_FAILED: set = set()


def _on_kernel(x: torch.Tensor, call):
    """``call()`` where the Triton kernel runs for ``x`` (a GPU tensor, Triton here) and keeps exactly the elements
    ``keep_mask`` keeps (checked once); None otherwise: the caller then uses torch's ops (the same masks)."""
    if not x.is_cuda or _triton() is None:
        return None
    try:
        if not _kernel_agrees(x.dtype, x.device):
            raise RuntimeError("its masks differ from keep_mask's on a check tensor")
        return call()
    except Exception as e:  # a Triton that cannot build the kernel here: the same masks in torch's ops
        kernel_failed("_triton_dropout", e)
        return None


def _triton():
    """The dropout kernel's launcher, or None without Triton (or where it failed)."""
    if "_triton_dropout" in _FAILED:
        return None
    kernels = triton_kernels("_triton_dropout")
    return kernels.launch if kernels else None


class _KeyedDropoutFn(torch.autograd.Function):
    """The Triton kernel's forward and backward: the backward recomputes the mask (nothing saved but the keys)."""

    @staticmethod
    def forward(ctx, x, keys, counter_width, seeds, step, site, p):
        ctx.save_for_backward(keys, seeds, step)
        ctx.args = (counter_width, site, p)
        return _triton()(x, keys, counter_width, seeds, step, site, p)

    @staticmethod
    def backward(ctx, grad):
        keys, seeds, step = ctx.saved_tensors
        counter_width, site, p = ctx.args
        return _triton()(grad, keys, counter_width, seeds, step, site, p), None, None, None, None, None, None
