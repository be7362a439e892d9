"""Data augmentation, one builder per `augment=` choice.

A builder returns a callable `augment(x) -> x'` that the training step applies to each training
batch, on the batch's device, before the forward pass; evaluation never calls it. Every random
draw is a torch op on `x.device` from the global generator, so an augmented run follows the
global seed and, like the rest of the step, never waits on the device (no `.item()`, no host
copies).

- `none`: the identity.
- `shift`: random translation, per sample, by up to `max_shift` positions along every spatial
  axis: the last axis of (N, C, L) signals, the last two of (N, C, H, W) images (the usual
  pad-and-crop of CIFAR training). MNIST-1D's digits are themselves translated copies of ten
  templates (Greydanus 2020), so translation is the augmentation that matches how the data
  were made. `mode=zeros` fills the vacated positions with zeros (pad-and-crop); `mode=roll`
  wraps them around. Optionally adds Gaussian noise (`noise_std`) and, for images, a random
  horizontal flip (`flip`).
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from trainer.errors import ConfigError

MODES = ("zeros", "roll")


class Augment(Protocol):
    name: str

    def __call__(self, x: Tensor) -> Tensor: ...


class NoAugment:
    """The identity: the batch is trained on as it is."""

    name = "none"

    def __call__(self, x: Tensor) -> Tensor:
        return x


def none(input_shape: tuple[int, ...], token_ids: bool) -> NoAugment:
    return NoAugment()


def _shift_axis(x: Tensor, axis: int, shifts: Tensor, roll: bool) -> Tensor:
    """Move sample i of `x` by shifts[i] positions along `axis` (positive: towards higher indices).

    One gather for the whole batch: position p of the output reads position p - shift of the input,
    wrapped around (roll) or, where that falls outside, zero (pad-and-crop).
    """
    length = x.shape[axis]
    positions = torch.arange(length, device=x.device)
    source = positions.unsqueeze(0) - shifts.unsqueeze(1)  # (N, length)
    inside = (source >= 0) & (source < length)
    source = source.remainder(length)
    # Broadcast the per-sample index to x's shape, with `length` on `axis`.
    view = [x.shape[0]] + [1] * (x.ndim - 1)
    view[axis] = length
    index = source.view(view).expand_as(x)
    moved = x.gather(axis, index)
    if roll:
        return moved
    return moved * inside.view(view).to(x.dtype)


class Shift:
    """Random per-sample translation (and optional noise and horizontal flip) of a training batch.

    Args:
        max_shift: the largest shift in positions; each sample's shift is uniform in
            [-max_shift, max_shift], drawn independently per spatial axis.
        noise_std: standard deviation of Gaussian noise added after the shift (0: none).
        flip: mirror images left-right with probability 1/2 (images only: reversing a 1-D signal
            changes what it means, so `shift` refuses it for (C, L) data).
        mode: "zeros" (pad-and-crop) or "roll" (wrap around).
    """

    name = "shift"

    def __init__(self, max_shift: int, noise_std: float, flip: bool, mode: str) -> None:
        self.max_shift, self.noise_std, self.flip, self.mode = max_shift, noise_std, flip, mode

    def __call__(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        if self.max_shift > 0:
            for axis in range(2, x.ndim):
                shifts = torch.randint(-self.max_shift, self.max_shift + 1, (n,), device=x.device)
                x = _shift_axis(x, axis, shifts, roll=self.mode == "roll")
        if self.flip:
            mirrored = torch.rand(n, device=x.device) < 0.5
            x = torch.where(mirrored.view(n, 1, 1, 1), x.flip(-1), x)
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn_like(x)
        return x


def shift(input_shape: tuple[int, ...], token_ids: bool, max_shift: int = 4, noise_std: float = 0.0,
          flip: bool = False, mode: str = "zeros") -> Shift:
    """`input_shape`: one sample's, (C, L) or (C, H, W); `token_ids`: whether the inputs are ids
    (data=text, text_probe, seq2seq). Checked here, before the run writes anything (found at the
    first batch, a mismatch left a half-started run folder behind)."""
    if token_ids:  # a seq2seq pair (2, L) looks like a signal: its rows would move, its targets not
        raise ConfigError("augment=shift moves numeric signals and images; this data's inputs are token ids, "
                          "which it would move away from their targets: use augment=none")
    if len(input_shape) not in (2, 3):
        raise ConfigError(f"augment=shift needs signals (C, L) or images (C, H, W); this data's samples are "
                          f"{tuple(input_shape)}: use augment=none")
    if flip and len(input_shape) == 2:
        raise ConfigError("augment.flip=true mirrors images; for 1-D signals it would change their meaning: set augment.flip=false")
    if max_shift < 0:
        raise ConfigError(f"augment.max_shift={max_shift} must be >= 0")
    if noise_std < 0:
        raise ConfigError(f"augment.noise_std={noise_std} must be >= 0")
    if mode not in MODES:
        raise ConfigError(f"augment.mode={mode!r} is unknown; valid: {', '.join(MODES)}")
    return Shift(max_shift, noise_std, flip, mode)
