"""Checkpoints for resume: safetensors for tensors, JSON for the rest, swapped in atomically.

``<run_dir>/checkpoint/`` holds one run's ``tensors.safetensors`` (trainable parameters, optimizer state,
method state such as EMAs and masks, torch RNG states) and ``state.json`` (epoch, history,
scheduler, Python/NumPy RNG, a fingerprint of the config; the loop adds the config itself, the data's
fingerprint and the wall time of each attempt under ``extra``). A checkpoint is made at the end of each epoch, and
within one (SIGTERM, ``train.checkpoint_every``) with its ``position`` in the epoch. A kill at any moment leaves the
previous checkpoint or the new one, never a mix: the new one is written to ``checkpoint.tmp/`` (``state.json``
last) and swapped in (``_swap``); a complete temporary left by a kill during the swap is swapped in by the next
command (``recover``). A run trained in a stack (``trainer.Trainer``) writes what it would write alone: its own slices
of the stacked tensors, shaped as in a model of one run.

One process at a time trains a run: ``lock.RunLock``.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import TrainingError
from .results import _jsonable, atomic_write_text, save_tensors

NAME = "checkpoint"
START_OVER = "add train.resume=false to the command to start over"


def _flatten_optimizer(opt_state: dict) -> tuple[dict, dict]:
    tensors, meta = {}, {"param_groups": opt_state["param_groups"], "state": {}}
    for idx, st in opt_state["state"].items():
        meta["state"][str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = v.detach().contiguous()
            else:
                meta["state"][str(idx)][k] = v
    return tensors, meta


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state = {int(i): dict(extra) for i, extra in meta["state"].items()}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, k = key.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


@dataclass(frozen=True)
class Extra:
    """What the loop records in a checkpoint beside the tensors (``state.json``'s ``extra``), what resume checks and
    continues. Every field may be missing from a checkpoint of an older version (its default)."""

    config: dict | None = None  # the flat config it was made with (``config.resume_key``): names what differs
    data: dict | None = None  # the data identity (``inputs.data_identity``): resuming on other data is refused
    schedule: list = field(default_factory=list)  # [{"epochs", "from_step"}]: the length each schedule was made for
    tb_files: list | None = None  # the run's TensorBoard event files as of this checkpoint (None: not listed, keep all)
    wall_time_s: list = field(default_factory=list)  # the wall time of each attempt up to this checkpoint

    @classmethod
    def of(cls, raw: dict | None) -> "Extra":
        raw = raw or {}
        return cls(raw.get("config"), raw.get("data"), list(raw.get("schedule") or []),
                   raw.get("tb_files"), list(raw.get("wall_time_s") or []))


def save(run_dir, *, params: dict, optimizer: dict, scheduler: dict, method: dict, epoch: int, step: int,
         history: list, fingerprint: str, extra: Extra | None = None, position: dict | None = None) -> Path:
    """One run's checkpoint: its trainable tensors by parameter name (``params``), its optimizer state in
    ``torch.optim.AdamW.state_dict()``'s form, its schedule in ``LambdaLR.state_dict()``'s, its method state, and the
    process's RNG states. A run of a stack writes exactly what it would write alone. ``epoch``: the epochs completed;
    ``position``: where a checkpoint made within the next one stands (the loop's ``{"batch": ...}``), None at an
    epoch's end."""
    run_dir = Path(run_dir)
    tmp = run_dir / (NAME + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {f"model.{n}": p.detach().contiguous() for n, p in params.items()}
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    tensors.update(opt_tensors)
    tensors.update({f"method.{k}": v.detach().contiguous() for k, v in method.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    save_tensors({k: v.cpu() for k, v in tensors.items()}, tmp / "tensors.safetensors")
    np_state = np.random.get_state()
    state = {
        "epoch": epoch, "step": step, "history": history, "fingerprint": fingerprint,
        "optimizer": opt_meta, "scheduler": scheduler,
        "rng_python": random.getstate(), "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "extra": asdict(extra) if extra is not None else {}, "position": position,
    }
    atomic_write_text(tmp / "state.json", json.dumps(state, default=_jsonable))  # last: the temporary is complete
    return _swap(run_dir)


def _swap(run_dir: Path) -> Path:
    """The complete ``checkpoint.tmp/`` becomes ``checkpoint/``; a kill between the renames leaves
    ``checkpoint.old/`` whole (``read_state`` falls back to it) or the complete temporary (``recover``)."""
    final, tmp, old = run_dir / NAME, run_dir / (NAME + ".tmp"), run_dir / (NAME + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


@dataclass
class State:
    """A checkpoint's ``state.json`` (``save`` writes it), read back: where the run stands and what it was made with.

    ``epoch``: epochs completed; ``step``: optimizer steps done; ``position``: within an epoch (a checkpoint made
    there: SIGTERM, ``train.checkpoint_every``), ``{"batch", "train_loss_sum", "train_time_s"}`` of the next epoch,
    else None; ``history``: the per-epoch records so far; ``extra``: what the loop records beside the tensors
    (``Extra``); ``raw``: the whole JSON (scheduler,
    optimizer metadata, RNG); ``path``: the directory it was read from (``checkpoint``, or ``checkpoint.old`` after a
    kill between the renames)."""

    path: Path
    epoch: int
    step: int
    position: dict | None
    history: list
    extra: Extra
    raw: dict

    @classmethod
    def of(cls, path: Path, raw: dict) -> "State":
        return cls(path, int(raw["epoch"]), int(raw["step"]), raw.get("position"), list(raw.get("history") or []),
                   Extra.of(raw.get("extra")), raw)

    @property
    def batch(self) -> int:
        """Batches done of the epoch after ``epoch`` (0: the checkpoint is at an epoch's end)."""
        return int((self.position or {}).get("batch", 0))

    @property
    def planned_epochs(self) -> int | None:
        """The number of epochs the checkpoint's schedules were made for (None: from before it was kept)."""
        schedule = self.extra.schedule
        return int(schedule[-1]["epochs"]) if schedule else None

    @property
    def data(self) -> dict | None:
        """The data identity the checkpoint was made on (None: from before it was recorded)."""
        return self.extra.data


def recover(run_dir) -> State | None:
    """A save killed around its swap can leave a complete ``checkpoint.tmp/`` (its ``state.json``, written last, is
    there) beside the previous checkpoint or none: it is the newest checkpoint, and is swapped in as the save would
    have done. Returns its state (None: nothing to recover; an incomplete temporary is left to the next save)."""
    run_dir = Path(run_dir)
    tmp = run_dir / (NAME + ".tmp")
    try:
        raw = json.loads((tmp / "state.json").read_text(encoding="utf-8"))
        state = State.of(run_dir / NAME, raw)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    _swap(run_dir)
    return state


def peek(run_dir) -> State | None:
    """The state of the checkpoint on disk as it is (no config or data check; None: none, or unreadable): what a
    start-over (``train.resume=false``) leaves in place until its own first checkpoint replaces it."""
    try:
        return read_state(run_dir, None) if exists(run_dir) else None
    except TrainingError:
        return None


def remove(run_dir) -> None:
    """A finished run's checkpoint, removed (``train.keep_checkpoint=none``): the final one and any leftover."""
    for name in (NAME, NAME + ".old", NAME + ".tmp"):
        shutil.rmtree(Path(run_dir) / name, ignore_errors=True)


def exists(run_dir) -> bool:
    run_dir = Path(run_dir)
    return (run_dir / NAME / "state.json").exists() or (run_dir / (NAME + ".old") / "state.json").exists()


def read_state(run_dir, fingerprint: str | None, config: dict | None = None) -> State:
    """The checkpoint to resume from, its state checked: a damaged file, or a checkpoint made with another config
    (``config``: the flat ``{key: value}`` it was made with, to name the keys that differ; ``fingerprint`` None: any
    config), is a ``TrainingError`` that leaves every file as it is."""
    run_dir = Path(run_dir)
    path = run_dir / NAME
    if not (path / "state.json").exists():  # killed between the two renames: the old one is whole
        path = run_dir / (NAME + ".old")
    try:
        with open(path / "state.json", encoding="utf-8") as f:
            raw = json.load(f)
        state, made_with = State.of(path, raw), raw["fingerprint"]
    except (ValueError, KeyError, TypeError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise damaged(path, e) from None
    if fingerprint is not None and made_with != fingerprint:
        old = state.extra.config
        diff = _diff(old, config) if isinstance(old, dict) and config is not None else ""
        changed = f" ({diff})" if diff else ""
        raise TrainingError(f"the checkpoint in {path} was made with a different config{changed}; rerun with "
                            f"the values it was made with to resume it, or {START_OVER}")
    return state


def copy_into(path, run_dir) -> None:
    """A copy of the checkpoint at ``path`` (another run's) becomes ``run_dir``'s checkpoint, swapped in whole."""
    run_dir = Path(run_dir)
    tmp, target = run_dir / (NAME + ".tmp"), run_dir / NAME
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in sorted(Path(path).iterdir(), key=lambda f: f.name == "state.json"):  # state.json last, as save writes
        shutil.copy2(f, tmp / f.name)
    if target.exists():  # without a state.json (the caller found no checkpoint here): nothing to keep
        shutil.rmtree(target)
    os.replace(tmp, target)


def check_tensors(path) -> None:
    """The checkpoint at ``path`` has a whole tensors file (its header read, the file as long as it says): before a
    copy of it is made another run's checkpoint (``train.extend``). A damaged one is ``damaged``'s error."""
    from safetensors import safe_open

    try:
        with safe_open(str(Path(path) / "tensors.safetensors"), "pt"):
            pass
    except (SafetensorError, OSError) as e:
        raise damaged(path, e) from None


class Damaged(TrainingError):
    """A checkpoint whose files cannot be read back: ``path`` (its directory) and ``cause`` (what is wrong)."""

    def __init__(self, path, cause: str):
        super().__init__(f"the checkpoint in {path} is damaged ({cause}); {START_OVER} (or move {path} away first "
                         "to keep it)")
        self.path, self.cause = path, cause


def damaged(path, e: Exception) -> Damaged:
    detail = str(e).splitlines()[0] if str(e) else ""
    return Damaged(path, f"{type(e).__name__}: {detail}")


def _diff(old: dict, new: dict, shown: int = 6) -> str:
    """``train.epochs: 3 -> 4, method.dem: true -> false``: the keys whose values differ, old -> new."""
    unset = object()

    def show(v) -> str:
        return "unset" if v is unset else v if isinstance(v, str) else json.dumps(v)

    keys = sorted(k for k in old.keys() | new.keys() if old.get(k, unset) != new.get(k, unset))
    text = ", ".join(f"{k}: {show(old.get(k, unset))} -> {show(new.get(k, unset))}" for k in keys[:shown])
    return text + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def check_data(made: str, old: dict | None, data: dict) -> None:
    """Resuming (or leaving as finished) what was made on other data would silently be a different run: refuse it,
    naming what changed. ``made``: what was made (``the checkpoint in <path>``, a results file); ``old``: the data
    it records (None: nothing recorded, accepted); ``data``: per split ``{"examples": n, "sha256": digest of the
    encoded examples}`` (``inputs.data_identity``)."""
    if old is None or old == data:
        return
    raise TrainingError(f"the data changed since {made} was made ({data_changes(old, data)}); "
                        f"restore the data it was made with to resume it, or {START_OVER}")


def data_changes(old: dict, data: dict) -> str:
    """``train: 12 -> 8 examples, validation: same size, other content``: how two data identities differ."""
    changed = []
    for split in sorted(old.keys() | data.keys()):
        a, b = old.get(split), data.get(split)
        if a == b:
            continue
        if a is None or b is None:
            changed.append(f"{split}: {'added' if a is None else 'removed'}")
        elif a.get("examples") != b.get("examples"):
            changed.append(f"{split}: {a.get('examples')} -> {b.get('examples')} examples")
        else:
            changed.append(f"{split}: same size, other content")
    return ", ".join(changed)


@dataclass
class Restored:
    """A checkpoint read back (``load``): its state, one run's tensors by parameter name, its optimizer state
    (``torch.optim.AdamW.state_dict()``'s form), its method state and the RNG states."""

    state: State
    params: dict
    optimizer: dict
    method: dict
    rng: dict


def load(state: State, *, device, data: dict | None = None) -> Restored:
    """Everything ``save`` wrote beside the ``state`` that ``read_state`` read and checked against the config,
    its data checked first (``check_data``): a refused or damaged checkpoint changes nothing. The caller puts the
    tensors where the run trains (``trainer.Trainer``) and, for the first run of a stack, the RNG states back
    (``restore_rng``)."""
    path, raw = state.path, state.raw
    if data is not None:
        check_data(f"the checkpoint in {path}", state.data, data)
    try:
        tensors = load_file(str(path / "tensors.safetensors"))
        rng = {"torch": tensors["rng.torch"], "cuda": [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")],
               "python": raw["rng_python"], "numpy": raw["rng_numpy"]}
        optimizer = _unflatten_optimizer({k: v.to(device) for k, v in tensors.items() if k.startswith("optim.")},
                                         raw["optimizer"])
        missing = [k for k in ("scheduler", "history") if k not in raw]
        if missing:
            raise KeyError(missing[0])
    except (SafetensorError, OSError, KeyError) as e:
        raise damaged(path, e) from None
    return Restored(state, params={k[6:]: v.to(device) for k, v in tensors.items() if k.startswith("model.")},
                    optimizer=optimizer, method={k[7:]: v.to(device) for k, v in tensors.items() if k.startswith("method.")},
                    rng=rng)


def restore_rng(rng: dict) -> None:
    """The torch (CPU, CUDA), Python and NumPy RNG states a checkpoint saved."""
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    py, npst = rng["python"], rng["numpy"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np.random.set_state((npst[0], np.array(npst[1], dtype=np.uint32), *npst[2:]))
