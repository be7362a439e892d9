"""A data builder that crashes (a RuntimeError, not a user error) for data.seed=1 and builds the
synthetic set otherwise: a sweep over data.seed=0,1 has one crashing job (tests/test_sweep.py)."""
from __future__ import annotations

from trainer.data import DataSplits
from trainer.data.synthetic import build as synthetic


def build(num_train: int = 512, num_val: int = 256, num_classes: int = 4, length: int = 40, channels: int = 1,
          seed: int = 0, image_size: int | None = None, num_test: int = 256) -> DataSplits:
    if seed == 1:
        raise RuntimeError("crashing_data: a bug in one job of the sweep")
    return synthetic(num_train=num_train, num_val=num_val, num_classes=num_classes, length=length, channels=channels,
                     seed=seed, image_size=image_size, num_test=num_test)
