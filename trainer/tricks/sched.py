"""Learning-rate schedules, one builder per `sched=` choice.

Step-based schedules are pure functions of the step count (`*_factor`), multiplying the
optimizer's base LR; the loop calls `step_end()` after every optimizer step. `plateau` instead
reacts to the validation loss at each evaluation (`eval_end`).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR, ReduceLROnPlateau

from trainer.errors import ConfigError

class Schedule:
    """Drives a torch scheduler from the loop's two events, stepping it on the one `steps_on`
    names: "step" (a step ended), "eval" (an evaluation ended, with its val_loss), or "never" (an
    LR that never changes)."""

    def __init__(self, scheduler: LRScheduler | ReduceLROnPlateau, steps_on: Literal["step", "eval", "never"]) -> None:
        self.scheduler = scheduler
        self.steps_on = steps_on

    def step_end(self) -> None:
        if self.steps_on == "step":
            self.scheduler.step()

    def eval_end(self, val_loss: float) -> None:
        if self.steps_on == "eval":
            self.scheduler.step(val_loss)  # type: ignore[arg-type]

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)

# Pure factor functions: the LR used by step `step` (0-based) is base_lr * factor(step).

def cosine_factor(step: int, total_steps: int, min_lr_ratio: float) -> float:
    progress = min(step / max(total_steps, 1), 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps  # reaches the peak on the last warmup step
    return cosine_factor(step - warmup_steps, total_steps - warmup_steps, min_lr_ratio)

def warmup_linear_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return 1.0 - (1.0 - min_lr_ratio) * progress

def step_decay_factor(step: int, steps_per_decay: int, gamma: float) -> float:
    return gamma ** (step // steps_per_decay)

def restarts_factor(step: int, first_cycle_steps: int, cycle_mult: float, min_lr_ratio: float) -> float:
    """SGDR (Loshchilov & Hutter 2017): cosine cycles, each `cycle_mult` times the last, LR reset at each start."""
    cycle = float(first_cycle_steps)
    position = float(step)
    while position >= cycle:
        position -= cycle
        cycle *= cycle_mult
    return cosine_factor(int(position), max(int(cycle), 1), min_lr_ratio)

def _lambda(optimizer: Optimizer, factor: Callable[[int], float]) -> Schedule:
    return Schedule(LambdaLR(optimizer, factor), steps_on="step")

def resolve_warmup(warmup_steps: int | None, warmup_fraction: float | None, total_steps: int) -> int:
    """Warmup length in steps: `warmup_steps` when set, else `warmup_fraction` of training."""
    if warmup_steps is None:
        if warmup_fraction is None or not 0.0 <= warmup_fraction < 1.0:
            raise ConfigError(f"sched.warmup_fraction={warmup_fraction} must be in [0, 1), or set sched.warmup_steps")
        warmup_steps = round(warmup_fraction * total_steps)
    if warmup_steps < 0:
        raise ConfigError(f"sched.warmup_steps={warmup_steps} must be >= 0")
    if warmup_steps >= total_steps:
        raise ConfigError(
            f"sched.warmup_steps={warmup_steps} is not shorter than training ({total_steps} steps); "
            "lower the warmup or train longer"
        )
    return warmup_steps  # 0 (a fraction of a very short run rounds to nothing): no warmup

def _check_ratio(min_lr_ratio: float) -> None:
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigError(f"sched.min_lr_ratio={min_lr_ratio} must be in [0, 1]")

def _check_gamma(gamma: float) -> None:
    if not 0.0 < gamma <= 1.0:
        raise ConfigError(f"sched.gamma={gamma} must be in (0, 1]")

# Builders named by conf/sched/*.yaml. Runtime arguments: optimizer, total_steps, steps_per_epoch.

def constant(optimizer: Optimizer, total_steps: int, steps_per_epoch: int) -> Schedule:
    # The scheduler is kept for its state_dict (checkpoints hold one for every schedule), but never
    # stepped: stepping a LambdaLR recomputes every group's LR in Python, tens of microseconds a
    # step after a backward pass, to set the same base LR again.
    return Schedule(LambdaLR(optimizer, lambda step: 1.0), steps_on="never")

def step(optimizer: Optimizer, total_steps: int, steps_per_epoch: int, every_epochs: int = 10, gamma: float = 0.1) -> Schedule:
    """Divide the LR by 1/gamma (10 by default) every `every_epochs` epochs."""
    if every_epochs < 1:
        raise ConfigError(f"sched.every_epochs={every_epochs} must be >= 1")
    _check_gamma(gamma)
    return _lambda(optimizer, lambda s: step_decay_factor(s, every_epochs * steps_per_epoch, gamma))

def cosine(optimizer: Optimizer, total_steps: int, steps_per_epoch: int, min_lr_ratio: float = 0.0) -> Schedule:
    """Half a cosine from the base LR down to base * min_lr_ratio at the last step (Loshchilov & Hutter 2017)."""
    _check_ratio(min_lr_ratio)
    return _lambda(optimizer, lambda s: cosine_factor(s, total_steps, min_lr_ratio))

def cosine_warmup(
    optimizer: Optimizer, total_steps: int, steps_per_epoch: int,
    warmup_steps: int | None = None, warmup_fraction: float | None = 0.05, min_lr_ratio: float = 0.0,
) -> Schedule:
    """Linear warmup to the base LR (Goyal et al. 2017), then cosine decay."""
    _check_ratio(min_lr_ratio)
    warmup = resolve_warmup(warmup_steps, warmup_fraction, total_steps)
    return _lambda(optimizer, lambda s: warmup_cosine_factor(s, total_steps, warmup, min_lr_ratio))

def warmup_linear(
    optimizer: Optimizer, total_steps: int, steps_per_epoch: int,
    warmup_steps: int | None = None, warmup_fraction: float | None = 0.05, min_lr_ratio: float = 0.0,
) -> Schedule:
    """Linear warmup, then linear decay to base * min_lr_ratio (the BERT schedule)."""
    _check_ratio(min_lr_ratio)
    warmup = resolve_warmup(warmup_steps, warmup_fraction, total_steps)
    return _lambda(optimizer, lambda s: warmup_linear_factor(s, total_steps, warmup, min_lr_ratio))

def cosine_restarts(
    optimizer: Optimizer, total_steps: int, steps_per_epoch: int,
    first_cycle_epochs: int = 2, cycle_mult: float = 2.0, min_lr_ratio: float = 0.0,
) -> Schedule:
    """SGDR: cosine cycles with warm restarts, the first `first_cycle_epochs` long."""
    if first_cycle_epochs < 1:
        raise ConfigError(f"sched.first_cycle_epochs={first_cycle_epochs} must be >= 1")
    if cycle_mult < 1:
        raise ConfigError(f"sched.cycle_mult={cycle_mult} must be >= 1")
    _check_ratio(min_lr_ratio)
    first = first_cycle_epochs * steps_per_epoch
    return _lambda(optimizer, lambda s: restarts_factor(s, first, cycle_mult, min_lr_ratio))

def exponential(optimizer: Optimizer, total_steps: int, steps_per_epoch: int, gamma: float = 0.95) -> Schedule:
    """Multiply the LR by gamma after every epoch."""
    _check_gamma(gamma)
    return _lambda(optimizer, lambda s: gamma ** (s // steps_per_epoch))

def onecycle(
    optimizer: Optimizer, total_steps: int, steps_per_epoch: int,
    pct_start: float = 0.3, div_factor: float = 25.0, final_div_factor: float = 1e4,
) -> Schedule:
    """1cycle (Smith & Topin 2019): up from lr/div_factor to lr, then down to lr/(div*final_div);
    momentum (or Adam's beta1) cycles the other way."""
    if not 0.0 < pct_start < 1.0:
        raise ConfigError(f"sched.pct_start={pct_start} must be in (0, 1)")
    if div_factor < 1 or final_div_factor < 1:
        raise ConfigError(f"sched.div_factor={div_factor} and final_div_factor={final_div_factor} must be >= 1")
    max_lrs = [group["lr"] for group in optimizer.param_groups]
    cycles_momentum = any("momentum" in g and g["momentum"] > 0 or "betas" in g for g in optimizer.param_groups)
    scheduler = OneCycleLR(
        optimizer, max_lr=max_lrs, total_steps=total_steps, pct_start=pct_start,
        div_factor=div_factor, final_div_factor=final_div_factor, cycle_momentum=cycles_momentum,
    )
    return Schedule(scheduler, steps_on="step")

def plateau(
    optimizer: Optimizer, total_steps: int, steps_per_epoch: int,
    factor: float = 0.1, patience: int = 5, threshold: float = 1e-4, min_lr: float = 0.0,
) -> Schedule:
    """Divide the LR by 1/factor when the validation loss has not improved for `patience` evaluations."""
    if not 0.0 < factor < 1.0:
        raise ConfigError(f"sched.factor={factor} must be in (0, 1)")
    if patience < 0:
        raise ConfigError(f"sched.patience={patience} must be >= 0")
    if threshold < 0:  # below 0 a worse loss counts as an improvement, and the LR is never reduced
        raise ConfigError(f"sched.threshold={threshold} must be >= 0 (the relative improvement that counts)")
    if min_lr < 0:
        raise ConfigError(f"sched.min_lr={min_lr} must be >= 0")
    return Schedule(ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience,
                                      threshold=threshold, min_lr=min_lr), steps_on="eval")

def current_lr(optimizer: Optimizer) -> float:
    """The LR the next step takes: the first param group's (the groups differ in weight decay only,
    trainer.tricks.optim.param_groups). The one place the LR is read."""
    return float(optimizer.param_groups[0]["lr"])

