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
  AdaLoRA scripts train). Then AdamW runs once per run and group, as ``torch.optim.AdamW`` with two parameter groups.
A method that does not stack (full fine-tuning) has one run and parameters without the run dimension; the buffer
is the same (1, P).
"""
from __future__ import annotations

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
    After this, nothing may rebind a parameter's ``.data`` or set its ``.grad`` to None (zero ``grad`` instead)."""

    def __init__(self, params: list[nn.Parameter], runs: int, stacked: bool):
        self.params, self.runs, self.stacked = params, runs, stacked
        sizes = [p[0].numel() if stacked else p.numel() for p in params]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.sizes = sizes
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
    falls on; the others take AdamW without it (None: every parameter decays)."""

    def __init__(self, flat: Flat, lrs: list[float], *, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 total_steps: int = 1, warmup_steps: int = 0, schedule: str = "linear",
                 decay: list[bool] | None = None):
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
        self._groups = self._split() if self.decay is not None else None
        self.set_step(0)

    def _split(self) -> list[list[tuple]]:
        """Per run, the (weight decay, parameter, gradient, moment 1, moment 2 views) of each group: the columns of
        row k in contiguous stretches of parameters with the same flag (views into the fixed buffers, made once)."""
        f, stretches = self.flat, []
        for i, d in enumerate(self.decay):
            start, end = f.offsets[i], f.offsets[i] + f.sizes[i]
            if stretches and stretches[-1][0] == d and stretches[-1][2] == start:
                stretches[-1][2] = end
            else:
                stretches.append([d, start, end])
        runs = []
        for k in range(f.runs):
            groups = []
            for wd, flag in ((self.weight_decay, True), (0.0, False)):
                parts = [(a, b) for d, a, b in stretches if d == flag]
                if parts:
                    groups.append((wd, *([buf[k, a:b] for a, b in parts]
                                         for buf in (f.data, f.grad, self.exp_avg, self.exp_avg_sq))))
            runs.append(groups)
        return runs

    def factor(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.warmup_steps, self.schedule)

    def set_step(self, step: int) -> None:
        """The learning rates of 0-based optimizer step ``step`` into ``lr`` (an asynchronous device op)."""
        torch.mul(self._base, self.factor(step), out=self.lr)

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
            for wd, data, grad, m1, m2 in self._groups[k]:  # each group as a param group of torch.optim.AdamW
                torch._fused_adamw_(data, grad, m1, m2, [], [self.steps[k]] * len(data), lr=self.lr[k], beta1=b1,
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
