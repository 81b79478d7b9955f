"""The trainer of one stack of runs (``Trainer``): setup, epochs (steps, evaluation, checkpoints), results. The epochs
of a command's stacks are driven by ``driver.py``.

A stack is R runs of one cell (seeds, the learning rates of a grid) trained as ONE model (``methods/layers.py``),
each run with its own data order, initialisation, learning rate, schedule, clipping, AdamW state (``optim.py``) and
method state; a run alone is a stack of one. Setup: the data (``inputs.py``), then model + method + optimizer +
stepper in one place (``step.build_stack``: eager or a CUDA graph), each run's state (``RunState``) fresh or from its
checkpoint; then the epochs (begun, stepped and ended by the driver); each run writes its own checkpoints and
results file, exactly as it would alone. Where a run starts from (fresh, resumed, extended) is ``resume.py``'s
decision; a command's runs are grouped into stacks by ``driver.py``.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf

from . import checkpoint, export, runlog
from .config import config_hash
from .device import fast_path, pick_device, seed_everything
from .inputs import batches
from .results import build_results, write_json
from .resume import DIVERGED, Extend
from .step import build_stack

if TYPE_CHECKING:
    from .inputs import CellData
    from .resume import Run

log = logging.getLogger("dynrank")


@dataclass
class RunState:
    """What the trainer keeps of one run of its stack while it trains (``Trainer.states[k]``, run k of
    ``Trainer.runs``): fresh, or as its checkpoint left it (``Trainer._resume``)."""

    schedule: list  # [{"epochs", "from_step"}]: the length each schedule was made for (two or more: extended)
    history: list = field(default_factory=list)  # one record per epoch trained: step, loss, dev metrics, times
    step: int = 0  # optimizer steps done
    resumed: bool = False  # from a checkpoint of an earlier attempt
    position: dict = field(default_factory=dict)  # where a checkpoint made within an epoch stands (its loss so far)
    past_attempts_s: list = field(default_factory=list)  # wall time of earlier attempts (killed, resumed)
    writer: Any = None  # its logs (``runlog.writers``: TensorBoard and the tracker); None: no logs
    tb_files: list = field(default_factory=list)  # its TensorBoard event files (the checkpoint lists them)


class Trainer:
    """A stack of runs (``runs``: opened ``Run``s of one cell, at the same epoch): one model whose trainable tensors
    have a run dimension, one method, one per-run optimizer, one step; each run's data order, history, checkpoint and
    results.

    ``driver.run`` drives one trainer; ``driver.run_side_by_side`` drives several side by side on one GPU.
    ``logs=False``: no TensorBoard writers (a finished run whose adapter is exported, ``export_adapter``)."""

    def __init__(self, runs: list[Run], shared: CellData, logs: bool = True, timer=None):
        self.runs, self.R = runs, len(runs)
        self.timer = timer or (lambda label: nullcontext())  # ``timer(label)``: a context timing evaluation, checkpoints
        self.cfg = cfg = runs[0].cfg
        self.shared = shared
        self.task, self.train_set, self.eval_sets = shared.task, shared.train_set, shared.eval_sets
        self.device = device = pick_device(str(cfg.train.device))
        self.fast = fast_path(cfg, device)
        self.amp = self.fast["bf16"]
        seed_everything(runs[0].seed)  # the global generators; each run's initialisation and dropout are its own seed's
        backbone = self.task.build_model()
        self.task.check_positions(backbone)
        self.bs, self.epochs = int(cfg.train.batch_size), int(cfg.train.epochs)
        self.total_steps = math.ceil(len(self.train_set) / self.bs) * self.epochs
        clip = cfg.train.max_grad_norm
        stack = build_stack(cfg, backbone, family=cfg.model.family, seeds=[r.seed for r in runs],
                            lrs=[float(r.cfg.train.lr) for r in runs], losses=partial(self.task.run_losses, runs=self.R),
                            device=device, total_steps=self.total_steps, amp=self.amp,
                            graphs=self.fast["cuda_graphs"], compile_model=bool(cfg.train.get("compile", False)),
                            clip=None if clip is None else float(clip), method_cfgs=[r.cfg.method for r in runs])
        self.model, self.method, self.optimizer, self.stepper = stack.model, stack.method, stack.optimizer, stack.stepper
        method = self.method
        self.resolved = [OmegaConf.to_container(r.cfg, resolve=True) for r in runs]
        self.states = [self._resume(k, run) for k, run in enumerate(runs)]
        self.start_epoch, self.step, self.start_batch = runs[0].start_epoch, self.states[0].step, runs[0].start_batch
        self.epoch, self.batch, self.saved_step = self.start_epoch, self.start_batch, self.step
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.rng = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)
        for run, st in zip(runs, self.states):
            st.writer, st.tb_files = runlog.writers(run.run_dir, st.resumed, run.cfg) if logs else (None, [])
        if device.type == "cuda":  # setup ran on the default stream; steps may run on self.stream
            torch.cuda.synchronize(device)
        counts = method.param_counts()
        log.info("%s | %s | %s-%s | %s | %d steps | trainable %s%s", cfg.task.name, cfg.model.id, cfg.method.name,
                 cfg.budget.name, ", ".join(f"seed {r.seed} lr {float(r.cfg.train.lr):g}" for r in runs),
                 self.total_steps, counts, f" per run, {self.R} runs stacked" if self.R > 1 else "")
        self.started = time.time()

    def _resume(self, k: int, run: Run) -> RunState:
        """Run k's checkpoint (if any) into slice k of the stack: its tensors, optimizer and method state; the first
        run's RNG states become the stack's. Returns the run's state (fresh without a checkpoint)."""
        fresh = RunState(schedule=[{"epochs": self.epochs, "from_step": 0}])
        if run.state is None:  # (Fresh: resume.plan)
            return fresh
        got = checkpoint.load(run.state, data=self.shared.identity, device=self.device)
        try:
            self.method.load_run_params(k, got.params)
            self.optimizer.load_run_state_dict(k, got.optimizer)
            self.method.load_run_state_dict(k, got.method)
        except (KeyError, RuntimeError, ValueError) as e:  # tensors of another shape or name: not this model's
            raise checkpoint.damaged(got.state.path, e) from None
        if k == 0:
            checkpoint.restore_rng(got.rng)
        state = got.state
        st = RunState(schedule=list(state.extra.schedule or fresh.schedule), history=state.history, step=state.step,
                      resumed=True, position=state.position or {}, past_attempts_s=list(state.extra.wall_time_s))
        where = (f"within epoch {state.epoch + 1}, after batch {state.batch}" if state.batch else
                 f"at epoch {state.epoch}")
        log.info("resumed from %s %s (step %d)", state.path, where, st.step)
        if isinstance(run.decision, Extend):  # planned for another length (``resume.plan``)
            self._extend(st, state.epoch)
        return st

    def _extend(self, st: RunState, epoch: int) -> None:
        """The run continues to ``train.epochs`` from a checkpoint planned for another length (an extension): the
        learning-rate schedule (a function of the step and the total, ``dynrank.optim.lr_factor``) and the method's
        schedules (DoRA's and AdaLoRA's budgets) were made for the new total steps in setup; the optimizer takes the
        new schedule's rate at this step at once."""
        old = st.schedule[-1]["epochs"]
        st.schedule.append({"epochs": self.epochs, "from_step": st.step})
        log.info("the run's length changes from %d to %d epochs at epoch %d (step %d of %d): the learning-rate and "
                 "budget schedules now span %d epochs (README: More epochs); train.resume=false trains %d epochs "
                 "from the start", old, self.epochs, epoch, st.step, self.total_steps, self.epochs, self.epochs)

    def _checkpoint_extra(self, run: Run, st: RunState) -> checkpoint.Extra:
        """What resume checks and continues besides the tensors: the config, the data, the time spent so far."""
        return checkpoint.Extra(config=run.key, data=self.shared.identity, schedule=st.schedule,
                                tb_files=st.tb_files, wall_time_s=[*st.past_attempts_s, time.time() - self.started])

    def active(self) -> list[tuple[int, Run]]:
        """The runs still training (a run whose loss turned NaN stops; its stack goes on)."""
        return [(k, r) for k, r in enumerate(self.runs) if r.failed is None]

    # --- one epoch: begin, steps, end --------------------------------------------------------------
    def begin_epoch(self, epoch: int) -> list[list[list[int]]]:
        """Each run's batches of this epoch (its own data order); the stack steps through them together from batch
        ``self.batch``: 0, or in the epoch a checkpoint made within it resumes, where it stood (its loss so far)."""
        within = epoch == self.start_epoch and self.start_batch > 0
        carried = [st.position if within else {} for st in self.states]
        self.epoch, self.batch = epoch, self.start_batch if within else 0
        self.t0 = time.time() - carried[0].get("train_time_s", 0.0)
        self.loss_sum = torch.tensor([p.get("train_loss_sum", 0.0) for p in carried], device=self.device)
        self.finite = torch.ones(self.R, dtype=torch.bool, device=self.device)
        group = bool(self.cfg.train.group_by_length)
        self.plans = [batches(self.train_set, self.bs, run.seed, epoch, group) for run in self.runs]
        self.plan = list(zip(*self.plans))  # step i: every run's batch i (all runs have as many batches)
        return self.plan

    def train_step(self, i: int, idx: tuple[list[int], ...]) -> None:
        batch = self.task.train_batch(self.train_set, idx, packed=self.fast["pack"])  # run-major
        if self.device.type == "cuda":  # pinned + non-blocking: the host never waits for the GPU here
            batch = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}
        loss, total = self.stepper(batch, self.step)
        self.step, self.batch = self.step + 1, i + 1
        for k, _ in self.active():
            self.states[k].step = self.step
        self.loss_sum += loss.float()
        self.finite &= torch.isfinite(total)
        if self.step % int(self.cfg.train.log_every) == 0 or i == len(self.plan) - 1:
            self._check_finite()
            losses, lrs = loss.tolist(), self.optimizer.lrs(self.step)  # the rate of the next step (LambdaLR's last)
            for k, _ in self.active():
                if writer := self.states[k].writer:
                    writer.add_scalar("train/loss", losses[k], self.step)
                    writer.add_scalar("train/lr", lrs[k], self.step)
                    for name, value in self.method.scalars(self.step, k).items():
                        writer.add_scalar(f"{self.method.name}/{name}", value, self.step)

    def _check_finite(self) -> None:
        """A run whose loss turned NaN/inf stops (its last epoch's checkpoint kept, its directory saying why:
        ``Run.diverged``); the other runs of its stack, and the stacks beside it, train on, and the command ends with
        the error once they are done (``driver``)."""
        for k, ok in enumerate(self.finite.tolist()):
            run = self.runs[k]
            if not ok and run.failed is None:
                run.diverged(f"loss became NaN/inf by step {self.step} (epoch {self.epoch + 1}, seed {run.seed}, lr "
                             f"{float(run.cfg.train.lr):g})")
                log.error("%s: %s", run.run_dir, run.failed)

    def end_epoch(self) -> None:
        epoch = self.epoch
        self._check_finite()
        if not self.active():  # every run of the stack diverged: nothing to evaluate or keep
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        train_time = time.time() - self.t0
        t1 = time.time()
        devs = self.evaluate()
        eval_time = time.time() - t1
        losses = (self.loss_sum / max(1, len(self.plan))).tolist()
        for k, run in self.active():
            dev, st = devs[k], self.states[k]
            st.history.append({"epoch": epoch + 1, "step": self.step, "train_loss": losses[k], "dev": dev,
                                "train_time_s": train_time, "eval_time_s": eval_time})
            log.info("seed %d%s epoch %d/%d  loss %.4f  dev %s  (%.1fs)", run.seed,
                     f" lr {float(run.cfg.train.lr):g}" if self.R > 1 else "", epoch + 1, self.epochs, losses[k],
                     {key: round(v, 4) for key, v in dev.items()}, train_time)
            if st.writer:
                for key, v in dev.items():
                    st.writer.add_scalar(f"dev/{key}", v, self.step)
        self.checkpoint(epoch_done=True)

    def evaluate(self) -> list[dict]:
        """Every run's dev metrics (one pass over the dev set for the whole stack)."""
        with self.timer("eval"):
            return self.task.evaluate(self.model, self.eval_sets, self.device, self.amp, runs=self.R)

    def checkpoint_due(self) -> bool:
        """``train.checkpoint_every=N``: a checkpoint every N steps within an epoch (its end makes one anyway)."""
        every = self.cfg.train.get("checkpoint_every")
        return bool(every) and self.step % int(every) == 0 and self.batch < len(self.plan)

    def checkpoint(self, epoch_done: bool = False) -> None:
        """Each active run's checkpoint where the stack stands: after an epoch (``epoch_done``), or within one with
        its position (the batches done, the epoch's loss so far and time), which a resume continues exactly: the data
        order depends only on the seed and the epoch. Within an epoch only if a step was taken since the last one.
        The tensors are read once the device has finished every step (a CUDA graph writes them asynchronously)."""
        if self.step == self.saved_step and not epoch_done:
            return
        self._check_finite()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        losses, spent = self.loss_sum.tolist(), time.time() - self.t0
        for k, run in self.active():
            st = self.states[k]
            position = None if epoch_done else {"batch": self.batch, "train_loss_sum": losses[k], "train_time_s": spent}
            if st.writer:
                st.writer.flush()  # the events up to this step, on disk with it
            with self.timer("checkpoint"):
                checkpoint.save(run.run_dir, params=self.method.run_params(k),
                                optimizer=self.optimizer.run_state_dict(k),
                                scheduler=self.optimizer.run_schedule_state(k, self.step),
                                method=self.method.run_state_dict(k), epoch=self.epoch + int(epoch_done),
                                step=self.step, history=st.history, fingerprint=run.fp,
                                extra=self._checkpoint_extra(run, st), position=position)
            runlog.keep_only(run.run_dir / runlog.TB_DIR, st.tb_files)  # a start-over's events replace the old
            (run.run_dir / DIVERGED).unlink(missing_ok=True)  # (a start-over's: its state replaces the diverged one)
        self.saved_step = self.step

    def close_logs(self) -> None:
        for st in self.states:
            if st.writer:
                st.writer.close()

    def finish(self) -> list[dict]:
        """Each finished run's results (written to its run directory and the store), in the runs' order."""
        method = self.method
        extra_evals = method.final_evaluation(self.evaluate)
        out = []
        self.close_logs()
        for k, run in self.active():
            cfg, run_dir, st = run.cfg, run.run_dir, self.states[k]
            ended = time.time()
            summary = method.summary(k)
            method.artifacts(run_dir, f"{cfg.model.id}, {cfg.task.name}, budget {cfg.budget.name}, seed {run.seed}", k)
            results = build_results(
                cfg, self.resolved[k], self.task.metric, st.history, st.schedule, self.device, run_id=run.id,
                config_hash=config_hash(cfg, st.schedule),
                params=method.param_counts(k), pruning_end_step=method.pruning_end_step(), data=self.shared.identity,
                training={"stacked_runs": self.R, "precision": "bf16" if self.amp else "fp32",
                          "cuda_graphs": self.fast["cuda_graphs"], "pad_to_multiple": self.fast["pad_to_multiple"],
                          "packed": self.fast["pack"] and self.task.packs, **self.graph_setup()},
                attempts_s=[*st.past_attempts_s, ended - self.started], ended=ended, method_summary=summary,
                extra_evals=extra_evals[k],
                export_dir=self.export_adapter(k, run) if cfg.train.get("export") else None).to_json()
            write_json(run_dir / "results.json", results)
            write_json(run.out_path, results)
            if st.writer:
                st.writer.results(results)  # to the tracker (logger=mlflow, wandb, csv), which ends its run
            if cfg.train.get("keep_checkpoint") == "none":  # what a finished run keeps: its results (and adapter)
                checkpoint.remove(run_dir)
            run.results = results
            log.info("results: %s", run.out_path)
            log_run_dir(run_dir)
            out.append(results)
        return out

    def graph_setup(self) -> dict:
        """CUDA graphs: how many the stack captured (one per batch shape and method phase), how many of its steps ran
        eagerly to warm them up (real training steps) and the seconds of those steps and the captures, the part of the
        training time that does not grow with the epochs."""
        if not hasattr(self.stepper, "graphs"):
            return {}
        return {"graphs": len(self.stepper.graphs), "graph_warmup_steps": sum(self.stepper.warm.values()),
                "graph_setup_s": round(self.stepper.setup_s, 3)}

    def export_adapter(self, k: int, run: Run) -> str:
        """Run k's trained adapter in ``<run dir>/adapter`` (PEFT format where the method has one); its path."""
        adapter = run.run_dir / "adapter"
        base = export.base_name(run.cfg.model, self.model, self.task, adapter, self.method.run_params(k))
        self.method.export(adapter, base_name=base, task_type=self.task.task_type, k=k)
        log.info("adapter (PEFT format): %s (base: %s)", adapter.resolve(), base)
        return str(adapter.resolve())


def log_run_dir(run_dir) -> None:
    """The run directory and what it holds (log, TensorBoard, checkpoint, figure, adapter): the last line of a run."""
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in Path(run_dir).iterdir() if not p.name.startswith("."))
    log.info("run directory: %s (%s)", run_dir, ", ".join(entries))


def progress(cfg, plan, epoch, epochs):
    if not cfg.train.progress:
        return plan
    from tqdm.auto import tqdm

    return tqdm(plan, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)
