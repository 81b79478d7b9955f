"""One run's bookkeeping and the resume policy: what a command does with a run it is asked to train.

``Run`` opens a run: its identity and home (``config.run_id``, the results store), its directory's lock, and the one
decision of what this command does with it. The decision is a value (``plan``, from what was read of its checkpoint's
state, ``checkpoint.State``, and of its results file; no file is touched): ``Fresh``, ``Resume`` (at an epoch's end,
or within one after SIGTERM or ``train.checkpoint_every``), ``Extend`` (a checkpoint planned for fewer epochs,
``train.extend``, README: More epochs), ``Finished`` (left as it is, its adapter exported if asked) or ``Diverged``
(an earlier attempt's loss turned NaN). ``Run`` reads the files, copies what a decision needs copied and keeps the
decision; ``trainer.Trainer`` then trains the opened runs; ``driver`` opens a command's runs and drives them.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from . import checkpoint, runlog
from .config import resume_key, run_id, validate
from .data.cache import fingerprint
from .errors import RunInUseError, TrainingError
from .inputs import CellData, load_data
from .lock import RunLock
from .results import read_results, store_path, write_json

log = logging.getLogger("dynrank")
DIVERGED = "diverged.json"  # in a run directory: the run's loss turned NaN/inf, and when (``Run.diverged``)


# --- what a command does with a run: the decisions ------------------------------------------------------------
@dataclass(frozen=True)
class Fresh:
    """Train from the start (``train.resume=false``, no checkpoint, or one that left no results to keep)."""


@dataclass(frozen=True)
class Resume:
    """Continue from ``state``: after its epoch, or within the next one at its batch; at the last epoch with no results
    of it, finishing writes them."""

    state: checkpoint.State


@dataclass(frozen=True)
class Extend(Resume):
    """Continue from ``state``, a checkpoint whose schedules were made for fewer epochs (``train.extend=true``): the
    schedules now span ``train.epochs`` from its step (``Trainer._extend``)."""


@dataclass(frozen=True)
class Finished:
    """Done: its results (``results``, from its results file) are left as they are; ``export``: its adapter is asked
    for (``train.export=true``) and not there yet, so it is exported from this final checkpoint (None: nothing to
    export)."""

    results: dict = field(default_factory=dict)
    export: checkpoint.State | None = None


@dataclass(frozen=True)
class Diverged:
    """An earlier attempt's loss turned NaN/inf (``why``): left as it is, rather than trained into the same NaN."""

    why: str


Decision = Fresh | Resume | Extend | Finished | Diverged


def plan(cfg, run_id: str, state: checkpoint.State | None, results: tuple[int, dict], *, diverged: str | None = None,
         data: dict | None = None, has_adapter: bool = False, where: str = "results.json") -> Decision:
    """What this command does with the run ``run_id`` of ``cfg``, from what was read of its directory: ``state`` (its
    checkpoint's, checked against this config; None: none, or ``train.resume=false``), ``results`` (its results
    file's ``(epochs done, contents)``, ``results.read_results``; ``where``: that file, named in errors),
    ``diverged`` (an earlier attempt's account, ``diverged.json``), ``data`` (the data identity it trains on now),
    whether its adapter exists. No file is read or written here: a configuration that cannot go on
    is a ``TrainingError`` saying what to do.

    A finished run (its results file, and a checkpoint at its last epoch made with this config and on this data, or
    none kept: ``train.keep_checkpoint=none``) is left as it is: running its command again does not train it again
    nor rewrite its results (``train.resume=false`` does). A checkpoint made for another length continues to
    ``train.epochs`` only with ``train.extend=true``; one that has trained more epochs than asked is refused."""
    if not cfg.train.resume:
        return Fresh()
    if diverged is not None:
        return Diverged(f"it diverged in an earlier attempt ({diverged}) and is left as it is: add train.resume=false "
                        "to train it again, or lower train.lr (another run)")
    epochs, extend = int(cfg.train.epochs), bool(cfg.train.get("extend"))
    done, finished = results
    if state is None:  # finished without keeping its checkpoint: its results say so
        if done != epochs or finished.get("run_id") != run_id:
            return Fresh()
        checkpoint.check_data(where, finished.get("data"), data)
        return _finished(cfg, finished, state, has_adapter, where)
    path = state.path
    if state.epoch > epochs:
        raise TrainingError(f"the checkpoint in {path} has trained {state.epoch} epochs, more than "
                            f"train.epochs={epochs}; set train.epochs={state.epoch} or more to keep it, or "
                            f"{checkpoint.START_OVER}")
    planned = state.planned_epochs
    if planned is not None and planned != epochs and not extend:
        raise TrainingError(f"the checkpoint in {path} is of a {planned}-epoch run and train.epochs={epochs}: "
                            f"add train.extend=true to continue it to {epochs} epochs (its schedules then span "
                            f"{epochs} epochs from step {state.step}: README, More epochs), or "
                            f"{checkpoint.START_OVER}")
    _check_extended(state, epochs, extend)
    # no results of that epoch (missing, damaged, a shorter run's, or another run's: its run id not this one's):
    # finishing from the checkpoint writes them
    if state.epoch < epochs or done != state.epoch or finished.get("run_id") != run_id:
        return Extend(state) if planned is not None and planned != epochs else Resume(state)
    checkpoint.check_data(f"the checkpoint in {path}", state.data, data)
    return _finished(cfg, finished, state, has_adapter, where)


def _finished(cfg, results: dict, state: checkpoint.State | None, has_adapter: bool, where: str) -> Finished:
    """Finished; with ``train.export=true`` and no adapter yet, its adapter is to be exported from its final
    checkpoint ``state`` (refused where none was kept)."""
    if not cfg.train.get("export") or has_adapter:
        return Finished(results)
    if state is None:
        raise TrainingError(f"{where} is of a run that kept no checkpoint (train.keep_checkpoint=none): there is no "
                            "adapter to export; add train.resume=false to train it again with train.export=true")
    return Finished(results, export=state)


def _check_extended(state: checkpoint.State, epochs: int, extend: bool) -> None:
    """A checkpoint of a run extended from a shorter one (its schedule lists two lengths or more) is another run
    than one trained for its length from the start, and the other way round (``config.identity``): in a run
    directory set by hand, neither is resumed or left as finished in the other's name."""
    schedule = state.extra.schedule
    if len(schedule) > 1 and not extend:
        raise TrainingError(f"the checkpoint in {state.path} is of a run extended from "
                            f"{schedule[0].get('epochs')} to {state.planned_epochs} epochs (train.extend=true), "
                            f"not one trained {epochs} epochs from the start: add train.extend=true to continue "
                            f"or keep it, or {checkpoint.START_OVER}")
    if len(schedule) == 1 and extend and state.planned_epochs == epochs:
        raise TrainingError(f"the checkpoint in {state.path} is of a run trained {epochs} epochs from the start, "
                            f"not an extended one: drop train.extend=true to continue or keep it, or "
                            f"{checkpoint.START_OVER}")


class Run:
    """One run's bookkeeping: its config, directory and lock, what it resumes from, its history and results files.

    Opening a run decides what this command does with it (``decision``: ``plan``'s value, from one read of its
    checkpoint's state and of its results file): skip it (``train.skip_done`` and its results exist, or it finished
    already; a finished run asked for its adapter exports it, ``export_only``), continue a shorter run
    (``train.extend``), resume it from its checkpoint (at an epoch's end or within an epoch), or start it. A run to
    train holds its directory's lock until ``close``."""

    def __init__(self, cfg, run_dir, shared: CellData | None = None):
        validate(cfg)
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.seed = int(cfg.seed)
        self.id = run_id(cfg)
        self.out_path = store_path(cfg.results.store, self.id)
        self.results = {}  # a run skipped as finished: its results
        self.shared = shared
        self.failed = None  # why training of this run stopped (a NaN loss) while its stack went on
        self.decision: Decision = Fresh()  # what this command does with it (``_decide``)
        self.key = resume_key(cfg)  # what a checkpoint of this run must have been made with
        self.fp = fingerprint(self.key)
        self.skip = bool(cfg.train.skip_done) and read_results(self.out_path)[0] == int(cfg.train.epochs)
        if self.skip:
            self._check_store()  # results of other data are refused, not skipped
            log.info("results exist, skipping: %s", self.out_path)
            return
        self.lock = RunLock(self.run_dir)  # a second process on this run stops here
        try:
            self._decide()
        except BaseException:
            self.close()
            raise
        if self.skip and not self.export_only:
            self.lock.release()

    def close(self) -> None:
        """Release the run's lock; a directory holding nothing but the lock (a run stopped before it wrote
        anything) loses it, and ``driver`` removes the emptied directory."""
        if hasattr(self, "lock"):
            self.lock.release(tidy=True)

    def diverged(self, why: str) -> None:
        """Its loss turned NaN/inf (``why``: when, its seed and learning rate): the run stops while the runs beside it
        train on, and its directory records it (``diverged.json``) until a later attempt's checkpoint replaces its
        state (``train.resume=false``): the command run again says so and leaves the run as it is (``_decide``),
        rather than training it into the same NaN again."""
        self.failed = (f"{why}; lower train.lr, check the data, or turn off train.bf16; the last epoch's checkpoint is "
                       "kept, and the command run again leaves the run as it is (train.resume=false trains it again)")
        write_json(self.run_dir / DIVERGED, {"diverged": why, "run_id": self.id})

    @property
    def state(self) -> checkpoint.State | None:
        """The checkpoint it resumes from, or (finished) exports its adapter from, read and checked once; None: it
        starts, or is left as it is."""
        d = self.decision
        return d.state if isinstance(d, Resume) else d.export if isinstance(d, Finished) else None

    @property
    def export_only(self) -> bool:
        """Finished, and ``train.export=true`` asks for the adapter it does not have yet."""
        return isinstance(self.decision, Finished) and self.decision.export is not None

    @property
    def start_epoch(self) -> int:
        """The epochs its checkpoint completed (0: it starts)."""
        return self.state.epoch if self.state is not None else 0

    @property
    def start_batch(self) -> int:
        """The batches its checkpoint did of the next epoch (made within it by SIGTERM or ``train.checkpoint_every``)."""
        return self.state.batch if self.state is not None else 0

    def data(self) -> CellData:
        if self.shared is None:
            self.shared = load_data(self.cfg)
        return self.shared

    # --- what this command does with the run: read, decide (``plan``), apply -----------------------------------
    def _decide(self) -> None:
        """Read what ``plan`` decides on (a checkpoint save stopped during its swap completed first; with
        ``train.extend=true`` and no checkpoint here, a shorter run's copied in), decide (``decision``: ``state``,
        ``export_only``, ``start_epoch`` and ``start_batch`` follow from it), and apply the decision: ``skip``
        (finished, or diverged before), ``failed``, the TensorBoard files, a finished run's results copied."""
        resume, results = bool(self.cfg.train.resume), self.run_dir / "results.json"
        if resume and (recovered := checkpoint.recover(self.run_dir)):
            log.warning("%s: a checkpoint save was stopped during its swap; its complete checkpoint (epoch %d, step "
                        "%d) was put in place", self.run_dir, recovered.epoch, recovered.step)
        why = _diverged_before(self.run_dir, self.id) if resume else None
        state = None
        if why is None:
            if self.cfg.train.get("extend") and resume and not checkpoint.exists(self.run_dir):
                self._continue_shorter_run()
            self._check_store()
            if resume and checkpoint.exists(self.run_dir):
                state = checkpoint.read_state(self.run_dir, self.fp, self.key)
        self.decision = d = plan(self.cfg, self.id, state, read_results(results), diverged=why,
                                 data=None if why else self.data().identity,
                                 has_adapter=(self.run_dir / "adapter").exists(), where=str(results))
        if isinstance(d, Diverged):
            self.skip, self.failed = True, d.why
            log.warning("%s: %s", self.run_dir, self.failed)
            return
        # TensorBoard as the checkpoint on disk left it (a start-over's own events replace it at its first checkpoint)
        runlog.settle(self.run_dir / runlog.TB_DIR, state if state is not None else checkpoint.peek(self.run_dir))
        if isinstance(d, Finished):
            self._left_as_it_is(d)

    def _check_store(self) -> None:
        """The run id does not name the data (a ``data.dir`` of other content gives the same one): the results store
        holds a config's runs on one data only. Results of this config (any learning rate and seed) recorded on other
        data are refused before training, rather than overwritten, skipped as done, or averaged with."""
        data, config = self.data().identity, self.out_path.parent  # <store>/<model>/<task>/<cell>/lr<lr>-<hash>
        runs = f"lr*-{config.name.rsplit('-', 1)[1]}"
        for path in sorted(config.parent.glob(f"{runs}/seed*.json")):
            old = read_results(path)[1].get("data")
            if old is not None and old != data:
                raise TrainingError(f"the results store holds this config's results on other data ({path}: "
                                    f"{checkpoint.data_changes(old, data)}); keep both with variant=<name> or "
                                    f"results.store=<dir>, or remove {config.parent / runs} to train it again here")

    def _continue_shorter_run(self) -> None:
        """``train.extend=true``, no checkpoint here yet: the longest shorter run of this config (beside this one in
        the same outputs tree: same learning rate, seed and every other key but the epochs) lends its last
        checkpoint, copied here, and this run continues from it (``Trainer._extend``). The shorter run is left as
        it is. Shorter means planned shorter: a longer run stopped early does not lend (its epochs followed its own
        length's schedules). Of runs that trained as many epochs, one that ended as planned lends before one stopped
        early, one trained from the start before an extended one; runs alike in all that are refused, as are a
        shorter run that kept no checkpoint (``train.keep_checkpoint=none``) or whose checkpoint is damaged, and
        none at all: each a ``TrainingError`` naming the run and why, before anything is copied."""
        epochs = int(self.cfg.train.epochs)
        found = [c for c in map(self._shorter, self._beside()) if c is not None]
        if not found:
            raise TrainingError(f"train.extend=true: no shorter run of this config (the same learning rate, seed and "
                                f"every key but train.epochs) beside {self.run_dir} to continue to {epochs} epochs; "
                                f"drop train.extend=true to train {epochs} epochs from the start")
        found.sort(key=lambda c: c[0], reverse=True)
        (rank, other, why), ties = found[0], [c[1] for c in found[1:] if c[0] == found[0][0]]
        if why:
            raise TrainingError(f"train.extend=true: the shorter run {other} {why}; drop train.extend=true to train "
                                f"{epochs} epochs from the start, or move {other} away to continue another shorter run")
        if ties:
            raise TrainingError(f"train.extend=true: {other} and {', '.join(map(str, ties))} are shorter runs of "
                                f"this config alike (epochs trained: {rank[0]}); move all but the one to continue away")
        try:
            with RunLock(other):  # never while it trains: a checkpoint being swapped would copy mixed
                state = checkpoint.read_state(other, self.fp, self.key)
                checkpoint.copy_into(state.path, self.run_dir)
        except RunInUseError as e:
            raise RunInUseError(f"train.extend=true: {e}") from None
        log.info("extending %s (%d epochs trained) to %d epochs in %s; that run is left as it is",
                 other, state.epoch, epochs, self.run_dir)

    def _beside(self) -> list[Path]:
        """The run directories this run's extension looks at: its own and those of the same learning rate and seed
        under the other hashes of its cell (``lr<lr>-*/seed<k>``)."""
        lr_dir = self.run_dir.parent.name.rsplit("-", 1)[0]
        return sorted({self.run_dir, *self.run_dir.parent.parent.glob(f"{lr_dir}-*/{self.run_dir.name}")})

    def _shorter(self, other: Path) -> tuple[tuple, Path, str | None] | None:
        """``other`` as a run this one may continue: ``(rank, other, why not)`` (the highest rank lends; ``why``
        None: its checkpoint can be copied), or None where it is not a planned-shorter run of this config."""
        epochs = int(self.cfg.train.epochs)
        done, results = read_results(other / "results.json")
        schedule = results.get("schedule")
        planned = schedule[-1].get("epochs") if isinstance(schedule, list) and schedule and isinstance(
            schedule[-1], dict) else done
        if results and (not isinstance(planned, int) or planned >= epochs or not self._same_config(results)):
            return None  # finished: not a shorter run of this config
        if not checkpoint.exists(other):
            if not results:
                return None
            return ((done, True, 0), other,
                    "kept no checkpoint (train.keep_checkpoint=none): there is nothing to continue")
        try:
            state = checkpoint.read_state(other, None)
            checkpoint.check_tensors(state.path)
        except checkpoint.Damaged as e:  # (no results to say whose it is: refused rather than passed over)
            return (float("inf"), True, 0), other, f"has a damaged checkpoint ({e.path}: {e.cause})"
        if state.raw.get("fingerprint") != self.fp or state.planned_epochs is None or state.planned_epochs >= epochs:
            return None  # another config; a run planned as long or longer (stopped early or not); or unknown
        segments = len(state.extra.schedule)
        return (state.epoch, state.epoch == state.planned_epochs and not state.batch, -segments), other, None

    def _same_config(self, results: dict) -> bool:
        """Whether a results file is of a run of this config but for its length."""
        made = results.get("config")
        if not isinstance(made, dict):
            return False
        try:
            return resume_key(OmegaConf.create(made)) == self.key
        except Exception:  # noqa: BLE001  (a config of another version of dynrank: not comparable)
            return False

    def _left_as_it_is(self, d: Finished) -> None:
        """A finished run: skipped, its results copied to this command's results store if it lacks them (its adapter
        exported from its final checkpoint where ``d.export``: ``export_only``)."""
        self.skip, self.results = True, d.results
        if read_results(self.out_path)[0] != d.results["final"]["epoch"]:  # another results store gets its copy
            write_json(self.out_path, self.results)
        results = self.run_dir / "results.json"
        if d.export is not None:
            log.info("finished already: %s; its adapter is exported from its final checkpoint", results)
        else:
            log.info("finished already, left as it is: %s (train.resume=false trains it again)", results)


def _diverged_before(run_dir, run_id: str) -> str | None:
    """When an earlier attempt at the run ``run_id`` diverged in ``run_dir`` (``Run.diverged``): its
    ``diverged.json``'s account, else None (another run's, in a run directory set by hand: the checkpoint's checks
    then say what it holds)."""
    try:
        record = json.loads((Path(run_dir) / DIVERGED).read_text(encoding="utf-8"))
        return str(record["diverged"]) if record.get("run_id") in (run_id, None) else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # unreadable: it diverged all the same
        return f"{DIVERGED} is unreadable"


def remove_if_empty(run_dir, run_id: str) -> None:
    """A run stopped before it wrote anything leaves no directory: ``run_dir`` if it is empty, then (where it ends
    with the run id, as ``outputs/<run id>``) the parents the run id made, while they are empty."""
    d, parts = Path(run_dir).absolute(), Path(run_id).parts
    for _ in range(len(parts) if d.parts[-len(parts):] == parts else 1):
        if d == Path.cwd():  # hydra.run.dir=. : never the directory the command runs in
            return
        try:
            d.rmdir()
        except OSError:  # not empty (or gone): left as it is
            return
        d = d.parent
