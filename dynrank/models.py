"""Backbones and tokenizers: from the Hub, from a local directory, or tiny ones built from a config.

Also the map from a backbone's module names to the paper's matrix types (query, key, value,
attention output, FFN up, FFN down) that every adapter method targets.
"""
from __future__ import annotations

import logging
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import hub
from .errors import ConfigError

log = logging.getLogger("dynrank")
ASSETS = Path(__file__).resolve().parent / "assets"
TINY_TOKENIZER = ASSETS / "tiny_tokenizer"

# The paper's six matrix types per layer, in Figure 2's row order.
MATRIX_TYPES = ("query", "key", "value", "attn_out", "ffn_up", "ffn_down")

# Module-name patterns per backbone family. Each pattern captures the layer label.
_ENC = r"(?:^|\.)layer\.(\d+)\."
TARGETS = {
    "roberta": {
        "query": _ENC + r"attention\.self\.query$",
        "key": _ENC + r"attention\.self\.key$",
        "value": _ENC + r"attention\.self\.value$",
        "attn_out": _ENC + r"attention\.output\.dense$",
        "ffn_up": _ENC + r"intermediate\.dense$",
        "ffn_down": _ENC + r"output\.dense$",
    },
    # BART: encoder and decoder layers, self-attention and (decoder) cross-attention, as PEFT's
    # target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"] selects them.
    "bart": {
        "query": r"(encoder|decoder)\.layers\.(\d+)\.(?:self_attn|encoder_attn)\.q_proj$",
        "key": r"(encoder|decoder)\.layers\.(\d+)\.(?:self_attn|encoder_attn)\.k_proj$",
        "value": r"(encoder|decoder)\.layers\.(\d+)\.(?:self_attn|encoder_attn)\.v_proj$",
        "attn_out": r"(encoder|decoder)\.layers\.(\d+)\.(?:self_attn|encoder_attn)\.out_proj$",
        "ffn_up": r"(encoder|decoder)\.layers\.(\d+)\.fc1$",
        "ffn_down": r"(encoder|decoder)\.layers\.(\d+)\.fc2$",
    },
}
TARGETS["bert"] = TARGETS["roberta"]

# Parameters that train with every method: the task head (trained fully, as in the paper).
HEAD_PREFIXES = ("classifier", "qa_outputs", "classification_head")


@dataclass(frozen=True)
class Target:
    """One adapted matrix: its module name, the paper's matrix type and its layer label."""

    name: str
    module: nn.Linear
    matrix_type: str
    layer: str  # "3" for encoders; "enc.3" / "dec.3" for encoder-decoders


def find_targets(model: nn.Module, family: str) -> list[Target]:
    patterns = TARGETS.get(family)
    if patterns is None:
        raise ConfigError(f"unknown model family '{family}'; known: {', '.join(TARGETS)}")
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        for mtype, pat in patterns.items():
            m = re.search(pat, name)
            if m:
                g = m.groups()
                layer = g[0] if len(g) == 1 else f"{g[0][:3]}.{g[1]}"
                if family == "bart" and "encoder_attn" in name:
                    mtype = "cross_" + mtype
                found.append(Target(name, module, mtype, layer))
                break
    if not found:
        raise ConfigError(f"no target modules found for family '{family}' in {type(model).__name__}")
    return found


def is_head(param_name: str) -> bool:
    return param_name.split(".")[0] in HEAD_PREFIXES


def load_tokenizer(mcfg):
    from transformers import AutoTokenizer

    if mcfg.get("tiny"):
        return AutoTokenizer.from_pretrained(str(TINY_TOKENIZER))
    src = hub.model_source(mcfg)
    try:
        return AutoTokenizer.from_pretrained(src, **hub.pretrained_kwargs(src))
    except (OSError, ValueError) as e:
        raise ConfigError(_load_failure("tokenizer", src, e)) from None


def _load_failure(what: str, src: str, e: Exception) -> str:
    hint = " (HF_HUB_OFFLINE is set)" if hub.offline() else ""
    return (f"could not load the {what} '{src}'{hint}: {str(e).splitlines()[0]}; "
            "pass model.path=/local/model/dir or make the Hub reachable")


def build_tiny_config(mcfg, family: str, vocab_size: int):
    from transformers import BartConfig, RobertaConfig

    t = dict(mcfg.tiny)
    if family == "bart":
        return BartConfig(vocab_size=vocab_size, d_model=t["hidden_size"], encoder_layers=t["num_hidden_layers"],
                          decoder_layers=t["num_hidden_layers"], encoder_attention_heads=t["num_attention_heads"],
                          decoder_attention_heads=t["num_attention_heads"], encoder_ffn_dim=t["intermediate_size"],
                          decoder_ffn_dim=t["intermediate_size"], max_position_embeddings=1026,
                          pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                          forced_eos_token_id=2)
    return RobertaConfig(vocab_size=vocab_size, hidden_size=t["hidden_size"],
                         num_hidden_layers=t["num_hidden_layers"], num_attention_heads=t["num_attention_heads"],
                         intermediate_size=t["intermediate_size"], max_position_embeddings=514,
                         pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1)


def load_model(mcfg, auto_class, tokenizer=None, **config_kwargs) -> nn.Module:
    """``auto_class`` is e.g. AutoModelForSequenceClassification; config_kwargs e.g. num_labels=2."""
    if mcfg.get("tiny"):
        config = build_tiny_config(mcfg, mcfg.family, len(tokenizer))
        for k, v in config_kwargs.items():
            setattr(config, k, v)
        with torch.random.fork_rng(devices=[]):  # the same random backbone for every seed, as a pre-trained one is
            torch.manual_seed(0)
            return auto_class.from_config(config)
    src = hub.model_source(mcfg)
    safe = {"use_safetensors": True} if mcfg.get("path") else {}  # a local directory: never a pickle (weights.py)
    try:
        with quiet_transformers():
            model, info = auto_class.from_pretrained(src, dtype=torch.float32, output_loading_info=True, **safe,
                                                     **hub.pretrained_kwargs(src), **config_kwargs)
    except (OSError, ValueError) as e:
        raise ConfigError(_load_failure("model", src, e)) from None
    report_loading(src, info)
    return model


@contextmanager
def quiet_transformers():
    """transformers' load report (a table on every load: "classifier MISSING"), its progress bars (loading and
    writing weights) and FutureWarnings from transformers and PEFT (deprecations inside those libraries, nothing a
    user can act on) off for the block; ``report_loading`` says what the report said that matters, once."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


_reported = set()


def report_loading(src: str, info: dict) -> None:
    """What a checkpoint did not hold or held in excess (``from_pretrained``'s loading info), once per process and
    model: a new task head is expected (it trains with every method); other missing weights start random: a warning."""
    if src in _reported:
        return
    _reported.add(src)
    missing, unused = sorted(info.get("missing_keys") or ()), sorted(info.get("unexpected_keys") or ())
    if other := [k for k in missing if not is_head(k)]:
        log.warning("%s: %d weights are not in the checkpoint and start random: %s", src, len(other), _some(other))
    head = [k for k in missing if is_head(k)]
    log.info("loaded %s%s%s", src, f"; new task head: {_some(head)}" if head else "",
             f"; {len(unused)} checkpoint weights unused: {_some(unused)}" if unused else "")


def _some(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")
