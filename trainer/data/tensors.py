"""Your own arrays: a `.pt` file (loaded with weights_only=True) or a `.npz` file holding
x_train, y_train, x_val, y_val and optionally x_test, y_test (a test split, evaluated once at the
end). Integer targets mean classification, float targets regression."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trainer.data import DataSplits
from trainer.data.checks import check_arrays
from trainer.errors import ConfigError, DataError

KEYS = ("x_train", "y_train", "x_val", "y_val")
TEST_KEYS = ("x_test", "y_test")


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:  # no pickled objects: no code runs
                return {key: torch.from_numpy(arrays[key]) for key in arrays.files}
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged archive, pickled code, a wrong format
        raise DataError(f"data.path={path} could not be read as tensors ({type(error).__name__}); "
                        "save a dict of tensors with torch.save or arrays with numpy.savez") from None
    if not isinstance(loaded, dict):
        raise DataError(f"data.path={path} holds a {type(loaded).__name__}; it must be a dict with keys {', '.join(KEYS)}")
    return loaded


def is_regression(path: str) -> bool:
    """Whether the file's training targets are floats (a regression), as `build` decides; read
    before any run by a search's direction (trainer.sweep.direction)."""
    y_train = _read(Path(path).expanduser()).get("y_train")
    return y_train is not None and torch.as_tensor(y_train).is_floating_point()


def build(path: str, num_classes: int | None = None) -> DataSplits:
    """Args:
        path: a .pt or .npz file with x_train, y_train, x_val, y_val (first dim: samples), and
            optionally x_test, y_test.
        num_classes: the number of classes, when some never appear in the file (null: the largest label + 1).
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"data.path={path} does not exist; give a .pt or .npz file with {', '.join(KEYS)}")
    if num_classes is not None and num_classes < 2:
        raise ConfigError(f"data.num_classes={num_classes} must be an integer >= 2, or null")
    arrays = _read(file)
    missing = [key for key in KEYS if key not in arrays]
    if missing:
        raise DataError(f"data.path={path} lacks {', '.join(missing)}; it needs {', '.join(KEYS)}")
    try:
        tensors = {key: torch.as_tensor(arrays[key]) for key in KEYS + TEST_KEYS if key in arrays}
    except (TypeError, ValueError, RuntimeError):
        raise DataError(f"data.path={path}: {', '.join(KEYS)} must each be an array of numbers") from None
    notices = check_arrays({key: tensors[key] for key in KEYS}, f"data.path={path}", num_classes)
    x_train, y_train, x_val, y_val = (tensors[key] for key in KEYS)
    x_test, y_test = _test_split(tensors, f"data.path={path}")
    if y_train.is_floating_point():
        as_targets = lambda y: y.float().reshape(len(y), -1)  # noqa: E731
        y_train, y_val = as_targets(y_train), as_targets(y_val)
        test = (x_test.float(), as_targets(y_test)) if x_test is not None else (None, None)
        return DataSplits(x_train.float(), y_train, x_val.float(), y_val, "regression", y_train.shape[1], notices, *test)
    if len(torch.unique(y_train)) < 2:
        raise DataError(f"data.path={path}: the training targets hold {len(torch.unique(y_train))} class; "
                        "classification needs at least 2")
    labels = [y_train, y_val] + ([y_test] if y_test is not None and len(y_test) else [])
    classes = num_classes or max(int(y.max()) for y in labels) + 1
    test = (x_test.float(), y_test.long()) if x_test is not None else (None, None)
    return DataSplits(x_train.float(), y_train.long(), x_val.float(), y_val.long(), "classification", classes,
                      notices, *test)


def _test_split(tensors: dict[str, torch.Tensor], source: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The optional x_test, y_test: both or neither, one target per sample, the training split's kinds."""
    present = [key for key in TEST_KEYS if key in tensors]
    if not present:
        return None, None
    if len(present) == 1:
        missing = next(key for key in TEST_KEYS if key not in present)
        raise DataError(f"{source} has {present[0]} but not {missing}; give both or neither")
    x_test, y_test = tensors["x_test"], tensors["y_test"]
    if len(x_test) != len(y_test):
        raise DataError(f"{source}: x_test has {len(x_test)} samples but y_test has {len(y_test)}")
    if x_test.shape[1:] != tensors["x_train"].shape[1:]:
        raise DataError(f"{source}: x_train is {tuple(tensors['x_train'].shape)} but x_test is {tuple(x_test.shape)}; "
                        "every sample must have the same shape")
    if y_test.is_floating_point() != tensors["y_train"].is_floating_point():
        raise DataError(f"{source}: y_train is {tensors['y_train'].dtype} but y_test is {y_test.dtype}; give both the same kind")
    return x_test, y_test
