"""The training loop: one function you can read in one sitting.

AdamW (weight decay 0.01), linear schedule with 6% warm-up, grad-norm clip 1.0, optional bf16
autocast on GPU, dev evaluation after every epoch, a checkpoint after every epoch (resume), one
results JSON at the end. The method's hooks: ``extra_loss`` before backward, ``after_step`` after
the optimizer step (where DoRA prunes, as in the authors' code).
"""
from __future__ import annotations

import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from transformers import get_linear_schedule_with_warmup

from . import checkpoint, methods, tasks
from .config import run_id, validate
from .data.cache import fingerprint
from .errors import TrainingError
from .models import load_tokenizer
from .results import SCHEMA, git_commit, store_path, versions, write_json
from .tasks.base import autocast

log = logging.getLogger("dynrank")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("train.device=cuda but no GPU is visible; use train.device=cpu")
    return torch.device(name)


def batches(dataset, batch_size: int, seed: int, epoch: int, group_by_length: bool):
    """Shuffled index batches for one epoch; the order depends only on (seed, epoch): resumable."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(dataset), generator=g).tolist()
    if group_by_length:  # sort within chunks of 50 batches, then shuffle the batches
        lengths = dataset.lengths()
        chunk = batch_size * 50
        order = [i for s in range(0, len(order), chunk)
                 for i in sorted(order[s:s + chunk], key=lambda j: -lengths[j])]
    out = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        perm = torch.randperm(len(out), generator=g).tolist()
        out = [out[i] for i in perm]
    return out


def train_step(model, method, optimizer, scheduler, batch, step: int, clip: float, amp: bool, device):
    """One optimizer step; the benchmark (scripts/bench.py) times exactly this function.

    No host-device synchronisation happens here: the loss comes back as a device tensor.
    """
    with autocast(device, amp):
        loss = model(**batch).loss
        extra = method.extra_loss(step)
        total = loss if extra is None else loss + extra
    total.backward()
    torch.nn.utils.clip_grad_norm_(method.trainable, clip, foreach=True)
    optimizer.step()
    scheduler.step()
    method.before_zero_grad(step)  # gradients still there (AdaLoRA's sensitivity |w * grad|)
    optimizer.zero_grad(set_to_none=True)
    method.after_step(step + 1)
    return loss.detach(), total.detach()


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
        self.stream = torch.cuda.Stream()

    def _body(self, batch, step):
        torch._foreach_zero_(self.grads)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False):
            loss = self.model(**batch).loss
            extra = self.method.extra_loss(step)
            total = loss if extra is None else loss + extra
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.method.trainable, self.clip, foreach=True)
        self.optimizer.step()
        self.method.before_zero_grad(step)
        self.method.after_step(step + 1)
        return loss.detach(), total.detach()

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
                static = {k: v.clone() for k, v in batch.items()}
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool):
                    outs = self._body(static, step)
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
    """Move to the device; with bf16, store the FROZEN weights in bf16 (trainable ones and the optimizer
    state stay fp32) so autocast does not re-cast the backbone every step; optionally torch.compile."""
    model = model.to(device)
    if bf16 and device.type == "cuda":
        for p in model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    method.trainable = [p for p in model.parameters() if p.requires_grad]
    model.train()
    if compile_model and device.type == "cuda":
        return torch.compile(model)
    return model


def run(cfg, run_dir) -> dict:
    """Train ``cfg.method`` on ``cfg.task``; returns the results dict (also written to disk)."""
    validate(cfg)
    run_dir = Path(run_dir)
    out_path = store_path(cfg.results.store, run_id(cfg))
    if cfg.train.skip_done and out_path.exists():
        log.info("results exist, skipping: %s", out_path)
        return {}
    seed = int(cfg.seed)
    seed_everything(seed)
    device = pick_device(str(cfg.train.device))
    amp = bool(cfg.train.bf16) and device.type == "cuda"

    tokenizer = load_tokenizer(cfg.model)
    task = tasks.build(cfg, tokenizer)
    train_set, eval_sets = task.train_set(), task.eval_sets()
    seed_everything(seed)  # model and adapter init depend on the seed only
    model = task.build_model()
    method = methods.build(cfg, cfg.model.family)
    model = method.wrap(model)
    step_model = prepare_model(model, method, device, amp, bool(cfg.train.get("compile", False)))

    bs, epochs = int(cfg.train.batch_size), int(cfg.train.epochs)
    steps_per_epoch = math.ceil(len(train_set) / bs)
    total_steps = steps_per_epoch * epochs
    method.setup(total_steps)
    graphs = bool(cfg.train.get("cuda_graphs", False)) and device.type == "cuda"
    optimizer, scheduler = make_optimizer(cfg.train, method, total_steps, device, graphs)
    clip = float(cfg.train.max_grad_norm)

    resolved = OmegaConf.to_container(cfg, resolve=True)
    fp = fingerprint({k: v for k, v in resolved.items() if k not in ("train", "results", "data")},
                     {k: v for k, v in resolved["train"].items() if k not in ("resume", "skip_done", "progress", "log_every", "eval_batch_size", "num_workers", "export")},
                     {k: v for k, v in resolved["data"].items() if k != "cache_dir"})
    history, start_epoch, step = [], 0, 0
    if cfg.train.resume and checkpoint.exists(run_dir):
        state = checkpoint.load(run_dir, model=model, optimizer=optimizer, scheduler=scheduler, method=method,
                                fingerprint=fp, device=device)
        history, start_epoch, step = state["history"], state["epoch"], state["step"]
        log.info("resumed from %s at epoch %d (step %d)", run_dir / checkpoint.NAME, start_epoch, step)
        if graphs:  # the checkpoint stores lr as a number; graphs need the device tensor back
            for g in optimizer.param_groups:
                g["lr"] = torch.as_tensor(g["lr"], dtype=torch.float32, device=device)
    if graphs:
        stepper = GraphedStep(step_model, method, optimizer, scheduler, clip, amp, device)
    else:
        def stepper(batch, step):
            method.prepare_step(step)
            return train_step(step_model, method, optimizer, scheduler, batch, step, clip, amp, device)

    writer = _tensorboard(run_dir)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    log.info("%s | %s | %s-%s | seed %d | %d steps | trainable %s", cfg.task.name, cfg.model.id, cfg.method.name,
             cfg.budget.name, seed, total_steps, method.param_counts())
    started = time.time()
    for epoch in range(start_epoch, epochs):
        t0 = time.time()
        loss_sum = torch.zeros((), device=device)
        finite = torch.ones((), dtype=torch.bool, device=device)
        plan = batches(train_set, bs, seed, epoch, bool(cfg.train.group_by_length))
        bar = _progress(cfg, plan, epoch, epochs)
        for i, idx in enumerate(bar):
            batch = {k: v.to(device, non_blocking=True) for k, v in task.collate([train_set[j] for j in idx]).items()}
            loss, total = stepper(batch, step)
            step += 1
            loss_sum += loss.float()
            finite &= torch.isfinite(total)
            if step % int(cfg.train.log_every) == 0 or i == len(plan) - 1:
                _check_finite(finite, step, epoch)
                if writer:
                    writer.add_scalar("train/loss", loss.item(), step)
                    writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
        train_time = time.time() - t0
        t1 = time.time()
        dev = task.evaluate(model, eval_sets, device, amp)
        eval_time = time.time() - t1
        history.append({"epoch": epoch + 1, "step": step, "train_loss": (loss_sum / max(1, len(plan))).item(),
                        "dev": dev, "train_time_s": train_time, "eval_time_s": eval_time})
        log.info("epoch %d/%d  loss %.4f  dev %s  (%.1fs)", epoch + 1, epochs, history[-1]["train_loss"],
                 {k: round(v, 4) for k, v in dev.items()}, train_time)
        if writer:
            for k, v in dev.items():
                writer.add_scalar(f"dev/{k}", v, step)
        checkpoint.save(run_dir, model=model, optimizer=optimizer, scheduler=scheduler, method=method,
                        epoch=epoch + 1, step=step, history=history, fingerprint=fp)
        if os.environ.get("DYNRANK_DEBUG_KILL_AFTER_EPOCH") == str(epoch + 1):
            os._exit(137)  # tests: die like `kill -9` right after a checkpoint
    if writer:
        writer.close()

    results = _results(cfg, resolved, task, method, history, device, started)
    results["method_summary"] = method.summary()
    method.artifacts(run_dir)
    extra_evals = method.final_evaluation(lambda: task.evaluate(model, eval_sets, device, amp))
    if extra_evals:
        results["extra_evals"] = extra_evals
    if cfg.train.get("export"):
        method.export(run_dir / "adapter", base_name=str(cfg.model.path or cfg.model.name), task_type=task.task_type)
        results["export_dir"] = str(run_dir / "adapter")
    write_json(run_dir / "results.json", results)
    write_json(out_path, results)
    log.info("results: %s", out_path)
    return results


def _check_finite(finite: torch.Tensor, step: int, epoch: int) -> None:
    if not bool(finite):
        raise TrainingError(f"loss became NaN/inf by step {step} (epoch {epoch + 1}); lower train.lr, "
                            "check the data, or turn off train.bf16; the last epoch's checkpoint is kept")


def _results(cfg, resolved, task, method, history, device, started) -> dict:
    metric = task.metric
    best = max(history, key=lambda h: h["dev"].get(metric, float("-inf")))
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "schema": SCHEMA, "run_id": run_id(cfg), "model": cfg.model.id, "task": cfg.task.name,
        "method": cfg.method.name, "budget": cfg.budget.name, "variant": cfg.get("variant"), "seed": int(cfg.seed),
        "metric": metric,
        "best": {"epoch": best["epoch"], "dev": best["dev"]},
        "final": {"epoch": history[-1]["epoch"], "dev": history[-1]["dev"]},
        "epochs": history,
        "params": method.param_counts(),
        "time_per_epoch_s": [h["train_time_s"] for h in history],
        "peak_gpu_memory_mib": peak,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "wall_time_s": time.time() - started,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": resolved, "versions": versions(), "git_commit": git_commit(),
    }


def _progress(cfg, plan, epoch, epochs):
    if not cfg.train.progress:
        return plan
    from tqdm.auto import tqdm

    return tqdm(plan, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)


def _tensorboard(run_dir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional at run time
        return None
    return SummaryWriter(log_dir=str(Path(run_dir) / "tb"))
