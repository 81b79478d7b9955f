"""BitFit (Ben Zaken et al., 2022): only the bias terms train, plus the task head.

Which biases count: every ``*.bias`` of the backbone, i.e. the attention q/k/v/output biases, the
FFN biases and the LayerNorm biases (embeddings and each layer). On RoBERTa-base that is
102,144 parameters: the paper's 0.10M.
"""
from .base import Method, freeze_all_but_head


class BitFit(Method):
    name = "bitfit"

    def wrap(self, model):
        freeze_all_but_head(model)
        for n, p in model.named_parameters():
            if n.endswith(".bias"):
                p.requires_grad = True
        self.model = model
        return model


METHOD = BitFit
