"""The device-side meter: each step's loss and gradient norm stay device tensors, read in one
transfer at log intervals and epoch ends, so nothing in the per-step path waits on the device."""
from __future__ import annotations

from collections.abc import Callable

import torch


class StepMeter:
    """Holds the steps' figures since the last read (the loop reads it at least every `log_every` steps).

    A Python list of the steps' 0-d tensors, stacked at the read: appending costs nothing, where
    writing into a preallocated device buffer is an indexing op per figure per step."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.grad_norms: list[torch.Tensor] = []

    @property
    def pending(self) -> int:
        """Steps recorded and not yet read."""
        return len(self.losses)

    def record(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Store one step's figures (no host sync)."""
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)

    def read(self, losses_across_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None,
             ) -> tuple[list[float], list[float]]:
        """The pending losses and gradient norms, oldest first (one host sync), and empty the meter.
        `losses_across_ranks` combines the ranks' losses first (under torchrun: their mean)."""
        losses = torch.stack(self.losses).float()
        figures = torch.stack([losses_across_ranks(losses) if losses_across_ranks else losses,
                               torch.stack(self.grad_norms).float().to(losses.device)]).tolist()
        self.losses, self.grad_norms = [], []
        return figures[0], figures[1]
