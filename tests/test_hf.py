"""data=hf: a save_to_disk folder or Parquet files, built here from generated data, read from disk
without the network; the split rules; one-line errors for a wrong path or column, and for a
missing `datasets` package."""
from __future__ import annotations

import importlib.util
import json
import re
import socket
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
from omegaconf import DictConfig

from fakes import HF_CLASSES, hf_split, write_hf
from in_process import train_in_process
from test_test_split import events  # noqa: F401 - the fixture that records each evaluation
from trainer.data import DataSplits, hf, hold_out_indices
from trainer.errors import ConfigError, DataError
from trainer.run import run

# The `test` extra installs datasets; without it, only the missing-package error can be tested.
needs_datasets = pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason='pip install -e ".[hf]"')


def labels(rows: int) -> torch.Tensor:
    return torch.arange(rows) % 3  # fakes.hf_split: row i has class i % 3


@needs_datasets
def test_a_saved_folder_trains_end_to_end(tmp_path: Path, make_cfg: Callable[..., DictConfig],
                                          events: list[str]) -> None:  # noqa: F811
    folder = write_hf(tmp_path, {"train": 64, "validation": 12, "test": 9})
    data = hf.build(str(folder), root=str(tmp_path / "cache"))
    assert data.x_train.shape == (64, 3, 8, 8) and data.num_outputs == 3 and not data.notices
    # every split as stored, in its order: the validation split is the folder's own
    assert torch.equal(data.y_train, labels(64)) and torch.equal(data.y_val, labels(12))
    assert torch.equal(data.y_test, labels(9))
    validation = hf_split(12, seed=1)  # as write_hf wrote it
    rows = hf.Rows(validation, hf.inputs_of(validation, "image", None, False), labels(12))
    stored = torch.from_numpy(validation.with_format("numpy")["image"][:]).permute(0, 3, 1, 2)
    assert torch.equal(rows.stack(), stored)  # the pixels unchanged on the way in, C x H x W

    summary = run(make_cfg("data=hf", f"data.path={folder}", "model=cnn"), tmp_path / "run")
    assert summary["status"] == "completed" and summary["tricks"]["data"] == "hf"
    assert events == ["val", "test"] and set(summary["test"]) == {"loss", "acc"}  # the test split once, at the end


@needs_datasets
def test_parquet_files_of_numbers_train_end_to_end(tmp_path: Path, make_cfg: Callable[..., DictConfig]) -> None:
    folder = write_hf(tmp_path, {"train": 80, "test": 10}, parquet=True, images=False)
    summary = run(make_cfg("data=hf", f"data.path={folder}/*.parquet", "data.image_column=features",
                           "data.label_column=kind", "model=mlp"), tmp_path / "run")
    assert summary["status"] == "completed" and "test" in summary


@needs_datasets
def test_without_a_validation_split_it_is_held_out_of_train_and_test_is_untouched(tmp_path: Path) -> None:
    folder = write_hf(tmp_path, {"train": 80, "test": 10}, parquet=True, images=False)
    data = hf.build(str(folder), image_column="features", label_column="kind", val_fraction=0.25, seed=3,
                    root=str(tmp_path / "cache"))
    assert data.input_shape == (10,) and data.num_outputs == 3  # string labels, classes in sorted order
    stored = torch.from_numpy(hf_split(80, seed=0, images=False).with_format("numpy")["features"][:])
    train_rows, val_rows = hold_out_indices(80, 0.25, 3)  # hold_out's seeded split, as every data set's
    assert torch.equal(data.x_val, stored[val_rows]) and torch.equal(data.x_train, stored[train_rows])
    assert torch.equal(data.y_val, labels(80)[val_rows])
    assert torch.equal(data.y_test, labels(10)) and len(data.x_test) == 10
    assert data.notices == [f"data.path={folder} has no 'validation' split: validation is a seeded 25% of 'train'"]
    (folder / "train-00000-of-00001.parquet").unlink()  # a folder of test files alone has no training split
    with pytest.raises(DataError, match=r"has no 'train' split \(its splits: test\); set data.train_split"):
        hf.build(str(folder), image_column="features", label_column="kind", root=str(tmp_path / "cache"))


@needs_datasets
def test_images_resized_to_one_channel_from_parquet_images(tmp_path: Path) -> None:
    folder = write_hf(tmp_path, {"train": 20}, parquet=True)
    data = hf.build(str(folder / "train-00000-of-00001.parquet"), image_size=4, grayscale=True, val_fraction=0.2,
                    test_split=None, root=str(tmp_path / "cache"))
    assert data.x_train.shape == (16, 1, 4, 4) and data.x_val.shape == (4, 1, 4, 4) and data.x_test is None
    assert data.num_outputs == len(HF_CLASSES)  # the ClassLabel's names, kept through Parquet


@needs_datasets
def test_pixel_arrays_are_images(tmp_path: Path) -> None:
    import datasets

    pixels = torch.randint(0, 256, (12, 3, 5, 5), dtype=torch.uint8)  # C x H x W per row
    datasets.Dataset.from_dict({"image": pixels.numpy(), "label": labels(12).numpy()}).save_to_disk(str(tmp_path / "d"))
    row, label = hf.Rows(datasets.load_from_disk(str(tmp_path / "d")), hf.Inputs("image", True), labels(12))[4]
    assert row.dtype == torch.uint8 and torch.equal(row, pixels[4]) and label == 1


@needs_datasets
def test_no_network_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("data=hf opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for parquet in (False, True):  # Parquet: converted to Arrow in a fresh cache
        folder = write_hf(tmp_path, {"train": 20, "test": 5}, parquet=parquet)
        assert len(hf.build(str(folder), root=str(tmp_path / "cache")).x_test) == 5


@needs_datasets
@pytest.mark.parametrize("args, message", [
    (["data.path=/no/such/folder"], "data.path=/no/such/folder does not exist; give a folder written by save_to_disk"),
    (["data.path={SAVED}/../*.parquet"], "matches no Parquet files"),
    (["data.path={SAVED}", "data.image_column=img"],
     "data.image_column=img is not a column of the 'train' split of {SAVED}; its columns: image, label"),
    (["data.path={SAVED}", "data.label_column=kind"], "data.label_column=kind is not a column"),
    (["data.path={SAVED}", "data.train_split=training"], "has no 'training' split (its splits: train, test)"),
])
def test_bad_input_is_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    saved = str(write_hf(tmp_path, {"train": 20, "test": 5}))
    before = files(tmp_path)
    outcome = train_in_process(["data=hf", "model=cnn", *(arg.replace("{SAVED}", saved) for arg in args)], tmp_path)
    lines = outcome.stderr.strip().splitlines()
    assert outcome.code == 2 and len(lines) == 1, outcome.stderr
    assert message.replace("{SAVED}", saved) in lines[0]
    assert files(tmp_path) == before  # no run folder, nothing written into the user's data set


def files(root: Path) -> dict[str, bytes]:
    return {str(path): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_without_the_datasets_package_the_error_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # what `import datasets` does when it is not installed
    with pytest.raises(ConfigError, match=re.escape('data=hf needs the datasets package: pip install -e ".[hf]"')):
        hf.build(str(tmp_path))
    outcome = train_in_process(["data=hf", f"data.path={tmp_path}"], tmp_path)
    assert outcome.code == 2 and outcome.stderr.strip() == 'error: data=hf needs the datasets package: pip install -e ".[hf]"'


@needs_datasets
def test_unusable_columns_are_refused(tmp_path: Path) -> None:
    import datasets

    table = datasets.Dataset.from_dict({"image": [[1.0, 2.0]] * 10, "label": [0.5] * 10, "name": ["a"] * 10,
                                       "kind": ["a", "b"] * 5})
    table.save_to_disk(str(tmp_path / "d"))
    with pytest.raises(DataError, match="data.label_column=label holds float64 values; class labels must be"):
        hf.build(str(tmp_path / "d"))
    with pytest.raises(DataError, match="data.image_column=name holds <U1 values; it must hold images or numbers"):
        hf.build(str(tmp_path / "d"), image_column="name", label_column="kind")
    with pytest.raises(DataError, match="data.label_column=name: the 'train' split holds 1 class; classification needs at least 2"):
        hf.build(str(tmp_path / "d"), label_column="name")


@needs_datasets
def test_streamed_images_train_exactly_as_held_in_memory(tmp_path: Path) -> None:
    folder = write_hf(tmp_path, {"train": 48, "validation": 12, "test": 8})
    common = ["data=hf", f"data.path={folder}", "data.workers=0", "model=cnn", "model.channels=[8,16]", "batch_size=8",
              "epochs=2", "device=cpu", "deterministic=true", "curves=false", "regularisation=dropout"]
    summaries = {}
    for name, budget in (("held", 4096), ("streamed", 0.01)):  # 68 images of 3 x 8 x 8 as float32: 0.05 MiB
        outcome = train_in_process([*common, f"data.memory_budget_mb={budget}", f"hydra.run.dir={name}"], tmp_path)
        assert outcome.code == 0, outcome.stderr
        summaries[name] = json.loads((tmp_path / name / "summary.json").read_text())
    assert summaries["held"]["data"]["path"] == "in_memory" and summaries["streamed"]["data"]["path"] == "streaming"
    for key in ("final", "best", "test"):  # the same batches, normalised with the same statistics: bit for bit
        assert summaries["streamed"][key] == summaries["held"][key], key


@needs_datasets
def test_numbers_are_held_in_memory(tmp_path: Path) -> None:
    folder = write_hf(tmp_path, {"train": 40}, parquet=True, images=False)
    numbers = {"image_column": "features", "label_column": "kind", "root": str(tmp_path / "cache")}
    assert isinstance(hf.build(str(folder), memory_budget_mb=1e-6, **numbers), DataSplits)  # over budget, held
    with pytest.raises(ConfigError, match="data.in_memory=false streams images, but data.image_column=features holds numbers"):
        hf.build(str(folder), in_memory=False, **numbers)
