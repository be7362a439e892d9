"""Data set builders: shapes, dtypes, determinism, caching and one-line errors; no network use."""
from __future__ import annotations

import os
import random

import time
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from fakes import make_images, write_mnist
from torchvision import datasets

from trainer import data
from trainer.data import DataSplits, adding, imagefolder, mnist1d, synthetic, tensors, vision
from trainer.errors import ConfigError, DataError

def check_classification(d: DataSplits, shape: tuple[int, ...], classes: int) -> None:
    assert d.task == "classification" and d.num_outputs == classes
    assert d.input_shape == shape and d.x_val.shape[1:] == shape
    assert d.x_train.dtype == d.x_val.dtype == torch.float32
    assert d.y_train.dtype == d.y_val.dtype == torch.int64
    assert d.y_train.shape == (len(d.x_train),) and d.y_val.shape == (len(d.x_val),)
    assert 0 <= int(d.y_train.min()) and int(d.y_train.max()) < classes

def test_mnist1d_sizes_cache_and_rng_untouched(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(1)
    py_state, np_state = random.getstate(), np.random.get_state()
    first = mnist1d.build(str(tmp_path))
    # The caller's global generators continue exactly where they were.
    assert random.getstate() == py_state
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    check_classification(first, (1, 40), 10)
    # Validation is a tenth of the package's 4000 training signals; its 1000 test signals are the test split.
    assert (len(first.x_train), len(first.x_val), len(first.x_test)) == (3600, 400, 1000)
    assert abs(float(first.x_train.mean())) < 0.1 and abs(float(first.x_train.std()) - 1) < 0.1

    cached = list((tmp_path / "mnist1d").iterdir())
    assert [p.suffix for p in cached] == [".npz"]  # no temp file left behind
    start = time.perf_counter()
    second = mnist1d.build(str(tmp_path))
    assert time.perf_counter() - start < 0.5
    for a, b in zip((first.x_train, first.y_train, first.x_val, first.y_val, first.x_test, first.y_test),
                    (second.x_train, second.y_train, second.x_val, second.y_val, second.x_test, second.y_test)):
        assert torch.equal(a, b)


def rows(x: torch.Tensor) -> set[bytes]:
    return {sample.numpy().tobytes() for sample in x}


def test_mnist1d_validation_is_carved_from_training_data_and_seeded(tmp_path: Path) -> None:
    d = mnist1d.build(str(tmp_path))
    train, val, test = rows(d.x_train), rows(d.x_val), rows(d.x_test)
    assert len(train) == 3600 and len(val) == 400 and len(test) == 1000  # no duplicates inside a split
    assert not train & val and not train & test and not val & test  # disjoint
    other = mnist1d.build(str(tmp_path), val_fraction=0.2)
    assert len(other.x_val) == 800 and rows(other.x_train) | rows(other.x_val) == train | val  # the same pool
    assert torch.equal(other.x_test, d.x_test)  # the test split is never touched
    numbers = torch.arange(100)
    seed_1 = data.hold_out(numbers, numbers, 0.1, seed=1)[2]
    assert torch.equal(seed_1, data.hold_out(numbers, numbers, 0.1, seed=1)[2])  # the same split every run
    assert not torch.equal(seed_1, data.hold_out(numbers, numbers, 0.1, seed=2)[2])  # another seed, another split


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1])
def test_bad_val_fraction_is_refused_before_anything_is_written(tmp_path: Path, fraction: float) -> None:
    with pytest.raises(ConfigError, match=rf"data.val_fraction={fraction} must be in \(0, 1\)"):
        mnist1d.build(str(tmp_path), val_fraction=fraction)
    with pytest.raises(ConfigError, match=rf"data.val_fraction={fraction}"):
        vision.mnist(str(tmp_path), download=True, val_fraction=fraction)  # refused before any download
    assert list(tmp_path.iterdir()) == []


def test_synthetic_and_adding_have_a_test_split_that_changes_nothing_else() -> None:
    with_test = synthetic.build(num_train=64, num_val=32, num_test=16)
    without = synthetic.build(num_train=64, num_val=32, num_test=0)
    assert len(with_test.x_test) == 16 and without.x_test is None and not without.has_test
    assert torch.equal(with_test.x_train, without.x_train) and torch.equal(with_test.x_val, without.x_val)
    assert not rows(with_test.x_test) & (rows(with_test.x_train) | rows(with_test.x_val))
    sums = adding.build(seq_len=10, num_train=20, num_val=5, num_test=7)
    assert sums.x_test.shape == (7, 2, 10) and sums.y_test.shape == (7, 1)


def test_tensors_take_an_optional_test_split(tmp_path: Path) -> None:
    arrays = {"x_train": torch.randn(8, 3), "y_train": torch.tensor([0, 1] * 4), "x_val": torch.randn(4, 3),
              "y_val": torch.tensor([0, 1, 0, 1])}
    torch.save(arrays, tmp_path / "plain.pt")
    assert not tensors.build(str(tmp_path / "plain.pt")).has_test
    torch.save({**arrays, "x_test": torch.randn(5, 3), "y_test": torch.tensor([0, 1, 2, 0, 1])}, tmp_path / "test.pt")
    d = tensors.build(str(tmp_path / "test.pt"))
    assert len(d.x_test) == 5 and d.num_outputs == 3  # a class seen only in the test split still has an output
    torch.save({**arrays, "x_test": torch.randn(5, 3)}, tmp_path / "half.pt")
    with pytest.raises(DataError, match="has x_test but not y_test"):
        tensors.build(str(tmp_path / "half.pt"))

@pytest.mark.parametrize("kwargs, message", [
    ({"train_split": 1.5}, "data.train_split=1.5 must be in (0, 1)"),
    ({"num_samples": 5}, "data.num_samples=5"),
])
def test_mnist1d_bad_args(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        mnist1d.build(str(tmp_path), **kwargs)

def test_synthetic_signals_and_images() -> None:
    d = synthetic.build(num_train=64, num_val=32, num_classes=3, length=20, channels=2)
    check_classification(d, (2, 20), 3)
    assert abs(float(d.x_train.mean())) < 0.1 and abs(float(d.x_train.std()) - 1) < 0.1
    img = synthetic.build(num_train=16, num_val=8, channels=3, image_size=8)
    check_classification(img, (3, 8, 8), 4)

def test_synthetic_deterministic_per_seed_and_leaves_global_rng() -> None:
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    a, b, c = synthetic.build(seed=1), synthetic.build(seed=1), synthetic.build(seed=2)
    assert torch.rand(1) == expected
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert not torch.equal(a.x_train, c.x_train)

def test_synthetic_bad_args() -> None:
    with pytest.raises(ConfigError, match="data.num_classes=1 must be at least 2"):
        synthetic.build(num_classes=1)

def test_adding_targets_and_markers() -> None:
    d = adding.build(seq_len=10, num_train=200, num_val=50, seed=3)
    assert d.task == "regression" and d.num_outputs == 1 and d.input_shape == (2, 10)
    assert d.y_train.shape == (200, 1) and d.y_train.dtype == torch.float32
    for x, y in ((d.x_train, d.y_train), (d.x_val, d.y_val)):
        values, markers = x[:, 0], x[:, 1]
        assert ((values >= 0) & (values <= 1)).all()
        assert (markers[:, :5].sum(1) == 1).all() and (markers[:, 5:].sum(1) == 1).all()
        assert set(markers.unique().tolist()) == {0.0, 1.0}
        assert torch.allclose((values * markers).sum(1, keepdim=True), y)
    with pytest.raises(ConfigError, match="data.seq_len=1"):
        adding.build(seq_len=1)

@pytest.mark.parametrize("builder, folder", [
    (vision.mnist, "MNIST/raw"), (vision.fashion_mnist, "FashionMNIST/raw"), (vision.cifar10, ""),
])
def test_vision_missing_files_without_download(tmp_path: Path, builder, folder: str) -> None:
    with pytest.raises(DataError) as info:
        builder(str(tmp_path), download=False)
    message = str(info.value)
    assert os.path.join(str(tmp_path), folder).rstrip("/") in message and "\n" not in message

def test_vision_failed_download_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self) -> None:
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(datasets.CIFAR10, "download", offline)
    with pytest.raises(DataError, match="data=cifar10: could not download to .*Name or service not known.*"
                                        "cifar-10-python.tar.gz") as info:
        vision.cifar10(str(tmp_path))
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)

def test_mnist_reads_raw_files_and_normalises(tmp_path: Path) -> None:
    images = write_mnist(tmp_path)
    d = vision.mnist(str(tmp_path), download=False)
    check_classification(d, (1, 28, 28), 10)
    # The 4 official test images are the test split; validation is 1 of the 6 training images.
    assert len(d.x_train) == 5 and len(d.x_val) == 1 and len(d.x_test) == 4
    expected = (torch.tensor(images["t10k"], dtype=torch.float32) / 255 - 0.1307) / 0.3081
    assert torch.allclose(d.x_test[:, 0], expected)
    assert sorted(d.y_train.tolist() + d.y_val.tolist()) == [0, 1, 2, 3, 4, 5]

def test_imagefolder_split_and_standardise(tmp_path: Path) -> None:
    make_images(tmp_path / "train", {"cat": 5, "dog": 5, "eel": 5})
    d = imagefolder.build(str(tmp_path / "train"), image_size=4, val_fraction=0.2)
    check_classification(d, (3, 4, 4), 3)
    assert len(d.x_train) == 12 and len(d.x_val) == 3
    assert torch.allclose(d.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(d.x_train.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-5)

    make_images(tmp_path / "val", {"cat": 1, "dog": 1, "eel": 2})
    g = imagefolder.build(str(tmp_path / "train"), image_size=4, val_path=str(tmp_path / "val"), grayscale=True)
    check_classification(g, (1, 4, 4), 3)
    assert len(g.x_train) == 15 and g.y_val.tolist() == [0, 1, 2, 2] and not g.has_test
    t = imagefolder.build(str(tmp_path / "train"), image_size=4, test_path=str(tmp_path / "val"))
    assert len(t.x_train) == 12 and len(t.x_val) == 3 and t.y_test.tolist() == [0, 1, 2, 2]

def test_imagefolder_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=f"data.path={missing} does not exist"):
        imagefolder.build(str(missing))
    make_images(tmp_path / "one", {"cat": 3})
    with pytest.raises(DataError, match="needs at least 2 classes"):
        imagefolder.build(str(tmp_path / "one"))
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="has no usable images"):
        imagefolder.build(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"data.val_fraction=1.5 must be in \(0, 1\)"):
        imagefolder.build(str(tmp_path / "one"), val_fraction=1.5)


# ---- data options (any data=): standardise, and the planted faults -------------------------------

def test_label_noise_replaces_that_fraction_of_training_labels_only() -> None:
    from trainer.data import options

    d = synthetic.build(num_train=2000, num_val=100, num_classes=4)
    noisy = options.apply(d, label_noise=0.5)
    changed = float((noisy.y_train != d.y_train).float().mean())
    assert abs(changed - 0.5 * 3 / 4) < 0.05  # a replaced label keeps its class 1 time in 4
    assert torch.equal(noisy.y_val, d.y_val) and torch.equal(noisy.x_train, d.x_train)
    assert torch.equal(noisy.y_test, d.y_test) and torch.equal(noisy.x_test, d.x_test)  # the test split stays true
    assert torch.equal(options.apply(d, label_noise=0.5).y_train, noisy.y_train)  # the same labels each time
    shuffled = options.apply(d, label_noise=1.0)
    assert abs(float((shuffled.y_train == d.y_train).float().mean()) - 0.25) < 0.05  # chance agreement
    assert options.apply(d) is d  # neutral options leave the data as built


def test_label_noise_leaves_ignored_positions_ignored() -> None:
    # A seq2seq target is -100 (cross-entropy's ignore_index) past its end: replaced, those became random targets.
    from trainer.data import options, seq2seq

    d = seq2seq.build(num_train=200, num_val=20, num_test=0)
    ignored = d.y_train < 0
    assert ignored.any()
    noisy = options.apply(d, label_noise=1.0)
    assert torch.equal(noisy.y_train < 0, ignored)
    assert abs(float((noisy.y_train[~ignored] != d.y_train[~ignored]).float().mean()) - (1 - 1 / d.num_outputs)) < 0.05


def test_input_scale_offset_and_standardise_repairs_them() -> None:
    from trainer.data import options

    d = synthetic.build(num_train=256, num_val=64, channels=2)
    planted = options.apply(d, input_scale=1000.0, input_offset=100.0)
    assert abs(float(planted.x_train.mean()) - 100) < 30 and 500 < float(planted.x_train.std()) < 2000
    repaired = options.apply(d, input_scale=1000.0, input_offset=100.0, standardise=True)
    per_channel = repaired.x_train.transpose(0, 1).reshape(2, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(2), atol=1e-3)
    assert torch.allclose(per_channel.std(1), torch.ones(2), atol=1e-3)
    # Validation is standardised with the training statistics, so it is close to but not exactly (0, 1).
    assert abs(float(repaired.x_val.mean())) < 0.2 and torch.allclose(repaired.x_val, (d.x_val - d.x_train.mean(dim=(0, 2), keepdim=True)) / d.x_train.std(dim=(0, 2), keepdim=True), atol=1e-3)
    # The test split gets the same treatment as validation.
    assert torch.allclose(repaired.x_test, (d.x_test - d.x_train.mean(dim=(0, 2), keepdim=True)) / d.x_train.std(dim=(0, 2), keepdim=True), atol=1e-3)
    assert torch.allclose(planted.x_test, d.x_test * 1000 + 100) and torch.equal(planted.y_test, d.y_test)


@pytest.mark.parametrize("override, message", [
    ("data.label_noise=1.5", "data.label_noise=1.5 must be in [0, 1]"),
    ("data.input_scale=0", "data.input_scale=0 must be a finite non-zero number"),
    ("data.standardise=maybe", "data.standardise='maybe' must be true or false"),
    ("data.input_offset=abc", "data.input_offset='abc' must be a number"),
])
def test_data_options_bad_values(make_cfg, override: str, message: str) -> None:
    from trainer.engine.parts import build_parts

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_parts(make_cfg(override))


def test_label_noise_needs_classification(make_cfg) -> None:
    from trainer.engine.parts import build_parts

    with pytest.raises(ConfigError, match="data.label_noise=0.2 needs a classification task"):
        build_parts(make_cfg("data=adding", "data.num_train=64", "data.num_val=16", "data.seq_len=10",
                             "model=rnn", "data.label_noise=0.2"))


def test_head_spreads_over_a_class_sorted_split() -> None:
    # A split listed class by class (an ImageFolder): its first 50 of 1000 rows are all of class 0.
    x, y = torch.arange(1000.0).unsqueeze(1), torch.arange(1000) // 100
    splits = DataSplits(x, y, x, y, task="classification", num_outputs=10)
    sample_x, sample_y = splits.head("train", 50)
    assert sorted(set(sample_y.tolist())) == list(range(10)) and torch.equal(sample_y, sample_x[:, 0].long() // 100)
    assert torch.equal(splits.head("train", 50)[0], sample_x)  # seeded: the same rows every time
    whole_x, whole_y = splits.head("val", 5000)  # no more than asked: the whole split, in order
    assert torch.equal(whole_x, x) and torch.equal(whole_y, y)
