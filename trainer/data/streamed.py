"""Data sets read from disk sample by sample, for images that do not fit in memory.

A builder that streams (data=imagefolder over its memory budget, data=hf) returns a
`StreamedSplits`, made by `streamed_splits`. Each split is a `Streamed`: a dataset that meets
this contract, and its labels.

- The dataset is map-style (`torch.utils.data.Dataset`): `len(ds)` samples, and `ds[i]` returns
  `(image, label)`: `image` a uint8 tensor (C, H, W), every sample the same shape; `label` an int
  in 0..num_classes-1. It is picklable (DataLoader worker processes receive a copy) and
  deterministic: the same `i` gives the same sample every time (no random transform: the
  `augment` group runs on the device, in the training step, for data in memory and streamed alike).
- The labels are all of them, an int64 tensor (N,) with `labels[i] == ds[i][1]`, read without
  decoding an image (ImageFolder's targets, a label column): the classes check, the chance-level
  loss and smoke runs read them.

Images stay uint8 until they reach the device, where `StreamedSplits.normalise` turns them into
float32 standardised per channel: x / 255, minus the training split's mean, over its std. The
statistics are measured on the whole training split when it fits `STATS_BYTES` (then they are the
in-memory path's own), else on a seeded sample spread evenly across it (trainer.data.spread_sample).
trainer/data/source.py reads the batches (DataLoader worker processes, pinned memory, prefetching).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from trainer.data import spread_sample
from trainer.errors import ConfigError, DataError

# The training images the per-channel statistics are measured on, as float32 bytes: the whole
# split when it is that small, else a sample of that size spread over it (spread_sample).
STATS_BYTES = 256 * 2**20
# Samples read ahead by each worker process, in batches.
PREFETCH_BATCHES = 2


@dataclass(frozen=True)
class Streamed:
    """One split: a dataset meeting the module's contract, and its labels (int64, (N,))."""

    dataset: Dataset
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, count: int) -> "Streamed":
        """Its first `count` samples."""
        return self.take(range(min(count, len(self))))

    def take(self, indices: Sequence[int]) -> "Streamed":
        """The samples at `indices`, in that order."""
        return Streamed(Subset(self.dataset, indices), self.labels[list(indices)])


@dataclass
class StreamedSplits:
    """A classification data set read from disk batch by batch; the loop reads it through
    source.StreamSource, the rest of the trainer through `head` and `labels`.

    Args:
        train, val, test: the splits (test None: none).
        num_outputs: number of classes.
        input_shape: one image's (C, H, W).
        mean, std: the training split's per-channel statistics, shaped (1, C, 1, 1), on `device`.
        workers: DataLoader worker processes reading samples (0: read in the training process).
        notices: one-line remarks for the user.
        device: where batches go (set by `to`).
        heads: the samples `head` has read, kept (the layer statistics read the same ones each epoch).
    """

    train: Streamed
    val: Streamed
    num_outputs: int
    input_shape: tuple[int, ...]
    mean: torch.Tensor
    std: torch.Tensor
    workers: int = 0
    test: Streamed | None = None
    notices: list[str] = field(default_factory=list)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    task: str = "classification"
    chars: None = None  # streamed data is images, never character ids
    char_lm = False
    heads: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def has_test(self) -> bool:
        return self.test is not None

    @property
    def num_train(self) -> int:
        return len(self.train)

    def split(self, name: str) -> Streamed:
        split = getattr(self, name)
        assert split is not None, f"no {name} split"
        return split

    def to(self, device: torch.device) -> "StreamedSplits":
        return dataclasses.replace(self, mean=self.mean.to(device), std=self.std.to(device), device=device, heads={})

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """A uint8 batch (N, C, H, W) on the device -> float32, standardised with the training statistics."""
        return (images.float().div_(255) - self.mean) / self.std

    def describe(self) -> dict[str, object]:
        """How the run reads its data, for summary.json."""
        return {"path": "streaming", "train_samples": self.num_train, "workers": self.workers}

    def labels(self, name: str) -> torch.Tensor:
        """Every label of split `name` ("train", "val", "test"), on the host."""
        return self.split(name).labels

    def head(self, name: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`count` samples of split `name` spread over all of it (spread_sample), as the model
        reads them, on the device: what the layer statistics, the diagnosis and the tools look at
        instead of a whole split."""
        if (name, count) not in self.heads:
            split = self.split(name)
            images, labels = read_all(split.take(spread_sample(len(split), count)), self.workers)
            self.heads[name, count] = images.to(self.device), labels.to(self.device)
        images, labels = self.heads[name, count]
        return self.normalise(images), labels


IN_MEMORY = ("auto", "true", "false")


def check_in_memory(value: Any) -> str:
    """data.in_memory as "auto", "true" or "false" (YAML reads true/false as booleans)."""
    text = str(value).lower() if isinstance(value, bool) else value
    if text not in IN_MEMORY:
        raise ConfigError(f"data.in_memory={value} is unknown; valid: auto (held in memory when it fits "
                          "data.memory_budget_mb, streamed otherwise), true, false")
    return str(text)


def check_budget(memory_budget_mb: object) -> float:
    if isinstance(memory_budget_mb, bool) or not isinstance(memory_budget_mb, (int, float)) or not memory_budget_mb > 0:
        raise ConfigError(f"data.memory_budget_mb={memory_budget_mb} must be a number of MiB > 0")
    return float(memory_budget_mb)


def stream_reason(in_memory: str, needed_bytes: int, memory_budget_mb: float) -> str | None:
    """Why a data set is streamed (in_memory "false", or "auto" and `needed_bytes` as float32 over
    the budget), for its notice; None: it is held in memory."""
    if in_memory == "false":
        return "data.in_memory=false"
    if in_memory == "auto" and needed_bytes > memory_budget_mb * 2**20:
        return f"the images need {_mib(needed_bytes)} MiB in memory, over data.memory_budget_mb={memory_budget_mb:g}"
    return None


def _mib(size: int) -> str:
    """Bytes as MiB, whole from 10 up (`28711`), else 2 significant digits (`0.044`)."""
    mib = size / 2**20
    return f"{mib:.0f}" if mib >= 10 else f"{mib:.2g}"


def check_workers(workers: object) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"data.workers={workers} must be an integer >= 0 (0: read in the training process)")
    return workers


def loader(dataset: Dataset, workers: int, pin: bool, **batching: object) -> DataLoader:
    """A DataLoader over `dataset` with `workers` persistent worker processes prefetching batches.
    It has its own generator: the seed it draws for its workers at each pass must not move the
    global RNG, which dropout and augmentation draw from (the in-memory path draws no such seed)."""
    return DataLoader(dataset, num_workers=workers, pin_memory=pin, persistent_workers=workers > 0,
                      prefetch_factor=PREFETCH_BATCHES if workers > 0 else None, generator=torch.Generator(),
                      **batching)  # type: ignore[arg-type]


@contextmanager
def worker_errors() -> Iterator[None]:
    """Around reading a loader: a DataError raised in a worker process (an unreadable image) arrives
    wrapped in the worker's traceback; it is raised again as its own one line."""
    try:
        yield
    except DataError as error:
        lines = str(error).strip().splitlines()
        if len(lines) > 1:
            raise DataError(lines[-1].split("DataError: ", 1)[-1]) from None
        raise


def read_all(split: Streamed, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample of `split` in order, stacked: uint8 images (N, C, H, W) and int64 labels."""
    with worker_errors():
        batches = list(loader(split.dataset, min(workers, 2), pin=False, batch_size=256))
    return torch.cat([images for images, _ in batches]), torch.cat([labels for _, labels in batches]).long()


def image_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of float images (N, C, H, W), shaped (1, C, 1, 1); a constant
    channel's std is clamped so it stays finite."""
    return x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)


def streamed_splits(train: Streamed, val: Streamed, test: Streamed | None, num_classes: int, workers: int,
                    notices: list[str] | None = None) -> StreamedSplits:
    """The StreamedSplits of these splits: the sample shape from the first training image, the
    normalisation from the training split, or a sample of it that fits STATS_BYTES."""
    workers = check_workers(workers)
    shape = tuple(train.dataset[0][0].shape)
    per_image = 4 * int(torch.Size(shape).numel())
    images, _ = read_all(train.take(spread_sample(len(train), max(STATS_BYTES // per_image, 1))), workers)
    mean, std = image_stats(images.float().div_(255))
    return StreamedSplits(train=train, val=val, test=test, num_outputs=num_classes, input_shape=shape,
                          mean=mean, std=std, workers=workers, notices=list(notices or []))
