"""Data set builders. Each module builds one `data=` choice and returns a `DataSplits`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

Task = Literal["classification", "regression"]


@dataclass
class DataSplits:
    """A data set held in memory as tensors, so the loop can batch it by indexing on the device.

    Args:
        x_train: inputs, float32, shape (N, *input_shape).
        y_train: int64 class labels of shape (N,) for classification, float32 targets of
            shape (N, num_outputs) for regression.
        x_val: validation inputs, same layout as x_train.
        y_val: validation targets, same layout as y_train.
        task: "classification" or "regression"; decides the loss and whether accuracy exists.
        num_outputs: number of classes, or of regression targets.
        notices: one-line remarks on the data for the user (a class seen only in validation).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    task: Task
    num_outputs: int
    notices: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device) -> "DataSplits":
        return DataSplits(
            self.x_train.to(device), self.y_train.to(device),
            self.x_val.to(device), self.y_val.to(device),
            self.task, self.num_outputs, self.notices,
        )
