"""One training step of a stack of runs, eager (``train_step``) or captured as a CUDA graph and replayed
(``GraphedStep``), and what it steps: the model on its device (``prepare_model``), the optimizer (``make_optimizer``),
all built in one place (``build_stack``: the trainer's and the benchmark's). Both forms run the same body,
``_update``; ``tests/test_gpu.py`` checks that they compute the same step.

A step sees the R runs' batches concatenated (run-major) and returns each run's task loss and total loss (R,).
The backward pass is of the sum over runs: run k's parameters only meet run k's rows, so each gets exactly the
gradient of its own loss; clipping and AdamW are per run (``dynrank.optim``).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch
from torch import nn

from . import attention, dropout
from .methods.groups import bind_groups, shared_operands, storage_order
from .optim import Flat, RunAdamW, clip_per_run, param_groups
from .packing import encoder_of
from .precision import bf16_backbone
from .tasks.base import autocast

# The stacked parameters are strided views into one flat buffer (dynrank.optim.Flat) by design: autograd adds each
# step's gradient into the (equally strided) gradient view in place, which is what it warns about, once.
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")


def _update(model, method, losses, optimizer: RunAdamW, batch, step: int, clip: float | None, precision):
    """Zeroed gradients, forward, the method's extra loss, backward, per-run clip, per-run AdamW, the method's hooks:
    what every training step does, eager or captured."""
    optimizer.flat.zero_grad()
    with precision, shared_operands(model):  # each group of low-rank layers' operands made once
        loss = losses(model, batch)  # (R,)
        extra = method.extra_loss(step)
        total = loss if extra is None else loss + extra
    total.sum().backward()
    if clip:
        clip_per_run(optimizer.flat.grad, clip)
    optimizer.step()
    method.before_zero_grad(step)  # gradients still there (AdaLoRA's sensitivity |w * grad|)
    method.after_step(step + 1)
    return loss.detach(), total.detach()


def prepare(model, method, optimizer: RunAdamW, step: int) -> None:
    """Host side, before step ``step`` (0-based), graphed or not: the method's device scalars, the learning
    rates of every run and the step of the runs' dropout streams (no sync)."""
    method.prepare_step(step)
    optimizer.set_step(step)
    stream = getattr(model, "dropout_stream", None)
    if stream is not None:
        stream.set_step(step)


def train_step(model, method, losses, optimizer: RunAdamW, batch, step: int, clip: float | None, amp: bool, device):
    """One optimizer step of every run; the benchmark (scripts/bench.py) times exactly this function.

    No host-device synchronisation happens here: the losses come back as a device tensor (R,)."""
    prepare(model, method, optimizer, step)
    return _update(model, method, losses, optimizer, batch, step, clip, autocast(device, amp))


class GraphedStep:
    """``train_step`` captured as one CUDA graph per (batch shapes, ``method.graph_key(step)``) and replayed.

    Fine-tuning RoBERTa-base with adapters is launch-bound: a step is ~2,000 small kernels whose launch
    (and PEFT's Python per module) costs far more than the math. Replaying a captured graph costs one launch.
    The math is the same as ``train_step``: AdamW reads each run's learning rate from a device tensor that
    ``prepare`` fills, and dropout masks are keyed by the step that ``prepare`` writes (``dynrank.dropout``). The first ``warmup`` steps of each key run eagerly
    (one; three for a compiled model, which compiles in them), the next is captured and replayed, later ones replay.
    """

    def __init__(self, model, method, losses, optimizer: RunAdamW, clip: float | None, amp: bool, device,
                 warmup: int = 1):
        self.model, self.method, self.losses, self.optimizer = model, method, losses, optimizer
        self.clip, self.amp, self.device = clip, amp, device
        self.graphs: dict = {}
        self.warmup = warmup  # eager steps of a key before its capture (a compiled model compiles in them)
        self.warm: dict = {}
        # seconds in the eager warm-up steps and the captures (a job's fixed cost: estimate), the device drained
        # before and after each (``_setup_clock``): not the queued replays a first call's sync would wait for
        self.setup_s = 0.0
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream()  # warm-up steps
        # Capture on a stream of our own, not torch's shared default capture stream: cuBLAS keys its
        # workspace by stream, so graphs of several trainers captured on one stream would share a workspace
        # and race when replayed side by side (driver.run_side_by_side).
        self.capture_stream = torch.cuda.Stream()

    def _body(self, batch, step):
        # autocast's weight cache must be off while capturing
        precision = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False)
        return _update(self.model, self.method, self.losses, self.optimizer, batch, step, self.clip, precision)

    def _setup_clock(self) -> float:
        """The host clock with the device drained: a new key's warm-up step or capture is timed alone (once per key;
        a job has tens of keys)."""
        torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def __call__(self, batch, step: int):
        from .methods.base import EAGER

        prepare(self.model, self.method, self.optimizer, step)
        mkey = self.method.graph_key(step)
        key = (tuple((k, tuple(v.shape)) for k, v in sorted(batch.items())), mkey)
        if mkey == EAGER or key not in self.graphs and self.warm.get(key, 0) < self.warmup:
            t0 = self._setup_clock() if mkey != EAGER else 0.0
            if mkey != EAGER:
                self.warm[key] = self.warm.get(key, 0) + 1
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                out = self._body(batch, step)
            torch.cuda.current_stream().wait_stream(self.stream)
            if mkey != EAGER:
                self.setup_s += self._setup_clock() - t0
            return out
        if key not in self.graphs:
            t0 = self._setup_clock()
            # torch.cuda.graph() would also synchronize the device, run gc and empty the cache on
            # every capture; ordering the capture stream after ours is all a capture needs
            static = {k: v.clone() for k, v in batch.items()}
            graph = torch.cuda.CUDAGraph()
            current = torch.cuda.current_stream()
            self.capture_stream.wait_stream(current)
            with torch.cuda.stream(self.capture_stream):
                graph.capture_begin(pool=self.pool)
                try:
                    outs = self._body(static, step)
                finally:
                    graph.capture_end()
            current.wait_stream(self.capture_stream)
            self.graphs[key] = (graph, static, outs)
            self.setup_s += self._setup_clock() - t0
        graph, static, outs = self.graphs[key]
        for k, v in batch.items():
            static[k].copy_(v, non_blocking=True)
        graph.replay()
        return outs


def make_stepper(model, method, losses, optimizer: RunAdamW, clip: float | None, amp: bool, device, graphs: bool):
    """``stepper(batch, step) -> (task losses (R,), total losses (R,))``: graphed on a GPU when ``graphs``."""
    if graphs and device.type == "cuda":
        compiled = hasattr(model, "_orig_mod")  # torch.compile: forward and backward compile in the warm-up steps
        return GraphedStep(model, method, losses, optimizer, clip, amp, device, warmup=3 if compiled else 1)
    return partial(train_step, model, method, losses, optimizer, clip=clip, amp=amp, device=device)


def make_optimizer(cfg_train, method, flat: Flat, lrs: list[float], total_steps: int) -> RunAdamW:
    """Per-run AdamW over the method's trainable parameters (``flat``: ``prepare_model``'s), weight decay on those
    its source decays (``train.no_decay``, ``optim.decays``) unless the method's ``param_group`` says otherwise, each
    parameter at its group's learning-rate scale, the schedule of ``train.schedule`` with ``train.warmup_ratio``
    warm-up."""
    betas = cfg_train.get("adam_betas") or (0.9, 0.999)
    groups = param_groups(method.model, flat.params, str(cfg_train.get("no_decay") or "none"), method.param_group)
    return RunAdamW(flat, lrs, weight_decay=float(cfg_train.weight_decay), betas=tuple(betas),
                    eps=float(cfg_train.get("adam_eps") or 1e-8), total_steps=total_steps,
                    warmup_steps=int(float(cfg_train.warmup_ratio) * total_steps),
                    schedule=str(cfg_train.get("schedule") or "linear"),
                    decay=[g.decay for g in groups], lr_scale=[g.lr_scale for g in groups])


def prepare_model(model, method, device, bf16: bool, compile_model: bool,
                  seeds: list[int] | None = None) -> tuple[nn.Module, Flat]:
    """``(the model that steps, its trainable parameters' flat buffer)``: moved to the device; one dropout stream
    per run (``seeds``: each run's): for an encoder (RoBERTa, BERT) every ``nn.Dropout`` a ``dropout.KeyedDropout``
    and attention through ``attention.attend``, for BART every dropout it calls (``functional_dropout``); with
    bf16, the frozen weights in bf16 and bf16 layer-norm outputs (``precision.bf16_backbone``; trainable weights
    and the optimizer state stay fp32); the trainable parameters into one flat buffer (``dynrank.optim.Flat``), each
    group of low-rank layers' factors side by side and read as one tensor each (``groups.bind_groups``; not under
    torch.compile, which traces the stacks); optionally torch.compile."""
    model = model.to(device)
    seeds = seeds or [0] * method.runs
    if encoder_of(model) is not None:
        dropout.install(model, seeds, device)
        attention.use_for(model)
    elif getattr(getattr(model, "config", None), "is_encoder_decoder", False):  # BART: its functional dropout (tasks/xsum.py)
        dropout.install_functional(model, seeds, device)
    if bf16 and device.type == "cuda":
        bf16_backbone(model)
    params = [p for p in model.parameters() if p.requires_grad]
    flat = Flat(params, method.runs, method.stacks, order=storage_order(model, params))
    compiled = compile_model and device.type == "cuda"
    if not compiled:
        bind_groups(model, flat)
    model.train()
    if compiled:
        return torch.compile(model), flat
    return model, flat


@dataclass
class Stack:
    """What trains a stack of runs (``build_stack``): the wrapped model and the one that steps (compiled or not),
    the method, the flat buffer of the trainable parameters, the per-run optimizer and the stepper."""

    model: nn.Module  # ``method.wrap(backbone)``: evaluation, export and checkpoints read it
    step_model: nn.Module  # what the stepper runs (``torch.compile(model)`` with ``train.compile``)
    method: Any  # ``methods.base.Method``
    flat: Flat
    optimizer: RunAdamW
    stepper: Callable  # ``stepper(batch, step) -> (task losses (R,), total losses (R,))``


def build_stack(cfg, backbone: nn.Module, *, family: str, seeds: list[int], lrs: list[float], losses, device,
                total_steps: int, amp: bool, graphs: bool, compile_model: bool = False, clip: float | None = None,
                method_cfgs: list | None = None) -> Stack:
    """``cfg``'s method around ``backbone`` for ``len(seeds)`` stacked runs (run k: seed ``seeds[k]``, learning rate
    ``lrs[k]``, method group ``method_cfgs[k]``), in the order every part needs: the method wraps the model, each
    run takes its own seed's initialisation, the model goes to the device (``prepare_model``), the method's
    schedules learn the total steps, then the optimizer and the stepper (graphed where ``graphs`` on a GPU)."""
    from . import methods

    method = methods.build(cfg, family, runs=len(seeds))
    model = method.wrap(backbone)
    method.init_runs(list(seeds), method_cfgs)
    step_model, flat = prepare_model(model, method, device, amp, compile_model, seeds=list(seeds))
    method.setup(total_steps)
    optimizer = make_optimizer(cfg.train, method, flat, lrs, total_steps)
    stepper = make_stepper(step_model, method, losses, optimizer, clip, amp, device, graphs)
    return Stack(model, step_model, method, flat, optimizer, stepper)
