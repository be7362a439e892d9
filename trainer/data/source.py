"""Where the training step and evaluation read their batches: data held in memory, or streamed.

The Trainer reads every batch through a `BatchSource` and never asks which one it has:

    order = source.start_epoch(torch.randperm(n, generator=g), state.batch, step_batch, steps)
    source.step(order[b * step_batch : (b + 1) * step_batch])   # this rank's micro-batches, on the device

Both sources take the same samples in the same order: each step's global batch is the slice of
the epoch's permutation (drawn from the loop's own generator) at the step's position, split
between the ranks (`Context.share`) and then into `accumulate` micro-batches. The generator's
state at the epoch's start and the batch position are in the checkpoint, so a resumed run
continues mid-epoch with the same batches whichever source feeds it.

- `MemorySource` (a `DataSplits`): indexes the tensors on the device, nothing else.
- `StreamSource` (a `StreamedSplits`, see streamed.py for the dataset contract): a
  torch DataLoader whose batch sampler (`OrderSampler`) yields exactly those micro-batches'
  indices, read by persistent worker processes (data.workers) into pinned memory, prefetched,
  and sent to the device as uint8, where they are normalised.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import torch
from torch.utils.data import DataLoader, Sampler, Subset

from trainer.data import DataSplits
from trainer.data.streamed import StreamedSplits, loader, worker_errors

if TYPE_CHECKING:
    from trainer.engine.distributed import Context

Batch = tuple[torch.Tensor, torch.Tensor]


def micro_batches(index: torch.Tensor, ranks: "Context", accumulate: int) -> tuple[torch.Tensor, ...]:
    """This rank's micro-batches of a step's global batch of sample indices."""
    share = ranks.share(index)
    return share.chunk(accumulate) if accumulate > 1 else (share,)


def tensor_batches(inputs: torch.Tensor, targets: torch.Tensor, ranks: "Context", batch_size: int) -> Iterator[Batch]:
    """This rank's shard of (inputs, targets) in batches of `batch_size` (views, no copies)."""
    shard = ranks.shard(len(inputs))
    inputs, targets = inputs[shard], targets[shard]
    for start in range(0, len(inputs), batch_size):
        yield inputs[start : start + batch_size], targets[start : start + batch_size]


class BatchSource(Protocol):
    def start_epoch(self, order: torch.Tensor, start: int, step_batch: int, steps: int) -> torch.Tensor:
        """Begin an epoch over `order` (a permutation of the training samples) at step `start` of
        `steps`; returns the order the loop slices each step's `index` from."""
        ...

    def step(self, index: torch.Tensor) -> list[Batch]:
        """This rank's micro-batches of the global batch `index` (the next slice of the order), on the device."""
        ...


class MemorySource:
    """Batches of tensors held on the device: an index per micro-batch, no copy beyond it."""

    def __init__(self, data: DataSplits, ranks: "Context", accumulate: int) -> None:
        self.data, self.ranks, self.accumulate = data, ranks, accumulate

    def start_epoch(self, order: torch.Tensor, start: int, step_batch: int, steps: int) -> torch.Tensor:
        return order.to(self.data.x_train.device, non_blocking=True)

    def step(self, index: torch.Tensor) -> list[Batch]:
        # index_select, not x[micro]: the same rows, without advanced indexing's general machinery
        # (cnn1d on the CPU: about 4 us less a step alone; whole epochs, 1.036 -> 1.028 of the raw loop's time).
        x, y = self.data.x_train, self.data.y_train
        return [(x.index_select(0, micro), y.index_select(0, micro))
                for micro in micro_batches(index, self.ranks, self.accumulate)]


class OrderSampler(Sampler[list[int]]):
    """The DataLoader's batch sampler: the micro-batches of this rank, step after step, from the
    epoch's order at step `start` to `steps` (set by `plan` before each pass; the loader's worker
    processes persist across epochs, so the sampler is told its new order, not rebuilt)."""

    def __init__(self, ranks: "Context", accumulate: int) -> None:
        self.ranks, self.accumulate = ranks, accumulate
        self.order, self.start, self.step_batch, self.steps = torch.empty(0, dtype=torch.int64), 0, 1, 0

    def plan(self, order: torch.Tensor, start: int, step_batch: int, steps: int) -> None:
        self.order, self.start, self.step_batch, self.steps = order, start, step_batch, steps

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            index = self.order[step * self.step_batch : (step + 1) * self.step_batch]
            for micro in micro_batches(index, self.ranks, self.accumulate):
                yield micro.tolist()

    def __len__(self) -> int:
        return (self.steps - self.start) * self.accumulate


class StreamSource:
    """Batches read from disk by a DataLoader (see the module docstring)."""

    def __init__(self, data: StreamedSplits, ranks: "Context", accumulate: int) -> None:
        self.data, self.ranks, self.accumulate = data, ranks, accumulate
        self.pin = data.device.type == "cuda"
        self.sampler = OrderSampler(ranks, accumulate)
        self.train = loader(data.train.dataset, data.workers, self.pin, batch_sampler=self.sampler)
        self.batches: Iterator[Batch] = iter(())
        self.evaluation: dict[tuple[str, int], DataLoader] = {}

    def start_epoch(self, order: torch.Tensor, start: int, step_batch: int, steps: int) -> torch.Tensor:
        self.sampler.plan(order, start, step_batch, steps)
        self.batches = iter(self.train)  # the workers start reading ahead now
        return order

    def step(self, index: torch.Tensor) -> list[Batch]:
        # The sampler yields the micro-batches of `index` next: it walks the same order.
        with worker_errors():
            return [self._to_device(next(self.batches)) for _ in micro_batches(index, self.ranks, self.accumulate)]

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """This rank's shard of split `split` ("val", "test"), in batches, on the device (data in
        memory is measured on its tensors: Trainer.measure)."""
        if (split, batch_size) not in self.evaluation:
            dataset = self.data.split(split).dataset
            shard = self.ranks.shard(len(self.data.split(split)))
            self.evaluation[split, batch_size] = loader(Subset(dataset, range(shard.start, shard.stop)),
                                                        self.data.workers, self.pin, batch_size=batch_size)
        return self._read(self.evaluation[split, batch_size])

    def _read(self, batches: DataLoader) -> Iterator[Batch]:
        with worker_errors():
            for batch in batches:
                yield self._to_device(batch)

    def _to_device(self, batch: Batch) -> Batch:
        images, labels = batch
        device = self.data.device
        return self.data.normalise(images.to(device, non_blocking=True)), labels.to(device, non_blocking=True)


def batch_source(data: DataSplits | StreamedSplits, ranks: "Context", accumulate: int) -> BatchSource:
    """The source that reads `data`: streamed data through a DataLoader, tensors by indexing."""
    if isinstance(data, StreamedSplits):
        return StreamSource(data, ranks, accumulate)
    return MemorySource(data, ranks, accumulate)
