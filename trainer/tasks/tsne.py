"""`task=tsne`: a 2-D t-SNE map (van der Maaten & Hinton 2008) of what a trained network has learned.

The features are the penultimate layer's, the input of the output layer `head`, caught by a
forward pre-hook on the validation set, so every model (CNN, MLP, ResNet, RNN) is read at the
same place without knowing its insides. scikit-learn's TSNE embeds them once per perplexity,
side by side in `tsne.png`, coloured by class: the map changes with the perplexity (the
effective number of neighbours, 5 to 50 in the original paper; Wattenberg et al. 2016 show how
much), so one panel alone can mislead. A perplexity must be below the number of points.

Each panel also reports how often a point's nearest neighbours in the map share its class: a
number to compare maps by, not a test score.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from rich.console import RenderableType
from rich.table import Table
from torch import nn

from trainer.engine.trained import load_run
from trainer.errors import ConfigError, TrainerError
from trainer.observe.curves import save_figure

PLOT = "tsne.png"
EXTRA = "tsne"  # the optional dependency group in pyproject.toml that brings scikit-learn
NEIGHBOURS = 10  # for the neighbour class agreement of a map


def _tsne_class() -> type:
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise TrainerError(f"task=tsne needs scikit-learn, which is not installed: pip install 'trainer[{EXTRA}]' "
                           f"(in a checkout: pip install -e '.[{EXTRA}]')") from None
    return TSNE


def _perplexities(perplexity: Any) -> list[float]:
    values = list(perplexity) if isinstance(perplexity, (list, tuple)) else [perplexity]
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in values):
        raise ConfigError(f"tsne.perplexity={perplexity} must be a number > 0 or a list of them, e.g. [5,30,50]")
    return [float(v) for v in values]


@torch.no_grad()
def penultimate_features(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """What the model's output layer `head` receives for each input, caught by a forward pre-hook."""
    caught: list[torch.Tensor] = []
    handle = model.head.register_forward_pre_hook(lambda module, args: caught.append(args[0].detach().flatten(1)))
    try:
        for start in range(0, len(x), batch_size):
            model(x[start:start + batch_size])
    finally:
        handle.remove()
    return torch.cat(caught)


def neighbour_agreement(embedding: np.ndarray, labels: np.ndarray, k: int = NEIGHBOURS) -> float:
    """The fraction of each point's k nearest neighbours in the map that share its class, averaged."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(embedding) - 1)
    _, index = NearestNeighbors(n_neighbors=k + 1).fit(embedding).kneighbors(embedding)
    return float((labels[index[:, 1:]] == labels[:, None]).mean())  # column 0 is the point itself


def tsne(resume: str | None, run_dir: Path, perplexity: Any = (5, 30, 50), max_points: int = 2000,
         seed: int = 0) -> dict[str, Any]:
    """Embed the penultimate-layer features of the first `max_points` validation samples of the run
    `resume` names, once per perplexity; write run_dir/tsne.png.

    Returns:
        {"checkpoint", "points", "feature_dim", "panels": [{"perplexity", "kl_divergence",
         "neighbour_agreement"}], "plot"}.
    """
    perplexities = _perplexities(perplexity)
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 2:
        raise ConfigError(f"tsne.max_points={max_points} must be an integer >= 2")
    tsne_class = _tsne_class()
    run = load_run(resume, "tsne")
    if run.data.task != "classification" or run.data.labels("val").dim() != 1:
        kind = run.data.task if run.data.task != "classification" else "a token sequence per sample, not a class"
        raise ConfigError(f"task=tsne colours the points by class; the run's data={run.config['data'].get('name')} "
                          f"is {kind}")
    x, y = run.data.head("val", max_points)
    x, labels = x.cpu(), y.cpu().numpy()
    too_large = [p for p in perplexities if p >= len(x)]
    if too_large:
        raise ConfigError(f"tsne.perplexity={too_large[0]:g} must be below the number of points ({len(x)} validation "
                          f"samples); use a smaller perplexity")
    features = penultimate_features(run.model, x).numpy().astype(np.float64)
    panels, embeddings = [], []
    for value in perplexities:
        fitted = tsne_class(n_components=2, perplexity=value, init="pca", learning_rate="auto", random_state=seed)
        embedding = fitted.fit_transform(features)
        embeddings.append(embedding)
        panels.append({"perplexity": value, "kl_divergence": float(fitted.kl_divergence_),
                       "neighbour_agreement": neighbour_agreement(embedding, labels)})
    run_dir.mkdir(parents=True, exist_ok=True)
    plot = run_dir / PLOT
    save_figure(_figure(embeddings, labels, panels, str(run.path)), plot)
    return {"checkpoint": str(run.path), "points": len(x), "feature_dim": features.shape[1], "panels": panels,
            "plot": str(plot)}


def _figure(embeddings: list[np.ndarray], labels: np.ndarray, panels: list[dict[str, Any]], source: str) -> Figure:
    figure = Figure(figsize=(4.5 * len(embeddings), 4.8), dpi=100, layout="constrained")
    classes = np.unique(labels)
    colours = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for index, (embedding, panel) in enumerate(zip(embeddings, panels)):
        axes = figure.add_subplot(1, len(embeddings), index + 1)
        for number, label in enumerate(classes):
            chosen = labels == label
            axes.scatter(embedding[chosen, 0], embedding[chosen, 1], s=6, label=str(label),
                         color=colours(number % colours.N))
        axes.set_title(f"perplexity {panel['perplexity']:g} (neighbours same class "
                       f"{panel['neighbour_agreement']:.0%})", fontsize=9)
        axes.set_xticks([])
        axes.set_yticks([])
    figure.axes[-1].legend(title="class", fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    figure.suptitle(f"t-SNE of the penultimate-layer features: {source}", fontsize=9)
    return figure


def render(result: dict[str, Any]) -> RenderableType:
    table = Table(title=f"t-SNE of {result['points']} validation samples' {result['feature_dim']}-d penultimate features")
    for column in ("perplexity", "KL divergence", f"{NEIGHBOURS} neighbours same class"):
        table.add_column(column, justify="right")
    for panel in result["panels"]:
        table.add_row(f"{panel['perplexity']:g}", f"{panel['kl_divergence']:.3f}", f"{panel['neighbour_agreement']:.1%}")
    table.caption = f"{result['plot']}"
    return table
