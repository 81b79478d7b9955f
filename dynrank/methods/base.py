"""The small protocol every fine-tuning method follows.

A method
  1. ``wrap(model)``: injects its modules (if any) and says which parameters train (``requires_grad``); the task
     head always trains (``finish_wrap``: one head per run). ``init_runs(seeds)`` then gives each run its
     initialisation, and ``setup(total_steps)`` its schedules once the step count is known;
  2. ``extra_loss(step)``: an optional regulariser added to the task loss, one value per run (DEM, orthogonality);
  3. ``before_zero_grad(step)`` / ``after_step(step)``: optional hooks after each optimizer step (importance,
     budget allocation);
  4. ``state_dict()/load_state_dict()``: state beyond the parameters, for resume (EMAs, masks), every tensor with
     the run dimension first; ``run_state_dict(k)/load_run_state_dict(k, ...)`` and ``run_params(k)/
     load_run_params(k, ...)``: run k's slice of the state and of the trainable tensors (its checkpoint);
  5. ``summary(k)``, ``scalars(step, k)``, ``artifacts(run_dir, run, k)``: what goes into run k's results and
     run directory (rank map, per-rank metrics...); ``final_evaluation(evaluate)``: extra dev evaluations;
  6. ``export(out_dir, k=...)``: run k's trained adapter in a portable format, where one exists (``head(k)``: the
     head it carries).
CUDA graphs (``graph_key``, ``prepare_step``) and accounting (``param_counts``, ``pruning_end_step``) complete it.
``param_group(name, param)`` puts a trainable parameter in an optimizer group of its own (``ParamGroup``: a
learning-rate scale, a weight-decay flag over ``train.no_decay``'s rule): LoRA+'s rate for B, no decay on biases.

**Runs.** A method trains ``runs`` = R runs of one cell at once (``methods/layers.py``): every trainable tensor has
a leading run dimension and run k only meets its slice ``[k]``; R = 1 is a run alone. Per-run values (losses,
importance, masks) carry that dimension too. Where ``stacks_on(model family)`` is False (full fine-tuning on BART
and BERT, whose embeddings cannot be one per run here) the tensors have no run dimension and R is 1.

Methods are plain classes; ``dynrank.methods.build(cfg, family, runs)`` picks one by ``method.name``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..models import Target, find_targets, is_head
from ..optim import ParamGroup
from .layers import RunLinear, head_std


EAGER = "eager"  # graph_key value: run this step without a CUDA graph


class Method:
    name = "base"
    stacks = True  # several runs train as one model (trainable tensors have a run dimension)

    @classmethod
    def stacks_on(cls, family: str) -> bool:
        """Whether runs of this method on a model of ``family`` (``model.family``) train as one model."""
        return cls.stacks

    def __init__(self, cfg, budget, family: str, runs: int = 1):
        self.cfg = cfg  # the method's config group
        self.budget = budget  # the budget config group: budget.r is the final rank
        self.family = family
        self.stacks = self.stacks_on(family)
        self.runs = int(runs)
        if self.runs > 1 and not self.stacks:
            raise ValueError(f"method {self.name} trains one run per model (runs={runs})")
        self.model: nn.Module | None = None
        self.total_steps = 0

    # --- 1. wrap -----------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def finish_wrap(self, model: nn.Module) -> nn.Module:
        """The end of every stacking method's ``wrap``: the task head's linear layers become ``RunLinear``s (one head
        per run, each a copy of the model's). (The adapters initialised themselves from the global RNG, as
        ``nn.Linear`` does; the loop then gives each run its own seed's initialisation, head included: ``init_runs``.)"""
        for name, module in list(model.named_modules()):
            if isinstance(module, nn.Linear) and is_head(name):
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, child,
                        RunLinear.like(module, self.runs))
        stray = [n for n, p in model.named_parameters() if is_head(n) and p.requires_grad
                 and not isinstance(model.get_submodule(n.rpartition(".")[0]), RunLinear)]
        if stray:
            raise ValueError(f"cannot give each run its own head: {', '.join(stray)} are not in a linear layer")
        self.model = model
        return model

    @torch.no_grad()
    def init_runs(self, seeds: list[int], method_cfgs: list | None = None) -> None:
        """Run k's initialisation from its own seed: every trainable layer's ``reset_run(k, generator)`` in model
        order, the head last (N(0, initializer range), bias 0, as transformers initialises a new head).
        ``method_cfgs``: each run's method group, where a method draws more from it (DyLoRA's ``method.seed``)."""
        if not self.stacks:
            return
        std = head_std(self.model.config) if hasattr(self.model, "config") else 0.02
        head, layers = [], []  # a layer's reset_run covers its children (an adapter's two projections)
        for name, m in self.model.named_modules():
            if isinstance(m, RunLinear) and is_head(name):
                head.append(m)
            elif hasattr(m, "reset_run") and not any(name.startswith(p + ".") for p, _ in layers[-1:]):
                layers.append((name, m))
        for k, seed in enumerate(seeds):
            g = torch.Generator().manual_seed(int(seed))
            for _, m in layers:
                m.reset_run(k, g)
            for m in head:
                m.reset_run(k, g, std=std)

    def setup(self, total_steps: int) -> None:
        """Called once the loop knows the number of optimizer steps (schedules need it) and the parameters are
        where they train (the device, the flat buffer of ``dynrank.optim``)."""
        self.total_steps = total_steps

    def param_group(self, name: str, param: nn.Parameter) -> ParamGroup:
        """The optimizer group of the trainable parameter ``name`` (``self.model.named_parameters()``'s name;
        ``param`` with the run dimension first where the method stacks), the same for every run: ``lr_scale``
        multiplies each run's learning rate for it, ``decay`` True / False overrides ``train.no_decay``'s rule for
        it (None: the rule decides). Asked once, when the optimizer is made (``step.make_optimizer``); the
        default group leaves every parameter to the run's learning rate and the rule."""
        return ParamGroup()

    # --- 2-3. loss and hooks ----------------------------------------------------------------
    def extra_loss(self, step: int) -> torch.Tensor | None:
        """Added to the task loss of optimizer step ``step`` (0-based: steps done so far): a tensor (R,), or None."""
        return None

    def before_zero_grad(self, step: int) -> None:
        """Runs after the optimizer step, while ``p.grad`` still holds this step's (clipped) gradients; ``step`` is
        0-based like ``extra_loss``'s (the index of the step just taken). AdaLoRA's sensitivity |w * grad| needs it
        (PEFT: update_and_allocate between step and zero_grad)."""

    def after_step(self, step: int) -> None:
        """Runs right after optimizer step ``step`` (1-based: steps done, including this one)."""

    # --- CUDA graphs (train.cuda_graphs) -------------------------------------------------------------
    # The loop may capture a whole step (forward, extra_loss, backward, clip, AdamW, before_zero_grad,
    # after_step) in a CUDA graph and replay it. A captured step must not branch in Python on anything
    # but what ``graph_key`` returns, must update its state tensors IN PLACE (never rebind them), and
    # must take step-dependent numbers from device tensors that ``prepare_step`` fills before each step.
    def graph_key(self, step: int):
        """Steps with equal keys run the same captured graph (``step`` 0-based). ``EAGER``: don't capture."""
        return None

    def prepare_step(self, step: int) -> None:
        """Host-side, before every step (graphed or not): fill device tensors the step reads (no sync)."""

    def pruning_end_step(self) -> int | None:
        """Adaptive methods: the optimizer steps done (1-based) when the budget allocation became final, the
        point after which the authors' code picks the best epoch (protocol=paper_code); None: no pruning."""
        return None

    def final_evaluation(self, evaluate: Callable[[], list[dict]]) -> list[dict]:
        """Extra dev evaluations after training (e.g. DyLoRA at several ranks), one dict per run; ``evaluate()``
        returns the dev metrics of every run."""
        return [{} for _ in range(self.runs)]

    # --- 4-6. state, summary, export -------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Method state for resume, each tensor with the run dimension first (run k's checkpoint holds ``[k]``)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what ``state_dict`` returned (tensors with the run dimension first)."""

    def run_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        return {name: v[k] for name, v in self.state_dict().items()}

    @torch.no_grad()
    def load_run_state_dict(self, k: int, state: dict[str, torch.Tensor]) -> None:
        """Run k's state (as ``run_state_dict(k)`` gave it) into slice k."""
        live = self.state_dict()
        for name, v in state.items():
            if name in live:
                live[name][k].copy_(v)
        self.load_state_dict(live)

    def summary(self, k: int = 0) -> dict:
        """JSON-able facts for run k's results file (e.g. DoRA's rank map)."""
        return {}

    def scalars(self, step: int, k: int = 0) -> dict[str, float]:
        """TensorBoard scalars of run k after ``step`` optimizer steps (1-based), logged every ``train.log_every``
        steps under ``<method>/<name>`` (e.g. DoRA's budget, surviving components and DEM)."""
        return {}

    def artifacts(self, run_dir, run: str = "", k: int = 0) -> None:
        """Files written next to run k's results after training (e.g. the rank heatmap PNG); ``run`` names the run
        (model, task, budget, seed) for titles."""

    def export(self, out_dir, base_name: str = "", task_type: str = "seq_cls", k: int = 0):
        """Write run k's trained adapter in a portable format (PEFT's, where one exists)."""
        raise NotImplementedError(f"method '{self.name}' has no export format")

    # --- runs and accounting --------------------------------------------------------------------
    def run_params(self, k: int = 0) -> dict[str, torch.Tensor]:
        """Run k's trainable tensors by parameter name, shaped as in a model of one run (what its checkpoint holds)."""
        return {n: (p[k] if self.stacks else p) for n, p in self.model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def load_run_params(self, k: int, tensors: dict[str, torch.Tensor]) -> None:
        """Run k's trainable tensors by name, shaped as in a model of one run (a checkpoint's, a bottleneck
        adapter export's), into slice k; every name must be a trainable parameter of this model."""
        params = self.run_params(k)
        for name, value in tensors.items():
            params[name].copy_(value)

    def head(self, k: int = 0) -> dict[str, torch.Tensor]:
        """Run k's task head by parameter name (what exports carry beside the adapter)."""
        return {n: (p[k] if self.stacks else p) for n, p in self.model.named_parameters() if is_head(n)}

    def param_counts(self, k: int = 0) -> dict[str, int]:
        """Trainable parameters of one run, the adapter (method's own) and the task head separately; ``total`` is
        the model of one run (frozen and trainable)."""
        adapter = head = frozen = 0
        for n, p in self.model.named_parameters():
            if not p.requires_grad:
                frozen += p.numel()
            elif is_head(n):
                head += p[0].numel() if self.stacks else p.numel()
            else:
                adapter += p[0].numel() if self.stacks else p.numel()
        return {"adapter": adapter, "head": head, "trainable": adapter + head, "total": frozen + adapter + head}


def freeze_all_but_head(model: nn.Module) -> None:
    for n, p in model.named_parameters():
        p.requires_grad = is_head(n)


def replace_targets(model: nn.Module, family: str, factory: Callable[[Target], nn.Module]) -> list[tuple[Target, nn.Module]]:
    """Swap each target nn.Linear for ``factory(target)``; returns (target, new module) pairs."""
    out = []
    for t in find_targets(model, family):
        parent_name, _, child = t.name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = factory(t)
        setattr(parent, child, new)
        out.append((t, new))
    return out
