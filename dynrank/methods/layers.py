"""Layers with a run dimension: R runs of one cell (its seeds, the learning rates of a grid) trained as one model.

The runs share the frozen backbone. Their batches are concatenated run-major (rows ``[k*b, (k+1)*b)`` of every
activation are run k's), so a frozen ``nn.Linear`` multiplies all runs' tokens in one GEMM, while every trainable
tensor carries a leading run dimension R and its products are batched GEMMs over the runs (``bmm``): run k only
ever meets its own slice ``[k]``. A run alone is R = 1: the same code.

- ``LowRankLinear``: the low-rank update every LoRA-family method adds, W0 x + s B_k A_k dropout(x) (LoRA's Eq. 5
  in the paper); lora, dora, adalora, dylora and dora_wd subclass it, as PEFT's tuners subclass ``LoraLayer``;
- ``RunLinear``: a trainable linear layer per run (the task head, the bottleneck adapters' projections);
- ``RunBias``: a frozen module whose bias trains per run (BitFit).

Each trainable layer initialises run k's slice in ``reset_run(k, generator)``, from a generator seeded with run
k's seed (``Method.init_runs``): a run starts from the same numbers whether it trains alone or stacked, on a CPU
or a GPU (the draws are made on the CPU and copied).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..dropout import KeyedDropout, keyed_dropout_add_, keyed_dropout_kept


def by_run(x: torch.Tensor, runs: int) -> torch.Tensor:
    """(R*b, ..., d) -> (R, b*..., d): the rows of each run together (a view of a contiguous tensor)."""
    return x.reshape(runs, -1, x.shape[-1])


def add_low_rank(h: torch.Tensor, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                 scale: float | torch.Tensor = 1.0, align: int | None = None) -> torch.Tensor:
    """h + scale * (x A_k^T) B_k^T for every run k: the low-rank update of every LoRA-family layer.

    ``h`` (R*b, ..., d_out) and ``x`` (R*b, ..., d_in, = dropout(input)) hold the runs' rows run-major; ``A``
    (R, r, d_in) and ``B`` (R, d_out, r) the runs' factors. Two batched GEMMs over the runs (``low_rank_operands``,
    then ``add_operands``)."""
    return add_operands(h, x, *low_rank_operands(A, B, scale, x.device, align))


def low_rank_operands(A: torch.Tensor, B: torch.Tensor, scale: float | torch.Tensor, device: torch.device,
                      align: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(A^T, (scale B)^T) as ``add_operands``' GEMMs take them: (R, ..., d_in, r') and (R, ..., r', d_out), any
    dimensions between (a group of layers, (R, G, ...): ``groups.shared_operands``). The scale goes onto the small
    B instead of a pass over the (tokens x d_out) output; under autocast both are cast once here, not by every
    GEMM.

    On a GPU the rank is padded with zero components to a multiple of ``align`` (8): a GEMM whose rank side is not a
    multiple of 8 bf16 elements (16 bytes) misses cuBLAS's aligned kernels, which made DoRA's r0 = 12 ~5% slower
    per step than a padded 16 (benchmarks/README.md). The padded components are zeros in A and B: they add
    nothing, and their slice of the gradient is dropped. On CPU (``align`` 1) nothing is padded.
    """
    r = A.shape[-2]
    align = align or (8 if device.type == "cuda" else 1)
    padded = -(-r // align) * align
    Bt = (B * scale).transpose(-1, -2)  # (R, ..., r, d_out)
    At = A.transpose(-1, -2)  # (R, ..., d_in, r)
    if torch.is_autocast_enabled(device.type):
        dtype = torch.get_autocast_dtype(device.type)
        At, Bt = At.to(dtype), Bt.to(dtype)
    if padded != r:
        At, Bt = F.pad(At, (0, padded - r)), F.pad(Bt, (0, 0, 0, padded - r))
    return At, Bt


def add_operands(h: torch.Tensor, x: torch.Tensor, At: torch.Tensor, Bt: torch.Tensor,
                 into_h: bool = False) -> torch.Tensor:
    """h + (x A_k^T) (scale B_k)^T for every run k, from ``low_rank_operands``: the add fused into the second GEMM
    (``baddbmm``). Out of place, ``baddbmm`` first copies h into its result (a memcpy per adapted matrix on a GPU);
    ``into_h`` (h is the caller's own and nothing differentiates through it: evaluation, beam search) accumulates
    into h itself, as ``_LowRank`` does in training."""
    R = At.shape[0]
    t = torch.bmm(by_run(x, R), At)  # (R, n, r)
    if not into_h:
        return torch.baddbmm(by_run(h, R), t, Bt).view(h.shape)
    by_run(h, R).baddbmm_(t, Bt)
    return h


SAVED = 8  # the tensors (or None) a low-rank update keeps for its backward: ``adapter_into_``'s


def adapter_into_(h: torch.Tensor, x: torch.Tensor, At: torch.Tensor, Bt: torch.Tensor, drop) -> list:
    """h += (dropout(x) A_k^T) (scale B_k)^T for every run k, in place into ``h`` (the frozen linear's output, or a
    view of it): the forward of a low-rank update inside one autograd node (``_LowRank``, ``qkv.project``).
    ``drop``: None, or the keyed dropout's (row keys, seeds, step, site, p). Returns the ``SAVED`` tensors its
    backward needs (``adapter_grads``, ``adapter_input_grad_``): the dropped input and x A^T by run, the operands,
    the dropout's mask where torch's ops made it (``dropout.keyed_dropout_kept``) and its keys."""
    R = At.shape[0]
    d, mask, keys = x, None, (None, None, None)
    if drop is not None:
        (d, mask), keys = keyed_dropout_kept(x, drop[0], x.shape[-1], *drop[1:]), drop[:3]
    dr = by_run(d, R).to(At.dtype)  # as autocast casts bmm's input
    t = torch.bmm(dr, At)
    h.view(R, -1, h.shape[-1]).baddbmm_(t, Bt)  # in place: out of place, baddbmm first copies h (a memcpy)
    return [dr, t, At, Bt, mask, *keys]


def adapter_grads(g: torch.Tensor, saved: list, need_At: bool = True, need_Bt: bool = True) -> tuple:
    """From the output's gradient ``g`` and ``adapter_into_``'s tensors: (the gradient of x A^T, of At, of Bt), the
    last two where needed."""
    dr, t, At, Bt = saved[:4]
    gr = by_run(g, At.shape[0]).to(Bt.dtype)
    g_t = torch.bmm(gr, Bt.transpose(1, 2))
    g_At = torch.bmm(dr.transpose(1, 2), g_t) if need_At else None
    g_Bt = torch.bmm(t.transpose(1, 2), gr) if need_Bt else None
    return g_t, g_At, g_Bt


def adapter_input_grad_(dx: torch.Tensor, g_t: torch.Tensor, saved: list, site_p) -> None:
    """dx += the adapter's part of the input gradient, in place inside a kernel that runs anyway: ``baddbmm_``, or
    the keyed dropout's backward adding (``dropout.keyed_dropout_add_``, with the kept mask or the GPU kernel's);
    ``saved``: ``adapter_into_``'s tensors, ``site_p``: None (no dropout) or its dropout's (site, p)."""
    At, mask, keys, seeds, step = saved[2], *saved[4:8]
    if site_p is None:
        dx.view(At.shape[0], -1, dx.shape[-1]).baddbmm_(g_t, At.transpose(1, 2))
        return
    keyed_dropout_add_(dx, torch.bmm(g_t, At.transpose(1, 2)).view(dx.shape), keys, dx.shape[-1], seeds, step,
                       *site_p, mask=mask)


class _LowRank(torch.autograd.Function):
    """``add_operands(base(x), dropout(x), At, Bt)`` with a frozen ``base`` (weight W, bias b), as one autograd node:
    its backward gives x one gradient, the adapter's part added into the frozen weight's inside a kernel that runs
    anyway (``baddbmm_`` accumulating into W's input gradient; with dropout, the keyed dropout's backward adding in
    place: ``dropout.keyed_dropout_add_``), where autograd would add two (tokens x d_in) tensors: one kernel and its
    three passes over them fewer per adapted matrix. Its forward accumulates the adapter into the frozen linear's
    output in place (``baddbmm`` out of place first copies that output: a memcpy per adapted matrix). The same
    products as autograd's; the input gradient's last rounding may differ (the two parts summed inside the GEMM).
    Not under torch.compile (``train.compile``), which traces autograd's path."""

    @staticmethod
    def forward(ctx, x, W, b, At, Bt, drop):
        h = F.linear(x, W, b)
        ctx.save_for_backward(W, *adapter_into_(h, x, At, Bt, drop))
        ctx.site_p, ctx.x_dtype = drop and drop[3:], x.dtype
        return h

    @staticmethod
    def backward(ctx, g):
        W, *saved = ctx.saved_tensors
        g_t, g_At, g_Bt = adapter_grads(g, saved, ctx.needs_input_grad[3], ctx.needs_input_grad[4])
        if not ctx.needs_input_grad[0]:  # the input is frozen (the first layer's, below a frozen embedding)
            return None, None, None, g_At, g_Bt, None
        dx = frozen_input_grad(g, W)
        adapter_input_grad_(dx, g_t, saved, ctx.site_p)
        return dx.to(ctx.x_dtype), None, None, g_At, g_Bt, None


def frozen_input_grad(g: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """g W: the input gradient of a frozen linear (weight W (d_out, d_in)), in g's dtype."""
    return (g.reshape(-1, g.shape[-1]) @ W.to(g.dtype)).view(*g.shape[:-1], W.shape[1])


def frozen_derived(owner: nn.Module, attr: str, tensors: list[torch.Tensor], make):
    """``make()`` (a tensor, or tensors, made from the frozen ``tensors``: side by side, padded), kept on ``owner``
    as ``attr`` = (key, value) and made again only where one of ``tensors`` is new or changed (its storage, version
    or dtype)."""
    key = tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)
    cached = getattr(owner, attr, None)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, make())
        setattr(owner, attr, cached)
    return cached[1]


def _frozen_linear(m: nn.Module) -> bool:
    return type(m) is nn.Linear and not m.weight.requires_grad and (m.bias is None or not m.bias.requires_grad)


@torch.no_grad()
def init_slice(target: torch.Tensor, fill) -> None:
    """``fill(t)`` on a CPU tensor shaped as ``target``, then copied in: the same numbers on every device."""
    t = torch.empty(target.shape, dtype=torch.float32)
    fill(t)
    target.copy_(t)


def kaiming(a: float, generator: torch.Generator):
    """``nn.init.kaiming_uniform_(t, a=a)`` drawn from ``generator`` (bound sqrt(6 / ((1 + a^2) fan_in)))."""
    return lambda t: nn.init.kaiming_uniform_(t, a=a, generator=generator)


def normal(std: float, generator: torch.Generator):
    return lambda t: nn.init.normal_(t, mean=0.0, std=std, generator=generator)


class LowRankLinear(nn.Module):
    """W0 x + scaling * B_k A_k dropout(x) for run k: a frozen ``base`` linear plus one low-rank update per run.

    ``lora_A`` (R, r, d_in) and ``lora_B`` (R, d_out, r). A method's layer says what multiplies (``combine`` of its
    ``factor_params``: DoRA folds its c into B, AdaLoRA its lambda into A; DyLoRA's ``factors`` gates the rank) and
    how run k starts (``reset_run``); ``forward`` is the same for all of them."""

    factor_params = ("lora_A", "lora_B")  # the trainable tensors ``combine`` reads, in its argument order
    shares = True  # a group's operands are made once a step (``groups.shared_operands``); False: per layer

    def __init__(self, base: nn.Linear, runs: int, r: int, scaling: float, dropout: float):
        super().__init__()
        self.base = base
        self.runs, self.r, self.scaling = runs, r, scaling
        dev = base.weight.device
        self.lora_A = nn.Parameter(torch.zeros(runs, r, base.in_features, device=dev))
        self.lora_B = nn.Parameter(torch.zeros(runs, base.out_features, r, device=dev))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.operands: tuple[torch.Tensor, torch.Tensor] | None = None  # set inside ``shared_operands``
        self.factor_group = None  # a ``groups.FactorGroup``, set by ``groups.bind_groups``

    @staticmethod
    def combine(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) as they multiply from ``factor_params``' tensors, (R, ..., r, d_in) and (R, ..., d_out, r): one
        layer's, or a group's (R, G, ...: ``factors_of``)."""
        return A, B

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) as they multiply: (R, r, d_in), (R, d_out, r)."""
        return self.combine(*(getattr(self, name) for name in self.factor_params))

    def forward(self, x):
        operands = self.operands or low_rank_operands(*self.factors(), self.scaling, x.device)
        if torch.is_grad_enabled() and _frozen_linear(self.base) and not torch.compiler.is_compiling():
            drop = self._keyed_dropout(x)  # (takes BART's next dropout site: only where this path runs)
            if drop is not False:
                return _LowRank.apply(x, self.base.weight, self.base.bias, *operands, drop)
        return add_operands(self.base(x), self.dropout(x), *operands, into_h=not torch.is_grad_enabled())

    def _keyed_dropout(self, x):
        """The adapter's dropout as ``_LowRank`` takes it: None (none: p = 0, or evaluation), (row keys, seeds,
        step, site, p) of the run's keyed stream (an encoder's ``KeyedDropout``; BART's functional stream, whose next
        site it takes where ``nn.Dropout`` would), or False (torch's own dropout: no stream installed)."""
        from ..functional_dropout import active_stream

        drop = self.dropout
        if isinstance(drop, nn.Identity) or not self.training or drop.p == 0:
            return None
        if isinstance(drop, KeyedDropout):
            s, site = drop.stream, drop.site
        elif isinstance(drop, nn.Dropout) and (s := active_stream()) is not None:
            site = s.next_site()
        else:
            return False
        return s.row_keys(x, site), s.seeds, s.step, site, drop.p

    def reset_run(self, k: int, generator: torch.Generator | None) -> None:
        """Run k's initialisation, drawn from ``generator`` (None: the global RNG)."""
        raise NotImplementedError

    def reset_runs(self) -> None:
        """Every run initialised from the global RNG, as ``nn.Linear`` initialises itself (a subclass calls it at the
        end of its ``__init__``)."""
        for k in range(self.runs):
            self.reset_run(k, None)

    @torch.no_grad()
    def delta_weight(self, k: int = 0) -> torch.Tensor:
        """scaling * B_k A_k as it multiplies (materialised: for merging and tests only)."""
        A, B = self.factors()
        return self.scaling * (B[k].float() @ A[k].float())


class RunLinear(nn.Module):
    """y = W_k x + b_k for run k: a linear layer whose weights differ per run (weight (R, out, in), bias (R, out)).

    It replaces a trainable ``nn.Linear`` of a stacked model (the task head) and makes the bottleneck adapters'
    projections; parameter names stay ``weight`` and ``bias``, so run k's slices are the ``nn.Linear``'s tensors."""

    def __init__(self, runs: int, in_features: int, out_features: int, bias: bool = True, device=None):
        super().__init__()
        self.runs, self.in_features, self.out_features = runs, in_features, out_features
        self.weight = nn.Parameter(torch.zeros(runs, out_features, in_features, device=device))
        self.bias = nn.Parameter(torch.zeros(runs, out_features, device=device)) if bias else None

    @classmethod
    def like(cls, linear: nn.Linear, runs: int) -> RunLinear:
        new = cls(runs, linear.in_features, linear.out_features, linear.bias is not None, linear.weight.device)
        with torch.no_grad():
            new.weight.copy_(linear.weight.expand_as(new.weight))
            if linear.bias is not None:
                new.bias.copy_(linear.bias.expand_as(new.bias))
        return new

    def forward(self, x):
        xr = by_run(x, self.runs)
        wt = self.weight.transpose(1, 2)
        y = torch.bmm(xr, wt) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), xr, wt)
        return y.view(*x.shape[:-1], self.out_features)

    def reset_run(self, k: int, generator: torch.Generator, std: float | None = None) -> None:
        """nn.Linear's own init (Kaiming-uniform a = sqrt(5), bias U(+-1/sqrt(in))), or N(0, std) and bias 0 (the
        transformers init of a new task head, ``std`` = the model config's initializer range)."""
        if std is not None:
            init_slice(self.weight[k], normal(std, generator))
            if self.bias is not None:
                with torch.no_grad():
                    self.bias[k].zero_()
            return
        init_slice(self.weight[k], kaiming(math.sqrt(5), generator))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            init_slice(self.bias[k], lambda t: nn.init.uniform_(t, -bound, bound, generator=generator))


def pretrained_per_run(t: torch.Tensor, runs: int) -> nn.Parameter:
    """A pre-trained tensor once per run, (R, *t.shape): every run starts from it (BitFit's biases, stacked full
    fine-tuning's layer norms and embeddings)."""
    return nn.Parameter(t.detach().unsqueeze(0).repeat(runs, *[1] * t.dim()))


class PretrainedRunLinear(RunLinear):
    """A backbone linear of stacked full fine-tuning: one weight and bias per run, every run starting from the
    pre-trained ones (``init_runs`` resets nothing here)."""

    def reset_run(self, k: int, generator: torch.Generator, std: float | None = None) -> None:
        pass


class RunLayerNorm(nn.Module):
    """A layer norm whose scale and shift differ per run (``weight``, ``bias`` (R, d)), each starting as the
    pre-trained one: the normalisation, then run k's scale and shift on run k's rows (stacked full fine-tuning).
    ``bf16_output`` (set by the fast path's ``precision.bf16_backbone``, as it makes every ``nn.LayerNorm`` a
    ``BF16LayerNorm``): computed in fp32 and rounded to bf16 once, so the residual stream stays bf16."""

    bf16_output = False

    def __init__(self, base: nn.LayerNorm, runs: int):
        super().__init__()
        self.runs, self.normalized_shape, self.eps = runs, base.normalized_shape, base.eps
        self.weight, self.bias = pretrained_per_run(base.weight, runs), pretrained_per_run(base.bias, runs)

    def forward(self, x):
        if not self.bf16_output:
            return self._affine(F.layer_norm(x, self.normalized_shape, None, None, self.eps))
        with torch.autocast(x.device.type, enabled=False):
            return self._affine(F.layer_norm(x.float(), self.normalized_shape, None, None, self.eps)).to(
                torch.bfloat16)

    def _affine(self, y: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias.unsqueeze(1), by_run(y, self.runs), self.weight.unsqueeze(1)).view(y.shape)


class RunEmbedding(nn.Module):
    """An embedding table per run (``weight`` (R, V, d)), each starting as the pre-trained one: run k's ids (its
    rows of the batch, run-major) look up run k's table. As ``nn.Embedding``'s ``padding_idx``, the padding id's row
    takes no gradient (stacked full fine-tuning)."""

    def __init__(self, base: nn.Embedding, runs: int):
        super().__init__()
        self.runs, self.padding_idx = runs, base.padding_idx
        self.num_embeddings, self.embedding_dim = base.num_embeddings, base.embedding_dim
        self.weight = pretrained_per_run(base.weight, runs)

    def forward(self, ids):
        # nn.Embedding's own lookup per run (R is at most a few tens); through unbind, whose backward stacks the runs'
        # gradients once (indexing weight[k] would zero-fill a whole (R, V, d) gradient per run)
        per_run, tables = ids.reshape(self.runs, -1), self.weight.unbind(0)
        out = torch.stack([F.embedding(per_run[k], tables[k], self.padding_idx) for k in range(self.runs)])
        return out.view(*ids.shape, self.embedding_dim)


class RunBias(nn.Module):
    """A frozen module (``nn.Linear``, ``nn.LayerNorm``) whose bias trains, one per run: base(x) without its bias,
    plus b_k on run k's rows. ``bias`` (R, out) starts as the pre-trained bias in every run (BitFit)."""

    def __init__(self, base: nn.Module, runs: int):
        super().__init__()
        self.runs = runs
        self.bias = pretrained_per_run(base.bias, runs)
        base.register_parameter("bias", None)
        self.base = base

    def forward(self, x):
        y = self.base(x)
        return (by_run(y, self.runs) + self.bias.unsqueeze(1).to(y.dtype)).view(y.shape)


HEAD_STD_KEYS = ("initializer_range", "init_std")  # RoBERTa/BERT, BART


def head_std(config) -> float:
    """The std transformers draws a new head's weights with (``_init_weights``)."""
    return next((float(getattr(config, k)) for k in HEAD_STD_KEYS if hasattr(config, k)), 0.02)
