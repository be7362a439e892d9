"""Gradient clipping, one strategy per `clipping=` choice.

A strategy is called after backward (and after the gradient scaler's unscale) with the
parameters; it clips their gradients in place and returns the global L2 norm measured
before clipping when asked to (`measure`), or always where it computes it anyway.
"""
from __future__ import annotations

import torch
from torch.nn.utils import clip_grad_norm_, clip_grad_value_

from trainer.errors import ConfigError


def grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of all gradients, as one device tensor (no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


class NoClipping:
    name = "none"

    def __call__(self, params: list[torch.Tensor], measure: bool) -> torch.Tensor | None:
        return grad_norm(params) if measure else None


class NormClipping:
    """Rescale all gradients together so their global norm is at most `max_norm` (Pascanu et al. 2013)."""

    name = "norm"

    def __init__(self, max_norm: float, norm_type: float) -> None:
        self.max_norm = max_norm
        self.norm_type = norm_type

    def __call__(self, params: list[torch.Tensor], measure: bool) -> torch.Tensor:
        return clip_grad_norm_(params, self.max_norm, self.norm_type)


class ValueClipping:
    """Clamp every gradient element to [-clip_value, clip_value]."""

    name = "value"

    def __init__(self, clip_value: float) -> None:
        self.clip_value = clip_value

    def __call__(self, params: list[torch.Tensor], measure: bool) -> torch.Tensor | None:
        norm = grad_norm(params) if measure else None
        clip_grad_value_(params, self.clip_value)
        return norm


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
