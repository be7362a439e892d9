"""Hidden-layer non-linearities, chosen by `model.activation`."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from trainer.errors import ConfigError

ACTIVATIONS = ("relu", "leaky_relu", "gelu", "tanh", "sigmoid")

_MAKERS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    # 0.01 is also nn.init.calculate_gain("leaky_relu")'s default slope, so init's gain matches.
    "leaky_relu": lambda: nn.LeakyReLU(0.01),
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def make_activation(name: str) -> nn.Module:
    if name not in _MAKERS:
        raise ConfigError(f"model.activation={name!r} is unknown; valid: {', '.join(ACTIVATIONS)}")
    return _MAKERS[name]()
