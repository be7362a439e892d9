"""The device-side meter: each step's loss and gradient norm go into small device buffers, read
in one transfer at log intervals and epoch ends, so nothing in the per-step path waits on the device."""
from __future__ import annotations

from collections.abc import Callable

import torch


class StepMeter:
    """Holds up to `size` steps' figures (the loop reads it at least every `log_every` steps)."""

    def __init__(self, size: int, device: torch.device) -> None:
        self.losses = torch.zeros(size, device=device)
        self.grad_norms = torch.zeros(size, device=device)
        self.pending = 0  # entries not yet read

    def record(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Store one step's figures on the device (no host sync)."""
        self.losses[self.pending] = loss
        self.grad_norms[self.pending] = grad_norm
        self.pending += 1

    def read(self, losses_across_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None,
             ) -> tuple[list[float], list[float]]:
        """The pending losses and gradient norms, oldest first (one host sync), and empty the meter.
        `losses_across_ranks` combines the ranks' losses first (under torchrun: their mean)."""
        pending = self.losses[: self.pending]
        losses = (losses_across_ranks(pending) if losses_across_ranks else pending).tolist()
        norms = self.grad_norms[: self.pending].tolist()
        self.pending = 0
        return losses, norms
