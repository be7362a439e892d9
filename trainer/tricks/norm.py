"""Normalisation layers, one factory per `norm=` choice.

Models ask the factory for a layer of a given width; for conv nets the channel-wise form is
used (statistics per channel for batchnorm, across channels at each position for layernorm and
rmsnorm, across channel groups for groupnorm).

`norm.sync=true` (batchnorm only) makes data-parallel processes normalise over the global batch:
`synchronised` turns the model's batch norms into PyTorch's SyncBatchNorm, which all-reduces each
layer's statistics across the ranks in every training forward (a collective per layer).
"""
from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

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
        sync: batchnorm under DDP: statistics over every rank's samples (see `synchronised`).
    """

    name: str
    eps: float = 1e-5
    groups: int = 8
    sync: bool = False

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


def factory(name: str, eps: float = 1e-5, groups: int = 8, sync: bool = False) -> NormFactory:
    """Builder named by `conf/norm/*.yaml`."""
    if name not in NORMS:
        raise ConfigError(f"norm={name!r} is unknown; valid: {', '.join(NORMS)}")
    if eps <= 0:
        raise ConfigError(f"norm.eps={eps} must be > 0")
    if groups < 1:
        raise ConfigError(f"norm.groups={groups} must be >= 1")
    if sync and name != "batchnorm":
        raise ConfigError(f"norm.sync=true synchronises batch statistics; norm={name} has none (use norm=batchnorm)")
    return NormFactory(name, eps, groups, sync)


def synchronised(model: nn.Module, sync: bool, world_size: int, device: torch.device) -> tuple[nn.Module, str | None]:
    """`model` with its batch norms synchronised across the `world_size` ranks when `sync` asks
    (SyncBatchNorm, same parameters and buffers, so checkpoints are unchanged), and a one-line
    notice when the option has nothing to do. Raises ConfigError on the CPU, where PyTorch's
    SyncBatchNorm refuses to run (its all-reduce of statistics is for GPUs)."""
    if not sync:
        return model, None
    if world_size == 1:
        return model, "norm.sync=true: one process already normalises over the whole batch; ignored"
    if device.type != "cuda":
        raise ConfigError(f"norm.sync=true needs CUDA: PyTorch's SyncBatchNorm does not run on {device.type} "
                          "(gloo); leave norm.sync=false with device=cpu")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model), None


def synchronises(model: nn.Module) -> bool:
    """Whether `model` normalises over the ranks' global batch (norm.sync took effect)."""
    return any(isinstance(module, nn.SyncBatchNorm) for module in model.modules())


@contextmanager
def local_statistics(model: nn.Module) -> Iterator[None]:
    """Within: `model`'s SyncBatchNorm layers normalise over this rank's batch alone, as plain batch
    norm does. For a forward that one rank runs by itself (rank 0's per-layer probe): a
    synchronised one would wait forever for the other ranks."""
    layers = [module for module in model.modules() if isinstance(module, nn.SyncBatchNorm)]
    for layer in layers:
        layer.forward = types.MethodType(_BatchNorm.forward, layer)  # the instance's, over the class's
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward
