"""Gradient clipping, one strategy per `clipping=` choice.

A strategy is called after backward (and after the gradient scaler's unscale) with the
parameters; it clips their gradients in place and returns the global norm measured before
clipping, as `NormParts`, when asked to (`measure`), or always where it computes it anyway.
Each exposes `max_norm`, the norm threshold (None where there is none), so the loop can count
clipped steps without asking which strategy it has.
"""
from __future__ import annotations

import torch
from torch.nn.utils import clip_grad_norm_, clip_grad_value_

from trainer.errors import ConfigError


NormParts = torch.Tensor
"""The global gradient norm, not yet reduced: a 1-D device tensor whose L2 norm it is (`total_norm`).
Each gradient's L2 norm, stacked: two ops a step, where reducing them is a third, and on a small
model's CPU step each op is up to 1% (cnn1d, scripts/bench_step.py), so the step meter reduces
all the steps it holds at once. One part, the global norm itself, where a strategy
computes it anyway."""


def norm_parts(params: list[torch.Tensor]) -> NormParts:
    """The L2 norm of each gradient (no host sync); the global norm is their `total_norm`."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(1, device=params[0].device if params else None)
    return torch.stack(torch._foreach_norm(grads))


def total_norm(parts: NormParts) -> torch.Tensor:
    """The global norm `parts` make up, as one 0-d device tensor."""
    return torch.linalg.vector_norm(parts)


class NoClipping:
    name = "none"
    max_norm: float | None = None  # no norm threshold: the loop counts no clipped steps

    def __call__(self, params: list[torch.Tensor], measure: bool) -> NormParts | None:
        return norm_parts(params) if measure else None


class NormClipping:
    """Rescale all gradients together so their global norm is at most `max_norm` (Pascanu et al. 2013)."""

    name = "norm"

    def __init__(self, max_norm: float, norm_type: float) -> None:
        self.max_norm = max_norm
        self.norm_type = norm_type

    def __call__(self, params: list[torch.Tensor], measure: bool) -> NormParts:
        return clip_grad_norm_(params, self.max_norm, self.norm_type).reshape(1)


class ValueClipping:
    """Clamp every gradient element to [-clip_value, clip_value]."""

    name = "value"
    max_norm: float | None = None  # clips elements, not the norm: no clipped-step count

    def __init__(self, clip_value: float) -> None:
        self.clip_value = clip_value

    def __call__(self, params: list[torch.Tensor], measure: bool) -> NormParts | None:
        parts = norm_parts(params) if measure else None
        clip_grad_value_(params, self.clip_value)
        return parts


Clipping = NoClipping | NormClipping | ValueClipping


def none() -> NoClipping:
    return NoClipping()


def norm(max_norm: float = 1.0, norm_type: float = 2.0) -> NormClipping:
    if max_norm <= 0:
        raise ConfigError(f"clipping.max_norm={max_norm} must be > 0")
    if norm_type <= 0:
        raise ConfigError(f"clipping.norm_type={norm_type} must be > 0 (2 is the L2 norm, inf the max)")
    return NormClipping(max_norm, norm_type)


def value(clip_value: float = 0.5) -> ValueClipping:
    if clip_value <= 0:
        raise ConfigError(f"clipping.clip_value={clip_value} must be > 0")
    return ValueClipping(clip_value)
