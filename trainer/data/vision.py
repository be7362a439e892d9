"""torchvision image sets (MNIST, FashionMNIST, CIFAR10), held whole in memory.

The official test split is the test split; the validation split is a seeded `val_fraction` of
the training split. Files use torchvision's own layout under `root`
(root/MNIST/raw, root/FashionMNIST/raw, root/cifar-10-batches-py), so an existing torchvision
download can be reused by pointing data.root at it.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from torchvision import datasets

from trainer.data import DataSplits, check_fraction, hold_out
from trainer.errors import DataError


def mnist(root: str, download: bool = True, val_fraction: float = 0.1, seed: int = 0) -> DataSplits:
    """MNIST digits, (N, 1, 28, 28), 60000 train (validation carved from it) / 10000 test, 10 classes.

    Args:
        root: data directory; files go to root/MNIST/raw.
        download: fetch the files when they are missing.
        val_fraction: fraction of the training images held out for validation.
        seed: seed of the validation split.
    """
    return _build(
        datasets.MNIST, "mnist", root, download, val_fraction, seed, mean=(0.1307,), std=(0.3081,),
        where="MNIST/raw", files="train-images-idx3-ubyte.gz and the other 3 .gz files from "
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
    )


def fashion_mnist(root: str, download: bool = True, val_fraction: float = 0.1, seed: int = 0) -> DataSplits:
    """FashionMNIST clothing images, (N, 1, 28, 28), 60000 train (validation carved from it) / 10000 test, 10 classes.

    Args:
        root: data directory; files go to root/FashionMNIST/raw.
        download: fetch the files when they are missing.
        val_fraction: fraction of the training images held out for validation.
        seed: seed of the validation split.
    """
    return _build(
        datasets.FashionMNIST, "fashion_mnist", root, download, val_fraction, seed, mean=(0.2860,), std=(0.3530,),
        where="FashionMNIST/raw", files="train-images-idx3-ubyte.gz and the other 3 .gz files from "
        "https://github.com/zalandoresearch/fashion-mnist",
    )


def cifar10(root: str, download: bool = True, val_fraction: float = 0.1, seed: int = 0) -> DataSplits:
    """CIFAR10 colour images, (N, 3, 32, 32), 50000 train (validation carved from it) / 10000 test, 10 classes.

    Args:
        root: data directory; the archive is unpacked to root/cifar-10-batches-py.
        download: fetch the archive when it is missing.
    """
    return _build(
        datasets.CIFAR10, "cifar10", root, download, val_fraction, seed,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        where="", files="cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/",
    )


def _build(
    cls: type[datasets.VisionDataset], name: str, root: str, download: bool, val_fraction: float, seed: int,
    mean: Sequence[float], std: Sequence[float], where: str, files: str,
) -> DataSplits:
    check_fraction(val_fraction)
    root = os.path.expanduser(root)
    folder = os.path.join(root, where) if where else root
    # With download=True torchvision skips files that are present (and, for an archive placed by
    # hand, only unpacks it), so offline users can drop the files in `folder`.
    try:
        train = cls(root, train=True, download=download)
    except Exception as e:  # torchvision raises URLError, RuntimeError, OSError, ... for missing/bad files
        if not download:
            raise DataError(f"data={name}: files missing or unreadable in {folder}; set data.download=true (it also "
                            f"unpacks files placed there by hand, e.g. {files}) or set data.root=DIR") from e
        raise DataError(f"data={name}: could not download to {folder} ({_short(e)}); place the files there "
                        f"offline (e.g. {files}) or set data.root=DIR") from e
    try:
        test = cls(root, train=False)
    except Exception as e:
        raise DataError(f"data={name}: cannot read the test split in {folder} ({_short(e)}); "
                        f"delete the folder to download again, or place {files} there") from e

    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    x_train, y_train, x_val, y_val = hold_out(
        (_images(train.data) - m) / s, torch.as_tensor(train.targets, dtype=torch.int64), val_fraction, seed)
    return DataSplits(
        x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val,
        task="classification", num_outputs=len(train.classes),
        x_test=(_images(test.data) - m) / s, y_test=torch.as_tensor(test.targets, dtype=torch.int64),
    )


def _images(data: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) tensor (MNIST) or (N, H, W, C) array (CIFAR) -> float32 (N, C, H, W) in [0, 1]."""
    x = torch.as_tensor(data)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.float().div_(255)


def _short(e: BaseException) -> str:
    # torchvision's MNIST error lists every mirror over several lines; the last line names the cause.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[-1] if lines else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."
