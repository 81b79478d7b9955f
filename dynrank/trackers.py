"""Experiment trackers beside TensorBoard (the ``logger`` config group: ``conf/logger/``): MLflow, Weights & Biases,
CSV. One tracker run per dynrank run (each seed of a stacked command its own), holding the scalars TensorBoard gets
(``runlog.Writer`` hands every ``add_scalar`` to both), the resolved config and the final results.

A tracker cannot take back what it was sent, so it is sent only what a checkpoint covers: scalars wait in memory
until the loop flushes its writers, right before each checkpoint (and when the writers close), and every flush
records in ``<run dir>/tracker.json`` the tracker run's id and the last step sent (``logged_through``). An attempt
that resumes the run's checkpoint continues that tracker run and skips the steps sent already (a resumed run trains
them again, to the same values); a fresh attempt (the first, or ``train.resume=false``) opens a new tracker run, and
``tracker.json`` names it from its first flush on. So a killed and resumed run is one tracker run with every step
once.
"""
from __future__ import annotations

import atexit
import csv
import json
import os
from pathlib import Path

from omegaconf import OmegaConf

from .errors import ConfigError
from .results import write_json

STATE = "tracker.json"  # in the run directory: {"logger": ..., "run_id": ..., "logged_through": step}
PACKAGES = {"mlflow": "mlflow", "wandb": "wandb"}  # logger -> the module it needs (pip install -e '.[<logger>]')


def check_installed(name: str) -> None:
    """A ``ConfigError`` at once (before anything trains) where ``logger=<name>`` needs a package that is absent."""
    import importlib.util

    module = PACKAGES.get(name)
    if module and importlib.util.find_spec(module) is None:
        raise ConfigError(f"logger={name} needs the {module} package, which is not installed: "
                          f"pip install -e '.[{name}]' (or logger=tensorboard, logger=csv)")


def open_tracker(cfg, run_dir, resumed: bool):
    """The tracker of ``cfg.logger`` for one attempt at the run in ``run_dir``; None for ``tensorboard`` alone."""
    lcfg = cfg.get("logger")
    name = str(lcfg.name) if lcfg is not None else "tensorboard"
    if name == "tensorboard":
        return None
    cls = {"mlflow": MLflowTracker, "wandb": WandbTracker, "csv": CSVTracker}[name]
    state = _read_state(run_dir)
    previous = state if resumed and state.get("logger") == name else None
    return cls(lcfg, cfg, Path(run_dir), previous)


def _read_state(run_dir) -> dict:
    try:
        return json.loads((Path(run_dir) / STATE).read_text())
    except (OSError, ValueError):
        return {}


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _final_scalars(results: dict) -> dict:
    """The numbers of a results file's ``final`` (dev metrics, epoch) and ``best``, as ``final/dev/accuracy``..."""
    out = {}
    for part in ("final", "best"):
        for k, v in _flat(results.get(part) or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{part}/{k.replace('.', '/')}"] = float(v)
    return out


class Tracker:
    """What every tracker does: buffer scalars until a flush, skip steps an earlier attempt sent, record its state."""

    name = ""

    def __init__(self, lcfg, cfg, run_dir: Path, previous: dict | None):
        self.lcfg, self.run_dir = lcfg, run_dir
        # the resolved config, less the method's table for every task (its values for this one are in train.*)
        self.config = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "hparams"}
        self.seed = int(cfg.seed)
        self.title = f"{cfg.model.id}/{cfg.task.name}/{cfg.method.name}-{cfg.budget.name} seed {self.seed}"
        self.logged_through = int(previous["logged_through"]) if previous else -1
        self.pending: list[tuple[str, float, int]] = []
        self.done = False
        self.run_id = self.open(previous["run_id"] if previous else None)
        atexit.register(self._at_exit)

    # --- what each tracker implements
    def open(self, run_id: str | None) -> str:
        """Continue the tracker run ``run_id``, or (None) start one and log the resolved config; its id."""
        raise NotImplementedError

    def send(self, scalars: list[tuple[str, float, int]]) -> None:
        raise NotImplementedError

    def finish(self, results: dict) -> None:
        """The final results (their numbers, and the file) logged, and the tracker run ended as finished."""
        raise NotImplementedError

    def stop(self) -> None:
        """The tracker run ended unfinished (the process stops without results: an error, Ctrl-C, SIGTERM; a later
        attempt may continue it)."""

    # --- the writer's side (runlog.Writer)
    def add_scalar(self, tag: str, value, step: int) -> None:
        if step > self.logged_through:
            self.pending.append((tag, float(value), int(step)))

    def flush(self) -> None:
        if self.pending:
            self.send(self.pending)
            self.logged_through = max(self.logged_through, max(s for _, _, s in self.pending))
            self.pending = []
        write_json(self.run_dir / STATE, {"logger": self.name, "run_id": self.run_id,
                                          "logged_through": self.logged_through})

    def close(self) -> None:
        """What was logged, sent (TensorBoard's writer closes: the loop's results may follow, ``results``)."""
        self.flush()

    def results(self, results: dict) -> None:
        self.flush()
        self.finish(results)
        self.done = True

    def _at_exit(self) -> None:
        if not self.done:
            self.done = True
            try:
                self.stop()
            except Exception:  # the process is ending anyway; the tracker run stays as it was
                pass


class MLflowTracker(Tracker):
    """MLflow: a local file store by default (``mlruns/`` where the command is launched; ``mlflow ui`` there to
    browse), or ``logger.tracking_uri`` (a server, a database)."""

    name = "mlflow"

    def open(self, run_id):
        from mlflow.tracking import MlflowClient

        uri = self.lcfg.get("tracking_uri") or Path(str(self.lcfg.get("dir") or "mlruns")).absolute().as_uri()
        if uri.startswith("file:"):  # MLflow 3 refuses its file store unless this opts in (it is in maintenance)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = client = MlflowClient(tracking_uri=uri)
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            return run_id
        name = str(self.lcfg.get("experiment") or "dynrank")
        exp = client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
        run = client.create_run(exp_id, run_name=self.title, tags={"dynrank.run_dir": str(self.run_dir.absolute()),
                                                                   "seed": str(self.seed)})
        from mlflow.entities import Param

        params = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                  for k, v in _flat(self.config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run.info.run_id, params=params[i:i + 100])
        client.log_text(run.info.run_id, OmegaConf.to_yaml(OmegaConf.create(self.config)), "config.yaml")
        return run.info.run_id

    def send(self, scalars):
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(tag, value, now, step) for tag, value, step in scalars]
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def finish(self, results):
        import time

        from mlflow.entities import Metric

        step = int((results.get("final") or {}).get("step") or self.logged_through)
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, max(step, 0))
                                                    for k, v in _final_scalars(results).items()])
        self.client.log_dict(self.run_id, results, "results.json")
        self.client.set_terminated(self.run_id, status="FINISHED")

    def stop(self):
        self.client.set_terminated(self.run_id, status="KILLED")


class WandbTracker(Tracker):
    """Weights & Biases: offline (``<run dir>/wandb``, ``wandb sync`` uploads it) unless an API key is known
    (``wandb login`` or ``WANDB_API_KEY``); ``logger.mode`` sets it."""

    name = "wandb"

    def open(self, run_id):
        import wandb

        mode = self.lcfg.get("mode") or ("online" if os.environ.get("WANDB_API_KEY") or _wandb_key() else "offline")
        self.wb = wandb.init(project=str(self.lcfg.get("project") or "dynrank"), entity=self.lcfg.get("entity"),
                             name=self.title, dir=str(self.run_dir), mode=mode, id=run_id,
                             resume="must" if run_id and mode == "online" else ("allow" if run_id else None),
                             config=None if run_id else self.config, reinit="create_new")
        return self.wb.id

    def send(self, scalars):
        by_step: dict[int, dict] = {}
        for tag, value, step in scalars:
            by_step.setdefault(step, {})[tag] = value
        for step in sorted(by_step):
            self.wb.log(by_step[step], step=step)

    def finish(self, results):
        for k, v in _final_scalars(results).items():
            self.wb.summary[k] = v
        self.wb.finish(exit_code=0)

    def stop(self):
        self.wb.finish(exit_code=1)


def _wandb_key() -> str | None:
    try:
        from wandb.sdk.lib import apikey

        return apikey.api_key()
    except Exception:  # no key stored, or an API of another wandb version
        return None


class CSVTracker(Tracker):
    """Plain files in ``<run dir>/csv/``: ``metrics.csv`` (step, tag, value), ``config.yaml``, ``results.json``."""

    name = "csv"

    def open(self, run_id):
        self.dir = self.run_dir / "csv"
        self.fresh = run_id is None  # a fresh attempt replaces the old metrics at its first flush
        if self.fresh:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / ".config.yaml.tmp"
            tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(self.config)))
            os.replace(tmp, self.dir / "config.yaml")
        return run_id or self.run_dir.name

    def send(self, scalars):
        path = self.dir / "metrics.csv"
        with open(path, "w" if self.fresh else "a", newline="") as f:
            w = csv.writer(f)
            if self.fresh:
                w.writerow(["step", "tag", "value"])
            w.writerows([(step, tag, repr(value)) for tag, value, step in scalars])
        self.fresh = False

    def finish(self, results):
        write_json(self.dir / "results.json", results)
