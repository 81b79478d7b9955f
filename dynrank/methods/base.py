"""The small protocol every fine-tuning method follows.

A method
  1. ``wrap(model)``: injects its modules (if any) and says which parameters train
     (``requires_grad``); the task head always trains;
  2. ``extra_loss(step)``: an optional regulariser added to the task loss (DEM, orthogonality);
  3. ``after_step(step)``: an optional hook after each optimizer step (budget allocation);
  4. ``state_dict()/load_state_dict()``: state beyond the parameters, for resume (EMAs, masks);
  5. ``summary()``: what goes into the results JSON (rank map, per-rank metrics...);
  6. ``export(out_dir)``: the trained adapter in a portable format, where one exists.

Methods are plain classes; ``dynrank.methods.build(cfg)`` picks one by ``method.name``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..models import Target, find_targets, is_head


EAGER = "eager"  # graph_key value: run this step without a CUDA graph


class Method:
    name = "base"

    def __init__(self, cfg, budget, family: str):
        self.cfg = cfg  # the method's config group
        self.budget = budget  # the budget config group: budget.r is the final rank
        self.family = family
        self.model: nn.Module | None = None
        self.total_steps = 0

    # --- 1. wrap -----------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def setup(self, total_steps: int) -> None:
        """Called once the loop knows the number of optimizer steps (schedules need it)."""
        self.total_steps = total_steps

    # --- 2-3. loss and hook ----------------------------------------------------------------
    def extra_loss(self, step: int) -> torch.Tensor | None:
        """Added to the task loss of optimizer step ``step`` (0-based: steps done so far)."""
        return None

    def before_zero_grad(self, step: int) -> None:
        """Runs after optimizer.step() and scheduler.step() but before zero_grad, so ``p.grad`` still holds
        this step's (clipped) gradients; ``step`` is 0-based like ``extra_loss``'s (the index of the step just
        taken). AdaLoRA's sensitivity |w * grad| needs it (PEFT: update_and_allocate between step and zero_grad)."""
        pass

    def after_step(self, step: int) -> None:
        """Runs right after optimizer step ``step`` (1-based: steps done, including this one)."""
        pass

    # --- CUDA graphs (train.cuda_graphs=true) ----------------------------------------------------
    # The loop may capture a whole step (forward, extra_loss, backward, clip, AdamW, before_zero_grad,
    # after_step) in a CUDA graph and replay it. A captured step must not branch in Python on anything
    # but what ``graph_key`` returns, must update its state tensors IN PLACE (never rebind them), and
    # must take step-dependent numbers from device tensors that ``prepare_step`` fills before each step.
    def graph_key(self, step: int):
        """Steps with equal keys run the same captured graph (``step`` 0-based). ``EAGER``: don't capture."""
        return None

    def prepare_step(self, step: int) -> None:
        """Host-side, before every step (graphed or not): fill device scalars the step reads (no sync)."""

    def pruning_end_step(self) -> int | None:
        """Adaptive methods: the optimizer steps done (1-based) when the budget allocation became final, the
        point after which the authors' code picks the best epoch (protocol=paper_code); None: no pruning."""
        return None

    def final_evaluation(self, evaluate: Callable[[], dict]) -> dict:
        """Extra dev evaluations after training (e.g. DyLoRA at several ranks); merged into results."""
        return {}

    # --- 4-6. state, summary, export -------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def summary(self) -> dict:
        """JSON-able facts for the results file (e.g. DoRA's rank map)."""
        return {}

    def scalars(self, step: int) -> dict[str, float]:
        """TensorBoard scalars after ``step`` optimizer steps (1-based), logged every ``train.log_every`` steps
        under ``<method>/<name>`` (e.g. DoRA's budget, surviving components and DEM)."""
        return {}

    def artifacts(self, run_dir, run: str = "") -> None:
        """Files written next to the results after training (e.g. the rank heatmap PNG); ``run`` names the run
        (model, task, budget, seed) for titles."""

    def export(self, out_dir, base_name: str = "", task_type: str = "seq_cls"):
        """Write the trained adapter in a portable format (PEFT's, where one exists)."""
        raise NotImplementedError(f"method '{self.name}' has no export format")

    # --- accounting ------------------------------------------------------------------------
    def param_counts(self) -> dict[str, int]:
        """Trainable parameters, the adapter (method's own) and the task head separately."""
        adapter = head = 0
        for n, p in self.model.named_parameters():
            if p.requires_grad:
                if is_head(n):
                    head += p.numel()
                else:
                    adapter += p.numel()
        return {"adapter": adapter, "head": head, "trainable": adapter + head,
                "total": sum(p.numel() for p in self.model.parameters())}


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
