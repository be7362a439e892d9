"""What a run measures for the diagnosis besides its losses: facts from before the first step
(`start_record`) and per-layer statistics at each evaluation (`layers_probe`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from trainer.data import DataSplits
from trainer.data.seq2seq import IGNORE_INDEX
from trainer.observe import layer_stats
from trainer.tricks.norm import local_statistics

if TYPE_CHECKING:
    from trainer.engine.loop import Trainer
    from trainer.engine.parts import Parts

START_SAMPLES = 256  # training samples the fresh model's loss is measured on: a stable mean, no time
# Streamed training images the input mean and std are measured on (data in memory: all of it).
STREAMED_STAT_SAMPLES = 1024


@torch.no_grad()
def start_record(parts: "Parts") -> dict[str, Any]:
    """Facts from before training, for the diagnosis: the training inputs' mean and std (are they
    standardised?), the chance-level loss and the fresh model's loss on training samples (does
    the init start near chance?). Measured in eval mode, so no BatchNorm statistic or RNG moves."""
    data, model = parts.data, parts.model
    inputs = data.x_train if isinstance(data, DataSplits) else data.head("train", STREAMED_STAT_SAMPLES)[0]
    x = inputs.float()
    features = inputs.is_floating_point()  # token ids are not features
    classification = data.task == "classification"
    targets = data.labels("train")
    if classification:  # predicting the class (or token) frequencies: the loss of a model that knows nothing
        labels = targets[targets != IGNORE_INDEX]  # (N,) or per position (N, L); padding is no class
        counts = torch.bincount(labels, minlength=data.num_outputs).float()
        p = counts[counts > 0] / counts.sum()
        chance = float(-(p * p.log()).sum())
    else:  # predicting the mean target
        chance = float(targets.float().var(dim=0, unbiased=False).mean())
    sample_x, sample_y = data.head("train", START_SAMPLES)
    model.eval()
    try:
        with parts.precision.autocast():
            out = model(sample_x).float()
        loss = F.cross_entropy(out, sample_y) if classification else F.mse_loss(out, sample_y)
    finally:
        model.train()
    return {"kind": "start", "epoch": 0, "step": 0, "task": data.task, "num_outputs": data.num_outputs,
            # Character and token ids are indices, not magnitudes: there is no scale to diagnose.
            "input_mean": float(x.mean()) if features else None, "input_std": float(x.std()) if features else None,
            "chance_loss": chance,
            "initial_loss": float(loss), "train_samples": data.num_train}


LAYER_STATS_BATCH = 64  # validation samples for the statistics measured apart (the fresh model, a compiled net)


def layers_probe(trainer: "Trainer") -> dict[str, Any] | None:
    """Per-layer activation, weight and gradient statistics at an evaluation where they are due
    (trainer.layers_due: layer_stats_every), else None: those of the epoch's last training step
    where the trainer watched it (its batch, its gradients before clipping and the update, as the
    optimizer saw them), else one extra forward and backward on validation samples (no step, and
    the model is left as it was)."""
    parts, state = trainer.parts, trainer.state
    if not trainer.layers_due:
        return None
    rows, trainer.layer_rows = trainer.layer_rows, None
    if rows is None:
        x, y = parts.data.head("val", LAYER_STATS_BATCH)
        with local_statistics(parts.model):  # rank 0 alone probes: no batch norm may wait for the other ranks
            rows = layer_stats.collect(parts.model, x, y, parts.criterion, parts.precision)
    return {"kind": "layers", "epoch": state.epoch, "step": state.step, "layers": rows}
