"""Weight files on disk (``model.path``, the adapters and bases ``dynrank.merge`` reads): a damaged safetensors
file or pickled weights are one line naming the file, before anything loads them.

Pickled weights (``pytorch_model.bin`` and the like) are never loaded: unpickling a file can run code from it.
"""
from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def damage(path) -> str | None:
    """Why ``path`` is not a complete safetensors file (truncated, not safetensors at all); None where it is.

    safetensors reads the header and checks that the tensors it lists cover the file: nothing is loaded."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy"):
            return None
    except (SafetensorError, OSError) as e:
        return str(e).splitlines()[0]


def check_file(path, hint: str) -> None:
    """A ``ConfigError`` naming ``path`` where it is a damaged safetensors file; ``hint``: what to do then."""
    if why := damage(path):
        raise ConfigError(f"{path} is damaged ({why}); {hint}")


def check_model_dir(path, key: str = "model.path") -> None:
    """A local model directory (``key`` names the option it came from) holds complete safetensors weights, not
    pickled ones only. A directory without any weights is left to transformers' own error."""
    d = Path(str(path))
    if not d.is_dir():
        return
    weights = sorted(d.glob("*.safetensors"))
    for w in weights:
        check_file(w, f"copy or download the model again, or set {key} to another directory")
    if not weights and (pickles := sorted(p.name for pattern in PICKLES for p in d.glob(pattern))):
        raise ConfigError(f"{d} holds pickled weights only ({', '.join(pickles)}), which dynrank does not load "
                          "(unpickling runs code from the file); save the model as safetensors where you trust it "
                          f"(save_pretrained(dir, safe_serialization=True)), or set {key} to a directory with a "
                          "model.safetensors")
