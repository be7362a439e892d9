"""Early stopping, one hook per `early_stopping=` choice.

The hook sees each evaluation's metrics, says when to stop, and keeps a copy of the best
weights so the run can end with them (Prechelt 1998: the validation curve's minimum, not
its end, is the model to keep).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from trainer.errors import ConfigError
from trainer.observe.metrics import improves

MONITORS = ("val_loss", "val_acc", "val_token_acc", "val_seq_acc")  # which way each improves: trainer.observe.metrics
# Measured by decoding (models that decode sequences only): token and whole-sequence accuracy.
SEQUENCE_MONITORS = ("val_token_acc", "val_seq_acc")


class NoEarlyStopping:
    monitor: str | None = None
    stopped = False

    def eval_end(self, metrics: dict[str, float | None], model: nn.Module) -> bool:
        return False

    def restore_best(self, model: nn.Module) -> bool:
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class EarlyStopping:
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` evaluations.

    Args:
        monitor: "val_loss" (lower is better), or "val_acc", "val_token_acc", "val_seq_acc" (higher is better).
        patience: evaluations without improvement tolerated before stopping.
        min_delta: the smallest change that counts as an improvement.
        restore_best_weights: load the best evaluation's weights when the run ends.
    """

    def __init__(self, monitor: str, patience: int, min_delta: float, restore_best_weights: bool) -> None:
        self.monitor = monitor
        self.patience = patience
        self.min_delta = min_delta
        self.restore_best_weights = restore_best_weights
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.evaluations = 0
        self.bad_evaluations = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def eval_end(self, metrics: dict[str, float | None], model: nn.Module) -> bool:
        """Record one evaluation; True when training should stop."""
        score = metrics.get(self.monitor)
        if score is None:
            raise ConfigError(f"early_stopping.monitor={self.monitor} is not produced by this task; use val_loss")
        self.evaluations += 1
        if improves(self.monitor, score, self.best, self.min_delta):
            self.best, self.best_epoch, self.bad_evaluations = score, self.evaluations, 0
            if self.restore_best_weights:
                self.best_state = copy.deepcopy(model.state_dict())
            return False
        self.bad_evaluations += 1
        return self.bad_evaluations >= self.patience

    @property
    def stopped(self) -> bool:
        """Whether the last evaluation said stop (as restored from a checkpoint: the one the
        stopping epoch wrote). Patience 0 stops at the first evaluation without an improvement."""
        return self.bad_evaluations >= max(self.patience, 1)

    def restore_best(self, model: nn.Module) -> bool:
        """Load the best weights into `model`; True if it changed anything."""
        if self.best_state is None:
            return False
        model.load_state_dict(self.best_state)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in ("best", "best_epoch", "evaluations", "bad_evaluations", "best_state")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def none() -> NoEarlyStopping:
    return NoEarlyStopping()


def build(monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
          restore_best_weights: bool = True) -> EarlyStopping:
    """Builder named by conf/early_stopping/val_loss.yaml and val_acc.yaml."""
    if monitor not in MONITORS:
        raise ConfigError(f"early_stopping.monitor={monitor!r} is unknown; valid: {', '.join(MONITORS)}")
    if patience < 0:
        raise ConfigError(f"early_stopping.patience={patience} must be >= 0")
    if min_delta < 0:
        raise ConfigError(f"early_stopping.min_delta={min_delta} must be >= 0")
    return EarlyStopping(monitor, patience, min_delta, restore_best_weights)
