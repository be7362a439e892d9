"""curves.png: a run's training curves, drawn from its metrics.jsonl.

Four panels against the optimizer step: train and val loss (log y), val accuracy, learning rate
(log y when positive) and gradient norm (log y). Works for any run the loop can leave: None or
non-finite values (a diverged run), epoch lines only (log_every longer than the run), a single
point, a regression task without accuracy, a half-written last line (a killed run).

Drawn with matplotlib's object API on the Agg canvas: no pyplot, no global backend switch, no
display needed.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from trainer.observe.history import read_metrics

FIGSIZE = (11, 8)
DPI = 110
FEW_POINTS = 30  # a series this short is drawn with markers, so a single point still shows


class PlotError(RuntimeError):
    """The curves could not be drawn: the metrics file is missing or unreadable, or saving failed."""


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the records whose `key` is a finite number."""
    xs, ys = [], []
    for record in records:
        x, y = record.get("step"), record.get(key)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(y, bool) and math.isfinite(y):
            xs.append(float(x))
            ys.append(float(y))
    return xs, ys


def _plot(ax: Axes, series: tuple[list[float], list[float]], label: str, **style: Any) -> bool:
    xs, ys = series
    if not xs:
        return False
    marker = "o" if len(xs) <= FEW_POINTS else None
    ax.plot(xs, ys, label=label, marker=marker, markersize=3, **style)
    return True


def _finish(ax: Axes, title: str, ylabel: str, drawn: bool, log_y: bool, empty: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.grid(True, alpha=0.3)
    ax.set_ylabel(ylabel)
    if not drawn:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, color="gray")
        return
    # Losses and norms span decades, so log scale; a 0 (a memorised batch's loss) cannot be shown
    # on it and is left out, but a panel with no positive value at all stays linear.
    if log_y and any(y > 0 for line in ax.get_lines() for y in line.get_ydata()):
        ax.set_yscale("log", nonpositive="mask")
        ax.set_ylabel(f"{ylabel} (log)")
    ax.legend(loc="best", fontsize="small")


def draw_curves(steps: list[dict[str, Any]], epochs: list[dict[str, Any]], title: str = "") -> Figure:
    """The four-panel figure for these step and epoch records."""
    figure = Figure(figsize=FIGSIZE, dpi=DPI)
    # Fixed spacing, not layout="constrained": solving the layout took half of the ~1.4 s a run
    # spent drawing this figure (measured on a loaded 2-core CPU; 0.7 s without it), and every
    # run and sweep job pays it. These margins fit the panels, their log-scale tick labels and
    # a two-line title at FIGSIZE.
    figure.subplots_adjust(left=0.09, right=0.98, bottom=0.07, top=0.87, wspace=0.24, hspace=0.32)
    loss, acc, lr, grad = figure.subplots(2, 2).flat
    drawn = _plot(loss, _series(steps, "train_loss"), "train (per log interval)", alpha=0.6)
    drawn |= _plot(loss, _series(epochs, "train_loss"), "train (epoch mean)")
    drawn |= _plot(loss, _series(epochs, "val_loss"), "validation")
    _finish(loss, "loss", "loss", drawn, True, "no finite loss logged")

    drawn = _plot(acc, _series(epochs, "val_acc"), "validation", color="tab:green")
    _finish(acc, "validation accuracy", "accuracy", drawn, False, "no accuracy (regression task or no evaluation)")

    # Step lines when there are any (finer), else the LR at each epoch end.
    lrs = _series(steps, "lr")
    drawn = _plot(lr, lrs if lrs[0] else _series(epochs, "lr"), "lr", color="tab:purple")
    _finish(lr, "learning rate", "learning rate", drawn, True, "no learning rate logged")

    source = steps if _series(steps, "grad_norm")[0] else epochs
    label = "mean (pre-clip)" if source is steps else "at epoch end"
    drawn = _plot(grad, _series(source, "grad_norm"), label, color="tab:red")
    # Lighter and beneath the mean: with one step per log interval the two are equal.
    drawn |= _plot(grad, _series(steps, "grad_norm_max"), "max (pre-clip)", color="tab:orange", alpha=0.5, zorder=1)
    _finish(grad, "gradient norm", "global L2 norm", drawn, True, "no gradient norm logged")
    if title:
        figure.suptitle(title)
    return figure


def plot_curves(metrics_path: Path, out_path: Path, title: str = "") -> None:
    """Read `metrics_path` (metrics.jsonl) and write the curves PNG to `out_path`, titled `title`
    (the run's configuration), or by the run folder's name when none is given.

    Raises:
        PlotError: the metrics file cannot be read, or the PNG cannot be written.
    """
    try:
        records = read_metrics(metrics_path)
    except OSError as error:
        raise PlotError(f"cannot read {metrics_path}: {error.strerror or error}") from None
    figure = draw_curves(records["step"], records["epoch"], title=title or Path(metrics_path).parent.name)
    save_figure(figure, out_path)


def save_figure(figure: Figure, out_path: Path) -> None:
    """Write a figure as PNG; any failure becomes a PlotError naming the file."""
    try:
        figure.savefig(out_path, format="png")
    except (OSError, ValueError, RuntimeError) as error:
        raise PlotError(f"cannot write {out_path}: {error}") from None
