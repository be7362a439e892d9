"""Residual network (He et al. 2016, "Deep Residual Learning") for 1-D (C, L) or 2-D (C, H, W) inputs.

Stem conv3x3 -> norm -> activation, then `stages` stages of `depth` BasicBlocks each; every stage
after the first doubles the channels and halves the resolution with stride 2; global average
pooling; linear head. Shortcuts are identities, or a 1x1 conv + norm projection where the shape
changes (the paper's option B).

ResNet-18 for 32x32 images (the usual CIFAR variant: 3x3 stem, no max-pool) is depth=2, stages=4,
width=64 (`model=resnet18`). depth=n, stages=3, width=16 is the paper's CIFAR ResNet-(6n+2), e.g.
n=3 gives ResNet-20, but with projection instead of zero-padding shortcuts.

`residual=False` builds exactly the same layers but drops the skip addition: the "plain" net of the
paper's comparison (fig. 4), with the same parameter count; its unused projections get no gradient.
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.models import Net, check_args, check_at_least, dropout_layers
from trainer.models.activations import make_activation
from trainer.tricks.norm import NormFactory


class BasicBlock(nn.Module):
    """conv3x3 -> norm -> act -> dropout -> conv3x3 -> norm, (+ shortcut), act.

    Dropout sits between the two convs as in wide ResNets (Zagoruyko & Komodakis 2016).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        spatial_dims: int,
        norm: NormFactory,
        activation: str,
        dropout: float,
        residual: bool,
    ) -> None:
        super().__init__()
        conv = (nn.Conv1d, nn.Conv2d)[spatial_dims - 1]
        bias = not norm.cancels_bias
        self.main = nn.Sequential(
            conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias),
            norm(out_channels, spatial_dims),
            make_activation(activation),
            *dropout_layers(dropout),
            conv(out_channels, out_channels, 3, padding=1, bias=bias),
            norm(out_channels, spatial_dims),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                conv(in_channels, out_channels, 1, stride=stride, bias=bias), norm(out_channels, spatial_dims)
            )
        self.out_activation = make_activation(activation)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.main(x)
        if self.residual:
            out = out + self.shortcut(x)
        return self.out_activation(out)

    def extra_repr(self) -> str:
        return f"residual={self.residual}"


def build(
    *,
    input_shape: tuple[int, ...],
    num_outputs: int,
    norm: NormFactory,
    dropout: float,
    input_dropout: float,
    activation: str,
    depth: int = 2,
    width: int = 16,
    stages: int = 3,
    residual: bool = True,
) -> Net:
    """Args: depth: BasicBlocks per stage; width: channels of the stem and first stage (doubling per
    stage); stages: number of stages; residual: False for the plain (no-skip) network."""
    check_args("resnet", input_shape, num_outputs, dropout, input_dropout)
    check_at_least("model.depth", depth, 1)
    check_at_least("model.width", width, 1)
    check_at_least("model.stages", stages, 1)
    spatial_dims = len(input_shape) - 1
    conv = (nn.Conv1d, nn.Conv2d)[spatial_dims - 1]
    layers: list[nn.Module] = [
        *dropout_layers(input_dropout),
        conv(input_shape[0], width, 3, padding=1, bias=not norm.cancels_bias),
        norm(width, spatial_dims),
        make_activation(activation),
    ]
    in_channels = width
    for stage in range(stages):
        out_channels = width * 2**stage
        for block in range(depth):
            stride = 2 if stage > 0 and block == 0 else 1
            block_args = (stride, spatial_dims, norm, activation, dropout, residual)
            layers.append(BasicBlock(in_channels, out_channels, *block_args))
            in_channels = out_channels
    layers += [(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)[spatial_dims - 1](1), nn.Flatten()]
    return Net(nn.Sequential(*layers), nn.Linear(in_channels, num_outputs), activation)
