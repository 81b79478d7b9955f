"""The resume policy as a table: ``resume.plan``'s decision for each state of a run directory, without training.

The end-to-end tests (tests/test_stops.py, test_extend.py, test_errors.py) train and kill runs to reach these
states; here each state is written down as the values ``plan`` reads."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from dynrank.checkpoint import State
from dynrank.errors import TrainingError
from dynrank.resume import Diverged, Extend, Finished, Fresh, Resume, plan

DATA = {"train": {"examples": 8, "sha256": "aa"}}
RUN = "tiny/cola/lora-r8/lr0.001-abc/seed1"


def cfg(epochs=3, resume=True, extend=False, export=False):
    return OmegaConf.create({"train": {"epochs": epochs, "resume": resume, "extend": extend, "export": export}})


def state(epoch, planned=3, batch=0, schedule=None, data=DATA):
    schedule = schedule if schedule is not None else [{"epochs": planned, "from_step": 0}]
    raw = {"epoch": epoch, "step": 10 * epoch + batch, "fingerprint": "f", "history": [],
           "position": {"batch": batch} if batch else None, "extra": {"schedule": schedule, "data": data}}
    return State.of(Path("run/checkpoint"), raw)


def results(epoch, run_id=RUN, data=DATA):
    return epoch, {"run_id": run_id, "data": data, "final": {"epoch": epoch}}


NONE = (0, {})


@pytest.mark.parametrize("c, st, res, kw, expected", [
    (cfg(resume=False), None, results(3), {}, Fresh()),
    (cfg(), None, NONE, {}, Fresh()),
    (cfg(), None, results(2), {}, Fresh()),  # a shorter run's results, no checkpoint: starts
    (cfg(), None, results(3, run_id="other"), {}, Fresh()),  # another run's results in a directory set by hand
    (cfg(), None, results(3), {"data": DATA}, Finished(results(3)[1])),  # kept no checkpoint, finished
    (cfg(), None, NONE, {"diverged": "loss became NaN"}, Diverged),
])
def test_without_a_checkpoint(c, st, res, kw, expected):
    got = plan(c, RUN, st, res, **kw)
    if expected is Diverged:
        assert isinstance(got, Diverged) and "loss became NaN" in got.why and "train.resume=false" in got.why
    else:
        assert got == expected


def test_from_a_checkpoint_resume_extend_or_finished():
    mid, within = state(1), state(1, batch=4)
    assert plan(cfg(), RUN, mid, results(1), data=DATA) == Resume(mid)
    assert plan(cfg(), RUN, within, results(1), data=DATA) == Resume(within) and within.batch == 4
    last = state(3)
    assert plan(cfg(), RUN, last, NONE, data=DATA) == Resume(last)  # no results yet: finishing writes them
    assert plan(cfg(), RUN, last, results(3, run_id="other"), data=DATA) == Resume(last)
    assert plan(cfg(), RUN, last, results(3), data=DATA) == Finished(results(3)[1])
    shorter = state(2, planned=2)
    got = plan(cfg(extend=True), RUN, shorter, results(2), data=DATA)
    assert got == Extend(shorter) and isinstance(got, Resume)  # the trainer resumes it, then extends the schedules
    extended = state(2, schedule=[{"epochs": 2, "from_step": 0}, {"epochs": 3, "from_step": 20}])
    assert plan(cfg(extend=True), RUN, extended, results(2), data=DATA) == Resume(extended)


def test_finished_run_asked_for_its_adapter():
    last = state(3)
    assert plan(cfg(export=True), RUN, last, results(3), data=DATA) == Finished(results(3)[1], export=last)
    assert plan(cfg(export=True), RUN, last, results(3), data=DATA, has_adapter=True) == Finished(results(3)[1])
    with pytest.raises(TrainingError, match="kept no checkpoint.*train.resume=false"):
        plan(cfg(export=True), RUN, None, results(3), data=DATA, where="run/results.json")


@pytest.mark.parametrize("c, st, res, match", [
    (cfg(), state(4, planned=4), results(4), "trained 4 epochs, more than train.epochs=3; set train.epochs=4"),
    (cfg(), state(2, planned=2), results(2), "2-epoch run and train.epochs=3: add train.extend=true"),
    (cfg(), state(2, schedule=[{"epochs": 2, "from_step": 0}, {"epochs": 3, "from_step": 20}]), results(2),
     "extended from 2 to 3 epochs"),
    (cfg(extend=True), state(1), results(1), "trained 3 epochs from the start, not an extended one"),
    (cfg(), state(3, data={"train": {"examples": 9, "sha256": "bb"}}), results(3), "data"),
    (cfg(), None, results(3, data={"train": {"examples": 9, "sha256": "bb"}}), "data"),
])
def test_refused_with_what_to_do(c, st, res, match):
    with pytest.raises(TrainingError, match=match):
        plan(c, RUN, st, res, data=DATA)
