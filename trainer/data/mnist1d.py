"""MNIST-1D (Greydanus 2020): 10 classes of 1-D signals of length 40, small enough for CPU."""
from __future__ import annotations

import os
import random
import tempfile

import numpy as np
import torch

from trainer.data import DataSplits, check_fraction, hold_out
from trainer.errors import ConfigError, DataError

NUM_CLASSES = 10


def build(root: str, num_samples: int = 5000, train_split: float = 0.8, seed: int = 42,
          val_fraction: float = 0.1) -> DataSplits:
    """Generate MNIST-1D (or load it from the cache under `root`) as (N, 1, 40) signals.

    The package's test split is the test split; the validation split is a seeded `val_fraction`
    of its training split, so early stopping and model selection never see test data.

    The package already centres the signals and scales them to unit std, so no further
    standardisation is applied.

    Args:
        root: data directory; the arrays are cached in `root/mnist1d/<key>.npz`.
        num_samples: total examples before the split (rounded down to a multiple of 10).
        train_split: fraction of examples used for training and validation, the rest for test.
        seed: seed of the generator and of the validation split; the caller's global RNG states
            are left untouched.
        val_fraction: fraction of the training split held out for validation.
    """
    if num_samples < 2 * NUM_CLASSES:
        raise ConfigError(f"data.num_samples={num_samples} must be at least {2 * NUM_CLASSES} (2 per class)")
    if not 0 < train_split < 1:
        raise ConfigError(f"data.train_split={train_split} must be in (0, 1)")
    check_fraction(val_fraction)
    total = num_samples // NUM_CLASSES * NUM_CLASSES  # make_dataset draws the same count per class
    num_train = int(total * train_split)
    if not 0 < num_train < total:
        raise ConfigError(
            f"data.train_split={train_split} of {total} samples leaves an empty split; "
            f"use a value between {1 / total:.3g} and {1 - 1 / total:.3g}"
        )

    folder = os.path.join(os.path.expanduser(root), "mnist1d")
    path = os.path.join(folder, f"n{num_samples}-split{train_split}-seed{seed}.npz")
    if os.path.exists(path):
        try:
            with np.load(path) as f:
                arrays = {k: f[k] for k in ("x", "y", "x_test", "y_test")}
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"data=mnist1d: cannot read the cache {path} ({e}); delete it to regenerate") from e
    else:
        arrays = _generate(num_samples, train_split, seed)
        _save_atomically(path, arrays)

    x, y = torch.from_numpy(arrays["x"]).float().unsqueeze(1), torch.from_numpy(arrays["y"]).long()
    x_train, y_train, x_val, y_val = hold_out(x, y, val_fraction, seed)
    return DataSplits(
        x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val,
        task="classification", num_outputs=NUM_CLASSES,
        x_test=torch.from_numpy(arrays["x_test"]).float().unsqueeze(1),
        y_test=torch.from_numpy(arrays["y_test"]).long(),
    )


def _generate(num_samples: int, train_split: float, seed: int) -> dict[str, np.ndarray]:
    # Imported here because mnist1d pulls in matplotlib, which is slow and not needed on cache hits.
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = num_samples, train_split, seed
    # make_dataset reseeds the global `random` and numpy generators; restore them so that it does
    # not change what the caller's own seeded draws produce.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {
        "x": data["x"].astype(np.float32), "y": data["y"].astype(np.int64),
        "x_test": data["x_test"].astype(np.float32), "y_test": data["y_test"].astype(np.int64),
    }


def _save_atomically(path: str, arrays: dict[str, np.ndarray]) -> None:
    # Write-then-rename so that a crash or a concurrent run never leaves a truncated cache behind.
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    except OSError as e:
        raise DataError(f"data=mnist1d: cannot write the cache folder {folder} ({e}); set data.root=DIR") from e
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        os.unlink(tmp)
        if isinstance(e, OSError):
            raise DataError(f"data=mnist1d: cannot write the cache {path} ({e}); set data.root=DIR") from e
        raise
