"""BitFit (Ben Zaken et al., 2022): only the bias terms train, plus the task head.

Which biases count: every ``*.bias`` of the backbone, i.e. the attention q/k/v/output biases, the
FFN biases and the LayerNorm biases (embeddings and each layer). On RoBERTa-base that is
102,144 parameters: the paper's 0.10M. Each bias becomes one per run (``layers.RunBias``: the frozen module
without its bias, plus run k's bias on run k's rows), every run starting from the pre-trained bias.
"""
from torch import nn

from ..models import is_head
from .base import Method, freeze_all_but_head
from .layers import RunBias


class BitFit(Method):
    name = "bitfit"

    def wrap(self, model):
        freeze_all_but_head(model)
        owners = [(name, m) for name, m in model.named_modules()
                  if name and not is_head(name) and isinstance(getattr(m, "bias", None), nn.Parameter)]
        unknown = [name for name, m in owners if not isinstance(m, (nn.Linear, nn.LayerNorm))]
        if unknown:  # a bias RunBias cannot add after the module (e.g. inside a custom kernel)
            raise ValueError(f"BitFit: no per-run bias for {', '.join(unknown[:3])} ({type(owners[0][1]).__name__})")
        for name, m in owners:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, RunBias(m, self.runs))
        self.finish_wrap(model)
        return model


METHOD = BitFit
