"""Measuring spike delays (Gers, Schraudolph & Schmidhuber 2002, "Learning precise timing with LSTM
recurrent networks", the MSD task), the timing test where peephole connections are claimed to help.

Each sequence is silent but for two unit spikes; the class is the number of steps between them.
The second spike is the last step, so at the read-out the net must know, to the step, how long
ago the first one was: a clock in the cell state, not a memory of a value. Delays run from
`min_delay` to `min_delay + num_classes - 1`; the first spike's position follows from the delay
and `seq_len`, and the steps before it are silent (or noise with `noise_std`).
"""
from __future__ import annotations

import torch

from trainer.data import DataSplits
from trainer.errors import ConfigError


def build(seq_len: int = 40, min_delay: int = 5, num_classes: int = 20, num_train: int = 2000, num_val: int = 500,
          noise_std: float = 0.0, seed: int = 0, num_test: int = 500) -> DataSplits:
    """Sequences of shape (1, seq_len), int64 labels in [0, num_classes): the delay minus `min_delay`.

    Args:
        seq_len: steps per sequence; must fit the longest delay (min_delay + num_classes - 1 < seq_len).
        min_delay: the shortest delay between the spikes.
        num_classes: how many delays, one step apart; more classes, finer timing over a longer span.
        num_train: training sequences.
        num_val: validation sequences.
        noise_std: Gaussian noise added to every step (0: clean spikes).
        seed: seed of the `torch.Generator` used; the global RNG is untouched.
        num_test: test sequences, evaluated once at the end (0: none).
    """
    for key, value, minimum in (("min_delay", min_delay, 1), ("num_classes", num_classes, 2),
                                ("num_train", num_train, 1), ("num_val", num_val, 1)):
        if value < minimum:
            raise ConfigError(f"data.{key}={value} must be at least {minimum}")
    longest = min_delay + num_classes - 1
    if longest >= seq_len:
        raise ConfigError(f"data.seq_len={seq_len} must exceed the longest delay min_delay + num_classes - 1 = {longest}")
    if num_test < 0:
        raise ConfigError(f"data.num_test={num_test} must be at least 0")
    if noise_std < 0:
        raise ConfigError(f"data.noise_std={noise_std} must be >= 0")
    g = torch.Generator().manual_seed(seed)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, num_classes, (n,), generator=g)
        x = noise_std * torch.randn(n, 1, seq_len, generator=g)
        rows = torch.arange(n)
        x[rows, 0, seq_len - 1 - (labels + min_delay)] += 1.0
        x[rows, 0, seq_len - 1] += 1.0
        return x, labels

    x_train, y_train = sample(num_train)
    x_val, y_val = sample(num_val)
    x_test, y_test = sample(num_test) if num_test else (None, None)  # drawn last: train and val stay the same
    return DataSplits(x_train, y_train, x_val, y_val, task="classification", num_outputs=num_classes,
                      x_test=x_test, y_test=y_test)
