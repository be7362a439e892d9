"""Why a run went wrong, from its metrics: overfitting, underfitting, divergence, oscillation,
stall (LR too low or vanishing gradients), dead ReLU units, clipping at nearly every step.

`diagnose` reads the records the loop logs (metrics.jsonl's step, epoch and layers lines) and
returns findings, each with the evidence (numbers from the run) and a suggestion the user can
paste onto the command line. Every threshold is a named constant with the reason for its value;
they are deliberately conservative: a healthy run should get no findings.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from trainer.history import read_metrics
from trainer.records import json_safe

# Fewer loss readings than this show no trend (and a 3-step smoke run gets no findings).
MIN_POINTS = 3
# Divergence: the training loss at the end (median of the last third of readings) is above twice
# the first. Training lowers the loss; ending at double the starting loss means the updates made the model worse, not just noisier.
DIVERGE_RATIO = 2.0
# Oscillation: consecutive logged losses differ by 50% or more. Each reading already averages
# log_every steps, which removes most minibatch noise, so swings this big are the optimizer
# overshooting (LR too high) ...
OSCILLATION_JUMP = 1.5
# ... by at least a quarter of the first loss: once the loss is near 0, single-batch readings
# (log_every=1) differ by large factors that are only noise ...
OSCILLATION_MIN_SIZE = 0.25
# ... and they reverse direction (up-down-up) at least twice, in at least a quarter of the
# transitions: a single spike is an outlier batch, repeated reversals are a pattern.
OSCILLATION_MIN_REVERSALS = 2
OSCILLATION_REVERSAL_SHARE = 0.25
# Stall: the mean loss over the last third of the readings is within 2% (up or down) of the first third's.
# Healthy runs drop the loss by tens of percent over a run; 2% is within batch-to-batch noise.
STALL_REL_CHANGE = 0.02
# ... over at least 20 optimizer steps: a smoke run's first few steps (warmup alone can span them)
# say nothing about whether the LR is too low.
STALL_MIN_STEPS = 20
# A flat loss that had already fallen to half of its first reading is a converged run, not a stall.
STALL_CONVERGED_RATIO = 0.5
# Median global gradient norm below this: updates move the weights by ~lr * 1e-4 (SGD), too little
# to learn in any number of steps: the vanishing-gradient problem (Hochreiter 1991; Glorot & Bengio 2010).
VANISHING_GRAD_NORM = 1e-4
# A peak LR below this is far under the usual range (Adam ~1e-3, SGD ~0.1); raise it 100x.
LOW_LR = 1e-4
# Underfitting: after >= MIN_POINTS epochs the training loss is still above half its first reading
# (the model has not even halved its loss on data it sees every epoch) ...
UNDERFIT_LOSS_RATIO = 0.5
# ... and the validation accuracy, where there is one, is below 90% (above it, the loss simply
# started low: nothing to fix).
UNDERFIT_MAX_ACC = 0.9
# Overfitting: the validation loss has stayed above its minimum for at least 3 evaluations (fewer
# is within noise; early stopping's usual patience is about this) ...
OVERFIT_EVALS = 3
# ... ends at least 5% above that minimum, while the training loss kept falling below its value there.
OVERFIT_MIN_RISE = 0.05
# Dead units: more than half of a ReLU layer's units output 0 for a whole batch; they get no
# gradient and cannot recover (Lu et al. 2020, "Dying ReLU and initialization").
DEAD_FRACTION = 0.5
# Clipping: more than 90% of steps clipped means max_norm is below the typical gradient norm, so
# clipping rescales every update (an unplanned LR cut) rather than catching rare spikes (Pascanu et al. 2013).
CLIPPED_FRACTION = 0.9


@dataclass
class Finding:
    """Args:
        kind: overfitting | underfitting | divergence | oscillation | stall | vanishing_gradients |
            dead_units | clipping.
        message: one sentence: what happened, with the run's numbers.
        evidence: the numbers behind it (JSON-ready).
        suggestion: command-line overrides to try, pasteable as they are.
    """

    kind: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    suggestion: str = ""


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _values(records: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in records if _finite(r.get(key))]


def _readings(epochs: list[dict[str, Any]], steps: list[dict[str, Any]]) -> list[float]:
    """The finite training losses in step order: the per-interval step lines when there are enough,
    else the epoch means."""
    from_steps = _values(steps, "train_loss")
    return from_steps if len(from_steps) >= MIN_POINTS else _values(epochs, "train_loss")


def _first_loss(epochs: list[dict[str, Any]], steps: list[dict[str, Any]]) -> float | None:
    """The earliest finite training-loss reading, step or epoch line."""
    rows = [r for r in (*steps, *epochs) if _finite(r.get("train_loss")) and _finite(r.get("step"))]
    return float(min(rows, key=lambda r: r["step"])["train_loss"]) if rows else None


def _peak_lr(epochs: list[dict[str, Any]], steps: list[dict[str, Any]]) -> float | None:
    lrs = _values(steps, "lr") + _values(epochs, "lr")
    return max(lrs) if lrs else None


def _lr(value: float) -> str:
    """An LR as the user would type it: 0.003, 1e-7, 3."""
    return f"{value:.2g}".replace("e-0", "e-").replace("e+0", "e")


def _divergence(epochs: list[dict[str, Any]], steps: list[dict[str, Any]], status: str) -> Finding | None:
    # metrics.jsonl writes a non-finite loss as null; records still in memory hold nan or inf.
    bad = [r for r in (*steps, *epochs) for key in ("train_loss", "val_loss") if key in r and not _finite(r[key])]
    readings = _readings(epochs, steps)
    first = _first_loss(epochs, steps)
    peak = _peak_lr(epochs, steps)
    evidence: dict[str, Any] = {"status": status, "first_loss": first, "peak_lr": peak,
                                "last_finite_loss": readings[-1] if readings else None}
    suggestion = f"optim.lr={_lr(peak / 10)} clipping=norm" if peak else "clipping=norm"
    at_lr = f" at a peak LR of {_lr(peak)}" if peak else ""
    rose = first and readings and readings[-1] > first
    rise = f"; the loss rose from {first:.3g} to {readings[-1]:.3g} first" if rose else ""
    if bad:
        where = min((r["step"] for r in bad if _finite(r.get("step"))), default=None)
        evidence["first_non_finite_step"] = where
        at = f" at step {where}" if where is not None else ""
        return Finding("divergence", f"the loss became non-finite{at}{at_lr}{rise}; the updates overshoot",
                       evidence, suggestion)
    if status == "diverged":
        return Finding("divergence", f"the run diverged: gradients or loss became non-finite{at_lr}{rise}; "
                       "the updates overshoot", evidence, suggestion)
    # The median of the last third, not the last reading: one bad batch is not a divergence.
    tail = statistics.median(readings[-max(len(readings) // 3, 1):]) if readings else None
    if first and tail is not None and len(readings) >= MIN_POINTS and tail > DIVERGE_RATIO * first:
        evidence["final_loss"] = tail
        return Finding("divergence", f"the training loss rose from {first:.3g} to {tail:.3g} (median of the last "
                       f"readings, over {DIVERGE_RATIO:g}x its start){at_lr}: the LR is too high", evidence, suggestion)
    return None


def _oscillation(epochs: list[dict[str, Any]], steps: list[dict[str, Any]]) -> Finding | None:
    losses = _readings(epochs, steps)
    first = _first_loss(epochs, steps)
    if len(losses) < MIN_POINTS + 2 or not first or first <= 0:
        return None

    def big(a: float, b: float) -> bool:
        low, high = sorted((abs(a), abs(b)))
        return high > OSCILLATION_JUMP * max(low, 1e-12) and high - low > OSCILLATION_MIN_SIZE * first

    moves = [(b > a) if big(a, b) else None for a, b in zip(losses, losses[1:])]
    reversals = sum(1 for a, b in zip(moves, moves[1:]) if a is not None and b is not None and a != b)
    if reversals < OSCILLATION_MIN_REVERSALS or reversals < OSCILLATION_REVERSAL_SHARE * (len(moves) - 1):
        return None
    peak = _peak_lr(epochs, steps)
    swing = max(abs(b - a) for a, b in zip(losses, losses[1:]))
    return Finding(
        "oscillation",
        f"the training loss jumps up and down ({reversals} reversals in {len(losses)} readings, swings up to "
        f"{swing:.3g} against a first loss of {first:.3g}): the LR is too high",
        {"reversals": reversals, "readings": len(losses), "largest_swing": swing, "first_loss": first, "peak_lr": peak},
        f"optim.lr={_lr(peak / 3)} clipping=norm" if peak else "clipping=norm",
    )


def _stall(epochs: list[dict[str, Any]], steps: list[dict[str, Any]]) -> Finding | None:
    readings = _values(epochs, "train_loss") if len(epochs) >= MIN_POINTS else _readings(epochs, steps)
    span = [r["step"] for r in (*steps, *epochs) if _finite(r.get("step"))]
    if len(readings) < MIN_POINTS or not span or max(span) - min(span) < STALL_MIN_STEPS:
        return None
    third = max(len(readings) // 3, 1)
    start, end = statistics.fmean(readings[:third]), statistics.fmean(readings[-third:])
    first = _first_loss(epochs, steps) or start
    change = (start - end) / abs(start) if start else 0.0
    if abs(change) >= STALL_REL_CHANGE or end < STALL_CONVERGED_RATIO * first:
        return None
    grads = _values(steps, "grad_norm") or _values(epochs, "grad_norm")
    grad = statistics.median(grads) if grads else None
    peak = _peak_lr(epochs, steps)
    evidence = {"loss_start": start, "loss_end": end, "relative_change": -change, "median_grad_norm": grad,
                "peak_lr": peak}
    moved = f"the loss barely moved ({start:.3g} -> {end:.3g}, {-change:+.1%})"
    if grad is not None and grad < VANISHING_GRAD_NORM:
        return Finding("vanishing_gradients", f"{moved} and the gradient norm is "
                       f"{grad:.1e}: gradients vanish before they reach the weights", evidence, "init=he norm=batchnorm")
    if peak is not None and peak < LOW_LR:
        return Finding("stall", f"{moved} with a peak LR of {_lr(peak)}: "
                       "the LR is too low", evidence, f"optim.lr={_lr(min(peak * 100, 1e-2))}")
    return Finding("stall", f"{moved}; measure a better LR with the LR range test",
                   evidence, "task=lr_find")


def _underfitting(epochs: list[dict[str, Any]], steps: list[dict[str, Any]]) -> Finding | None:
    losses = _values(epochs, "train_loss")
    first = _first_loss(epochs, steps)
    if len(losses) < MIN_POINTS or not first or first <= 0:
        return None
    accuracy = _values(epochs, "val_acc")
    if losses[-1] <= UNDERFIT_LOSS_RATIO * first or (accuracy and accuracy[-1] >= UNDERFIT_MAX_ACC):
        return None
    last_epoch = epochs[-1].get("epoch") or len(epochs)
    return Finding(
        "underfitting",
        f"the training loss is still {losses[-1] / first:.0%} of its start ({first:.3g} -> {losses[-1]:.3g})"
        + (f", val accuracy {accuracy[-1]:.1%}" if accuracy else "")
        + ": train longer, with a bigger model (model.width / model.depth) or a better LR (task=lr_find)",
        {"first_loss": first, "final_train_loss": losses[-1], "final_val_acc": accuracy[-1] if accuracy else None},
        f"epochs={2 * int(last_epoch)}",
    )


def _overfitting(epochs: list[dict[str, Any]], status: str) -> Finding | None:
    rows = [r for r in epochs if _finite(r.get("val_loss")) and _finite(r.get("train_loss"))]
    if len(rows) < OVERFIT_EVALS + 1:
        return None
    best = min(range(len(rows)), key=lambda i: rows[i]["val_loss"])
    after = rows[best + 1:]
    low, last = rows[best], rows[-1]
    if (len(after) < OVERFIT_EVALS or last["val_loss"] < (1 + OVERFIT_MIN_RISE) * low["val_loss"]
            or last["train_loss"] >= low["train_loss"]):
        return None
    began = low.get("epoch")
    evidence = {"began_epoch": began, "best_val_loss": low["val_loss"], "final_val_loss": last["val_loss"],
                "train_loss_at_best": low["train_loss"], "final_train_loss": last["train_loss"],
                "gap": last["val_loss"] - last["train_loss"]}
    handled = " (early stopping ended the run)" if status == "early_stopped" else ""
    return Finding(
        "overfitting",
        f"from epoch {began} the validation loss rose {low['val_loss']:.3g} -> {last['val_loss']:.3g} while the "
        f"training loss fell {low['train_loss']:.3g} -> {last['train_loss']:.3g}{handled}",
        evidence,
        "regularisation=dropout" if status == "early_stopped" else "regularisation=dropout early_stopping=val_loss",
    )


def _last_layers(layers: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The layer dicts of the last evaluation, from either a list of "layers" records or one list of layer dicts."""
    if not layers:
        return []
    if "layers" in layers[-1]:
        return list(layers[-1].get("layers") or [])
    return list(layers)


def _dead_units(layers: list[dict[str, Any]] | None) -> Finding | None:
    dead = [(layer.get("name"), float(layer["dead_fraction"])) for layer in _last_layers(layers)
            if _finite(layer.get("dead_fraction")) and layer["dead_fraction"] > DEAD_FRACTION]
    if not dead:
        return None
    shown = ", ".join(f"{name} {fraction:.0%}" for name, fraction in dead[:4]) + (" ..." if len(dead) > 4 else "")
    return Finding("dead_units", f"{len(dead)} ReLU layer(s) have most units dead (zero for the whole batch): {shown}",
                   {"layers": {name: fraction for name, fraction in dead}}, "model.activation=leaky_relu init=he")


def _clipping(steps: list[dict[str, Any]]) -> Finding | None:
    fractions = _values(steps, "clipped_fraction")
    if not fractions or statistics.fmean(fractions) <= CLIPPED_FRACTION:
        return None
    mean = statistics.fmean(fractions)
    grads = _values(steps, "grad_norm")
    typical = statistics.median(grads) if grads else None
    return Finding(
        "clipping", f"{mean:.0%} of steps were clipped: max_norm is below the usual gradient norm"
        + (f" ({typical:.3g})" if typical else "") + ", so clipping shrinks every update",
        {"clipped_fraction": mean, "median_grad_norm": typical},
        f"clipping.max_norm={typical:.2g}" if typical else "clipping=none",
    )


def diagnose(
    epochs: list[dict[str, Any]],
    steps: list[dict[str, Any]],
    layers: list[dict[str, Any]] | None = None,
    status: str = "completed",
) -> list[Finding]:
    """Findings about a run, most severe first; none for a healthy run.

    Args:
        epochs: the "epoch" records, in order.
        steps: the "step" records, in order.
        layers: the "layers" records (the last one is used), or the layer dicts of one evaluation.
        status: the run's status (completed | early_stopped | diverged | interrupted).
    """
    findings: list[Finding | None] = []
    diverged = _divergence(epochs, steps, status)
    findings.append(diverged)
    if diverged is None:  # after a divergence the other curve shapes mean nothing
        oscillating = _oscillation(epochs, steps)
        findings.append(oscillating)
        stalled = _stall(epochs, steps) if oscillating is None else None  # no progress: the oscillation explains it
        findings.append(stalled)
        findings.append(_overfitting(epochs, status))
        if stalled is None:  # a stall is the more specific underfitting
            findings.append(_underfitting(epochs, steps))
    findings.append(_dead_units(layers))
    findings.append(_clipping(steps))
    return [finding for finding in findings if finding is not None]


def diagnose_file(metrics_path: Path, status: str = "completed") -> list[Finding]:
    """`diagnose` on a run's metrics.jsonl."""
    records = read_metrics(metrics_path)
    return diagnose(records["epoch"], records["step"], records["layers"], status)


def to_dicts(findings: list[Finding]) -> list[dict[str, Any]]:
    """The findings as JSON-ready dicts, for summary.json's "diagnosis"."""
    return [json_safe(asdict(finding)) for finding in findings]


def panel(findings: list[Finding]) -> RenderableType:
    """A rich panel: one row per finding (what, try), or a green all-clear."""
    if not findings:
        return Panel(Text("no problems found in the curves", style="green"), title="diagnosis", border_style="green")
    table = Table(show_header=True, header_style="bold", box=None, expand=True)
    table.add_column("finding", style="bold yellow", no_wrap=True)
    table.add_column("what the curves show")
    table.add_column("try", style="cyan")
    for finding in findings:
        table.add_row(finding.kind, finding.message, finding.suggestion)
    return Panel(table, title="diagnosis", border_style="yellow")
