"""Data sets as this field shares them: a Hugging Face `datasets` folder written by `save_to_disk`,
or Parquet files, read from disk memory-mapped (Arrow), never downloaded. Needs the optional
`datasets` package: pip install -e ".[hf]".

    train data=hf data.path=~/data/cifar10 model=cnn                       # save_to_disk folder
    train data=hf data.path='~/data/mnist/*.parquet' data.image_column=img # train-*.parquet, test-*.parquet

The inputs are one column: images (a `datasets.Image` feature, or integer arrays of pixels H x W,
H x W x C or C x H x W) or numbers (a vector per row, used as they are). The labels are another:
a ClassLabel, integers 0..C-1 or strings (classes in sorted order).

Images are held in memory when they fit (as imagefolder's: float32 within data.memory_budget_mb),
else streamed: each split a `Rows` dataset of uint8 images read row by row by DataLoader workers
(data/streamed.py). Numbers are always held in memory.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from trainer.data import DataSplits, check_fraction, hold_out_indices
from trainer.data.streamed import (Streamed, StreamedSplits, check_budget, check_in_memory, check_workers, image_stats,
                                   stream_reason, streamed_splits)
from trainer.errors import ConfigError, DataError

if TYPE_CHECKING:
    import datasets

INSTALL = 'data=hf needs the datasets package: pip install -e ".[hf]"'
LAYOUT = ("give a folder written by save_to_disk, or Parquet files (a file, a folder or a glob; "
          "the split in each file's name: train-*.parquet, validation-*.parquet, test-*.parquet)")
# Modes whose pixels are one channel; any other mode is read as RGB.
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
READ_BATCH = 512  # rows converted at a time when a split is loaded whole


def load_library() -> Any:
    """The `datasets` module, set to work offline: a run reads local files only, so nothing may be
    fetched (the variables are read when the library is imported; its config, if it already was)."""
    os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import datasets
    except ImportError:
        raise ConfigError(INSTALL) from None
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    datasets.utils.logging.disable_progress_bar()  # the run's display owns the terminal
    return datasets


def read_splits(path: str, root: str, names: tuple[str, ...]) -> dict[str, "datasets.Dataset"]:
    """{split name: Dataset} of a save_to_disk folder (a lone Dataset is the first of `names`, the
    training split) or of Parquet files (a lone file is the training split too)."""
    lib = load_library()
    location = os.path.expanduser(path)
    if os.path.isdir(location) and _saved(location):
        try:
            loaded = lib.load_from_disk(location, keep_in_memory=False)
        except Exception as error:  # a damaged or half-written folder
            raise DataError(f"data.path={path} could not be read by load_from_disk ({type(error).__name__}: "
                            f"{error}); {LAYOUT}") from None
        return {names[0]: loaded} if isinstance(loaded, lib.Dataset) else dict(loaded)
    files = _parquet_files(location)
    if not files:
        what = ("matches no Parquet files" if glob.has_magic(location) else "does not exist" if not os.path.exists(location)
                else "holds neither a save_to_disk data set nor Parquet files")
        raise DataError(f"data.path={path} {what}; {LAYOUT}")
    groups = {names[0]: files} if os.path.isfile(location) else _group_by_split(path, files, names)
    cache = os.path.join(os.path.expanduser(root), "hf")  # the Parquet files converted to memory-mapped Arrow
    try:
        return {split: lib.Dataset.from_parquet(group, keep_in_memory=False, cache_dir=cache)
                for split, group in groups.items()}
    except Exception as error:  # not Parquet, or a damaged file
        raise DataError(f"data.path={path} could not be read as Parquet ({type(error).__name__}: {error}); "
                        f"{LAYOUT}") from None


def _saved(folder: str) -> bool:
    """Whether `folder` was written by save_to_disk (a DatasetDict, or a single Dataset)."""
    return any(os.path.isfile(os.path.join(folder, name)) for name in ("dataset_dict.json", "state.json"))


def _parquet_files(location: str) -> list[str]:
    if os.path.isfile(location):
        return [location]
    if os.path.isdir(location):
        return sorted(str(file) for file in Path(location).rglob("*.parquet"))
    return sorted(file for file in glob.glob(location, recursive=True) if os.path.isfile(file))


def _group_by_split(path: str, files: list[str], names: tuple[str, ...]) -> dict[str, list[str]]:
    """Each file's split, from its name (train.parquet, train-00000-of-00002.parquet) or a folder it
    is in (train/part-0.parquet), as the Hugging Face Hub names them."""
    groups: dict[str, list[str]] = {}
    for file in files:
        parts = Path(file).parts
        stem = Path(file).name.removesuffix(".parquet")
        split = next((name for name in names if stem == name or stem.startswith((f"{name}-", f"{name}_"))
                      or name in parts[:-1]), None)
        if split is None:
            raise DataError(f"data.path={path}: the Parquet file {file} names none of the splits {', '.join(names)}; "
                            "put the split first in its name (train-0.parquet) or set data.train_split, "
                            "data.val_split, data.test_split")
        groups.setdefault(split, []).append(file)
    return groups


@dataclass(frozen=True)
class Inputs:
    """How a column's values become a sample: `image` (uint8 C x H x W pixels, converted to `mode`,
    resized to `size`, (H, W), unless None) or numbers (float32, the stored shape)."""

    column: str
    image: bool
    mode: str = "RGB"
    size: tuple[int, int] | None = None

    def convert(self, value: Any) -> torch.Tensor:
        if not self.image:
            return torch.as_tensor(np.asarray(value, dtype=np.float32))
        picture = value if isinstance(value, Image.Image) else _picture(self.column, np.asarray(value))
        picture = picture.convert(self.mode)
        if self.size is not None and picture.size != self.size[::-1]:  # PIL's size is (W, H)
            picture = picture.resize(self.size[::-1], Image.BILINEAR)
        pixels = np.asarray(picture, dtype=np.uint8)
        return torch.from_numpy(pixels.reshape(*pixels.shape[:2], -1).transpose(2, 0, 1).copy())


def _picture(column: str, pixels: np.ndarray) -> Image.Image:
    """An integer array of pixels as an image: H x W, H x W x C, or C x H x W (C of 1, 3 or 4)."""
    if pixels.ndim == 3 and pixels.shape[0] in (1, 3, 4) and pixels.shape[-1] not in (1, 3, 4):
        pixels = pixels.transpose(1, 2, 0)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
        raise DataError(f"data.image_column={column} holds pixels outside 0..255 ({pixels.min()} to {pixels.max()}); "
                        "store pixels as integers 0..255, or as floats to use them as numbers")
    return Image.fromarray(pixels.astype(np.uint8))


def inputs_of(table: "datasets.Dataset", column: str, image_size: int | None, grayscale: bool) -> Inputs:
    """What the column holds, read from its feature type and its first value: images (a
    datasets.Image, or integer arrays of 2 or 3 dims), else numbers. Images are resized to
    `image_size` squared, or (null) to the first one's size, so every sample has one shape
    (a no-op for images that share it)."""
    if isinstance(table.features[column], load_library().Image):
        first = table[0][column]
        mode = "L" if grayscale or first.mode in GRAY_MODES else "RGB"
    else:
        first = np.asarray(table.with_format("numpy")[0][column])
        if first.dtype.kind not in "biuf":
            raise DataError(f"data.image_column={column} holds {first.dtype} values; it must hold images or numbers")
        if first.dtype.kind not in "iu" or first.ndim not in (2, 3):
            return Inputs(column, False)
        one_channel = first.ndim == 2 or 1 in (first.shape[0], first.shape[-1])
        mode = "L" if grayscale or one_channel else "RGB"
    height, width = Inputs(column, True, mode).convert(first).shape[1:]
    return Inputs(column, True, mode, (image_size, image_size) if image_size is not None else (height, width))


class Rows(torch.utils.data.Dataset):
    """A split of a Hugging Face dataset, read row by row from its memory-mapped Arrow files:
    (inputs, label), the inputs a uint8 C x H x W image or float32 numbers (see Inputs)."""

    def __init__(self, table: "datasets.Dataset", inputs: Inputs, labels: torch.Tensor) -> None:
        # Images stay PIL images (the python format); arrays come as NumPy arrays, not lists.
        columns = table.select_columns([inputs.column])
        self.table = columns if _is_image(columns, inputs.column) else columns.with_format("numpy")
        self.inputs = inputs
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.inputs.convert(self.table[index][self.inputs.column]), int(self.labels[index])

    def stack(self) -> torch.Tensor:
        """Every row's inputs in one tensor, read a batch of rows at a time."""
        samples = [self.inputs.convert(value) for batch in self.table.iter(batch_size=READ_BATCH)
                   for value in batch[self.inputs.column]]
        shapes = sorted({tuple(sample.shape) for sample in samples})
        if len(shapes) > 1:  # images all have one (Inputs.size): these are numbers
            raise DataError(f"data.image_column={self.inputs.column} holds numbers of shapes {shapes[0]} and "
                            f"{shapes[-1]}; every row needs one shape")
        return torch.stack(samples)


def _is_image(table: "datasets.Dataset", column: str) -> bool:
    return isinstance(table.features[column], load_library().Image)


def labels_of(splits: dict[str, "datasets.Dataset"], column: str) -> tuple[dict[str, torch.Tensor], int]:
    """Each split's labels as class ids, and the number of classes: a ClassLabel's names, integers
    as they are (classes up to the largest + 1), strings in sorted order."""
    lib = load_library()
    feature = next(iter(splits.values())).features[column]
    raw = {name: np.asarray(table.with_format("numpy")[column]) for name, table in splits.items()}
    kinds = {values.dtype.kind for values in raw.values() if len(values)}
    if kinds <= {"U", "S", "O"}:
        names = sorted({str(value) for values in raw.values() for value in values})
        ids = {label: index for index, label in enumerate(names)}
        return {split: torch.tensor([ids[str(v)] for v in values], dtype=torch.int64) for split, values in raw.items()}, len(names)
    if not kinds <= {"i", "u"}:
        raise DataError(f"data.label_column={column} holds {', '.join(sorted(str(v.dtype) for v in raw.values()))} "
                        "values; class labels must be a ClassLabel, integers 0..C-1 or strings")
    labels = {split: torch.from_numpy(values.astype(np.int64)) for split, values in raw.items()}
    smallest = min(int(y.min()) for y in labels.values() if len(y))
    if smallest < 0:
        raise DataError(f"data.label_column={column} holds the label {smallest}; class labels must be 0..C-1")
    largest = max(int(y.max()) for y in labels.values() if len(y))
    classes = feature.num_classes if isinstance(feature, lib.ClassLabel) else largest + 1
    if largest >= classes:
        raise DataError(f"data.label_column={column} holds the label {largest} but its ClassLabel has {classes} names")
    return labels, classes


def _check_columns(path: str, splits: dict[str, "datasets.Dataset"], columns: dict[str, str]) -> None:
    for split, table in splits.items():
        for key, column in columns.items():
            if column not in table.column_names:
                raise DataError(f"data.{key}={column} is not a column of the {split!r} split of {path}; "
                                f"its columns: {', '.join(table.column_names)}")
        if len(table) == 0:
            raise DataError(f"data.path={path}: the {split!r} split has no rows")


def build(
    path: str,
    image_column: str = "image",
    label_column: str = "label",
    train_split: str = "train",
    val_split: str | None = "validation",
    test_split: str | None = "test",
    val_fraction: float = 0.1,
    seed: int = 0,
    image_size: int | None = None,
    grayscale: bool = False,
    root: str = "~/.cache/trainer",
    in_memory: Any = "auto",
    memory_budget_mb: float = 4096,
    workers: int = 2,
) -> DataSplits | StreamedSplits:
    """The splits, held in memory or streamed from disk; images standardised per channel with the
    training split's statistics.

    Args:
        path: a save_to_disk folder (a DatasetDict, or a single Dataset: the training split), or
            Parquet files: a file (the training split), a folder or a glob, each file's split in
            its name (train-00000-of-00001.parquet) or its folder (train/0.parquet).
        image_column: the inputs' column: images, or a numeric vector per row.
        label_column: the class labels' column: a ClassLabel, integers 0..C-1, or strings.
        train_split: the name of the training split.
        val_split: the validation split's name; null, or absent from the data: a seeded
            `val_fraction` of the training split is held out instead (never the test split).
        test_split: the test split's name, evaluated once at the end; null or absent: none.
        val_fraction: fraction of the training split held out when there is no validation split.
        seed: seed of that hold-out.
        image_size: side images are resized to (square); null: the first training image's size
            (images of another size are resized to it).
        grayscale: read images as one channel (else one channel only if they are stored so).
        root: where Parquet files are converted once to memory-mapped Arrow files (root/hf).
        in_memory: "auto" (images held in memory when every split fits `memory_budget_mb` as
            float32, streamed otherwise), true (held), or false (streamed). Numbers are held.
        memory_budget_mb: the most the splits may take in memory under in_memory=auto, in MiB.
        workers: DataLoader worker processes reading a streamed split (0: read in the training process).
    """
    if image_size is not None and image_size < 1:
        raise ConfigError(f"data.image_size={image_size} must be at least 1, or null to keep the stored size")
    check_fraction(val_fraction)
    mode, budget, workers = check_in_memory(in_memory), check_budget(memory_budget_mb), check_workers(workers)
    wanted = tuple(name for name in (train_split, val_split, test_split) if name is not None)
    if len(set(wanted)) < len(wanted):
        raise ConfigError(f"data.train_split, data.val_split and data.test_split must differ; they are {', '.join(wanted)}")
    found = read_splits(path, root, wanted)
    if train_split not in found:
        raise DataError(f"data.path={path} has no {train_split!r} split (its splits: {', '.join(found)}); "
                        "set data.train_split")
    splits = {name: found[name] for name in wanted if name in found}
    _check_columns(path, splits, {"image_column": image_column, "label_column": label_column})
    labels, classes = labels_of(splits, label_column)
    if len(torch.unique(labels[train_split])) < 2:
        raise DataError(f"data.label_column={label_column}: the {train_split!r} split holds "
                        f"{len(torch.unique(labels[train_split]))} class; classification needs at least 2")
    inputs = inputs_of(splits[train_split], image_column, image_size, grayscale)
    notices = []
    if val_split is None or val_split not in splits:
        train_rows, val_rows = hold_out_indices(len(splits[train_split]), val_fraction, seed)
        table, y = splits[train_split], labels[train_split]
        train = Rows(table.select(train_rows.tolist()), inputs, y[train_rows])
        val = Rows(table.select(val_rows.tolist()), inputs, y[val_rows])
        if val_split is not None:
            notices.append(f"data.path={path} has no {val_split!r} split: validation is a seeded {val_fraction * 100:g}% "
                           f"of {train_split!r}")
    else:
        train = Rows(splits[train_split], inputs, labels[train_split])
        val = Rows(splits[val_split], inputs, labels[val_split])
    test = Rows(splits[test_split], inputs, labels[test_split]) if test_split in splits else None

    rows = len(train) + len(val) + (len(test) if test is not None else 0)
    reason = stream_reason(mode, rows * train[0][0].numel() * 4, budget)  # float32 in memory
    if reason is not None and not inputs.image:
        if mode == "false":
            raise ConfigError(f"data.in_memory=false streams images, but data.image_column={image_column} holds "
                              "numbers, which are held in memory: set data.in_memory=auto or true")
        reason = None
    if reason is not None:
        notices.append(f"data=hf is streamed from disk ({reason}) by {workers} worker process(es)")
        return streamed_splits(Streamed(train, train.labels), Streamed(val, val.labels),
                               Streamed(test, test.labels) if test is not None else None, classes, workers, notices)
    return _in_memory(train, val, test, classes, notices)


def _in_memory(train: Rows, val: Rows, test: Rows | None, classes: int, notices: list[str]) -> DataSplits:
    x_train, x_val = train.stack(), val.stack()
    x_test = test.stack() if test is not None else None
    if train.inputs.image:  # pixels to [0, 1], standardised per channel as a streamed split is (streamed.py)
        x_train, x_val = x_train.float() / 255, x_val.float() / 255
        mean, std = image_stats(x_train)
        x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
        x_test = (x_test.float() / 255 - mean) / std if x_test is not None else None
    return DataSplits(x_train=x_train, y_train=train.labels, x_val=x_val, y_val=val.labels,
                      task="classification", num_outputs=classes, notices=notices,
                      x_test=x_test, y_test=test.labels if test is not None else None)
