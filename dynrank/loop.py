"""The training loop: one function you can read in one sitting.

AdamW (weight decay 0.01), linear schedule with 6% warm-up, grad-norm clip 1.0, optional bf16
autocast on GPU, dev evaluation after every epoch, a checkpoint after every epoch (resume), one
results JSON at the end. The method's hooks: ``extra_loss`` before backward, ``after_step`` after
the optimizer step (where DoRA prunes, as in the authors' code). The step itself (eager or as a CUDA
graph) is ``step.py``; several runs side by side in one process, ``side_by_side.py``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from . import checkpoint, export, gpus, methods, runlog, tasks
from .config import config_hash, resume_key, run_id, validate
from .data.cache import fingerprint
from .errors import TrainingError
from .models import load_tokenizer
from .results import SCHEMA, git_commit, store_path, versions, write_json
from .step import GraphedStep, make_optimizer, prepare_model, train_step

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


class Trainer:
    """One run (a config and its run directory): model, method, optimizer, data order, history.

    ``run`` drives one trainer; ``side_by_side.run_side_by_side`` drives several side by side on one GPU.
    """

    def __init__(self, cfg, run_dir, shared: dict | None = None):
        validate(cfg)
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.out_path = store_path(cfg.results.store, run_id(cfg))
        self.results = {}  # a run skipped as finished: its results
        self.skip = bool(cfg.train.skip_done) and _read_results(self.out_path)[0] == int(cfg.train.epochs)
        if self.skip:
            log.info("results exist, skipping: %s", self.out_path)
            return
        self.key = resume_key(cfg)  # what a checkpoint of this run must have been made with
        self.fp = fingerprint(self.key)
        self.lock = checkpoint.RunLock(self.run_dir)  # a second process on this run stops here
        try:
            if cfg.train.get("extend") and cfg.train.resume and not checkpoint.exists(self.run_dir):
                self._continue_shorter_run()
            self.skip = self._finished(shared)
            if not self.skip:
                self._setup(shared)
        except BaseException:
            self.lock.release()
            raise
        if self.skip:
            self.lock.release()

    def _setup(self, shared):
        cfg = self.cfg
        self.seed = seed = int(cfg.seed)
        seed_everything(seed)
        self.device = device = pick_device(str(cfg.train.device))
        self.amp = amp = bool(cfg.train.bf16) and device.type == "cuda"
        self.shared = shared = self._data(shared)
        self.task, self.train_set, self.eval_sets = shared["task"], shared["train_set"], shared["eval_sets"]
        seed_everything(seed)  # model and adapter init depend on the seed only
        model = self.task.build_model()
        self.method = method = methods.build(cfg, cfg.model.family)
        self.model = model = method.wrap(model)
        step_model = prepare_model(model, method, device, amp, bool(cfg.train.get("compile", False)))

        self.bs, self.epochs = int(cfg.train.batch_size), int(cfg.train.epochs)
        self.total_steps = math.ceil(len(self.train_set) / self.bs) * self.epochs
        method.setup(self.total_steps)
        graphs = bool(cfg.train.get("cuda_graphs", False)) and device.type == "cuda"
        self.optimizer, self.scheduler = make_optimizer(cfg.train, method, self.total_steps, device, graphs)
        clip = float(cfg.train.max_grad_norm)

        self.resolved = OmegaConf.to_container(cfg, resolve=True)
        self.history, self.start_epoch, self.step = [], 0, 0
        self.past_attempts_s = []  # wall time of the earlier attempts at this run (killed, then resumed)
        self.schedule = [{"epochs": self.epochs, "from_step": 0}]  # the length each schedule was made for
        if cfg.train.resume and checkpoint.exists(self.run_dir):
            state = checkpoint.load(self.run_dir, model=model, optimizer=self.optimizer, scheduler=self.scheduler,
                                    method=method, fingerprint=self.fp, config=self.key, data=shared["data"],
                                    device=device)
            self.history, self.start_epoch, self.step = state["history"], state["epoch"], state["step"]
            self.past_attempts_s = list(state["extra"].get("wall_time_s", []))
            self.schedule = list(state["extra"].get("schedule") or self.schedule)
            log.info("resumed from %s at epoch %d (step %d)", state["path"], self.start_epoch, self.step)
            if self.schedule[-1]["epochs"] != self.epochs:
                self._extend()
            if graphs:  # the checkpoint stores lr as a number; graphs need the device tensor back
                for g in self.optimizer.param_groups:
                    g["lr"] = torch.as_tensor(g["lr"], dtype=torch.float32, device=device)
        if graphs:
            self.stepper = GraphedStep(step_model, method, self.optimizer, self.scheduler, clip, amp, device)
        else:
            def stepper(batch, step):
                method.prepare_step(step)
                return train_step(step_model, method, self.optimizer, self.scheduler, batch, step, clip, amp, device)
            self.stepper = stepper
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.rng = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)
        self.writer = runlog.tensorboard(self.run_dir, self.step)
        if device.type == "cuda":  # setup ran on the default stream; steps may run on self.stream
            torch.cuda.synchronize(device)
        log.info("%s | %s | %s-%s | seed %d | %d steps | trainable %s", cfg.task.name, cfg.model.id,
                 cfg.method.name, cfg.budget.name, seed, self.total_steps, method.param_counts())
        self.started = time.time()

    def _data(self, shared):
        """Tokenizer, task and encoded data (the same for every seed: ``shared`` where another run loaded them)."""
        if shared is None:
            tokenizer = load_tokenizer(self.cfg.model)
            task = tasks.build(self.cfg, tokenizer)
            shared = {"task": task, "train_set": task.train_set(), "eval_sets": task.eval_sets()}
            shared["data"] = data_identity(shared["train_set"], shared["eval_sets"])
        return shared

    def _extend(self) -> None:
        """The run continues to ``train.epochs`` from a checkpoint planned for another length (an extension): the
        learning-rate schedule and the method's schedules (DoRA's and AdaLoRA's budgets) were made for the new
        total steps in ``_setup``; the optimizer takes the new schedule's rate at this step at once."""
        old = self.schedule[-1]["epochs"]
        self.schedule.append({"epochs": self.epochs, "from_step": self.step})
        for group, base, fn in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * fn(self.scheduler.last_epoch)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        log.info("the run's length changes from %d to %d epochs at epoch %d (step %d of %d): the learning-rate and "
                 "budget schedules now span %d epochs (README: More epochs); train.resume=false trains %d epochs "
                 "from the start", old, self.epochs, self.start_epoch, self.step, self.total_steps, self.epochs, self.epochs)

    def _continue_shorter_run(self) -> None:
        """``train.extend=true``, no checkpoint here yet: the longest shorter run of this config (beside this one in
        the same outputs tree: same learning rate, seed and every other key but the epochs) lends its last
        checkpoint, copied here, and this run continues from it (``_extend``). The shorter run is left as it is."""
        epochs, lr_dir = int(self.cfg.train.epochs), self.run_dir.parent.name.rsplit("-", 1)[0]
        found = []
        for other in self.run_dir.parent.parent.glob(f"{lr_dir}-*/{self.run_dir.name}"):
            if other == self.run_dir or not checkpoint.exists(other):
                continue
            try:
                path, state = checkpoint.read_state(other, self.fp, self.key)
            except TrainingError:  # another config (a different hash is not only another length), or damaged
                continue
            if state["epoch"] < epochs:
                found.append((state["epoch"], str(path)))
        if not found:
            log.warning("train.extend=true: no shorter run of this config beside %s; training %d epochs from the "
                        "start", self.run_dir, epochs)
            return
        done, path = max(found)
        checkpoint.copy_into(path, self.run_dir)
        log.info("extending %s (%d epochs trained) to %d epochs in %s; that run is left as it is",
                 Path(path).parent, done, epochs, self.run_dir)

    def _finished(self, shared) -> bool:
        """A finished run (its results file, and a checkpoint at its last epoch made with this config and on this
        data) is left as it is: running its command again does not train it again nor rewrite its results
        (train.resume=false does). A checkpoint made for another length continues to ``train.epochs`` only with
        ``train.extend=true`` (``_extend``); one that has trained more epochs than asked is refused."""
        if not (self.cfg.train.resume and checkpoint.exists(self.run_dir)):
            return False
        path, state = checkpoint.read_state(self.run_dir, self.fp, self.key)
        epochs = int(self.cfg.train.epochs)
        if state["epoch"] > epochs:
            raise TrainingError(f"the checkpoint in {path} has trained {state['epoch']} epochs, more than "
                                f"train.epochs={epochs}; set train.epochs={state['epoch']} or more to keep it, or "
                                f"{checkpoint.START_OVER}")
        planned = checkpoint.planned_epochs(state)
        if planned is not None and planned != epochs and not self.cfg.train.get("extend"):
            raise TrainingError(f"the checkpoint in {path} is of a {planned}-epoch run and train.epochs={epochs}: "
                                f"add train.extend=true to continue it to {epochs} epochs (its schedules then span "
                                f"{epochs} epochs from step {state['step']}: README, More epochs), or "
                                f"{checkpoint.START_OVER}")
        results = self.run_dir / "results.json"
        # no results of that epoch (missing, damaged, or a shorter run's): finishing from the checkpoint writes them
        done, finished = _read_results(results)
        if state["epoch"] < epochs or done != state["epoch"]:
            return False
        self.shared = self._data(shared)  # other data than it was trained on: refused, as when resuming
        checkpoint.check_data(path, state, self.shared["data"])
        self.results = finished
        if _read_results(self.out_path)[0] != state["epoch"]:  # another results store (results.store=...) gets its copy
            write_json(self.out_path, self.results)
        log.info("finished already, left as it is: %s (train.resume=false trains it again)", results)
        return True

    def _checkpoint_extra(self) -> dict:
        """What resume checks and continues besides the tensors: the config, the data, the time spent so far."""
        return {"config": self.key, "data": self.shared["data"], "schedule": self.schedule,
                "wall_time_s": [*self.past_attempts_s, time.time() - self.started]}

    # --- one epoch: begin, steps, end --------------------------------------------------------------
    def begin_epoch(self, epoch: int) -> list[list[int]]:
        self.epoch, self.t0 = epoch, time.time()
        self.loss_sum = torch.zeros((), device=self.device)
        self.finite = torch.ones((), dtype=torch.bool, device=self.device)
        self.plan = batches(self.train_set, self.bs, self.seed, epoch, bool(self.cfg.train.group_by_length))
        return self.plan

    def train_step(self, i: int, idx: list[int]) -> None:
        batch = self.task.collate([self.train_set[j] for j in idx])
        if self.device.type == "cuda":  # pinned + non-blocking: the host never waits for the GPU here
            batch = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}
        loss, total = self.stepper(batch, self.step)
        self.step += 1
        self.loss_sum += loss.float()
        self.finite &= torch.isfinite(total)
        if self.step % int(self.cfg.train.log_every) == 0 or i == len(self.plan) - 1:
            _check_finite(self.finite, self.step, self.epoch, self.seed)
            if self.writer:
                self.writer.add_scalar("train/loss", loss.item(), self.step)
                self.writer.add_scalar("train/lr", float(self.scheduler.get_last_lr()[0]), self.step)
                for name, value in self.method.scalars(self.step).items():
                    self.writer.add_scalar(f"{self.method.name}/{name}", value, self.step)

    def end_epoch(self) -> None:
        epoch = self.epoch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        train_time = time.time() - self.t0
        t1 = time.time()
        dev = self.task.evaluate(self.model, self.eval_sets, self.device, self.amp)
        eval_time = time.time() - t1
        self.history.append({"epoch": epoch + 1, "step": self.step,
                             "train_loss": (self.loss_sum / max(1, len(self.plan))).item(),
                             "dev": dev, "train_time_s": train_time, "eval_time_s": eval_time})
        log.info("seed %d epoch %d/%d  loss %.4f  dev %s  (%.1fs)", self.seed, epoch + 1, self.epochs,
                 self.history[-1]["train_loss"], {k: round(v, 4) for k, v in dev.items()}, train_time)
        if self.writer:
            for k, v in dev.items():
                self.writer.add_scalar(f"dev/{k}", v, self.step)
        checkpoint.save(self.run_dir, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                        method=self.method, epoch=epoch + 1, step=self.step, history=self.history,
                        fingerprint=self.fp, extra=self._checkpoint_extra())
        if os.environ.get("DYNRANK_DEBUG_KILL_AFTER_EPOCH") == str(epoch + 1):
            os._exit(137)  # tests: die like `kill -9` right after a checkpoint

    def finish(self) -> dict:
        cfg, run_dir, method = self.cfg, self.run_dir, self.method
        if self.writer:
            self.writer.close()
        results = _results(cfg, self.resolved, self.task, method, self.history, self.device, self.started,
                           self.schedule)
        _total_times(results, self.past_attempts_s, self.started)
        results["method_summary"] = method.summary()
        method.artifacts(run_dir, f"{cfg.model.id}, {cfg.task.name}, budget {cfg.budget.name}, seed {self.seed}")
        extra_evals = method.final_evaluation(
            lambda: self.task.evaluate(self.model, self.eval_sets, self.device, self.amp))
        if extra_evals:
            results["extra_evals"] = extra_evals
        if cfg.train.get("export"):
            adapter = run_dir / "adapter"
            base = export.base_name(cfg.model, self.model, self.task, adapter)
            method.export(adapter, base_name=base, task_type=self.task.task_type)
            results["export_dir"] = str(adapter.resolve())
            log.info("adapter (PEFT format): %s (base: %s)", adapter.resolve(), base)
        write_json(run_dir / "results.json", results)
        write_json(self.out_path, results)
        log.info("results: %s", self.out_path)
        log_run_dir(run_dir)
        return results


def _read_results(results_path) -> tuple[int | None, dict]:
    """The epochs a results file holds and its contents ((None, {}): no readable results file)."""
    try:
        results = json.loads(Path(results_path).read_text())
        return int(results["final"]["epoch"]), results
    except (OSError, ValueError, KeyError, TypeError):
        return None, {}


def log_run_dir(run_dir) -> None:
    """The run directory and what it holds (log, TensorBoard, checkpoint, figure, adapter): the last line of a run."""
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in Path(run_dir).iterdir() if not p.name.startswith("."))
    log.info("run directory: %s (%s)", run_dir, ", ".join(entries))


def data_identity(train_set, eval_sets: dict) -> dict:
    """The data a run trains and is evaluated on, as its checkpoints record it: per split the number of
    examples and a digest of the encoded examples and, for SQuAD and XSum, of the references (so resuming on
    edited or cut data is refused)."""
    out = {"train": {"examples": len(train_set), "sha256": train_set.digest()}}
    for name, ds in eval_sets.items():
        features = getattr(ds, "features", ds)
        out[name] = {"examples": len(features), "sha256": features.digest(getattr(ds, "rows", None))}
    return out


def _total_times(results: dict, past_attempts_s: list, started: float) -> None:
    """A resumed run's wall time is the sum over its attempts (each up to its last checkpoint), not its last."""
    attempts = [*past_attempts_s, time.time() - started]
    results["wall_time_s"] = sum(attempts)
    results["wall_time_per_attempt_s"] = attempts
    results["train_time_s"] = sum(results["time_per_epoch_s"])


def run(cfg, run_dir, on_start=None) -> dict:
    """Train ``cfg.method`` on ``cfg.task``; returns the results dict (also written to disk).

    ``on_start()`` is called once the run is set up and about to train (the CLI writes Hydra's files then)."""
    t = Trainer(cfg, run_dir)
    if t.skip:
        return t.results
    with t.lock:  # released however training ends
        if on_start:
            on_start()
        return _train(t)


def _train(t) -> dict:
    if t.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(t.device)
    for epoch in range(t.start_epoch, t.epochs):
        plan = t.begin_epoch(epoch)
        for i, idx in enumerate(_progress(t.cfg, plan, epoch, t.epochs)):
            t.train_step(i, idx)
        t.end_epoch()
    return t.finish()


def _check_finite(finite: torch.Tensor, step: int, epoch: int, seed: int) -> None:
    if not bool(finite):
        raise TrainingError(f"loss became NaN/inf by step {step} (epoch {epoch + 1}, seed {seed}); lower train.lr, "
                            "check the data, or turn off train.bf16; the last epoch's checkpoint is kept")


def _results(cfg, resolved, task, method, history, device, started, schedule) -> dict:
    metric = task.metric
    best = max(history, key=lambda h: h["dev"].get(metric, float("-inf")))
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "schema": SCHEMA, "run_id": run_id(cfg), "model": cfg.model.id, "task": cfg.task.name,
        "method": cfg.method.name, "budget": cfg.budget.name, "variant": cfg.get("variant"), "seed": int(cfg.seed),
        "lr": float(cfg.train.lr), "config_hash": config_hash(cfg, schedule), "schedule": schedule,
        "protocol": cfg.protocol.name,
        "metric": metric,
        "best": {"epoch": best["epoch"], "dev": best["dev"]},
        "pruning_end_step": method.pruning_end_step(),
        "final": {"epoch": history[-1]["epoch"], "dev": history[-1]["dev"]},
        "epochs": history,
        "params": method.param_counts(),
        "time_per_epoch_s": [h["train_time_s"] for h in history],
        "peak_gpu_memory_mib": peak,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "gpu": gpus.identity(device),  # which GPU of the host (local_gpus sweeps): claimed id, visible, UUID
        "wall_time_s": time.time() - started,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": resolved, "versions": versions(), "git_commit": git_commit(),
    }


def _progress(cfg, plan, epoch, epochs):
    if not cfg.train.progress:
        return plan
    from tqdm.auto import tqdm

    return tqdm(plan, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)
