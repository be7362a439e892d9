"""Normalisation layers, one factory per `norm=` choice.

Models ask the factory for a layer of a given width; for conv nets the channel-wise form is
used (statistics per channel for batchnorm, across channels at each position for layernorm and
rmsnorm, across channel groups for groupnorm).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer.config import group_choices
from trainer.errors import ConfigError

NORMS = group_choices("norm")  # conf/norm/*.yaml


class ChannelsLast(nn.Module):
    """Applies a last-dimension norm (LayerNorm, RMSNorm) to the channel dim 1 of (N, C, *spatial)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


@dataclass(frozen=True)
class NormFactory:
    """Builds the chosen normalisation layer for `num_features` channels or features.

    Args:
        name: one of NORMS.
        eps: added to the variance (or mean square) for numerical stability.
        groups: channel groups for groupnorm; must divide the width of every normalised layer.
    """

    name: str
    eps: float = 1e-5
    groups: int = 8

    @property
    def cancels_bias(self) -> bool:
        """True where the norm subtracts each feature's mean, so a bias before it is wasted."""
        return self.name == "batchnorm"

    def __call__(self, num_features: int, spatial_dims: int = 0) -> nn.Module:
        if self.name == "none":
            return nn.Identity()
        if self.name == "batchnorm":
            return (nn.BatchNorm1d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[spatial_dims](
                num_features, eps=self.eps
            )
        if self.name == "groupnorm":
            if num_features % self.groups:
                raise ConfigError(
                    f"norm.groups={self.groups} does not divide a layer of width {num_features}; "
                    f"choose a divisor of {num_features}"
                )
            return nn.GroupNorm(self.groups, num_features, eps=self.eps)
        if self.name not in ("layernorm", "rmsnorm"):  # a conf/norm/*.yaml without code here
            raise NotImplementedError(f"norm={self.name} has a YAML in conf/norm/ but no code in trainer/tricks/norm.py")
        last_dim = (nn.LayerNorm if self.name == "layernorm" else nn.RMSNorm)(num_features, eps=self.eps)
        return ChannelsLast(last_dim) if spatial_dims else last_dim


def factory(name: str, eps: float = 1e-5, groups: int = 8) -> NormFactory:
    """Builder named by `conf/norm/*.yaml`."""
    if name not in NORMS:
        raise ConfigError(f"norm={name!r} is unknown; valid: {', '.join(NORMS)}")
    if eps <= 0:
        raise ConfigError(f"norm.eps={eps} must be > 0")
    if groups < 1:
        raise ConfigError(f"norm.groups={groups} must be >= 1")
    return NormFactory(name, eps, groups)
