"""The adding problem (Hochreiter & Schmidhuber 1997), a long-memory test for RNNs (Le et al. 2015)."""
from __future__ import annotations

import torch

from trainer.data import DataSplits
from trainer.errors import ConfigError


def build(seq_len: int = 50, num_train: int = 10000, num_val: int = 1000, seed: int = 0,
          num_test: int = 1000) -> DataSplits:
    """Generate sequences of shape (2, seq_len) whose target is the sum of the two marked values.

    Channel 0 holds values uniform in [0, 1]; channel 1 is 0 except for exactly two 1s, one in
    each half of the sequence. The target is a float32 of shape (1,). Inputs keep the paper's
    encoding (already of order one) rather than being standardised, so results are comparable;
    always predicting 1 gives the usual baseline MSE of 1/6.

    Args:
        seq_len: sequence length; the distance between markers, and so the memory needed, grows with it.
        num_train: training sequences.
        num_val: validation sequences.
        seed: seed of the `torch.Generator` used; the global RNG is untouched.
        num_test: test sequences, evaluated once at the end (0: none).
    """
    if seq_len < 2:
        raise ConfigError(f"data.seq_len={seq_len} must be at least 2 (one marker in each half)")
    for key, value in (("num_train", num_train), ("num_val", num_val)):
        if value < 1:
            raise ConfigError(f"data.{key}={value} must be at least 1")
    if num_test < 0:
        raise ConfigError(f"data.num_test={num_test} must be at least 0")

    g = torch.Generator().manual_seed(seed)
    half = seq_len // 2

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        values = torch.rand(n, seq_len, generator=g)
        first = torch.randint(0, half, (n,), generator=g)
        second = torch.randint(half, seq_len, (n,), generator=g)
        markers = torch.zeros(n, seq_len)
        rows = torch.arange(n)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        target = (values[rows, first] + values[rows, second]).unsqueeze(1)
        return torch.stack([values, markers], dim=1), target

    x_train, y_train = sample(num_train)
    x_val, y_val = sample(num_val)
    x_test, y_test = sample(num_test) if num_test else (None, None)  # drawn last: train and val stay the same
    return DataSplits(x_train, y_train, x_val, y_val, task="regression", num_outputs=1, x_test=x_test, y_test=y_test)
