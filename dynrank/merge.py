"""Fold an exported PEFT LoRA adapter into its base model: a plain HF model, no inference overhead.

    python -m dynrank.merge <adapter_dir> --out <dir> [--base <model name or local path>]

``<adapter_dir>`` is what ``train.export=true`` writes to ``<run dir>/adapter`` (lora, dora, ...):
``adapter_config.json`` + ``adapter_model.safetensors``. The base model defaults to the adapter's
``base_model_name_or_path``; the model class follows the adapter's task type (sequence classification,
question answering, seq2seq LM) and the number of labels is read from the saved head. The merged model
(``W0 + alpha_m / r_m * B A`` in every adapted matrix, the trained head in place) is written with
``save_pretrained`` together with the base's tokenizer when one can be loaded.

``--out`` must not exist yet (or be an empty directory): the merged model is written to a hidden directory beside
it, ``.<out>.merging-<pid>``, and renamed to ``--out`` once complete, so a killed merge leaves no half-written
``--out``; what a killed merge left behind is removed by the next merge to the same ``--out``. A damaged adapter
(its config not JSON, its weights truncated) or ``--out`` an existing file is one line before anything is merged;
Ctrl-C is one line and exit status 130, as in training, with nothing left at or beside ``--out``.

From Python (tests, in-memory bases): ``merge_adapter(adapter_dir, base_model)`` returns the merged model.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from . import hub
from .config import check_writable
from .errors import ConfigError, DynrankError
from .models import quiet_transformers
from .results import umask_mode
from .train import INTERRUPTED
from .weights import check_file, check_model_dir

WEIGHTS = "adapter_model.safetensors"

AUTO_CLASSES = {"SEQ_CLS": "AutoModelForSequenceClassification", "QUESTION_ANS": "AutoModelForQuestionAnswering",
                "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM"}


def read_config(adapter_dir) -> dict:
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise ConfigError(f"no adapter_config.json in {adapter_dir} (pass the 'adapter' folder an export wrote)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); export the adapter again (train.export=true)") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} is not a JSON object; export the adapter again (train.export=true)")
    return cfg


def check_adapter(adapter_dir) -> dict:
    """The adapter's config, once its weights are known to be a complete safetensors file (pickled weights,
    ``adapter_model.bin``, are never loaded: unpickling can run code)."""
    cfg = read_config(adapter_dir)
    weights = Path(adapter_dir) / WEIGHTS
    if not weights.is_file():
        pickled = " (adapter_model.bin is pickled, which dynrank does not load)" if (
            Path(adapter_dir) / "adapter_model.bin").exists() else ""
        raise ConfigError(f"no {WEIGHTS} in {adapter_dir}{pickled}; export the adapter again (train.export=true)")
    check_file(weights, "export the adapter again (train.export=true)")
    return cfg


def merge_adapter(adapter_dir, base_model: nn.Module) -> nn.Module:
    """PeftModel.from_pretrained(base_model, adapter_dir).merge_and_unload(); modifies ``base_model``."""
    from peft import PeftModel

    check_adapter(adapter_dir)
    try:
        with quiet_transformers():
            peft_model = PeftModel.from_pretrained(base_model, str(adapter_dir))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # a config PEFT cannot read, weights of other shapes
        raise ConfigError(f"could not load the adapter {adapter_dir} onto its base ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0]}); export the adapter again, or pass the --base it was "
                          "trained on") from None
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
    if Path(base).is_dir():  # a local base: complete safetensors weights, never a pickle
        check_model_dir(base, "--base")
        kwargs["use_safetensors"] = True
    try:
        with quiet_transformers():
            return getattr(transformers, cls_name).from_pretrained(base, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as e:
        raise ConfigError(f"could not load the base model '{base}': {str(e).splitlines()[0]}; "
                          "pass --base /local/model/dir") from None


def merge(adapter_dir, out_dir, base: str | None = None, base_model: nn.Module | None = None) -> nn.Module:
    """Merge and save; ``base_model`` (in memory) wins over ``base`` (name or path)."""
    out = Path(out_dir)
    check_out(out)
    cfg = check_adapter(adapter_dir)  # before the base loads (merge_adapter checks again, for in-memory callers)
    model = base_model if base_model is not None else load_base(adapter_dir, base)
    merged = merge_adapter(adapter_dir, model)
    src = base or cfg.get("base_model_name_or_path")
    with staged(out) as tmp:
        with quiet_transformers():
            merged.save_pretrained(str(tmp))
        for f in tmp.glob("*.safetensors"):  # transformers writes the weights through safetensors: 0600
            umask_mode(f)
        if src and base_model is None:
            try:
                from transformers import AutoTokenizer

                AutoTokenizer.from_pretrained(src, **hub.pretrained_kwargs(src)).save_pretrained(str(tmp))
            except Exception:  # noqa: BLE001 - a tokenizer is a convenience, not required for the weights
                pass
    return merged


def check_out(out: Path) -> None:
    """``--out`` is a directory to be created (or an empty one): a merge never writes into or over other files."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; pass a directory that does not exist yet")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not empty; remove it or pass another directory")
    check_writable("--out", out)


@contextmanager
def staged(out: Path):
    """A hidden directory beside ``out`` to write the merged model into, renamed to ``out`` when the block ends
    (an empty ``out`` is replaced) and removed when it fails; those a killed merge into ``out`` left are removed
    first (a live merge's, named by its pid, is left alone)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out.name}.merging-"
    for old in out.parent.glob(prefix + "*"):
        pid = old.name[len(prefix):]
        if not pid.isdigit() or int(pid) == os.getpid() or not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    tmp = out.parent / f"{prefix}{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
        os.replace(tmp, out)  # rename(2): atomic, and onto an empty directory too
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


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
    except KeyboardInterrupt:  # what was written so far went with the staged directory (``staged``)
        print(f"interrupted (Ctrl-C): nothing was written to {args.out}; run the command again to merge",
              file=sys.stderr, flush=True)
        return INTERRUPTED
    print(f"merged model written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
