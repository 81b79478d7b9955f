"""Write adapters in HF PEFT's LoRA format, loadable with ``peft.PeftModel.from_pretrained``.

Used by lora, dora (with per-module ``rank_pattern``/``alpha_pattern``) and dora_wd (``use_dora``).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .models import HEAD_PREFIXES, is_head
from .results import atomic_write_text, save_tensors

TASK_TYPES = {"seq_cls": "SEQ_CLS", "qa": "QUESTION_ANS", "seq2seq": "SEQ_2_SEQ_LM"}


def save_peft_lora(out_dir, model, base_name: str, task_type: str, adapters: dict[str, dict],
                   use_dora: bool = False) -> Path:
    """``adapters[module_name] = {"A": (r, d_in), "B": (d_out, r), "alpha": float[, "magnitude": (d_out,)]}``.

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
    for n, p in model.named_parameters():
        if is_head(n):
            tensors[f"base_model.model.{n}"] = p.detach().float().contiguous().clone()
    ranks_used = sorted(set(ranks.values())) or [0]
    r_default = max(ranks_used)
    config = {
        "peft_type": "LORA", "task_type": TASK_TYPES[task_type], "base_model_name_or_path": base_name,
        "r": r_default, "lora_alpha": alphas[next(iter(alphas))] if alphas else 8,
        "target_modules": sorted(adapters), "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
        "modules_to_save": [p for p in HEAD_PREFIXES if any(n.startswith(p + ".") for n, _ in model.named_parameters())],
        "rank_pattern": ranks, "alpha_pattern": alphas,
        "use_dora": use_dora, "use_rslora": False, "init_lora_weights": True, "inference_mode": True,
    }
    # PEFT rejects rank 0: a module whose components were all pruned is simply not targeted.
    save_tensors(tensors, out / "adapter_model.safetensors")
    atomic_write_text(out / "adapter_config.json", json.dumps(config, indent=2))
    return out


@torch.no_grad()
def merged_delta(A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """Delta W = scaling * B A, to fold into the frozen weight for inference at no extra cost."""
    return scaling * (B.float() @ A.float())
