"""The device-side meter: each step's loss and gradient norm stay device tensors, read in one
transfer at log intervals and epoch ends, so nothing in the per-step path waits on the device."""
from __future__ import annotations

from collections.abc import Callable

import torch

from trainer.tricks.clipping import NormParts, total_norm


class StepMeter:
    """Holds the steps' figures since the last read (the loop reads it at least every `log_every` steps).

    Python lists of the steps' device tensors, stacked at the read: appending costs nothing, where
    writing into a preallocated device buffer is an indexing op per figure per step. Each step's
    gradient norm comes in parts (clipping.NormParts), reduced here for all the steps at once."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.grad_norms: list[NormParts] = []

    @property
    def pending(self) -> int:
        """Steps recorded and not yet read."""
        return len(self.losses)

    def record(self, loss: torch.Tensor, grad_norm: NormParts) -> None:
        """Store one step's figures (no host sync)."""
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)

    def read(self, losses_across_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None,
             ) -> tuple[list[float], list[float]]:
        """The pending losses and gradient norms, oldest first (one host sync), and empty the meter.
        `losses_across_ranks` combines the ranks' losses first (under torchrun: their mean)."""
        losses = torch.stack(self.losses).float()
        figures = torch.stack([losses_across_ranks(losses) if losses_across_ranks else losses,
                               self._total_norms().to(losses.device)]).tolist()
        self.losses, self.grad_norms = [], []
        return figures[0], figures[1]

    def _total_norms(self) -> torch.Tensor:
        """Each pending step's global gradient norm: two ops for all the steps when each came in as
        many parts (the same parameters had gradients), else one a step."""
        if len({len(parts) for parts in self.grad_norms}) > 1:
            return torch.stack([total_norm(parts) for parts in self.grad_norms]).float()
        return torch.linalg.vector_norm(torch.stack(self.grad_norms).float(), dim=1)
