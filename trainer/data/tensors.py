"""Your own arrays: a `.pt` file (loaded with weights_only=True) or a `.npz` file holding
x_train, y_train, x_val, y_val and optionally x_test, y_test (a test split, evaluated once at the
end). Integer targets mean classification, float targets regression."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trainer.data import DataSplits
from trainer.errors import DataError

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


def build(path: str) -> DataSplits:
    """Args: path: a .pt or .npz file with x_train, y_train, x_val, y_val (first dim: samples),
    and optionally x_test, y_test."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"data.path={path} does not exist; give a .pt or .npz file with {', '.join(KEYS)}")
    arrays = _read(file)
    missing = [key for key in KEYS if key not in arrays]
    if missing:
        raise DataError(f"data.path={path} lacks {', '.join(missing)}; it needs {', '.join(KEYS)}")
    present = [key for key in TEST_KEYS if key in arrays]
    if len(present) == 1:
        raise DataError(f"data.path={path} has {present[0]} but not {set(TEST_KEYS).difference(present).pop()}; "
                        "give both or neither")
    x_train, y_train, x_val, y_val = (torch.as_tensor(arrays[key]) for key in KEYS)
    x_test, y_test = (torch.as_tensor(arrays[key]) for key in TEST_KEYS) if present else (None, None)
    if len(x_train) != len(y_train) or len(x_val) != len(y_val) or (present and len(x_test) != len(y_test)):
        raise DataError(f"data.path={path}: x and y differ in length ({len(x_train)} vs {len(y_train)} train, "
                        f"{len(x_val)} vs {len(y_val)} val" + (f", {len(x_test)} vs {len(y_test)} test)" if present else ")"))
    if y_train.is_floating_point():
        as_targets = lambda y: y.float().reshape(len(y), -1)  # noqa: E731
        y_train, y_val = as_targets(y_train), as_targets(y_val)
        test = (x_test.float(), as_targets(y_test)) if present else (None, None)
        return DataSplits(x_train.float(), y_train, x_val.float(), y_val, "regression", y_train.shape[1], *test)
    labels = [y_train, y_val] + ([y_test] if present else [])
    classes = int(max(int(y.max()) for y in labels if len(y))) + 1 if len(y_train) else 0
    if len(torch.unique(y_train)) < 2:
        raise DataError(f"data.path={path}: the training targets hold {len(torch.unique(y_train))} class; "
                        "classification needs at least 2")
    test = (x_test.float(), y_test.long()) if present else (None, None)
    return DataSplits(x_train.float(), y_train.long(), x_val.float(), y_val.long(), "classification", classes, *test)
