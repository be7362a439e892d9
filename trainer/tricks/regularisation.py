"""Regularisation: dropout rates for the model, loss-side penalties and label smoothing.

One config node holds every field so they combine by override
(`regularisation=dropout regularisation.l1=1e-5`). The penalties apply to the weight
matrices and kernels only, not to biases or normalisation parameters, the same rule the
optimizer uses for weight decay.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer.errors import ConfigError


@dataclass(frozen=True)
class Regularisation:
    """Args:
        dropout: probability of zeroing a hidden activation in training (Srivastava et al. 2014).
        input_dropout: the same for the inputs; the original paper used 0.2 there and 0.5 inside.
        l1: weight of the L1 penalty sum|w| added to the loss (drives weights to exactly zero).
        l2: coupled weight decay: (l2 / 2) * sum w^2 added to the loss, so the gradient gains
            l2 * w and adaptive optimizers rescale it (unlike AdamW's decoupled decay).
        label_smoothing: mass moved from the true class to all classes uniformly (Szegedy et al. 2016).
    """

    dropout: float = 0.0
    input_dropout: float = 0.0
    l1: float = 0.0
    l2: float = 0.0
    label_smoothing: float = 0.0

    def penalty(self, model: nn.Module) -> "Penalty":
        weights = [p for p in model.parameters() if p.ndim >= 2]
        return Penalty(weights, self.l1, self.l2)

    def criterion(self, task: str) -> nn.Module:
        """The training loss; evaluation always uses the plain, unsmoothed loss."""
        if task == "regression":
            if self.label_smoothing:
                raise ConfigError(
                    f"regularisation.label_smoothing={self.label_smoothing} needs a classification task; set it to 0"
                )
            return nn.MSELoss()
        return nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)


class Penalty:
    """Adds the L1 and coupled L2 terms to the loss; with both at zero it returns the loss untouched."""

    def __init__(self, weights: list[torch.Tensor], l1: float, l2: float) -> None:
        self.weights, self.l1, self.l2 = weights, l1, l2

    def __call__(self, loss: torch.Tensor) -> torch.Tensor:
        if self.l1:
            loss = loss + self.l1 * sum(w.abs().sum() for w in self.weights)
        if self.l2:
            loss = loss + 0.5 * self.l2 * sum(w.pow(2).sum() for w in self.weights)
        return loss


def build(dropout: float = 0.0, input_dropout: float = 0.0, l1: float = 0.0, l2: float = 0.0,
          label_smoothing: float = 0.0) -> Regularisation:
    """Builder named by conf/regularisation/*.yaml."""
    for key, p in (("dropout", dropout), ("input_dropout", input_dropout)):
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"regularisation.{key}={p} must be in [0, 1)")
    for key, weight in (("l1", l1), ("l2", l2)):
        if weight < 0:
            raise ConfigError(f"regularisation.{key}={weight} must be >= 0")
    if not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"regularisation.label_smoothing={label_smoothing} must be in [0, 1)")
    return Regularisation(dropout, input_dropout, l1, l2, label_smoothing)
