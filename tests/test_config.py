"""The config contract in one place: ``config.SCHEMA``'s ``one of`` rules (every key that holds one of a few names),
checked by ``validate`` before anything is built, each with one line that says what to write."""
import pytest

from conftest import compose
from dynrank.config import SCHEMA, conforms, describe, validate
from dynrank.config.schema import NO_DECAY_RULES, SCHEDULES, one_of, options
from dynrank.errors import ConfigError


def test_one_of_rule():
    rule = one_of("online", "offline", "disabled") + " or null"
    assert options(rule) == ("online", "offline", "disabled")
    assert conforms(rule, "offline") and conforms(rule, None)
    assert not conforms(rule, "Offline") and not conforms(rule, 1) and not conforms(one_of("a", "b"), None)
    assert describe(rule) == "online, offline or disabled, or null"
    assert describe(one_of("last", "none")) == "last or none" and describe(one_of("x")) == "x"
    assert options("str") == ()
    assert options(SCHEMA["train.schedule"]) == SCHEDULES and options(SCHEMA["train.no_decay"]) == NO_DECAY_RULES


@pytest.mark.parametrize("overrides, message", [
    (["train.schedule=cosine"], "train.schedule must be linear or constant (got 'cosine')"),
    (["train.no_decay=bias"], "train.no_decay must be none or hf_trainer (got 'bias')"),
    (["train.keep_checkpoint=all"], "train.keep_checkpoint must be last or none (got 'all')"),
    (["logger=wandb", "logger.mode=online2"],
     "logger.mode must be online, offline or disabled, or null (got 'online2')"),
    (["eval.beam_search=hf"], "eval.beam_search must be fast or generate (got 'hf')"),
    (["task=squad_v1", "task.train_windows=some"],
     "task.train_windows must be all or answer_only, or null (got 'some')"),
    (["task=xsum", "model=tiny_bart", "task.eval_split=dev"], "task.eval_split must be validation or test, or null "
                                                               "(got 'dev')"),
    (["method=dylora", "method.mode=half"], "method.mode must be frozen or full (got 'half')"),
    (["method=houlsby", "method.placement=inside"], "method.placement must be source or before_dropout (got 'inside')"),
    (["method=pfeiffer", "method.activation=tanh"], "method.activation must be relu, gelu or silu (got 'tanh')"),
    (["protocol.best_epoch=last"], "protocol.best_epoch must be all or after_pruning (got 'last')"),
    (["protocol.metric_max=each"], "protocol.metric_max must be joint or per_metric (got 'each')"),
])
def test_a_name_outside_its_choices_is_one_line(overrides, message, monkeypatch):
    monkeypatch.setattr("dynrank.config.validation.check_installed", lambda name: None)  # logger=wandb
    with pytest.raises(ConfigError) as e:
        validate(compose(["model=tiny", *overrides]))
    assert str(e.value) == message


def test_every_shipped_choice_conforms():
    """Every name a ``one of`` rule allows is one that a config may hold; every composed default conforms."""
    for overrides in (["method=dylora"], ["method=houlsby"], ["method=pfeiffer", "protocol=paper_code"],
                      ["task=squad_v1"], ["task=xsum", "model=tiny_bart"]):
        validate(compose(["model=tiny", *overrides]))
