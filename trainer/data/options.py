"""Options that apply to any `data=` choice, after its builder: standardising the inputs, and
planting the data faults the diagnosis must recognise (inputs far from zero mean and unit std,
training labels that do not match the inputs).

    train data=tensors data.path=raw.npz data.standardise=true     # your raw features, standardised
    train data.input_scale=1000                                     # plant: features 1000x too big
    train data.label_noise=1                                        # plant: every training label random

The keys live under `data:` in config.yaml, so they merge into whichever data set is chosen.
They run in a fixed order: plant (scale, then offset, then label noise), then standardise, so
`data.standardise=true` repairs a planted scale or offset the way it repairs raw data.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from trainer.data import DataSplits
from trainer.data.streamed import StreamedSplits
from trainer.errors import ConfigError

# The keys this module owns in the `data` node, with their neutral values (no change to the data).
OPTIONS: dict[str, Any] = {"label_noise": 0.0, "standardise": False, "input_scale": 1.0, "input_offset": 0.0}
# The label-noise draw has its own generator: the same data and fraction always corrupt the same labels.
LABEL_NOISE_SEED = 1234


def split(node: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The data node's builder keys and its options (missing options at their neutral values)."""
    builder_keys = {key: value for key, value in node.items() if key not in OPTIONS}
    options = {key: node.get(key, default) for key, default in OPTIONS.items()}
    return builder_keys, options


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"data.{key}={value!r} must be a number")
    return float(value)


def check(options: dict[str, Any]) -> None:
    """One-line errors for bad option values, before any data is touched."""
    noise = _number("label_noise", options["label_noise"])
    if not 0 <= noise <= 1:
        raise ConfigError(f"data.label_noise={options['label_noise']} must be in [0, 1] (the fraction of training "
                          "labels replaced by a random class)")
    if not isinstance(options["standardise"], bool):
        raise ConfigError(f"data.standardise={options['standardise']!r} must be true or false")
    scale = _number("input_scale", options["input_scale"])
    if scale == 0 or scale != scale or abs(scale) == float("inf"):
        raise ConfigError(f"data.input_scale={options['input_scale']} must be a finite non-zero number")
    offset = _number("input_offset", options["input_offset"])
    if offset != offset or abs(offset) == float("inf"):
        raise ConfigError(f"data.input_offset={options['input_offset']} must be a finite number")


def apply(data: DataSplits | StreamedSplits, label_noise: float = 0.0, standardise: bool = False, input_scale: float = 1.0,
          input_offset: float = 0.0) -> DataSplits | StreamedSplits:
    """The data with the options applied; neutral options return `data` itself.

    Args:
        label_noise: fraction of training labels replaced by a class drawn uniformly at random
            (it may equal the true one); 1 makes the training labels unrelated to the inputs.
            Validation and test labels stay true, so they measure what was learnt about the inputs.
            Classification only.
        standardise: subtract the training set's per-channel mean and divide by its std (every
            split, training statistics only, as for real data).
        input_scale: multiply every input (every split) by this.
        input_offset: then add this to every input (every split).
    """
    check({"label_noise": label_noise, "standardise": standardise, "input_scale": input_scale,
           "input_offset": input_offset})
    if isinstance(data, StreamedSplits):
        if (label_noise, standardise, input_scale, input_offset) != tuple(OPTIONS.values()):
            raise ConfigError("data.label_noise, data.standardise, data.input_scale and data.input_offset change "
                              "data held in memory; this data set is streamed from disk (standardised per "
                              "channel already): leave them at 0, false, 1 and 0 (data=imagefolder: or hold it in "
                              "memory, data.in_memory=true)")
        return data
    x_train, x_val, x_test, y_train = data.x_train, data.x_val, data.x_test, data.y_train
    if data.chars is not None and (input_scale != 1 or input_offset != 0 or standardise):
        raise ConfigError("data.standardise, data.input_scale and data.input_offset apply to numeric inputs; "
                          "this data set's inputs are character ids: leave them at false, 1 and 0")
    if input_scale != 1 or input_offset != 0:
        x_train, x_val = x_train * input_scale + input_offset, x_val * input_scale + input_offset
        x_test = x_test * input_scale + input_offset if x_test is not None else None
    if label_noise > 0:
        if data.task != "classification":
            raise ConfigError(f"data.label_noise={label_noise} needs a classification task; this data is {data.task}")
        y_train = noisy_labels(y_train, data.num_outputs, label_noise)
    if standardise:
        mean, std = channel_stats(x_train)
        x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
        x_test = (x_test - mean) / std if x_test is not None else None
    if x_train is data.x_train and y_train is data.y_train:
        return data
    return dataclasses.replace(data, x_train=x_train, y_train=y_train, x_val=x_val, x_test=x_test)


def noisy_labels(labels: torch.Tensor, num_classes: int, fraction: float) -> torch.Tensor:
    """`labels` with round(fraction * N) of them, chosen at random, replaced by random classes
    (N counts every position of per-position labels (N, L), each position a label). A negative
    label is cross-entropy's ignore_index (a seq2seq target past its end): no label, so it is
    neither counted nor replaced, which would make the model learn random tokens there."""
    generator = torch.Generator().manual_seed(LABEL_NOISE_SEED)
    flat = labels.flatten()
    labelled = torch.nonzero(flat >= 0).flatten()
    count = round(fraction * len(labelled))
    chosen = labelled[torch.randperm(len(labelled), generator=generator)[:count]]
    noisy = flat.clone()
    noisy[chosen] = torch.randint(num_classes, (count,), generator=generator, dtype=labels.dtype)
    return noisy.reshape(labels.shape)


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std per channel (dim 1; per feature for flat inputs), shaped to broadcast over x."""
    dims = [0, *range(2, x.ndim)]
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True).clamp_min(1e-8)  # a constant channel stays constant, not nan
    return mean, std
