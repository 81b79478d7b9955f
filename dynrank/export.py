"""Write adapters in HF PEFT's formats (LoRA; AdaLoRA), loadable with ``peft.PeftModel.from_pretrained``.

Used by lora, dora (with per-module ``rank_pattern``/``alpha_pattern``) and dora_wd (``use_dora``); adalora writes
PEFT's AdaLoRA format (``save_peft_adalora``).
``base_name`` gives the base model an adapter records (``base_model_name_or_path``) so that it loads from any
directory: a Hub id, an absolute path, or, for a model that exists nowhere else (``model=tiny``, built from a
config), the base saved beside the adapter (``<adapter>/base_model``).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .models import HEAD_PREFIXES, is_head, quiet_transformers
from .results import atomic_write_text, save_tensors, umask_mode

TASK_TYPES = {"seq_cls": "SEQ_CLS", "qa": "QUESTION_ANS", "seq2seq": "SEQ_2_SEQ_LM"}
BASE_DIR = "base_model"  # <adapter>/base_model: the base of a model built from a config (model=tiny)


def base_name(mcfg, model, task, adapter_dir, run: dict | None = None) -> str:
    """What the adapter records as its base: the absolute ``model.path``, the Hub id, or (tiny models, built from a
    config with random weights) the base saved now in ``<adapter_dir>/base_model`` with its tokenizer."""
    if mcfg.get("tiny"):
        return str(save_base(model, task, Path(adapter_dir) / BASE_DIR, run).resolve())
    if mcfg.get("path"):
        return str(Path(str(mcfg.path)).resolve())
    return str(mcfg.name)


@torch.no_grad()
def save_base(model, task, out_dir, run: dict | None = None) -> Path:
    """The frozen backbone of the wrapped ``model`` as a plain HF model (``save_pretrained``) with the tokenizer.

    Every method keeps the original ``nn.Linear`` of an adapted matrix as ``<name>.base``: its weights, and every
    other frozen weight, are copied into a model of the same architecture (``task.build_model()``); ``run``: one
    run's trainable tensors by name (``Method.run_params(k)``), which replace the stacked ones."""
    base = task.build_model()
    trained = {k.replace(".base.", "."): v for k, v in {**model.state_dict(), **(run or {})}.items()}
    base.load_state_dict({k: trained[k].float() for k in base.state_dict()})
    out = Path(out_dir)
    with quiet_transformers():  # no "Writing model shards" bar
        base.save_pretrained(str(out))
    for f in out.glob("*.safetensors"):  # transformers writes the weights through safetensors: 0600
        umask_mode(f)
    task.tokenizer.save_pretrained(str(out))
    return out


def save_peft_lora(out_dir, model, base_name: str, task_type: str, adapters: dict[str, dict],
                   use_dora: bool = False, head: dict | None = None) -> Path:
    """``adapters[module_name] = {"A": (r, d_in), "B": (d_out, r), "alpha": float[, "magnitude": (d_out,)]}``,
    ``head[param_name]`` the task head's tensors (one run's: ``Method.head(k)``; default: the model's own).

    The scaling PEFT applies is alpha / r per module; ``alpha`` must be chosen so that equals the
    method's own scaling. Modules of different rank are written with ``rank_pattern`` and
    ``alpha_pattern`` keyed by the full module name.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors, ranks, alphas = {}, {}, {}
    for name, a in adapters.items():
        A, B = a["A"].detach().float().contiguous(), a["B"].detach().float().contiguous()
        tensors[f"base_model.model.{name}.lora_A.weight"] = A
        tensors[f"base_model.model.{name}.lora_B.weight"] = B
        if use_dora:
            tensors[f"base_model.model.{name}.lora_magnitude_vector"] = a["magnitude"].detach().float().contiguous()
        ranks[name] = int(A.shape[0])
        alphas[name] = float(a["alpha"])
    tensors.update(_head_tensors(model, head))
    ranks_used = sorted(set(ranks.values())) or [0]
    r_default = max(ranks_used)
    config = {
        "peft_type": "LORA", "task_type": TASK_TYPES[task_type], "base_model_name_or_path": base_name,
        "r": r_default, "lora_alpha": alphas[next(iter(alphas))] if alphas else 8,
        "target_modules": sorted(adapters), "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "modules_to_save": _modules_to_save(model), "rank_pattern": ranks, "alpha_pattern": alphas,
        "use_dora": use_dora, "use_rslora": False, "init_lora_weights": True, "inference_mode": True,
    }
    # PEFT rejects rank 0: a module whose components were all pruned is simply not targeted.
    save_tensors(tensors, out / "adapter_model.safetensors")
    atomic_write_text(out / "adapter_config.json", json.dumps(config, indent=2))
    return out


def save_peft_adalora(out_dir, model, base_name: str, task_type: str, adapters: dict[str, dict], config: dict,
                      head: dict | None = None) -> Path:
    """PEFT's AdaLoRA format: ``adapters[module_name] = {"A": Q (r, d_in), "E": lambda (r, 1), "B": P (d_out, r)}``
    holding the surviving triplets, ``config`` the ``AdaLoraConfig`` fields of the method (``init_r``, ``target_r``,
    ``lora_alpha``, the schedule, ``rank_pattern``: ``{"<module>.lora_E": [kept] * init_r}`` or None), ``head`` as
    ``save_peft_lora``'s."""
    from peft import AdaLoraConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"base_model.model.{name}.lora_{key}": a[key].detach().float().cpu().contiguous()
               for name, a in adapters.items() for key in ("A", "E", "B")}
    tensors.update(_head_tensors(model, head))
    AdaLoraConfig(task_type=TASK_TYPES[task_type], base_model_name_or_path=base_name or None,
                  target_modules=list(adapters), lora_dropout=0.0, inference_mode=True,
                  modules_to_save=_modules_to_save(model), **config).save_pretrained(str(out))
    save_tensors(tensors, out / "adapter_model.safetensors")
    return out


def _head_tensors(model, head: dict | None) -> dict[str, torch.Tensor]:
    """The task head's tensors under PEFT's names (``head``: one run's; default: the model's own)."""
    if head is None:
        head = {n: p for n, p in model.named_parameters() if is_head(n)}
    return {f"base_model.model.{n}": p.detach().float().cpu().contiguous().clone() for n, p in head.items()}


def _modules_to_save(model) -> list[str]:
    return [p for p in HEAD_PREFIXES if any(n.startswith(p + ".") for n, _ in model.named_parameters())]


@torch.no_grad()
def merged_delta(A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """Delta W = scaling * B A, to fold into the frozen weight for inference at no extra cost."""
    return scaling * (B.float() @ A.float())
