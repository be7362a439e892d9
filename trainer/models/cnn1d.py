"""The small 1-D CNN of the MNIST-1D paper (Greydanus 2020, `ConvBase`).

Three convs (kernel 5, 3, 3; stride 2; padding 1), each -> norm -> activation -> dropout, then
flatten and a linear head. For MNIST-1D's (1, 40) inputs the lengths go 40 -> 19 -> 10 -> 5, so
the head sees channels * 5 = 125 features at the paper's 25 channels.
"""
from __future__ import annotations

from torch import nn

from trainer.errors import ConfigError
from trainer.models import Net, check_args, check_at_least, dropout_layers
from trainer.models.activations import make_activation
from trainer.tricks.norm import NormFactory

KERNELS = (5, 3, 3)


def build(
    *,
    input_shape: tuple[int, ...],
    num_outputs: int,
    norm: NormFactory,
    dropout: float,
    input_dropout: float,
    activation: str,
    channels: int = 32,
) -> Net:
    """Args: channels: width of every conv (the paper used 25; 32 divides into groupnorm's 8 groups)."""
    check_args("cnn1d", input_shape, num_outputs, dropout, input_dropout)
    check_at_least("model.channels", channels, 1)
    in_channels, length = input_shape
    layers: list[nn.Module] = dropout_layers(input_dropout)
    for kernel in KERNELS:
        layers += [
            nn.Conv1d(in_channels, channels, kernel, stride=2, padding=1, bias=not norm.cancels_bias),
            norm(channels, 1),
            make_activation(activation),
            *dropout_layers(dropout),
        ]
        in_channels, length = channels, (length + 2 - kernel) // 2 + 1
        if length < 1:
            raise ConfigError(
                f"model=cnn1d needs sequences of length >= 3; input_shape {tuple(input_shape)} is too short"
            )
    layers.append(nn.Flatten())
    return Net(nn.Sequential(*layers), nn.Linear(channels * length, num_outputs), activation)
