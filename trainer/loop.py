"""The Trainer: one fixed step sequence, whatever tricks are switched on.

    batch -> precision.autocast(forward) -> loss + penalty
          -> precision.backward_and_step(loss, optimizer, clipping)   # scale, unscale, clip, step
          -> schedule.step_end()
    each epoch: evaluate -> schedule.eval_end -> early_stopping.eval_end

Nothing in the per-step path waits on the device: the loss accumulates in a device tensor and
is read (one host sync) only at log intervals and epoch ends.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer

from trainer.clipping import Clipping
from trainer.data import DataSplits
from trainer.display import PlainDisplay
from trainer.early_stopping import EarlyStopping, NoEarlyStopping
from trainer.precision import Precision
from trainer.records import MetricsLog
from trainer.sched import Schedule, current_lr

EVAL_BATCH_SIZE = 1024  # evaluation keeps no activations for backward, so it can take bigger batches


@dataclass
class FitResult:
    status: str = "completed"  # completed | early_stopped | diverged | interrupted
    epochs_run: int = 0
    steps: int = 0
    samples_seen: int = 0
    wall_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    restored_best: bool = False
    message: str | None = None


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    """Full batches only (the order is reshuffled each epoch, so no sample is left out for long);
    a data set smaller than one batch is one batch."""
    return max(num_train // batch_size, 1)


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        data: DataSplits,
        optimizer: Optimizer,
        schedule: Schedule,
        precision: Precision,
        clipping: Clipping,
        criterion: nn.Module,
        penalty: Callable[[torch.Tensor], torch.Tensor],
        early_stopping: EarlyStopping | NoEarlyStopping,
        batch_size: int,
        epochs: int,
        max_steps: int | None,
        log_every: int,
        display: PlainDisplay,
        metrics_log: MetricsLog,
        generator: torch.Generator,
    ) -> None:
        self.model, self.data, self.optimizer, self.schedule = model, data, optimizer, schedule
        self.precision, self.clipping, self.criterion, self.penalty = precision, clipping, criterion, penalty
        self.early_stopping = early_stopping
        self.batch_size, self.epochs, self.max_steps, self.log_every = batch_size, epochs, max_steps, log_every
        self.display, self.metrics_log, self.generator = display, metrics_log, generator
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.steps_per_epoch = steps_per_epoch(len(data.x_train), batch_size)

    @property
    def total_steps(self) -> int:
        planned = self.epochs * self.steps_per_epoch
        return min(planned, self.max_steps) if self.max_steps else planned

    def train_step(self, x: torch.Tensor, y: torch.Tensor, measure: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step; returns the detached data loss and, if measured, the pre-clip grad norm."""
        with self.precision.autocast():
            loss = self.criterion(self.model(x), y)
        grad_norm = self.precision.backward_and_step(self.penalty(loss), self.optimizer, self.clipping, self.params, measure)
        self.schedule.step_end()
        return loss.detach(), grad_norm

    @torch.no_grad()
    def evaluate(self) -> dict[str, float | None]:
        """Mean validation loss (unsmoothed, unpenalised) and accuracy, in eval mode."""
        self.model.eval()
        x_val, y_val = self.data.x_val, self.data.y_val
        classification = self.data.task == "classification"
        loss_sum = torch.zeros((), device=x_val.device)
        correct = torch.zeros((), device=x_val.device)
        for start in range(0, len(x_val), EVAL_BATCH_SIZE):
            x, y = x_val[start : start + EVAL_BATCH_SIZE], y_val[start : start + EVAL_BATCH_SIZE]
            with self.precision.autocast():
                out = self.model(x).float()
            if classification:
                loss_sum += F.cross_entropy(out, y, reduction="sum")
                correct += (out.argmax(dim=1) == y).sum()
            else:
                loss_sum += F.mse_loss(out, y, reduction="sum") / y.shape[1]
        self.model.train()
        return {
            "val_loss": loss_sum.item() / len(x_val),
            "val_acc": correct.item() / len(x_val) if classification else None,
        }

    def fit(self) -> FitResult:
        result = FitResult()
        start = time.perf_counter()
        try:
            self._epochs(result, start)
        except KeyboardInterrupt:
            result.status = "interrupted"
            result.message = f"interrupted at step {result.steps}"
        result.wall_s = time.perf_counter() - start
        result.restored_best = self.early_stopping.restore_best(self.model)
        return result

    def _epochs(self, result: FitResult, start: float) -> None:
        x_train, y_train, device = self.data.x_train, self.data.y_train, self.data.x_train.device
        interval_loss = torch.zeros((), device=device)
        interval_steps, interval_start, last_grad_norm = 0, start, None
        self.model.train()
        for epoch in range(1, self.epochs + 1):
            epoch_loss = torch.zeros((), device=device)
            epoch_steps = 0
            order = torch.randperm(len(x_train), generator=self.generator).to(device, non_blocking=True)
            for batch in range(self.steps_per_epoch):
                index = order[batch * self.batch_size : (batch + 1) * self.batch_size]
                measure = (result.steps + 1) % self.log_every == 0
                loss, grad_norm = self.train_step(x_train[index], y_train[index], measure)
                result.steps += 1
                result.samples_seen += len(index)
                interval_loss += loss
                epoch_loss += loss
                interval_steps += 1
                epoch_steps += 1
                if measure:
                    now = time.perf_counter()
                    train_loss = interval_loss.item() / interval_steps
                    last_grad_norm = grad_norm.item() if grad_norm is not None else None
                    speed = interval_steps * self.batch_size / max(now - interval_start, 1e-9)
                    lr = current_lr(self.optimizer)
                    self.metrics_log.write({"kind": "step", "epoch": epoch, "step": result.steps, "train_loss": train_loss,
                                            "lr": lr, "grad_norm": last_grad_norm, "samples_per_s": speed,
                                            "elapsed": now - start})
                    self.display.progress(result.steps, epoch, train_loss, lr, speed)
                    interval_loss.zero_()
                    interval_steps, interval_start = 0, now
                    if not math.isfinite(train_loss):
                        result.status = "diverged"
                        result.message = f"the training loss became {train_loss} by step {result.steps}"
                        break
                if self.max_steps and result.steps >= self.max_steps:
                    break
            self._end_epoch(result, epoch, epoch_loss.item() / max(epoch_steps, 1), last_grad_norm, start)
            if result.status != "completed" or (self.max_steps and result.steps >= self.max_steps):
                return

    def _end_epoch(self, result: FitResult, epoch: int, train_loss: float, grad_norm: float | None, start: float) -> None:
        metrics = self.evaluate()
        row = {"kind": "epoch", "epoch": epoch, "step": result.steps, "train_loss": train_loss, **metrics,
               "lr": current_lr(self.optimizer), "grad_norm": grad_norm, "elapsed": time.perf_counter() - start}
        result.history.append(row)
        result.epochs_run = epoch
        self.metrics_log.write(row)
        self.display.epoch_end(row)
        if not math.isfinite(train_loss) or not math.isfinite(metrics["val_loss"] or 0.0):
            result.status = "diverged"
            result.message = result.message or f"the loss became non-finite in epoch {epoch}"
            return
        if result.status != "completed":
            return
        self.schedule.eval_end(metrics["val_loss"])  # type: ignore[arg-type]
        if self.early_stopping.eval_end(metrics, self.model):
            result.status = "early_stopped"
            result.message = f"{self.early_stopping.monitor} stopped improving; stopped after epoch {epoch}"
