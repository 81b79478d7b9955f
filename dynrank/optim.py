"""The optimizer of a stack of runs: every run its own AdamW, learning rate, schedule and gradient clipping.

All trainable parameters of a model live in one buffer (``Flat``) of shape (R, P): row k holds run k's P trainable
numbers, and each parameter (R, ...) is a view into it (its ``.grad`` a view into a second such buffer). So
- the gradient norm of run k is the norm of row k of the gradient buffer: clipping is per run (``clip_per_run``),
  as each run alone would clip, never one norm over all runs;
- AdamW is torch's fused kernel (the one ``torch.optim.AdamW(fused=True)`` runs) once per run, over row k with run
  k's learning rate (``RunAdamW``); with one run it is exactly ``torch.optim.AdamW``;
- the learning rate of run k at step t is base_k * f(t), f the schedule (``lr_factor``: linear warm-up, then linear
  decay to 0 or constant) made for the run's total steps;
- weight decay falls on the parameters the run's source decays (``decays``, ``train.no_decay``): every trainable one
  (the DoRA authors' code, fairseq), or all but biases and LayerNorm weights (HF Trainer, as the LoRA, DyLoRA and
  AdaLoRA scripts train). Then AdamW runs once per run and group, as ``torch.optim.AdamW`` with two parameter groups;
- a method may put a parameter in a group of its own (``ParamGroup``, ``Method.param_group``): a learning-rate scale
  (run k's rate for it is base_k * f(t) * scale: LoRA+'s larger rate for B) and a weight-decay flag that overrides
  ``train.no_decay``'s. AdamW then runs once per run and distinct (scale, decay), as ``torch.optim.AdamW`` with
  those parameter groups.
A method that does not stack (full fine-tuning) has one run and parameters without the run dimension; the buffer
is the same (1, P).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .config.schema import NO_DECAY_RULES, SCHEDULES  # train.no_decay's, train.schedule's choices (config.validate)


def lr_factor(step: int, total: int, warmup: int, kind: str = "linear") -> float:
    """f(step) for the 0-based optimizer step: step / warmup during warm-up, then ``linear``: (total - step) /
    (total - warmup) down to 0 (transformers' ``get_linear_schedule_with_warmup``), ``constant``: 1."""
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant":
        return 1.0
    return max(0.0, (total - step) / max(1, total - warmup))


class Flat:
    """The trainable parameters of ``runs`` runs as views into one (R, P) buffer; their gradients likewise.

    ``stacked``: the parameters have the run dimension first (R, ...); otherwise R is 1 and they keep their shape.
    ``order``: the order of the parameters' columns in the buffer (indices into ``params``; None: as given). Parameter
    i stays parameter i (checkpoints, the optimizer's state) wherever its columns lie; an order that puts tensors of
    one shape side by side lets them be read as one tensor (``alias``).
    After this, nothing may rebind a parameter's ``.data`` or set its ``.grad`` to None (zero ``grad`` instead)."""

    def __init__(self, params: list[nn.Parameter], runs: int, stacked: bool, order: list[int] | None = None):
        self.params, self.runs, self.stacked = params, runs, stacked
        sizes = [p[0].numel() if stacked else p.numel() for p in params]
        order = list(range(len(params))) if order is None else list(order)
        if sorted(order) != list(range(len(params))):
            raise ValueError(f"order must list each of the {len(params)} parameters once")
        self.offsets = [0] * len(params)
        at = 0
        for i in order:
            self.offsets[i] = at
            at += sizes[i]
        self.sizes = sizes
        self._index = {id(p): i for i, p in enumerate(params)}
        device = params[0].device
        self.data = torch.empty(runs, sum(sizes), device=device, dtype=torch.float32)
        self.grad = torch.zeros_like(self.data)
        with torch.no_grad():
            for i, p in enumerate(params):
                if p.dtype != torch.float32:
                    raise ValueError(f"trainable parameters must be float32 (got {p.dtype})")
                view = self.view(self.data, i)
                view.copy_(p.data)
                p.data = view
                p.grad = self.view(self.grad, i)

    def alias(self, params: list[nn.Parameter]) -> torch.Tensor | None:
        """G stacked parameters of one shape (R, ...) whose columns lie side by side in this order, as one leaf
        tensor (R, G, ...) that is them: its data their data, its gradient their gradient (a view of each buffer,
        as each parameter is). A step may read it instead of ``torch.stack(params, 1)``: no copy, and autograd adds
        its gradient into the buffer in one op, not one per parameter. None where the columns are not so laid out."""
        idx = [self._index.get(id(p)) for p in params]
        if not self.stacked or not idx or None in idx:
            return None
        first, size = self.offsets[idx[0]], self.sizes[idx[0]]
        if any(self.sizes[i] != size or self.offsets[i] != first + j * size or self.params[i].shape != params[0].shape
               for j, i in enumerate(idx)):
            return None
        shape = (self.runs, len(idx), *params[0].shape[1:])
        leaf = torch.empty(0, device=self.data.device, requires_grad=True)
        leaf.data = self.data[:, first:first + len(idx) * size].view(shape)
        leaf.grad = self.grad[:, first:first + len(idx) * size].view(shape)
        return leaf

    def view(self, buffer: torch.Tensor, i: int) -> torch.Tensor:
        """Parameter i's part of a (R, P) buffer (the data, the gradients, an optimizer moment), shaped as it."""
        part = buffer[:, self.offsets[i]:self.offsets[i] + self.sizes[i]]
        return part.view(self.params[i].shape) if self.stacked else part[0].view(self.params[i].shape)

    def run(self, buffer: torch.Tensor, i: int, k: int) -> torch.Tensor:
        """Run k's part of parameter i in a (R, P) buffer, shaped as the parameter of a model of one run."""
        return buffer[k, self.offsets[i]:self.offsets[i] + self.sizes[i]].view(
            self.params[i].shape[1:] if self.stacked else self.params[i].shape)

    def zero_grad(self) -> None:
        self.grad.zero_()


@dataclass(frozen=True)
class ParamGroup:
    """A parameter's optimizer group, as a method wants it (``Method.param_group``): ``lr_scale`` multiplies each
    run's learning rate for it (base_k * f(t) * lr_scale), ``decay`` says whether weight decay falls on it (None:
    ``train.no_decay``'s rule decides, ``decays``). The default is every parameter's group unless a method says
    otherwise."""
    lr_scale: float = 1.0
    decay: bool | None = None

    def __post_init__(self):
        if isinstance(self.lr_scale, bool) or not isinstance(self.lr_scale, (int, float)) \
                or not math.isfinite(self.lr_scale) or self.lr_scale < 0:
            raise ValueError(f"a parameter group's lr_scale must be a finite number >= 0 (got {self.lr_scale!r})")
        if self.decay is not None and not isinstance(self.decay, bool):
            raise ValueError(f"a parameter group's decay must be True, False or None (got {self.decay!r})")


def param_groups(model: nn.Module, params: list[nn.Parameter], rule: str = "none", group=None) -> list[ParamGroup]:
    """Each of ``params``' (a model's trainable parameters, in order) group: ``group(name, parameter)`` (a method's
    ``param_group``; None: the default group), its ``decay`` None filled in by ``train.no_decay``'s ``rule``
    (``decays``). Names are ``model.named_parameters()``'s."""
    rule_says = decays(model, params, rule)
    if group is None:
        return [ParamGroup(1.0, d) for d in rule_says]
    names = {id(p): n for n, p in model.named_parameters()}
    missing = [i for i, p in enumerate(params) if id(p) not in names]
    if missing:
        raise ValueError(f"trainable parameters {missing} are not parameters of the model")
    out = []
    for p, d in zip(params, rule_says):
        g = group(names[id(p)], p)
        if not isinstance(g, ParamGroup):
            raise TypeError(f"param_group({names[id(p)]!r}) returned {type(g).__name__}, not a ParamGroup")
        out.append(ParamGroup(float(g.lr_scale), d if g.decay is None else g.decay))
    return out


def decays(model: nn.Module, params: list[nn.Parameter], rule: str = "none") -> list[bool]:
    """Whether AdamW decays each of ``params`` (a model's trainable parameters, in order) under ``train.no_decay``:

    * ``none``: every one: the DoRA authors' ``torch.optim.AdamW(model.trainable_param(), weight_decay=...)``
      (``Finetune_And_Benchmark.py``), fairseq's adam (full fine-tuning);
    * ``hf_trainer``: all but the parameters of ``nn.LayerNorm`` modules and every parameter whose name contains
      "bias": ``Trainer.create_optimizer`` of the transformers 4.4.2 fork the LoRA, DyLoRA and AdaLoRA scripts train
      with (``decay_parameters = get_parameter_names(self.model, [torch.nn.LayerNorm])``, then ``[name for name in
      decay_parameters if "bias" not in name]``; the other group ``weight_decay: 0.0``)."""
    if rule not in NO_DECAY_RULES:
        raise ValueError(f"unknown no-decay rule '{rule}'; choose one of: {', '.join(NO_DECAY_RULES)}")
    if rule == "none":
        return [True] * len(params)
    in_norm = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters(recurse=False)}
    exempt = {id(p) for n, p in model.named_parameters() if "bias" in n or id(p) in in_norm}
    return [id(p) not in exempt for p in params]


@torch.no_grad()
def clip_per_run(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale each run's gradients (row k of ``grad``) to norm at most ``max_norm``, as
    ``torch.nn.utils.clip_grad_norm_`` does for one run: coefficient min(1, max_norm / (norm + 1e-6)).
    Returns the norms before clipping (R,)."""
    norms = torch.linalg.vector_norm(grad, dim=1)
    grad.mul_((max_norm / (norms + 1e-6)).clamp_(max=1.0).unsqueeze(1))
    return norms


class RunAdamW:
    """AdamW (decoupled weight decay) per run over a ``Flat`` buffer, with run k's learning rate ``lr[k]``.

    ``lr`` is a device tensor (R,) that ``set_step`` fills before every step (base_k * f(step), host side, no sync),
    so a CUDA graph that captured ``step`` reads each step's rates. Moments and step counts per run; the update is
    torch's fused AdamW kernel on row k. ``decay`` (one flag per parameter, ``decays``): the parameters weight decay
    falls on; the others take AdamW without it (None: every parameter decays). ``lr_scale`` (one number per
    parameter, ``ParamGroup.lr_scale``; None: all 1): parameter i steps at run k's rate times lr_scale[i], each
    distinct scale's rates a device tensor (``_scaled_lr``) that ``set_step`` fills beside ``lr``."""

    def __init__(self, flat: Flat, lrs: list[float], *, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 total_steps: int = 1, warmup_steps: int = 0, schedule: str = "linear",
                 decay: list[bool] | None = None, lr_scale: list[float] | None = None):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule '{schedule}'; choose one of: {', '.join(SCHEDULES)}")
        self.flat = flat
        dev = flat.data.device
        self.exp_avg = torch.zeros_like(flat.data)
        self.exp_avg_sq = torch.zeros_like(flat.data)
        self.steps = torch.zeros(flat.runs, dtype=torch.float32, device=dev)
        self.base_lrs = [float(lr) for lr in lrs]
        self._base = torch.tensor(self.base_lrs, dtype=torch.float32, device=dev)
        self.lr = self._base.clone()
        self.weight_decay, self.betas, self.eps = float(weight_decay), tuple(float(b) for b in betas), float(eps)
        self.total_steps, self.warmup_steps, self.schedule = int(total_steps), int(warmup_steps), schedule
        if decay is not None and len(decay) != len(flat.params):
            raise ValueError(f"decay has {len(decay)} flags for {len(flat.params)} parameters")
        self.decay = None if decay is None or all(decay) else [bool(d) for d in decay]
        if lr_scale is not None and len(lr_scale) != len(flat.params):
            raise ValueError(f"lr_scale has {len(lr_scale)} numbers for {len(flat.params)} parameters")
        self.lr_scale = None if lr_scale is None or all(s == 1 for s in lr_scale) else [float(s) for s in lr_scale]
        # the learning rates of each scale but 1 (row j: scale scales[j + 1]), filled by set_step beside lr
        self._scales = [1.0] + sorted(set(self.lr_scale or []) - {1.0})
        self._scaled_base = torch.tensor([[b * s for b in self.base_lrs] for s in self._scales[1:]],
                                         dtype=torch.float32, device=dev).view(len(self._scales) - 1, flat.runs)
        self._scaled_lr = self._scaled_base.clone()
        self._groups = self._split() if self.decay is not None or self.lr_scale is not None else None
        self.set_step(0)

    def _split(self) -> list[list[tuple]]:
        """Per run, the (learning rate, weight decay, parameter, gradient, moment 1, moment 2 views) of each group:
        the columns of row k in contiguous stretches of parameters with the same (scale, decay flag) (views into the
        fixed buffers, made once); the groups in the order of the scales, the decayed group of a scale first."""
        f, stretches = self.flat, []
        decay = self.decay or [True] * len(f.params)
        scale = self.lr_scale or [1.0] * len(f.params)
        for i in sorted(range(len(f.params)), key=lambda i: f.offsets[i]):  # the buffer's order
            key = (scale[i], decay[i])
            start, end = f.offsets[i], f.offsets[i] + f.sizes[i]
            if stretches and stretches[-1][0] == key and stretches[-1][2] == start:
                stretches[-1][2] = end
            else:
                stretches.append([key, start, end])
        runs = []
        for k in range(f.runs):
            groups = []
            for j, s in enumerate(self._scales):
                lr = self.lr[k] if j == 0 else self._scaled_lr[j - 1, k]
                for wd, flag in ((self.weight_decay, True), (0.0, False)):
                    parts = [(a, b) for key, a, b in stretches if key == (s, flag)]
                    if parts:
                        groups.append((lr, wd, *([buf[k, a:b] for a, b in parts]
                                                 for buf in (f.data, f.grad, self.exp_avg, self.exp_avg_sq))))
            runs.append(groups)
        return runs

    def factor(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.warmup_steps, self.schedule)

    def set_step(self, step: int) -> None:
        """The learning rates of 0-based optimizer step ``step`` into ``lr`` (an asynchronous device op)."""
        torch.mul(self._base, self.factor(step), out=self.lr)
        if len(self._scales) > 1:
            torch.mul(self._scaled_base, self.factor(step), out=self._scaled_lr)

    def lrs(self, step: int) -> list[float]:
        """The learning rates of step ``step`` as numbers (for logs; no device sync)."""
        return [b * self.factor(step) for b in self.base_lrs]

    @torch.no_grad()
    def step(self) -> None:
        self.steps.add_(1)
        b1, b2 = self.betas
        for k in range(self.flat.runs):
            if self._groups is None:
                torch._fused_adamw_([self.flat.data[k]], [self.flat.grad[k]], [self.exp_avg[k]], [self.exp_avg_sq[k]],
                                    [], [self.steps[k]], lr=self.lr[k], beta1=b1, beta2=b2,
                                    weight_decay=self.weight_decay, eps=self.eps, amsgrad=False, maximize=False)
                continue
            for lr, wd, data, grad, m1, m2 in self._groups[k]:  # each group as a param group of torch.optim.AdamW
                torch._fused_adamw_(data, grad, m1, m2, [], [self.steps[k]] * len(data), lr=lr, beta1=b1,
                                    beta2=b2, weight_decay=wd, eps=self.eps, amsgrad=False, maximize=False)

    # --- one run's state, as torch.optim.AdamW / LambdaLR write it (checkpoints are per run) ----------------
    def run_state_dict(self, k: int) -> dict:
        """Run k's optimizer state in ``torch.optim.AdamW.state_dict()``'s form (parameter i = the model's i-th
        trainable parameter)."""
        f = self.flat
        state = {i: {"step": self.steps[k].clone(), "exp_avg": f.run(self.exp_avg, i, k),
                     "exp_avg_sq": f.run(self.exp_avg_sq, i, k)} for i in range(len(f.params))}
        group = {"lr": self.base_lrs[k], "betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay,
                 "amsgrad": False, "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
                 "fused": True, "initial_lr": self.base_lrs[k], "params": list(range(len(f.params)))}
        return {"state": state, "param_groups": [group]}

    @torch.no_grad()
    def load_run_state_dict(self, k: int, state: dict) -> None:
        f = self.flat
        if len(state["param_groups"][0]["params"]) != len(f.params):
            raise ValueError(f"the optimizer state has {len(state['param_groups'][0]['params'])} parameters, the "
                             f"model {len(f.params)}")
        for i in range(len(f.params)):
            st = state["state"].get(i) or state["state"].get(str(i))
            if st is None:  # no step taken yet
                continue
            f.run(self.exp_avg, i, k).copy_(st["exp_avg"])
            f.run(self.exp_avg_sq, i, k).copy_(st["exp_avg_sq"])
            self.steps[k].copy_(torch.as_tensor(st["step"], dtype=torch.float32))

    def run_schedule_state(self, k: int, step: int) -> dict:
        """Run k's schedule as ``torch.optim.lr_scheduler.LambdaLR.state_dict()`` writes it after ``step`` steps."""
        lr = self.base_lrs[k] * self.factor(step)
        return {"base_lrs": [self.base_lrs[k]], "last_epoch": step, "_step_count": step + 1,
                "_get_lr_called_within_step": False, "_last_lr": [lr], "lr_lambdas": [None],
                "schedule": self.schedule, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}
