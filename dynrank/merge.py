"""Fold an exported PEFT LoRA adapter into its base model: a plain HF model, no inference overhead.

    python -m dynrank.merge <adapter_dir> --out <dir> [--base <model name or local path>]

``<adapter_dir>`` is what ``train.export=true`` writes to ``<run dir>/adapter`` (lora, dora, ...):
``adapter_config.json`` + ``adapter_model.safetensors``. The base model defaults to the adapter's
``base_model_name_or_path``; the model class follows the adapter's task type (sequence classification,
question answering, seq2seq LM) and the number of labels is read from the saved head. The merged model
(``W0 + alpha_m / r_m * B A`` in every adapted matrix, the trained head in place) is written with
``save_pretrained`` together with the base's tokenizer when one can be loaded.

From Python (tests, in-memory bases): ``merge_adapter(adapter_dir, base_model)`` returns the merged model.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from torch import nn

from . import hub
from .errors import ConfigError, DynrankError
from .results import umask_mode

AUTO_CLASSES = {"SEQ_CLS": "AutoModelForSequenceClassification", "QUESTION_ANS": "AutoModelForQuestionAnswering",
                "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM"}


def read_config(adapter_dir) -> dict:
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise ConfigError(f"no adapter_config.json in {adapter_dir} (pass the 'adapter' folder an export wrote)")
    return json.loads(path.read_text())


def merge_adapter(adapter_dir, base_model: nn.Module) -> nn.Module:
    """PeftModel.from_pretrained(base_model, adapter_dir).merge_and_unload(); modifies ``base_model``."""
    from peft import PeftModel

    read_config(adapter_dir)
    peft_model = PeftModel.from_pretrained(base_model, str(adapter_dir))
    return peft_model.merge_and_unload()


def _num_labels(adapter_dir) -> int | None:
    """Rows of the head's last linear layer, as saved with the adapter."""
    from safetensors import safe_open

    from .models import HEAD_PREFIXES

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        return None
    rows = []
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():
            inner = k.removeprefix("base_model.model.")
            if inner.split(".")[0] in HEAD_PREFIXES and k.endswith(".weight"):
                shape = f.get_slice(k).get_shape()
                if len(shape) == 2:
                    rows.append((k.endswith("out_proj.weight") or inner.count(".") == 1, shape[0]))
    if not rows:
        return None
    return min(n for last, n in rows if last) if any(last for last, _ in rows) else min(n for _, n in rows)


def load_base(adapter_dir, base: str | None = None) -> nn.Module:
    """The base model the adapter was trained on, as the class its task type needs."""
    import torch
    import transformers

    cfg = read_config(adapter_dir)
    base = base or cfg.get("base_model_name_or_path")
    if not base:
        raise ConfigError("the adapter names no base model; pass --base <model name or path>")
    cls_name = AUTO_CLASSES.get(cfg.get("task_type"))
    if cls_name is None:
        raise ConfigError(f"unsupported adapter task_type {cfg.get('task_type')!r}; known: {', '.join(AUTO_CLASSES)}")
    kwargs = {}
    if cls_name == "AutoModelForSequenceClassification":
        n = _num_labels(adapter_dir)
        if n:
            kwargs["num_labels"] = n
            if n == 1:
                kwargs["problem_type"] = "regression"
    kwargs.update(hub.pretrained_kwargs(base, hint="pass --base /local/model/dir"))
    try:
        return getattr(transformers, cls_name).from_pretrained(base, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as e:
        raise ConfigError(f"could not load the base model '{base}': {str(e).splitlines()[0]}; "
                          "pass --base /local/model/dir") from None


def merge(adapter_dir, out_dir, base: str | None = None, base_model: nn.Module | None = None) -> nn.Module:
    """Merge and save; ``base_model`` (in memory) wins over ``base`` (name or path)."""
    model = base_model if base_model is not None else load_base(adapter_dir, base)
    merged = merge_adapter(adapter_dir, model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out))
    for f in out.glob("*.safetensors"):  # transformers writes the weights through safetensors: 0600
        umask_mode(f)
    src = base or read_config(adapter_dir).get("base_model_name_or_path")
    if src and base_model is None:
        try:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(src, **hub.pretrained_kwargs(src)).save_pretrained(str(out))
        except Exception:  # noqa: BLE001 - a tokenizer is a convenience, not required for the weights
            pass
    return merged


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dynrank.merge", description=__doc__.split("\n\n")[0])
    ap.add_argument("adapter_dir", help="exported PEFT adapter folder (<run dir>/adapter)")
    ap.add_argument("--out", required=True, help="where to write the merged model")
    ap.add_argument("--base", default=None, help="base model name or local path (default: the adapter's own)")
    args = ap.parse_args(argv)
    try:
        merge(args.adapter_dir, args.out, base=args.base)
    except DynrankError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(f"merged model written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
