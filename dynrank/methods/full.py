"""Full fine-tuning: every parameter of the backbone and the head trains (Table 2, 'Full FT').

Stacked (RoBERTa): every weight is one per run, each run starting from the pre-trained one, so the
runs of a command train as one model as every other method's do: each linear layer a batched GEMM over the runs'
own weights (``layers.PretrainedRunLinear``), each layer norm and embedding table one per run (``RunLayerNorm``,
``RunEmbedding``), the head one per run (``finish_wrap``). A run computes what it computes alone
(``tests/test_stack.py``). Elsewhere one run per model (``stacks_on``; several seeds train side by side,
``dynrank.driver``): BART ties its token embeddings to its LM head, and BERT's embeddings look positions up in a
buffer broadcast over the batch, which has no run dimension."""
from torch import nn

from ..models import is_head
from .base import Method
from .layers import PretrainedRunLinear, RunEmbedding, RunLayerNorm


class Full(Method):
    name = "full"

    @classmethod
    def stacks_on(cls, family: str) -> bool:
        return family == "roberta"

    def wrap(self, model):
        for p in model.parameters():
            p.requires_grad = True
        if not self.stacks:
            self.model = model
            return model
        for name, m in list(model.named_modules()):
            if not name or is_head(name):
                continue
            run = (PretrainedRunLinear.like(m, self.runs) if type(m) is nn.Linear else
                   RunLayerNorm(m, self.runs) if type(m) is nn.LayerNorm else
                   RunEmbedding(m, self.runs) if type(m) is nn.Embedding else None)
            if run is not None:
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, run)
        kinds = (PretrainedRunLinear, RunLayerNorm, RunEmbedding)
        stray = [n for n, _ in model.named_parameters()
                 if not is_head(n) and not isinstance(model.get_submodule(n.rpartition(".")[0]), kinds)]
        if stray:  # a weight outside the three kinds above (a custom module's): it cannot be one per run
            raise ValueError(f"full fine-tuning: no per-run copy of {', '.join(stray[:3])}; train.stack=false")
        return self.finish_wrap(model)


METHOD = Full
