"""Full fine-tuning: every parameter of the backbone and the head trains (Table 2, 'Full FT').

Every weight differs per run, so runs of full fine-tuning are not stacked (``stacks = False``: one run per model;
several seeds train side by side, ``dynrank.driver``)."""
from .base import Method


class Full(Method):
    name = "full"
    stacks = False

    def wrap(self, model):
        for p in model.parameters():
            p.requires_grad = True
        self.model = model
        return model


METHOD = Full
