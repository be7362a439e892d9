"""Multi-layer perceptron: flatten, `depth` x (Linear -> norm -> activation -> dropout), head."""
from __future__ import annotations

from math import prod

from torch import nn

from trainer.models import Net, check_args, check_at_least, dropout_layers
from trainer.models.activations import make_activation
from trainer.tricks.norm import NormFactory


def build(
    *,
    input_shape: tuple[int, ...],
    num_outputs: int,
    norm: NormFactory,
    dropout: float,
    input_dropout: float,
    activation: str,
    depth: int = 2,
    width: int = 256,
) -> Net:
    """Args: depth: hidden layers (>= 1); width: units per hidden layer."""
    check_args("mlp", input_shape, num_outputs, dropout, input_dropout)
    check_at_least("model.depth", depth, 1)
    check_at_least("model.width", width, 1)
    layers: list[nn.Module] = [nn.Flatten(), *dropout_layers(input_dropout)]
    fan_in = prod(input_shape)
    for _ in range(depth):
        layers += [
            nn.Linear(fan_in, width, bias=not norm.cancels_bias),
            norm(width, 0),
            make_activation(activation),
            *dropout_layers(dropout),
        ]
        fan_in = width
    return Net(nn.Sequential(*layers), nn.Linear(width, num_outputs), activation)
