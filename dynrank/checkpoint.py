"""End-of-epoch checkpoints for resume: safetensors for tensors, JSON for the rest, swapped in atomically.

``<run_dir>/checkpoint/`` holds ``tensors.safetensors`` (trainable parameters, optimizer state,
method state such as EMAs and masks, torch RNG states) and ``state.json`` (epoch, history,
scheduler, Python/NumPy RNG, a fingerprint of the config). A kill at any moment leaves either the
previous checkpoint or the new one, never a mix.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .errors import TrainingError
from .results import atomic_write_text, _jsonable

NAME = "checkpoint"


def _flatten_optimizer(opt_state: dict) -> tuple[dict, dict]:
    tensors, meta = {}, {"param_groups": opt_state["param_groups"], "state": {}}
    for idx, st in opt_state["state"].items():
        meta["state"][str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = v.detach().contiguous()
            else:
                meta["state"][str(idx)][k] = v
    return tensors, meta


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state = {int(i): dict(extra) for i, extra in meta["state"].items()}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, k = key.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save(run_dir, *, model, optimizer, scheduler, method, epoch: int, step: int, history: list,
         fingerprint: str, extra: dict | None = None) -> Path:
    run_dir = Path(run_dir)
    final, tmp, old = run_dir / NAME, run_dir / (NAME + ".tmp"), run_dir / (NAME + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {f"model.{n}": p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    tensors.update({f"method.{k}": v.detach().contiguous() for k, v in method.state_dict().items()})
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp / "tensors.safetensors"))
    np_state = np.random.get_state()
    state = {
        "epoch": epoch, "step": step, "history": history, "fingerprint": fingerprint,
        "optimizer": opt_meta, "scheduler": scheduler.state_dict(),
        "rng_python": random.getstate(), "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "extra": extra or {},
    }
    atomic_write_text(tmp / "state.json", json.dumps(state, default=_jsonable))
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def exists(run_dir) -> bool:
    run_dir = Path(run_dir)
    return (run_dir / NAME / "state.json").exists() or (run_dir / (NAME + ".old") / "state.json").exists()


def load(run_dir, *, model, optimizer, scheduler, method, fingerprint: str, device) -> dict:
    """Restore everything ``save`` wrote; returns the JSON state (epoch, step, history, extra)."""
    run_dir = Path(run_dir)
    path = run_dir / NAME
    if not (path / "state.json").exists():  # killed between the two renames: the old one is whole
        path = run_dir / (NAME + ".old")
    with open(path / "state.json") as f:
        state = json.load(f)
    if state["fingerprint"] != fingerprint:
        raise TrainingError(f"the checkpoint in {path} was made with a different config; "
                            "delete it or pass train.resume=false to start over")
    tensors = load_file(str(path / "tensors.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in tensors.items():
            if k.startswith("model."):
                params[k[6:]].copy_(v)
    opt = _unflatten_optimizer({k: v.to(device) for k, v in tensors.items() if k.startswith("optim.")},
                               state["optimizer"])
    optimizer.load_state_dict(opt)
    scheduler.load_state_dict(state["scheduler"])
    method.load_state_dict({k[7:]: v.to(device) for k, v in tensors.items() if k.startswith("method.")})
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    py = state["rng_python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["rng_numpy"]
    np.random.set_state((npst[0], np.array(npst[1], dtype=np.uint32), *npst[2:]))
    return state
