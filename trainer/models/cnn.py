"""A small 2-D CNN for images: per stage conv3x3 -> norm -> activation -> dropout -> max-pool 2,
then global average pooling and a linear head."""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from trainer.errors import ConfigError
from trainer.models import Net, check_args, dropout_layers
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
    channels: Sequence[int] = (32, 64, 128),
) -> Net:
    """Args: channels: width of each stage's conv; each stage halves the image side."""
    check_args("cnn", input_shape, num_outputs, dropout, input_dropout)
    widths = list(channels)  # OmegaConf passes a ListConfig
    if not widths or min(widths) < 1:
        raise ConfigError(f"model.channels={widths} must list at least one stage width, each >= 1")
    in_channels, height, width_px = input_shape
    if min(height, width_px) < 2 ** len(widths):
        raise ConfigError(
            f"model.channels={widths} has {len(widths)} stages, each halving the image, which needs "
            f"sides >= {2 ** len(widths)}; input_shape {tuple(input_shape)} is too small: use fewer stages"
        )
    layers: list[nn.Module] = dropout_layers(input_dropout)
    for width in widths:
        layers += [
            nn.Conv2d(in_channels, width, 3, padding=1, bias=not norm.cancels_bias),
            norm(width, 2),
            make_activation(activation),
            *dropout_layers(dropout),
            nn.MaxPool2d(2),
        ]
        in_channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Net(nn.Sequential(*layers), nn.Linear(in_channels, num_outputs), activation)
