"""`task=lr_find`: the LR range test (Smith 2017, "Cyclical Learning Rates", section 3.3; as in
fastai's `lr_find`).

Train on training batches while the LR grows exponentially from `start_lr` to `end_lr`, record the
loss, smooth it with a bias-corrected exponential moving average, and stop once the smoothed loss
exceeds `diverge_factor` times its best. The suggested LR is where the smoothed loss falls fastest
against log(LR) (steepest descent), the LR that still learns quickly while being safely below the
point where training blows up. Afterwards the model, the optimizer, the gradient scaler and the
random-number state are exactly as before, so a training run can follow.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from rich.console import RenderableType
from rich.panel import Panel
from rich.text import Text

from trainer.data.source import batch_source
from trainer.engine import distributed
from trainer.engine.parts import Parts
from trainer.errors import ConfigError
from trainer.observe.curves import save_figure

# The first 10% of readings are skipped when looking for the steepest descent: the bias-corrected
# average of a handful of noisy batch losses swings more than the trend (fastai skips 10 of 100).
SKIP_START_FRACTION = 0.1
# Steepest descent needs a stretch of curve to differentiate; with fewer points before the minimum
# the suggestion falls back to min-loss LR / 10 (the other common rule, Smith 2017 / fastai).
MIN_DESCENT_POINTS = 5


def lr_schedule(start_lr: float, end_lr: float, num_steps: int) -> np.ndarray:
    """The LR of each step: exponential from start_lr to end_lr inclusive."""
    return start_lr * (end_lr / start_lr) ** (np.arange(num_steps) / max(num_steps - 1, 1))


def smooth(losses: list[float], beta: float) -> list[float]:
    """Exponential moving average with Adam's bias correction (the first values are not pulled to 0)."""
    average, out = 0.0, []
    for i, loss in enumerate(losses):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta ** (i + 1)))
    return out


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, str]:
    """(suggested LR, method): the steepest descent of the smoothed loss against log10(LR), before its
    minimum; or the minimum's LR / 10 when the descent is too short to differentiate."""
    best = int(np.argmin(smoothed))
    start = int(len(smoothed) * SKIP_START_FRACTION)
    if best - start + 1 >= MIN_DESCENT_POINTS:
        slope = np.gradient(np.asarray(smoothed[start:best + 1]), np.log10(lrs[start:best + 1]))
        return float(lrs[start + int(np.argmin(slope))]), "steepest descent of the smoothed loss"
    return float(lrs[best]) / 10, "minimum-loss LR / 10"


def _check(start_lr: float, end_lr: float, num_steps: int, smoothing: float, diverge_factor: float) -> None:
    if not 0 < start_lr < end_lr:
        raise ConfigError(f"lr_find start_lr={start_lr} and end_lr={end_lr} must satisfy 0 < start_lr < end_lr")
    if num_steps < 2:
        raise ConfigError(f"lr_find num_steps={num_steps} must be >= 2")
    if not 0 <= smoothing < 1:
        raise ConfigError(f"lr_find smoothing={smoothing} must be in [0, 1)")
    if diverge_factor <= 1:
        raise ConfigError(f"lr_find diverge_factor={diverge_factor} must be > 1")


def lr_find(
    parts: Parts,
    run_dir: Path,
    start_lr: float = 1e-7,
    end_lr: float = 10,
    num_steps: int = 100,
    smoothing: float = 0.98,
    diverge_factor: float = 4,
) -> dict[str, Any]:
    """Run the LR range test on `parts`, write `run_dir/lr_find.png`, and restore the parts' state.

    Args:
        parts: built by trainer.engine.parts.build_parts; its optimizer, precision, clipping, penalty
            and trainer.accumulate are used as a training run would use them (the schedule is not).
        run_dir: where lr_find.png goes.
        start_lr: the first step's LR.
        end_lr: the last step's LR, if the loss has not diverged before.
        num_steps: optimizer steps from start_lr to end_lr (one effective batch each, cycling
            through the shuffled training set).
        smoothing: the moving average's beta (0.98: fastai's; about the last 50 losses).
        diverge_factor: stop when the smoothed loss exceeds this multiple of its best.

    Returns:
        {"suggested_lr", "method" (how it was chosen), "min_loss_lr", "lrs", "losses" (smoothed),
         "raw_losses", "stopped_early", "override": "optim.lr=...", "plot"}.
    """
    _check(start_lr, end_lr, num_steps, smoothing, diverge_factor)
    model, optimizer = parts.model, parts.optimizer
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()),
             copy.deepcopy(parts.precision.state_dict()), [p.grad for p in model.parameters()])
    schedule = lr_schedule(start_lr, end_lr, num_steps)
    lrs: list[float] = []
    raw: list[float] = []
    smoothed: list[float] = []
    stopped_early = False
    devices = [d for d in {p.device for p in model.parameters()} if d.type == "cuda"]
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        with torch.random.fork_rng(devices=[d.index or 0 for d in devices]):  # dropout's draws don't leak out
            model.train()
            for lr, (x, y) in zip(schedule, _batches(parts, num_steps)):
                for group in optimizer.param_groups:
                    group["lr"] = float(lr)
                value = _train_step(parts, x, y, params)
                lrs.append(float(lr))
                raw.append(value)
                if not math.isfinite(value):
                    stopped_early = True
                    break
                smoothed = smooth(raw, smoothing)
                if len(smoothed) > 1 and smoothed[-1] > diverge_factor * min(smoothed):
                    stopped_early = True
                    break
    finally:
        model.load_state_dict(saved[0])
        optimizer.load_state_dict(saved[1])
        parts.precision.load_state_dict(saved[2])
        for parameter, grad in zip(model.parameters(), saved[3]):
            parameter.grad = grad
    finite = len(smoothed)  # a non-finite last loss has no smoothed value
    if finite == 0:
        raise ConfigError(f"lr_find: the loss was non-finite from the first step (lr {start_lr:g}); "
                          "check the model and data, or lower start_lr")
    suggested, method = suggest(lrs[:finite], smoothed)
    min_loss_lr = lrs[int(np.argmin(smoothed))]
    plot = Path(run_dir) / "lr_find.png"
    save_figure(_figure(lrs[:finite], raw[:finite], smoothed, suggested, min_loss_lr, method), plot)
    return {
        "suggested_lr": suggested, "method": method, "min_loss_lr": min_loss_lr,
        "lrs": lrs[:finite], "losses": smoothed, "raw_losses": raw[:finite],
        "stopped_early": stopped_early, "override": f"optim.lr={suggested:.2g}", "plot": str(plot),
    }


def _train_step(parts: Parts, x: torch.Tensor, y: torch.Tensor, params: list[torch.Tensor]) -> float:
    """One optimizer step as training takes it (micro-batches of cfg.batch_size, penalty, precision,
    clipping); returns the mean data loss."""
    accumulate = parts.settings.accumulate
    total = torch.zeros((), device=x.device)
    for x_micro, y_micro in zip(x.chunk(accumulate), y.chunk(accumulate)):
        with parts.precision.autocast():
            loss = parts.loss(parts.net(x_micro), y_micro, x_micro).objective  # distill=soft: the mix it trains on
        parts.precision.backward(parts.penalty(loss) / accumulate)
        total += loss.detach().float()
    parts.precision.step(parts.optimizer, parts.clipping, params)
    return float(total) / accumulate


def _batches(parts: Parts, count: int):
    """`count` training batches of the effective batch size (batch_size x trainer.accumulate),
    reshuffled each pass (seeded by cfg.seed)."""
    source = batch_source(parts.data, distributed.Context(), accumulate=1)  # one process, whole batches
    num_train = parts.data.num_train
    size = min(parts.settings.batch_size * parts.settings.accumulate, num_train)
    steps = num_train // size
    generator = torch.Generator().manual_seed(int(parts.cfg.seed))
    produced = 0
    while produced < count:
        order = source.start_epoch(torch.randperm(num_train, generator=generator), 0, size, steps)
        for step in range(steps):
            if produced == count:
                return
            (batch,) = source.step(order[step * size : (step + 1) * size])
            yield batch
            produced += 1


def _figure(lrs: list[float], raw: list[float], smoothed: list[float], suggested: float,
            min_loss_lr: float, method: str) -> Figure:
    figure = Figure(figsize=(7, 4.5), dpi=110, layout="constrained")
    ax = figure.subplots()
    ax.plot(lrs, raw, color="tab:blue", alpha=0.25, label="batch loss")
    ax.plot(lrs, smoothed, color="tab:blue", label="smoothed loss")
    ax.set_xscale("log")
    at = lrs.index(suggested) if suggested in lrs else int(np.argmin(np.abs(np.log(lrs) - math.log(suggested))))
    ax.plot([suggested], [smoothed[at]], "o", color="tab:red", markersize=8, label=f"suggested {suggested:.2g} ({method})")
    ax.axvline(min_loss_lr, color="gray", linestyle="--", linewidth=1, label=f"smoothed minimum at LR {min_loss_lr:.2g}")
    # The divergent tail can be orders of magnitude above the rest: keep the useful range in view.
    low, high = min(smoothed), max(smoothed[0], min(smoothed) * 2)
    ax.set_ylim(low - 0.05 * (high - low), high + 0.25 * (high - low) + 1e-12)
    ax.set_xlabel("learning rate (log)")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test (Smith 2017)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return figure


def render(result: dict[str, Any]) -> RenderableType:
    """A rich panel with the suggestion, the override to paste and the plot's path."""
    text = Text()
    text.append("suggested LR ", style="bold")
    text.append(f"{result['suggested_lr']:.2g}", style="bold green")
    text.append(f"  ({result['method']})\n")
    text.append(f"minimum smoothed loss {min(result['losses']):.4g} at LR {result['min_loss_lr']:.2g}; "
                f"{len(result['lrs'])} steps from {result['lrs'][0]:.1e} to {result['lrs'][-1]:.1e}"
                f"{' (stopped: the loss diverged)' if result['stopped_early'] else ''}\n")
    text.append("try: ", style="bold")
    text.append(result["override"], style="cyan")
    text.append(f"\nplot: {result['plot']}")
    return Panel(text, title="LR range test", border_style="blue")
