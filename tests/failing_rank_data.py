"""A data builder that stops with a user error (DataError) on rank 1 of a torchrun job only, as a
data file that one node cannot read would, and builds the synthetic set on every other rank
(tests/test_distributed.py)."""
from __future__ import annotations

import os

from trainer.data import DataSplits
from trainer.data.synthetic import build as synthetic
from trainer.errors import DataError


def build(num_train: int = 512, num_val: int = 256, num_classes: int = 4, length: int = 40, channels: int = 1,
          seed: int = 0, image_size: int | None = None, num_test: int = 256) -> DataSplits:
    if os.environ.get("RANK") == "1":
        raise DataError("data.path=/shared/set is not readable on this node (failing_rank_data)")
    return synthetic(num_train=num_train, num_val=num_val, num_classes=num_classes, length=length, channels=channels,
                     seed=seed, image_size=image_size, num_test=num_test)
