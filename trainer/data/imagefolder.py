"""A user's own images in torchvision's ImageFolder layout: path/<class name>/<image files>."""
from __future__ import annotations

import os

import torch
from torchvision import datasets, transforms

from trainer.data import DataSplits
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
) -> DataSplits:
    """Load every image, resized to a square, into memory; standardised per channel with training stats.

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
    """
    if image_size < 1:
        raise ConfigError(f"data.image_size={image_size} must be at least 1")
    if not 0 < val_fraction < 1:
        raise ConfigError(f"data.val_fraction={val_fraction} must be in (0, 1)")

    steps = [transforms.Grayscale(num_output_channels=1)] if grayscale else []
    tf = transforms.Compose(steps + [transforms.Resize((image_size, image_size)), transforms.ToTensor()])
    x, y, classes = _load("path", path, tf)
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
        x_val, y_val, val_classes = _load("val_path", val_path, tf)
        if val_classes != classes:
            raise DataError(f"data.val_path={val_path} has class folders {val_classes} but data.path={path} "
                            f"has {classes}; they must match")

    x_test = y_test = None
    if test_path is not None:
        x_test, y_test, test_classes = _load("test_path", test_path, tf)
        if test_classes != classes:
            raise DataError(f"data.test_path={test_path} has class folders {test_classes} but data.path={path} "
                            f"has {classes}; they must match")

    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)  # a constant channel stays finite
    return DataSplits(
        x_train=(x_train - mean) / std, y_train=y_train,
        x_val=(x_val - mean) / std, y_val=y_val,
        task="classification", num_outputs=len(classes),
        x_test=(x_test - mean) / std if x_test is not None else None, y_test=y_test,
    )


def _load(key: str, folder: str, tf: transforms.Compose) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read every image of `folder` (named by config key `key` in errors) into one tensor."""
    folder = os.path.expanduser(folder)
    if not os.path.isdir(folder):
        raise DataError(f"data.{key}={folder} does not exist; {LAYOUT}")
    try:
        ds = datasets.ImageFolder(folder, transform=tf)
    except FileNotFoundError as e:  # no class folders, or a class folder without images
        raise DataError(f"data.{key}={folder} has no usable images ({e}); {LAYOUT}") from e
    images = []
    for i, (file, _) in enumerate(ds.samples):
        try:
            images.append(ds[i][0])
        except OSError as e:  # PIL's UnidentifiedImageError and truncated files are OSErrors
            raise DataError(f"data.{key}: cannot read the image {file} ({e}); fix or remove it") from e
    return torch.stack(images), torch.tensor(ds.targets, dtype=torch.int64), ds.classes
