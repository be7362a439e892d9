"""A user's own images in torchvision's ImageFolder layout: path/<class name>/<image files>.

Held in memory when they fit, streamed from disk when they do not (`in_memory`):

    train data=imagefolder data.path=photos                              # auto: by data.memory_budget_mb
    train data=imagefolder data.path=photos data.in_memory=false data.workers=4 data.image_size=224

In memory, every image is read once, resized and standardised into float32 tensors (4 bytes a
pixel and channel: what the budget is measured against). Streamed, each batch is read from disk by
DataLoader workers as uint8 and standardised on the device (data/streamed.py, data/source.py),
with the same per-channel statistics whenever the training split fits their bounded sample.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import Subset
from torchvision import datasets, transforms

from trainer.data import DataSplits
from trainer.data.streamed import (Streamed, StreamedSplits, check_budget, check_in_memory, check_workers, image_stats,
                                   stream_reason, streamed_splits)
from trainer.errors import ConfigError, DataError

LAYOUT = "point it at a folder with one sub-folder of images per class"


def build(
    path: str,
    image_size: int = 32,
    val_path: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    grayscale: bool = False,
    test_path: str | None = None,
    in_memory: Any = "auto",
    memory_budget_mb: float = 4096,
    workers: int = 2,
) -> DataSplits | StreamedSplits:
    """The images, resized to a square and standardised per channel with the training split's
    statistics: held in memory, or streamed from disk batch by batch.

    Args:
        path: folder with one sub-folder per class (class index = sorted folder name order).
        image_size: side the images are resized to (aspect ratio is not kept).
        val_path: folder with the same class sub-folders for validation; when null, a random
            `val_fraction` of `path` is held out instead.
        val_fraction: fraction of `path` used for validation when val_path is null.
        seed: seed of the generator for the random split.
        grayscale: load one channel instead of RGB.
        test_path: folder with the same class sub-folders for the test split, evaluated once at
            the end of a run; null for none.
        in_memory: "auto" (held in memory when every split fits `memory_budget_mb` as float32,
            streamed otherwise), true (held), or false (streamed).
        memory_budget_mb: the most the splits may take in memory under in_memory=auto, in MiB.
        workers: DataLoader worker processes reading a streamed split (0: read in the training process).
    """
    if image_size < 1:
        raise ConfigError(f"data.image_size={image_size} must be at least 1")
    if not 0 < val_fraction < 1:
        raise ConfigError(f"data.val_fraction={val_fraction} must be in (0, 1)")
    mode, budget, workers = check_in_memory(in_memory), check_budget(memory_budget_mb), check_workers(workers)

    files = {key: _index(key, folder) for key, folder in
             (("path", path), ("val_path", val_path), ("test_path", test_path)) if folder is not None}
    steps = [transforms.Grayscale(num_output_channels=1)] if grayscale else []
    steps.append(transforms.Resize((image_size, image_size)))
    # float32 in memory: 4 bytes per pixel and channel, every split
    needed = sum(len(found.samples) for found in files.values()) * (1 if grayscale else 3) * image_size**2 * 4
    reason = stream_reason(mode, needed, budget)
    if reason is not None:
        return _streamed(files, transforms.Compose([*steps, transforms.PILToTensor()]), path, val_fraction, seed,
                         workers, f"data=imagefolder is streamed from disk ({reason}) by {workers} worker process(es)")

    tf = transforms.Compose([*steps, transforms.ToTensor()])
    x, y, classes = _load(files["path"], tf)
    if len(classes) < 2:
        raise DataError(f"data.path={path} has only the class folder {classes}; needs at least 2 classes, {LAYOUT}")

    if val_path is None:
        n_val = round(len(x) * val_fraction)
        if not 0 < n_val < len(x):
            raise ConfigError(
                f"data.val_fraction={val_fraction} of the {len(x)} images in {path} leaves an empty split; "
                "add images, change data.val_fraction or set data.val_path"
            )
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        x_train, y_train, x_val, y_val = x[perm[n_val:]], y[perm[n_val:]], x[perm[:n_val]], y[perm[:n_val]]
    else:
        x_train, y_train = x, y
        x_val, y_val, val_classes = _load(files["val_path"], tf)
        _check_classes("val_path", val_path, val_classes, path, classes)

    x_test = y_test = None
    if test_path is not None:
        x_test, y_test, test_classes = _load(files["test_path"], tf)
        _check_classes("test_path", test_path, test_classes, path, classes)

    mean, std = image_stats(x_train)
    return DataSplits(
        x_train=(x_train - mean) / std, y_train=y_train,
        x_val=(x_val - mean) / std, y_val=y_val,
        task="classification", num_outputs=len(classes),
        x_test=(x_test - mean) / std if x_test is not None else None, y_test=y_test,
    )


class ImageFiles(datasets.ImageFolder):
    """An ImageFolder whose unreadable image is a one-line DataError naming the file and config key."""

    def __init__(self, folder: str, key: str) -> None:
        super().__init__(folder)
        self.key = key

    def __getitem__(self, index: int) -> tuple[Any, int]:
        try:
            return super().__getitem__(index)
        except OSError as e:  # PIL's UnidentifiedImageError and truncated files are OSErrors
            raise DataError(f"data.{self.key}: cannot read the image {self.samples[index][0]} ({e}); "
                            "fix or remove it") from e


def _index(key: str, folder: str) -> ImageFiles:
    """The images of `folder` (named by config key `key` in errors): its files and classes, no image read."""
    folder = os.path.expanduser(folder)
    if not os.path.isdir(folder):
        raise DataError(f"data.{key}={folder} does not exist; {LAYOUT}")
    try:
        return ImageFiles(folder, key)
    except FileNotFoundError as e:  # no class folders, or a class folder without images
        raise DataError(f"data.{key}={folder} has no usable images ({e}); {LAYOUT}") from e


def _check_classes(key: str, folder: str, classes: list[str], path: str, expected: list[str]) -> None:
    if classes != expected:
        raise DataError(f"data.{key}={folder} has class folders {classes} but data.path={path} "
                        f"has {expected}; they must match")


def _streamed(files: dict[str, ImageFiles], pixels: transforms.Compose, path: str, val_fraction: float,
              seed: int, workers: int, notice: str) -> StreamedSplits:
    """The splits as datasets of uint8 images read from disk; the validation split held out of `path`
    exactly as the in-memory path holds it out (the same seeded permutation)."""
    for found in files.values():  # uint8 (C, H, W), as streamed.py's contract asks
        found.transform = pixels
    train = files["path"]
    classes = train.classes
    if len(classes) < 2:
        raise DataError(f"data.path={path} has only the class folder {classes}; needs at least 2 classes, {LAYOUT}")
    labels = torch.tensor(train.targets, dtype=torch.int64)
    if "val_path" in files:
        _check_classes("val_path", files["val_path"].root, files["val_path"].classes, path, classes)
        train_split = Streamed(train, labels)
        val_split = Streamed(files["val_path"], torch.tensor(files["val_path"].targets, dtype=torch.int64))
    else:
        n_val = round(len(labels) * val_fraction)
        if not 0 < n_val < len(labels):
            raise ConfigError(
                f"data.val_fraction={val_fraction} of the {len(labels)} images in {path} leaves an empty split; "
                "add images, change data.val_fraction or set data.val_path"
            )
        perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
        train_split = Streamed(Subset(train, perm[n_val:].tolist()), labels[perm[n_val:]])
        val_split = Streamed(Subset(train, perm[:n_val].tolist()), labels[perm[:n_val]])
    test_split = None
    if "test_path" in files:
        test = files["test_path"]
        _check_classes("test_path", test.root, test.classes, path, classes)
        test_split = Streamed(test, torch.tensor(test.targets, dtype=torch.int64))
    return streamed_splits(train_split, val_split, test_split, len(classes), workers, [notice])


def _load(ds: ImageFiles, tf: transforms.Compose) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read every image of `ds` into one tensor."""
    ds.transform = tf
    images = [ds[i][0] for i in range(len(ds))]
    return torch.stack(images), torch.tensor(ds.targets, dtype=torch.int64), ds.classes
