"""Data set builders. Each module builds one `data=` choice and returns a `DataSplits`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from trainer.errors import ConfigError

Task = Literal["classification", "regression"]
# Seeds `spread_sample`: fixed, so every rank, a resumed run and a later tool read the same samples.
SAMPLE_SEED = 0


def spread_sample(count: int, size: int) -> list[int]:
    """Which of a split's `count` samples a reader of `size` of them takes: all of them, in order,
    when `size` or more may be read; else `size` indices, one drawn (seeded by SAMPLE_SEED) from
    each of `size` equal consecutive stretches of the split. Spread over the whole split, not its
    head: an ImageFolder lists its images class by class, so its first images are of its first
    classes. The one rule for every sample of a split (the streamed statistics, `head`)."""
    if size >= count:
        return list(range(count))
    edges = torch.arange(size + 1) * count // size
    widths = edges[1:] - edges[:-1]  # each >= 1, as size < count
    draws = torch.rand(size, generator=torch.Generator().manual_seed(SAMPLE_SEED), dtype=torch.float64)
    return (edges[:-1] + (draws * widths).long()).tolist()


@dataclass
class DataSplits:
    """A data set held in memory as tensors, so the loop can batch it by indexing on the device.

    Args:
        x_train: inputs, float32, shape (N, *input_shape).
        y_train: int64 class labels of shape (N,) for classification, float32 targets of
            shape (N, num_outputs) for regression.
        x_val: validation inputs, same layout as x_train: what early stopping, best.pt and a
            sweep's ranking select on. Never the test split.
        y_val: validation targets, same layout as y_train.
        task: "classification" or "regression"; decides the loss and whether accuracy exists.
        num_outputs: number of classes, or of regression targets.
        notices: one-line remarks on the data for the user (a class seen only in validation).
        x_test: test inputs, evaluated once, on the weights the run ends with; None when the
            data set has no test split.
        y_test: test targets.
        chars: the vocabulary of character-id inputs (data=text, text_probe): character i is id i,
            and x holds int64 ids of shape (N, L). None for every other data set.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    task: Task
    num_outputs: int
    notices: list[str] = field(default_factory=list)
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    chars: str | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def char_lm(self) -> bool:
        """A character language model's data (data=text): the targets are characters too, the next
        one at each position (N, L). Its runs report bits per character and write samples."""
        return self.chars is not None and self.y_train.dim() == 2

    @property
    def has_test(self) -> bool:
        return self.x_test is not None and self.y_test is not None

    @property
    def num_train(self) -> int:
        return len(self.x_train)

    def describe(self) -> dict[str, object]:
        """How the run reads its data, for summary.json: held in memory (streamed.StreamedSplits: streamed)."""
        return {"path": "in_memory", "train_samples": self.num_train}

    def labels(self, name: str) -> torch.Tensor:
        """Every target of split `name` ("train", "val", "test")."""
        return getattr(self, f"y_{name}")

    def head(self, name: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`count` samples of split `name` spread over all of it (`spread_sample`; the whole split,
        as views, when it has no more): what the layer statistics, the diagnosis and the tools read;
        streamed data (streamed.StreamedSplits) answers the same. Each sample is a whole row (a
        character window, a padded sequence), so sequence data loses nothing by the spread."""
        x, y = getattr(self, f"x_{name}"), getattr(self, f"y_{name}")
        if count >= len(x):
            return x[:count], y[:count]
        rows = torch.tensor(spread_sample(len(x), count), device=x.device)
        return x[rows], y[rows.to(y.device)]

    def to(self, device: torch.device) -> "DataSplits":
        test = (self.x_test.to(device), self.y_test.to(device)) if self.has_test else (None, None)
        return DataSplits(
            self.x_train.to(device), self.y_train.to(device),
            self.x_val.to(device), self.y_val.to(device),
            self.task, self.num_outputs, self.notices, *test, self.chars,
        )


def check_fraction(fraction: float) -> None:
    """Called by builders before any download or generation, so a bad value changes nothing."""
    if not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(f"data.val_fraction={fraction} must be in (0, 1)")


def hold_out(
    x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split (x, y) into training and validation parts: a random `fraction` (drawn from its own
    generator seeded with `seed`, so the split is the same every run and the global RNG is
    untouched) is the validation set, for data sets whose only held-out split is the test split.

    Returns x_train, y_train, x_val, y_val."""
    train, val = hold_out_indices(len(x), fraction, seed)
    return x[train], y[train], x[val], y[val]


def hold_out_indices(count: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """hold_out's split as indices into `count` samples, for data read row by row from disk:
    the training indices, then the validation ones."""
    check_fraction(fraction)
    n_val = round(count * fraction)
    if not 0 < n_val < count:
        raise ConfigError(f"data.val_fraction={fraction} of {count} training samples leaves an empty split; "
                          f"use a value between {1 / count:.3g} and {1 - 1 / count:.3g}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[n_val:], order[:n_val]
