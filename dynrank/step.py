"""One training step, eager (``train_step``) or captured as a CUDA graph and replayed (``GraphedStep``), and
what it steps: the optimizer and schedule (``make_optimizer``), the model on its device (``prepare_model``).
Both forms run the same body, ``_update``; ``tests/test_gpu.py`` checks that they compute the same step.
"""
from __future__ import annotations

import torch
from transformers import get_linear_schedule_with_warmup

from .precision import bf16_backbone
from .tasks.base import autocast


def _update(model, method, optimizer, batch, step: int, clip: float, precision):
    """Forward, the method's extra loss, backward, clip, AdamW: what every training step does."""
    with precision:
        loss = model(**batch).loss
        extra = method.extra_loss(step)
        total = loss if extra is None else loss + extra
    total.backward()
    torch.nn.utils.clip_grad_norm_(method.trainable, clip, foreach=True)
    optimizer.step()
    return loss.detach(), total.detach()


def train_step(model, method, optimizer, scheduler, batch, step: int, clip: float, amp: bool, device):
    """One optimizer step; the benchmark (scripts/bench.py) times exactly this function.

    No host-device synchronisation happens here: the loss comes back as a device tensor.
    """
    out = _update(model, method, optimizer, batch, step, clip, autocast(device, amp))
    scheduler.step()
    method.before_zero_grad(step)  # gradients still there (AdaLoRA's sensitivity |w * grad|)
    optimizer.zero_grad(set_to_none=True)
    method.after_step(step + 1)
    return out


class GraphedStep:
    """``train_step`` captured as one CUDA graph per (batch shapes, ``method.graph_key(step)``) and replayed.

    Fine-tuning RoBERTa-base with adapters is launch-bound: a step is ~2,000 small kernels whose launch
    (and PEFT's Python per module) costs far more than the math. Replaying a captured graph costs one launch.
    The math is the same as ``train_step``: gradients are zeroed at the start of the step instead of
    freed at its end, AdamW is fused and capturable (its lr a device tensor the scheduler fills), and
    dropout draws from the same generator. The first step of each key runs eagerly (warm-up), the second
    is captured and replayed, later ones replay.
    """

    def __init__(self, model, method, optimizer, scheduler, clip: float, amp: bool, device):
        self.model, self.method, self.optimizer, self.scheduler = model, method, optimizer, scheduler
        self.clip, self.amp, self.device = clip, amp, device
        for p in method.trainable:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.grads = [p.grad for p in method.trainable]
        self.graphs: dict = {}
        self.warm: set = set()
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream()  # warm-up steps
        # Capture on a stream of our own, not torch's shared default capture stream: cuBLAS keys its
        # workspace by stream, so graphs of several runs captured on one stream would share a workspace
        # and race when replayed side by side (run_side_by_side).
        self.capture_stream = torch.cuda.Stream()

    def _body(self, batch, step):
        torch._foreach_zero_(self.grads)
        # autocast's weight cache must be off while capturing
        precision = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False)
        out = _update(self.model, self.method, self.optimizer, batch, step, self.clip, precision)
        self.method.before_zero_grad(step)
        self.method.after_step(step + 1)
        return out

    def __call__(self, batch, step: int):
        from .methods.base import EAGER

        self.method.prepare_step(step)
        mkey = self.method.graph_key(step)
        key = (tuple((k, tuple(v.shape)) for k, v in sorted(batch.items())), mkey)
        if mkey == EAGER or key not in self.graphs and key not in self.warm:
            if mkey != EAGER:
                self.warm.add(key)
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                out = self._body(batch, step)
            torch.cuda.current_stream().wait_stream(self.stream)
        else:
            if key not in self.graphs:
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
            graph, static, outs = self.graphs[key]
            for k, v in batch.items():
                static[k].copy_(v, non_blocking=True)
            graph.replay()
            out = outs
        self.scheduler.step()
        return out


def make_optimizer(cfg_train, method, total_steps: int, device, graphs: bool = False):
    """AdamW (fused on GPU), weight decay on every trainable parameter, linear schedule with warm-up.

    With CUDA graphs the learning rate lives in a device tensor (the scheduler fills it in place)."""
    kind = {"fused": True} if device.type == "cuda" else {"foreach": True}
    lr = float(cfg_train.lr)
    if graphs:
        kind["capturable"] = True
        lr = torch.tensor(lr, device=device)
    optimizer = torch.optim.AdamW(method.trainable, lr=lr, weight_decay=float(cfg_train.weight_decay), **kind)
    warmup = int(float(cfg_train.warmup_ratio) * total_steps)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, total_steps)


def prepare_model(model, method, device, bf16: bool, compile_model: bool):
    """Move to the device; with bf16, the frozen weights in bf16 and bf16 layer-norm outputs
    (``precision.bf16_backbone``; trainable weights and the optimizer state stay fp32); optionally torch.compile."""
    model = model.to(device)
    if bf16 and device.type == "cuda":
        bf16_backbone(model)
    method.trainable = [p for p in model.parameters() if p.requires_grad]
    model.train()
    if compile_model and device.type == "cuda":
        return torch.compile(model)
    return model
