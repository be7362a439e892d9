"""Model builders, one module per `model=` choice.

Each module's `build(*, input_shape, num_outputs, norm, dropout, input_dropout, activation, ...)`
returns an nn.Module with two attributes the init code relies on: `head`, the output nn.Linear
(initialised with a linear gain), and `activation`, the name of the hidden non-linearity (for
nn.init.calculate_gain). The helpers below are shared argument checks and the common wrapper.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from trainer.errors import ConfigError

# len(input_shape) each model module takes (None: any), to suggest a model that fits the data.
INPUT_RANKS: dict[str, tuple[int, ...] | None] = {
    "cnn": (3,),
    "cnn1d": (2,),
    "mlp": None,
    "resnet": (2, 3),
    "rnn": (2,),
}
_LAYOUTS = {1: "features (F,)", 2: "sequences (C, L)", 3: "images (C, H, W)"}


def _either(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def check_at_least(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")


def check_probability(name: str, p: float) -> None:
    # p = 1 would zero every unit (and divide by 1 - p = 0 in nn.Dropout's rescaling).
    if not 0 <= p < 1:
        raise ConfigError(f"{name}={p} must be in [0, 1)")


def check_args(
    model: str, input_shape: Sequence[int], num_outputs: int, dropout: float, input_dropout: float
) -> None:
    """The checks every builder shares: the data fits the model, outputs >= 1, dropouts in [0, 1)."""
    ranks = INPUT_RANKS[model]
    if ranks is not None and len(input_shape) not in ranks:
        fits = [m for m, r in INPUT_RANKS.items() if r is None or len(input_shape) in r]
        raise ConfigError(
            f"model={model} needs {_either([_LAYOUTS[r] for r in ranks])}; this data set gives "
            f"input_shape {tuple(input_shape)}: use model={_either(fits)}"
        )
    if not input_shape or min(input_shape) < 1:
        raise ConfigError(f"input_shape {tuple(input_shape)} must have sizes >= 1")
    check_at_least("num_outputs", num_outputs, 1)
    check_probability("regularisation.dropout", dropout)
    check_probability("regularisation.input_dropout", input_dropout)


def dropout_layers(p: float) -> list[nn.Module]:
    """[nn.Dropout(p)], or no module at all for p = 0 so an undropped model has none."""
    return [nn.Dropout(p)] if p > 0 else []


class Net(nn.Module):
    """`body` (input -> flat features) followed by the output layer `head`."""

    def __init__(self, body: nn.Sequential, head: nn.Linear, activation: str) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def extra_repr(self) -> str:
        return f"activation={self.activation}"
