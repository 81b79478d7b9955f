"""One results JSON per run, written atomically, under the run dir and in the results store."""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field, fields
from importlib import metadata
from pathlib import Path

SCHEMA = 1
log = logging.getLogger("dynrank.results")
PACKAGES = ("torch", "transformers", "peft", "datasets", "hydra-core", "omegaconf", "scikit-learn",
            "scipy", "rouge-score", "safetensors", "numpy")


def atomic_write_text(path, text: str) -> None:
    """Write to a temporary file beside ``path`` and rename it over: readers never see half a file.

    The file gets the mode any new file gets (0666 less the umask), not mkstemp's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a full disk says which file it stopped
            e.filename = str(path)
        raise


def _read_umask() -> int:
    mask = os.umask(0)  # reading it means setting it: done once, at import, before any writer thread runs
    os.umask(mask)
    return mask


_UMASK = _read_umask()


# The errno in a Rust I/O error as safetensors words it: ``IoError(Os { code: 28, ... })`` (its Debug form, safetensors
# < 0.5) or ``I/O error: No space left on device (os error 28)`` (its Display form, 0.5 and later).
_RUST_ERRNO = re.compile(r"Os \{ code: (\d+)|\(os error (\d+)\)")


def save_tensors(tensors: dict, path) -> None:
    """``safetensors.torch.save_file``, the file then given the mode any new file gets (safetensors writes 0600).
    An error of the system inside safetensors' own (a full disk: errno 28, whatever the words around it) is raised
    as the ``OSError`` of its errno, naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path))
    except SafetensorError as e:
        if found := _RUST_ERRNO.search(str(e)):
            code = int(found[1] or found[2])
            raise OSError(code, os.strerror(code), str(path)) from e
        raise
    umask_mode(path)


def umask_mode(path) -> None:
    """Give ``path`` the mode any new file gets (0666 less the umask), where a writer made it private (0600)."""
    os.chmod(path, 0o666 & ~_UMASK)


def write_json(path, obj) -> None:
    """Strict JSON (RFC 8259), which other readers than Python's accept: a number that is not finite (NaN, inf)
    is written as null, as the report reads a missing value, never as a bare ``NaN``."""
    text = json.dumps(_finite(obj), indent=2, sort_keys=False, allow_nan=False, default=_jsonable)
    atomic_write_text(path, text + "\n")


def _finite(o):
    """``o`` with every float that is not finite replaced by None (numpy and torch values as plain ones first)."""
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if not isinstance(o, (str, int, float)) and hasattr(o, "tolist"):
        return _finite(o.tolist())
    return None if isinstance(o, float) and not math.isfinite(o) else o


def _jsonable(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def versions() -> dict[str, str | None]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass(frozen=True)
class RunResults:
    """One run's results file (``<run dir>/results.json`` and its copy in the store): what a run computed, how, and
    where; written by ``dynrank.trainer`` (``build_results``), read by the report (``load_runs``).

    A field holds the value as the file holds it (plain JSON: dicts, lists, numbers, strings): the report checks the
    types of what it reads, since a file may be older or damaged. ``None``: not recorded (a file from before the key
    existed, or a value that is null). ``from_json(d).to_json() == d`` for every file, its keys' order included:
    ``other`` keeps the keys this code does not know, ``keys`` the file's own keys in its order."""
    schema: int | None = SCHEMA                # the results file's schema version (``SCHEMA``)
    run_id: str | None = None                  # ``config.run_id``: <model>/<task>/<cell>/lr<lr>-<hash>/seed<k>
    model: str | None = None                   # cfg.model.id
    task: str | None = None                    # cfg.task.name
    method: str | None = None                  # cfg.method.name
    budget: str | None = None                  # cfg.budget.name
    variant: str | None = None                 # cfg.variant (an ablation's cell suffix; None: none)
    seed: int | None = None                    # the run's seed
    lr: float | None = None                    # its learning rate (older files: only in ``config.train.lr``)
    config_hash: str | None = None             # ``config.config_hash``: what the run computed (the report averages
                                               # only runs of one hash); an extended run's covers its schedule
    schedule: list | None = None               # the length each schedule was made for: [{"epochs", "from_step"}...]
    protocol: str | None = None                # cfg.protocol.name, the protocol it was trained under
    metric: str | None = None                  # the task's selection metric (a key of ``dev``)
    best: dict | None = None                   # the epoch with the best ``metric``: {"epoch", "dev"}
    pruning_end_step: int | None = None        # the step the method's pruning ends (DoRA, AdaLoRA; None: no pruning)
    final: dict | None = None                  # the last epoch: {"epoch", "dev"}
    epochs: list | None = None                 # the history, one per epoch: {"epoch", "step", "train_loss", "dev",
                                               # "train_time_s", "eval_time_s"}
    params: dict | None = None                 # the method's parameter counts for this run (``param_counts``)
    time_per_epoch_s: list | None = None       # each epoch's training time (s)
    peak_gpu_memory_mib: float | None = None   # torch.cuda.max_memory_allocated (MiB); None on CPU
    device: str | None = None                  # the CUDA device's name, or "cpu"
    gpu: dict | None = None                    # which GPU of the host (local_gpus sweeps): claimed id, visible, UUID
    finished_at: str | None = None             # when the run finished (local time, ISO 8601 with its offset)
    config: dict | None = None                 # the run's config, resolved
    versions: dict | None = None               # Python's and the packages' versions (``versions``)
    git_commit: str | None = None              # the code's commit (``-dirty``: with uncommitted changes)
    data: dict | None = None                   # the data's identity: what the store keys a config's runs on
                                               # (Run._check_store)
    training: dict | None = None               # how it trained: stacked_runs, precision, cuda_graphs,
                                               # pad_to_multiple, packed; with CUDA graphs: graphs (captured),
                                               # graph_warmup_steps (the steps that ran eagerly before them) and
                                               # graph_setup_s (those steps and the captures, s)
    wall_time_s: float | None = None           # wall time over all attempts (a resumed run's: the sum, each
                                               # attempt up to its last checkpoint)
    wall_time_per_attempt_s: list | None = None  # each attempt's wall time (s)
    train_time_s: float | None = None          # the sum of ``time_per_epoch_s``
    method_summary: dict | None = None         # the method's facts for this run (``summary``: e.g. DoRA's rank map)
    extra_evals: dict | None = None            # the method's final evaluations (``final_evaluation``: e.g.
                                               # DyLoRA's per rank); not in the file when it has none
    export_dir: str | None = None              # the exported adapter's directory (train.export=true); not in the
                                               # file otherwise
    other: dict = field(default_factory=dict)  # keys of the file this code does not know, as read
    keys: tuple | None = field(default=None, compare=False, repr=False)  # the file's keys in its order (None: a
                                                                          # record built here, ``FIELDS``' order)

    @classmethod
    def from_json(cls, d: dict) -> RunResults:
        """The record of a results file's contents (a JSON object); a key it lacks is ``None``."""
        return cls(**{k: d.get(k) for k in FIELDS}, other={k: v for k, v in d.items() if k not in FIELDS},
                   keys=tuple(d))

    def to_json(self) -> dict:
        """The results file's contents: a file read, its keys in its order; a record built here, every field
        but ``OPTIONAL``'s unset ones, in ``FIELDS``' order; then any field set since that the file lacked."""
        keys = self.keys if self.keys is not None else tuple(k for k in FIELDS if k not in OPTIONAL
                                                             or getattr(self, k) is not None)
        out = {k: self.other[k] if k in self.other else getattr(self, k) for k in keys}
        out.update({k: v for k in FIELDS if k not in out and (v := getattr(self, k)) is not None})
        return out


FIELDS = tuple(f.name for f in fields(RunResults) if f.name not in ("other", "keys"))  # the file's keys, in order
OPTIONAL = ("extra_evals", "export_dir")  # keys a results file has only where set


def build_results(cfg, resolved: dict, metric: str, history: list[dict], schedule: list[dict], device, *,
                  run_id: str, config_hash: str, params: dict, pruning_end_step, data, training: dict,
                  attempts_s: list[float], ended: float, method_summary: dict, extra_evals: dict | None = None,
                  export_dir: str | None = None) -> RunResults:
    """A finished run's results: ``cfg`` its config (``resolved``: resolved to plain containers; ``run_id`` and
    ``config_hash``: ``config.run_id(cfg)``, ``config.config_hash(cfg, schedule)``), ``metric`` the
    task's selection metric, ``history`` its epochs, ``schedule`` the lengths its schedules were made for,
    ``device`` the torch device it trained on; ``params``, ``pruning_end_step``, ``method_summary`` and
    ``extra_evals`` the method's for it; ``data`` the data's identity; ``training`` how it trained;
    ``attempts_s`` the wall time of each attempt (a resumed run's earlier ones, each up to its last checkpoint,
    then this one's up to ``ended``, the ``time.time()`` it finished at); ``export_dir`` its exported adapter."""
    import torch

    from . import gpus

    best = max(history, key=lambda h: h["dev"].get(metric, float("-inf")))
    cuda = device.type == "cuda"
    time_per_epoch = [h["train_time_s"] for h in history]
    return RunResults(
        schema=SCHEMA, run_id=run_id, model=cfg.model.id, task=cfg.task.name, method=cfg.method.name,
        budget=cfg.budget.name, variant=cfg.get("variant"), seed=int(cfg.seed), lr=float(cfg.train.lr),
        config_hash=config_hash, schedule=schedule, protocol=cfg.protocol.name, metric=metric,
        best={"epoch": best["epoch"], "dev": best["dev"]}, pruning_end_step=pruning_end_step,
        final={"epoch": history[-1]["epoch"], "dev": history[-1]["dev"]}, epochs=history, params=params,
        time_per_epoch_s=time_per_epoch,
        peak_gpu_memory_mib=torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
        device=torch.cuda.get_device_name(device) if cuda else "cpu", gpu=gpus.identity(device),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ended)), config=resolved,
        versions=versions(), git_commit=git_commit(), data=data, training=training, wall_time_s=sum(attempts_s),
        wall_time_per_attempt_s=list(attempts_s), train_time_s=sum(time_per_epoch), method_summary=method_summary,
        extra_evals=extra_evals or None, export_dir=export_dir)


def read_results(results_path) -> tuple[int | None, dict]:
    """The epochs a results file holds and its contents ((None, {}): no readable results file)."""
    try:
        results = json.loads(Path(results_path).read_text())
        return int(results["final"]["epoch"]), results
    except (OSError, ValueError, KeyError, TypeError):
        return None, {}


def store_path(store, run_id: str) -> Path:
    """``<store>/<model>/<task>/<method>-<budget>[-<variant>]/seed<k>.json``."""
    return Path(store) / (run_id + ".json")


REQUIRED = ("schema", "model", "task", "method", "budget", "seed")  # what a report needs to place a run
KINDS = {"seed": (int, "an integer"), "model": (str, "a string"), "task": (str, "a string"),
         "method": (str, "a string"), "budget": (str, "a string")}  # what each part of a run's place must be


def recorded_lr(run: RunResults):
    """The learning rate a results file records: its ``lr``; older files: the resolved ``config.train.lr``
    (``None``: neither)."""
    lr = run.lr
    if lr is None:
        config = run.config
        train = config.get("train") if isinstance(config, dict) else None
        lr = train.get("lr") if isinstance(train, dict) else None
    return lr


def run_lr(run: RunResults) -> float | None:
    """The run's learning rate as a number: a finite one > 0, else ``None`` (none recorded, or malformed)."""
    lr = recorded_lr(run)
    ok = isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0
    return float(lr) if ok else None


def run_key(run: RunResults) -> tuple:
    """What makes a run one run in the store: its cell, config hash, learning rate and seed."""
    return (run.model, run.task, run.method, run.budget, run.variant or None, run.config_hash, run_lr(run),
            run.seed)


def _not_its_own(path: Path, run: RunResults, store: Path) -> str | None:
    """Why a results file is not its run's own (``None``: it is): the run's own file is ``store_path(<store>,
    run_id)``; a file without a run id (the oldest) must at least be named ``seed<k>.json`` after its seed."""
    rid = run.run_id
    if rid is None:
        own = f"seed{run.seed}.json"
        return None if path.name == own else f"a duplicate: seed {run.seed}'s file is named {own}"
    if not isinstance(rid, str):
        return f"not a results file: run_id is {json.dumps(rid, default=str)}, not a string"
    own = store_path(Path(), rid)
    if path.parts[-len(own.parts):] == own.parts:  # (the store given may be a directory above the runs' own)
        return None
    return f"a duplicate of run {rid}, whose own file is {store_path(store, rid)}"


def load_runs(store, skipped: list | None = None) -> list[RunResults]:
    """Every run's results file under the store (for reports), in path order: one per run, from its own path.

    A file that is not a results file (truncated, not JSON, not an object, ``{}``, without ``schema`` or the
    run's identity, with an identity of the wrong type, e.g. ``"seed": "one"``, or a learning rate that is not a
    number > 0, e.g. ``"lr": "abc"``) is skipped with a one-line warning naming it, and so is a duplicate: a file
    that is not at its run's own path (``seed1_old.json`` beside ``seed1.json``), or a second file of a run (same
    cell, config hash, learning rate and seed) read already. Each is appended to ``skipped`` as ``(path,
    reason)`` so that a caller can refuse to go on (``python -m dynrank.report --strict``)."""
    runs, read = [], {}
    for p in sorted(Path(store).rglob("seed*.json")):
        reason = None
        try:
            with open(p, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            reason = f"not readable as JSON ({type(e).__name__}: {e})"
        else:
            if not isinstance(data, dict):
                reason = f"not a JSON object ({type(data).__name__})"
            elif missing := [k for k in REQUIRED if k not in data]:
                reason = "empty ({})" if not data else f"not a results file: no {', '.join(missing)}"
            elif wrong := [k for k, (kind, _) in KINDS.items()
                           if not isinstance(data[k], kind) or isinstance(data[k], bool)]:
                reason = "not a results file: " + ", ".join(f"{k} is {json.dumps(data[k])}, not {KINDS[k][1]}"
                                                            for k in wrong)
            else:
                run = RunResults.from_json(data)
                if (lr := recorded_lr(run)) is not None and run_lr(run) is None:
                    reason = f"its learning rate is {json.dumps(lr, default=str)}, not a number > 0"
                elif (not_own := _not_its_own(p, run, Path(store))) is not None:
                    reason = not_own
                elif (first := read.setdefault(run_key(run), p)) != p:
                    reason = f"a duplicate of {first} (the same config hash, learning rate and seed)"
        if reason is None:
            runs.append(run)
            continue
        log.warning("skipping %s: %s", p, reason)
        if skipped is not None:
            skipped.append((p, reason))
    return runs
