"""Full fine-tuning: every parameter of the backbone and the head trains (Table 2, 'Full FT')."""
from .base import Method


class Full(Method):
    name = "full"

    def wrap(self, model):
        for p in model.parameters():
            p.requires_grad = True
        self.model = model
        return model


METHOD = Full
