"""What a data set can get wrong, checked before any run folder is written.

`check_arrays` reads a user's own arrays (data=tensors) as they are in the file, before they are
converted: dtypes, shapes, label encodings. `check_splits` checks what every data set hands the
loop (DataSplits): non-empty splits, finite values, matching shapes, labels within the classes.
Each problem is one line naming the array and what is valid; what may be meant (a class seen only
in validation, integer inputs) is a notice, and the run goes on.
"""
from __future__ import annotations

import torch

from trainer.data import DataSplits
from trainer.data.seq2seq import IGNORE_INDEX
from trainer.data.streamed import StreamedSplits
from trainer.errors import ConfigError, DataError

NUMERIC_INPUTS = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8, torch.int8,
                  torch.int16, torch.int32, torch.int64)
INTEGER_LABELS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _shape(tensor: torch.Tensor) -> str:
    return str(tuple(tensor.shape))  # (64,) (64, 1, 8)


def check_arrays(arrays: dict[str, torch.Tensor], source: str, num_classes: int | None) -> list[str]:
    """The four arrays of a user's file, as stored; returns notices. `source` names the file."""
    x_train, y_train, x_val, y_val = (arrays[key] for key in ("x_train", "y_train", "x_val", "y_val"))
    notices: list[str] = []
    for name, tensor in arrays.items():
        if tensor.dim() == 0:
            raise DataError(f"{source}: {name} is a single value; it must be an array with one row per sample")
    for name, x in (("x_train", x_train), ("x_val", x_val)):
        if x.dtype not in NUMERIC_INPUTS:
            raise DataError(f"{source}: {name} is {x.dtype}; inputs must be floating point (or integers)")
        if x.dim() < 2:
            raise DataError(f"{source}: {name} has shape {_shape(x)}; inputs need a feature axis: (samples, features...), "
                            "e.g. x.reshape(-1, 1)")
    if x_train.shape[1:] != x_val.shape[1:]:
        raise DataError(f"{source}: x_train is {_shape(x_train)} but x_val is {_shape(x_val)}; "
                        "every sample must have the same shape")
    for name, x, y in (("train", x_train, y_train), ("val", x_val, y_val)):
        if len(x) != len(y):
            raise DataError(f"{source}: x_{name} has {len(x)} samples but y_{name} has {len(y)}")
        if len(x) == 0:
            raise DataError(f"{source}: the {name} split is empty (x_{name} has 0 samples); "
                            "both x_train and x_val need samples")
    if not x_train.is_floating_point():
        notices.append(f"{source}: inputs are {x_train.dtype}, used as float without scaling; "
                       "scale them first (pixels: x / 255) if they are not already")
    if y_train.dtype == torch.bool or y_val.dtype == torch.bool:
        raise DataError(f"{source}: labels are bool; give class indices 0..C-1 as integers (y.long())")
    if y_train.is_floating_point() != y_val.is_floating_point():
        raise DataError(f"{source}: y_train is {y_train.dtype} but y_val is {y_val.dtype}; integer labels mean "
                        "classification, floating-point targets regression: give both the same kind")
    if y_train.is_floating_point():
        if y_train.reshape(len(y_train), -1).shape[1] != y_val.reshape(len(y_val), -1).shape[1]:
            raise DataError(f"{source}: y_train is {_shape(y_train)} but y_val is {_shape(y_val)}; "
                            "regression targets need the same width")
        return notices
    for name, y in (("y_train", y_train), ("y_val", y_val)):
        if y.dtype not in INTEGER_LABELS:
            raise DataError(f"{source}: {name} is {y.dtype}; class labels must be integers 0..C-1")
        if y.dim() == 2 and y.shape[1] > 1 and bool(((y == 0) | (y == 1)).all()) and bool((y.sum(1) == 1).all()):
            raise DataError(f"{source}: {name} is one-hot, shape {_shape(y)}; give class indices of shape "
                            f"({len(y)},): y.argmax(1)")
        if y.dim() != 1:
            raise DataError(f"{source}: {name} has shape {_shape(y)}; class labels need shape ({len(y)},), "
                            "one integer per sample")
        if int(y.min()) < 0:
            raise DataError(f"{source}: {name} holds a negative label ({int(y.min())}); labels must be 0..C-1")
        if num_classes is not None and int(y.max()) >= num_classes:
            raise DataError(f"{source}: {name} holds label {int(y.max())} but data.num_classes={num_classes}; "
                            f"labels must be 0..{num_classes - 1}")
    only_val = sorted(set(y_val.unique().tolist()) - set(y_train.unique().tolist()))
    if only_val:
        shown = ", ".join(str(label) for label in only_val[:5]) + (" ..." if len(only_val) > 5 else "")
        notices.append(f"{source}: class(es) {shown} appear only in y_val: the model never trains on them, "
                       "so their validation samples count as errors")
    return notices


def check_splits(data: DataSplits | StreamedSplits, batch_size: int, accumulate: int, processes: int = 1) -> None:
    """What every data set hands the loop: finite values, non-empty splits of one sample shape, labels
    within the classes, and at least one step's batch of training samples (`processes` x `batch_size`
    x `accumulate`: under torchrun batch_size is per process). Of streamed data, whose images are
    uint8 (finite) of one shape (the builder's dataset makes them so), the labels and the sizes."""
    if isinstance(data, StreamedSplits):
        _check_streamed(data)
        _check_batch(data.num_train, batch_size, accumulate, processes)
        return
    for name, x, y in (("train", data.x_train, data.y_train), ("val", data.x_val, data.y_val)):
        if len(x) == 0:
            raise DataError(f"the data set's {name} split is empty; both the training and validation splits need samples")
        if len(x) != len(y):
            raise DataError(f"the data set's x_{name} has {len(x)} samples but y_{name} has {len(y)}")
    test_split = ("x_test", "y_test") if data.has_test else ()
    for name in ("x_train", "y_train", "x_val", "y_val", *test_split):
        values = getattr(data, name)
        if values.is_floating_point() and not torch.isfinite(values).all():
            bad = int((~torch.isfinite(values)).sum())
            raise DataError(f"the data's {name} holds {bad} non-finite values (NaN or inf); clean or impute them first")
    if data.x_train.shape[1:] != data.x_val.shape[1:]:
        raise DataError(f"x_train's samples are {tuple(data.x_train.shape[1:])} but x_val's are "
                        f"{tuple(data.x_val.shape[1:])}; every sample must have the same shape")
    if data.task == "classification":
        for name in ("y_train", "y_val", *test_split[1:]):
            labels = getattr(data, name)
            if len(labels) == 0:
                continue  # an empty test split (num_test=0 gives none at all)
            # (N,): one label per sample; (N, L): one per position (data=text: the next character's id;
            # data=seq2seq: the target's tokens, IGNORE_INDEX past its end, which no loss counts)
            real = labels[labels != IGNORE_INDEX] if labels.dim() == 2 else labels
            if labels.dim() not in (1, 2) or len(real) and (int(real.min()) < 0 or int(real.max()) >= data.num_outputs):
                raise DataError(f"the data's {name} must hold one label in 0..{data.num_outputs - 1} per sample "
                                f"(shape {tuple(labels.shape)}, min {int(real.min())}, max {int(real.max())})")
    _check_batch(len(data.x_train), batch_size, accumulate, processes)


def _check_streamed(data: StreamedSplits) -> None:
    for name in ("train", "val", "test"):
        if name == "test" and not data.has_test:
            continue
        labels = data.labels(name)
        if len(labels) == 0:
            raise DataError(f"the data set's {name} split is empty; both the training and validation splits need samples")
        if int(labels.min()) < 0 or int(labels.max()) >= data.num_outputs:
            raise DataError(f"the data's {name} labels must be in 0..{data.num_outputs - 1} "
                            f"(min {int(labels.min())}, max {int(labels.max())})")


def _check_batch(num_train: int, batch_size: int, accumulate: int, processes: int) -> None:
    if num_train < batch_size * accumulate * processes:
        factors = [f"batch_size={batch_size}"] + ([f"trainer.accumulate={accumulate}"] if accumulate > 1 else []) + (
            [f"{processes} processes"] if processes > 1 else [])
        typed = factors[0] if len(factors) == 1 else (
            f"{' x '.join(factors)} = {batch_size * accumulate * processes} samples per step")
        raise ConfigError(f"{typed} is larger than the training set ({num_train} samples); "
                          "lower it to at most the training set's size")
