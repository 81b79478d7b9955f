"""What each key may hold (``SCHEMA``) and the small rule language it is written in: ``conforms`` checks a value,
``describe`` says a rule in words."""
from __future__ import annotations

import math
import re

# --- what each key may hold ------------------------------------------------------------------------------------
# Read "<key> must be <rule>": int or number (with a bound or a range), bool, str, tag (a name for the results
# path: letters, digits, '.', '_', '-', no '..'), device (auto, cpu, cuda, cuda:<n>), "one of <a>, <b>, ..." (those
# strings only), "list of <rule>", each possibly "or null" or "or auto". Keys of other tasks and methods than the
# run's are simply absent.
SCHEDULES = ("linear", "constant")  # train.schedule's choices: the learning-rate schedules of optim.lr_factor
NO_DECAY_RULES = ("none", "hf_trainer")  # train.no_decay's choices: optim.decays


def one_of(*names: str) -> str:
    """The rule of a key that holds one of ``names``: ``one of linear, constant``."""
    return "one of " + ", ".join(names)


def options(rule: str) -> tuple[str, ...]:
    """The names a ``one of`` rule allows (``or null`` / ``or auto`` left out)."""
    rule = rule.removesuffix(" or null").removesuffix(" or auto")
    return tuple(rule[len("one of "):].split(", ")) if rule.startswith("one of ") else ()

SCHEMA = {
    "seed": "int in [0, 4294967295]",          # numpy's seeding (device.seed_everything) takes 32 bits
    "seeds": "list of int in [0, 4294967295] or null",
    "lr_search": "bool",
    "variant": "tag or null",
    "data.dir": "str or null",
    "data.cache_dir": "str or null",
    "data.max_train_samples": "int >= 1 or null",
    "data.max_eval_samples": "int >= 1 or null",
    "train.lr": "number > 0",
    "train.epochs": "int >= 1",
    "train.batch_size": "int >= 1",
    "train.eval_batch_size": "int >= 1",
    "train.weight_decay": "number >= 0",
    "train.warmup_ratio": "number in [0, 1)",
    "train.max_grad_norm": "number > 0 or null",
    "train.schedule": one_of(*SCHEDULES),
    "train.no_decay": one_of(*NO_DECAY_RULES),
    "train.adam_betas": "list of number in [0, 1)",
    "train.adam_eps": "number > 0",
    "train.label_smoothing": "number in [0, 1)",
    "train.exact": "bool",
    "train.bf16": "bool or auto",
    "train.compile": "bool",
    "train.cuda_graphs": "bool or auto",
    "train.pad_to_multiple": "int >= 1 or auto",
    "train.stack": "bool or auto",
    "train.pack": "bool or auto",
    "train.max_stack": "int >= 1 or auto",
    "train.device": "device",
    "train.group_by_length": "bool",
    "train.num_workers": "int >= 0",
    "train.log_every": "int >= 1",
    "train.resume": "bool",
    "train.extend": "bool",
    "train.skip_done": "bool",
    "train.progress": "bool",
    "train.export": "bool",
    "train.checkpoint_every": "int >= 1 or null",
    "train.keep_checkpoint": one_of("last", "none"),
    "eval.max_samples": "int >= 1 or null",
    "eval.beam_search": one_of("fast", "generate"),
    "results.store": "str",
    "logger.name": "str",                      # a conf/logger/ choice
    "logger.tracking_uri": "str or null",
    "logger.dir": "str",
    "logger.experiment": "str",
    "logger.project": "str",
    "logger.entity": "str or null",
    "logger.mode": one_of("online", "offline", "disabled") + " or null",
    "budget.name": "tag",
    "budget.r": "int >= 1",
    "model.id": "tag",
    "model.path": "str or null",
    "model.tiny.hidden_size": "int >= 1",
    "model.tiny.num_hidden_layers": "int >= 1",
    "model.tiny.num_attention_heads": "int >= 1",
    "model.tiny.intermediate_size": "int >= 1",
    "task.name": "tag",
    "task.num_labels": "int >= 1",
    "task.max_length": "int >= 1",
    "task.batch_size": "int >= 1",
    "task.epochs": "int >= 1",
    "task.reg_coef": "number >= 0",
    "task.pruning_interval": "int >= 1",
    "task.doc_stride": "int >= 1",
    "task.max_answer_length": "int >= 1",
    "task.n_best": "int >= 1",
    "task.null_threshold": "number",
    "task.max_target_length": "int >= 1",
    "task.version_2_with_negative": "bool",
    "task.generate.num_beams": "int >= 1",
    "task.generate.max_new_tokens": "int >= 1",
    "task.generate.no_repeat_ngram_size": "int >= 0",
    "task.generate.early_stopping": "bool",
    "task.generate.length_penalty": "number",
    "task.train_windows": one_of("all", "answer_only") + " or null",  # SQuAD; null: all
    "task.eval_split": one_of("validation", "test") + " or null",     # XSum; null: validation
    "method.name": "tag",
    "method.alpha": "number > 0",
    "method.dropout": "number in [0, 1)",
    "method.initial_budget": "int >= 1 or null",
    "method.warmup_frac": "number in [0, 1]",
    "method.final_frac": "number in [0, 1]",
    "method.tinit_fraction": "number in [0, 1]",
    "method.tfinal_fraction": "number in [0, 1]",
    "method.beta": "number in [0, 1)",
    "method.beta1": "number in (0, 1)",      # AdaLoRA's EMAs of sensitivity and uncertainty (Eq. 8-9)
    "method.beta2": "number in (0, 1)",
    "method.eps": "number > 0",
    "method.kaiming_a": "number",
    "method.dem": "bool",
    "method.reg_coef": "number >= 0",
    "method.orth_reg_weight": "number >= 0",
    "method.pruning_interval": "int >= 1",
    "method.deltaT": "int >= 1",
    "method.bottleneck": "int >= 1 or null",
    "method.bottleneck_per_rank": "int >= 1",
    "method.placement": one_of("source", "before_dropout"),  # adapters: the adapter's input
    "method.activation": one_of("relu", "gelu", "silu"),     # adapters: methods.adapters.ACTIVATIONS
    "method.mode": one_of("frozen", "full"),                 # dylora: which rows/columns <= b train
    "method.r_min": "int >= 1",
    "method.r_max": "int >= 1",
    "method.eval_ranks": "list of int >= 1",
    "method.export_rank": "int >= 1 or null",
    "method.seed": "int >= 0",
    "protocol.lora_kaiming_a": "number",
    "protocol.best_epoch": one_of("all", "after_pruning"),  # the report's selection rule (report.selection.Rule)
    "protocol.metric_max": one_of("joint", "per_metric"),
    "protocol.std_ddof": "int in [0, 1]",
}


def conforms(rule: str, value) -> bool:
    """Whether ``value`` (as composed and resolved: YAML/Hydra types) satisfies ``rule`` (a ``SCHEMA`` entry)."""
    if rule.endswith(" or null"):
        return value is None or conforms(rule[: -len(" or null")], value)
    if rule.endswith(" or auto"):
        return value == "auto" or conforms(rule[: -len(" or auto")], value)
    if rule.startswith("list of "):
        return isinstance(value, list) and all(conforms(rule[len("list of "):], v) for v in value)
    if rule.startswith("one of "):
        return isinstance(value, str) and value in options(rule)
    kind, _, bound = rule.partition(" ")
    if kind in ("bool", "str"):
        return isinstance(value, {"bool": bool, "str": str}[kind])
    if kind == "tag":
        return isinstance(value, str) and bool(re.fullmatch(r"[A-Za-z0-9._-]+", value)) and ".." not in value
    if kind == "device":
        return isinstance(value, str) and bool(re.fullmatch(r"auto|cpu|cuda(:\d+)?", value))
    if isinstance(value, bool) or not isinstance(value, int if kind == "int" else (int, float)):
        return False
    return math.isfinite(value) and _within(value, bound)


def _within(x, bound: str) -> bool:
    """``>= 1``, ``> 0``, ``in [0, 1)``; empty: any."""
    if not bound:
        return True
    op, _, rest = bound.partition(" ")
    if op == "in":
        lo, hi = (float(v) for v in rest[1:-1].split(","))
        return (lo <= x if rest[0] == "[" else lo < x) and (x <= hi if rest[-1] == "]" else x < hi)
    b = float(rest)
    return {">=": x >= b, ">": x > b, "<=": x <= b, "<": x < b}[op]


def describe(rule: str) -> str:
    """A rule in words: ``int >= 1 or null`` -> ``an integer >= 1, or null``."""
    if rule.endswith(" or null"):
        return describe(rule[: -len(" or null")]) + ", or null"
    if rule.endswith(" or auto"):
        return describe(rule[: -len(" or auto")]) + ", or auto"
    if rule.startswith("list of "):
        return "a list of " + describe(rule[len("list of "):]).split(" ", 1)[1].replace("integer", "integers")
    if rule.startswith("one of "):  # "linear or constant", "online, offline or disabled"
        *first, last = options(rule)
        return f"{', '.join(first)} or {last}" if first else last
    kind, _, bound = rule.partition(" ")
    words = {"int": "an integer", "number": "a number", "bool": "true or false", "str": "a string",
             "tag": "a name of letters, digits, '.', '_', '-' (no path separator, no '..')",
             "device": "auto, cpu, cuda or cuda:<n>"}[kind]
    return f"{words} {bound}" if bound else words
