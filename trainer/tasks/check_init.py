"""`task=check_init`: one batch through the freshly initialised model, before any training.

A good initialisation keeps each layer's activation scale near the input's and lets gradients
reach the first layer (Glorot & Bengio 2010; He et al. 2015): across depth the activation std
should neither shrink towards 0 (vanishing) nor grow by orders of magnitude (exploding). This
prints a per-layer table with such layers flagged and writes init_check.png with a histogram of
each layer's activations.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from trainer.engine.parts import Parts
from trainer.observe.curves import save_figure
from trainer.observe.layer_stats import ACTIVATIONS, collect

# An activation std below 1/100 of the input's: the signal has all but vanished, and so will the
# gradients that flow back through the same layers.
VANISHING_RATIO = 1e-2
# Above 100x the input's: activations (and, through the same weights, gradients) are exploding;
# a stable init keeps the ratio near 1 at every depth (He et al. 2015, eq. 10).
EXPLODING_RATIO = 1e2
# Gradients: a layer's weight-gradient std against the output layer's, the same two bounds.
MAX_HISTOGRAMS = 24  # panels in init_check.png; deeper nets show evenly spaced layers
SAMPLES_PER_LAYER = 4096  # activation values kept per layer for its histogram
BATCH = 256  # samples in the checked batch (or the whole training set if smaller)


def flag(ratio: float | None, what: str) -> str | None:
    """"vanishing <what>" / "exploding <what>" for a ratio outside the bounds (non-finite: exploding)."""
    if ratio is None:
        return None
    if not math.isfinite(ratio) or ratio > EXPLODING_RATIO:
        return f"exploding {what}"
    if ratio < VANISHING_RATIO:
        return f"vanishing {what}"
    return None


def check_init(parts: Parts, run_dir: Path) -> dict[str, Any]:
    """Per-layer activation and gradient statistics of the untrained model on one training batch.

    Args:
        parts: built by trainer.engine.parts.build_parts (nothing is trained; the model is left as found).
        run_dir: where init_check.png goes.

    Returns:
        {"input_std", "layers": [collect's dicts + "act_ratio", "grad_ratio", "flags"],
         "flagged": [{"name", "flags"}], "ok": no layer flagged, "plot": path}.
    """
    x, y = parts.data.head("train", BATCH)
    rows = collect(parts.model, x, y, parts.criterion, parts.precision, activation_samples=SAMPLES_PER_LAYER)
    # Character ids are indices, not a signal: the embedding's output is the input the layers see.
    input_std = rows[0]["act_std"] if parts.data.chars is not None and rows[0]["act_std"] else float(x.float().std())
    samples = {row["name"]: row.pop("activations") for row in rows}
    graded = [row for row in rows if row["grad_std"] is not None]
    reference = graded[-1]["grad_std"] if graded else None  # the output layer's gradient scale
    for row in rows:
        row["act_ratio"] = row["act_std"] / input_std if row["act_std"] is not None and input_std > 0 else None
        row["grad_ratio"] = (row["grad_std"] / reference if row["grad_std"] is not None and reference
                             and math.isfinite(reference) else None)
        row["flags"] = [f for f in (flag(row["act_ratio"], "activations"), flag(row["grad_ratio"], "gradients")) if f]
    flagged = [{"name": row["name"], "flags": row["flags"]} for row in rows if row["flags"]]
    plot = Path(run_dir) / "init_check.png"
    save_figure(_figure(rows, samples, input_std), plot)
    return {"input_std": input_std, "layers": rows, "flagged": flagged, "ok": not flagged, "plot": str(plot)}


def _shown(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The layers to draw: each activation module's output (what the next layer sees) and the
    model output, or every layer for a net without activation modules; at most MAX_HISTOGRAMS."""
    activation_kinds = {cls.__name__ for cls in ACTIVATIONS}
    chosen = [row for row in rows if row["kind"] in activation_kinds] + rows[-1:]
    if len(chosen) < 2:
        chosen = rows
    if len(chosen) > MAX_HISTOGRAMS:
        chosen = [chosen[int(i)] for i in np.linspace(0, len(chosen) - 1, MAX_HISTOGRAMS)]
    return chosen


def _figure(rows: list[dict[str, Any]], samples: dict[str, Any], input_std: float) -> Figure:
    shown = _shown(rows)
    columns = min(4, max(len(shown), 1))
    lines = max(math.ceil(len(shown) / columns), 1)
    height = 2.4 * lines + 1.0  # 1 inch above the panels for the title
    figure = Figure(figsize=(3.2 * columns, height), dpi=100)
    # Fixed spacing: constrained layout takes seconds to solve for a few dozen panels.
    figure.subplots_adjust(left=0.03, right=0.98, bottom=0.4 / height, top=1 - 1.0 / height, hspace=0.7, wspace=0.15)
    axes = np.atleast_1d(figure.subplots(lines, columns, squeeze=False)).ravel()
    for ax, row in zip(axes, shown):
        values = samples[row["name"]].numpy()
        values = values[np.isfinite(values)]
        if values.size:
            ax.hist(values, bins=50, histtype="stepfilled", color="tab:red" if row["flags"] else "tab:blue")
        ax.set_title(f"{row['name']} ({row['kind']})\nstd {row['act_std']:.3g}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
    for ax in axes[len(shown):]:
        ax.set_axis_off()
    figure.suptitle(f"activations at initialisation (input std {input_std:.3g}; red: flagged)", y=1 - 0.25 / height)
    return figure


NUMBER_WIDTH = 9


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def render(result: dict[str, Any]) -> RenderableType:
    """A rich table of every layer's activation mean/std and gradient std, flagged rows in red."""
    table = Table(title=f"initialisation check (input std {result['input_std']:.3g})")
    for column in ("layer", "kind", "act mean", "act std", "x input", "grad std", "x output", "flag"):
        if column in ("layer", "kind", "flag"):  # names fold onto a second line in a narrow terminal ...
            table.add_column(column, justify="left", overflow="fold")
        else:  # ... numbers never lose digits ("-1.23e+22": 9 characters)
            table.add_column(column, justify="right", no_wrap=True, min_width=NUMBER_WIDTH)
    for row in result["layers"]:
        table.add_row(row["name"], row["kind"], _number(row["act_mean"]), _number(row["act_std"]),
                      _number(row["act_ratio"], 2), _number(row["grad_std"]), _number(row["grad_ratio"], 2),
                      ", ".join(row["flags"]), style="red" if row["flags"] else None)
    verdict = (Text("no vanishing or exploding layers", style="green") if result["ok"]
               else Text(f"{len(result['flagged'])} layer(s) flagged: try init=he (ReLU) or init=xavier (tanh), "
                         "or a normalisation layer (norm=batchnorm)", style="bold red"))
    return Group(table, verdict, Text(f"histograms: {result['plot']}"))
