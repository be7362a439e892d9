"""A generated classification task: one smooth random template per class plus noise.

Fast and offline, for tests and smoke runs; a small MLP or conv net learns it in a few epochs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.data import DataSplits
from trainer.errors import ConfigError

# Templates are random values on a coarse grid, interpolated up: smooth, so conv nets suit them too.
COARSE = 5
NOISE_STD = 1.0  # relative to the unit-std templates: examples overlap visibly but stay separable


def build(
    num_train: int = 512,
    num_val: int = 256,
    num_classes: int = 4,
    length: int = 40,
    channels: int = 1,
    seed: int = 0,
    image_size: int | None = None,
    num_test: int = 256,
) -> DataSplits:
    """Generate signals of shape (channels, length), or images (channels, image_size, image_size).

    Everything is drawn from a `torch.Generator` seeded with `seed`, so the global RNG is untouched
    and the same seed always gives the same data.

    Args:
        num_train: training examples.
        num_val: validation examples.
        num_classes: number of classes, each with its own template.
        length: signal length (ignored when image_size is set).
        channels: input channels.
        seed: seed of the generator.
        image_size: when set, generate square images of this side instead of 1-D signals.
        num_test: test examples, evaluated once at the end (0: none).
    """
    for key, value, low in (("num_train", num_train, 1), ("num_val", num_val, 1),
                            ("num_classes", num_classes, 2), ("length", length, 1), ("channels", channels, 1)):
        if value < low:
            raise ConfigError(f"data.{key}={value} must be at least {low}")
    if num_test < 0:
        raise ConfigError(f"data.num_test={num_test} must be at least 0")
    if image_size is not None and image_size < 1:
        raise ConfigError(f"data.image_size={image_size} must be at least 1, or null for 1-D signals")

    g = torch.Generator().manual_seed(seed)
    if image_size is None:
        coarse = torch.randn(num_classes, channels, COARSE, generator=g)
        templates = F.interpolate(coarse, size=length, mode="linear", align_corners=True)
    else:
        coarse = torch.randn(num_classes, channels, COARSE, COARSE, generator=g)
        templates = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=True)
    templates = (templates - templates.mean()) / templates.std().clamp_min(1e-6)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(num_classes, (n,), generator=g)
        x = templates[y] + NOISE_STD * torch.randn(n, *templates.shape[1:], generator=g)
        return x, y

    x_train, y_train = sample(num_train)
    x_val, y_val = sample(num_val)
    x_test, y_test = sample(num_test)  # drawn last: train and val are the same with or without it
    # Standardise with training statistics, as for real data, so inputs are ~zero mean, unit std.
    mean, std = x_train.mean(), x_train.std().clamp_min(1e-6)
    return DataSplits(
        x_train=(x_train - mean) / std, y_train=y_train,
        x_val=(x_val - mean) / std, y_val=y_val,
        task="classification", num_outputs=num_classes,
        x_test=(x_test - mean) / std if num_test else None, y_test=y_test if num_test else None,
    )
