"""Data augmentation: what each choice does to a batch, that it follows the global seed, and that
only training batches see it (evaluation scores the untouched validation set)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pytest
import torch
from omegaconf import DictConfig

from trainer.config import build
from trainer.errors import ConfigError
from trainer.run import run
from trainer.tricks.augment import NoAugment, Shift, _shift_axis, none, shift


def ramp(n: int = 4, length: int = 10) -> torch.Tensor:
    """(n, 1, length) signals 1, 2, ..., length: a shift is read off from the first value."""
    return torch.arange(1.0, length + 1).expand(n, 1, length).clone()


def test_none_is_the_identity() -> None:
    x = torch.randn(8, 1, 40)
    assert none(input_shape=(1, 40), token_ids=False)(x) is x


def test_shift_moves_each_sample_by_its_own_amount() -> None:
    x = ramp()
    shifts = torch.tensor([0, 2, -3, 5])
    zeros = _shift_axis(x, 2, shifts, roll=False)
    assert zeros[0].tolist() == x[0].tolist()
    assert zeros[1, 0].tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 7, 8]  # right by 2, zeros shifted in
    assert zeros[2, 0].tolist() == [4, 5, 6, 7, 8, 9, 10, 0, 0, 0]  # left by 3
    rolled = _shift_axis(x, 2, shifts, roll=True)
    assert torch.equal(rolled[3, 0], torch.roll(x[3, 0], 5))  # roll wraps around
    for i, s in enumerate(shifts.tolist()):
        assert torch.equal(rolled[i, 0], torch.roll(x[i, 0], s))


def test_random_shift_stays_within_max_shift() -> None:
    torch.manual_seed(0)
    x = ramp(n=256, length=40)
    out = Shift(max_shift=3, noise_std=0.0, flip=False, mode="roll")(x)
    # For a ramp rolled by s, the value at position 3 is 4 - s (mod 40): recover s per sample.
    moved = (4 - out[:, 0, 3]).remainder(40).long()
    moved = torch.where(moved > 20, moved - 40, moved)
    assert set(moved.tolist()) == {-3, -2, -1, 0, 1, 2, 3}  # every allowed shift occurs, no other


def test_images_shift_on_both_axes_and_flip() -> None:
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 2, 2] = 1.0
    moved = _shift_axis(_shift_axis(image, 2, torch.tensor([1]), roll=False), 3, torch.tensor([-2]), roll=False)
    assert moved[0, 0, 3, 0] == 1.0 and moved.sum() == 1.0
    torch.manual_seed(0)
    x = torch.arange(6.0).view(1, 1, 1, 6).expand(64, 1, 1, 6).clone()
    flipped = Shift(max_shift=0, noise_std=0.0, flip=True, mode="zeros")(x)
    mirrored = (flipped[:, 0, 0, 0] == 5).sum().item()
    assert 10 < mirrored < 54 and torch.equal(flipped[flipped[:, 0, 0, 0] == 5][0, 0, 0], x[0, 0, 0].flip(0))


def test_noise_has_the_asked_scale() -> None:
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 1000)
    assert abs(float(Shift(0, 0.1, False, "zeros")(x).std()) - 0.1) < 0.005


def test_shift_follows_the_global_seed() -> None:
    x = torch.randn(32, 1, 40)
    augment = shift(input_shape=(1, 40), token_ids=False, max_shift=4, noise_std=0.1)
    torch.manual_seed(7)
    first = augment(x)
    torch.manual_seed(7)
    assert torch.equal(first, augment(x))
    assert not torch.equal(first, augment(x))  # a new draw each batch


@pytest.mark.parametrize("bad, message", [
    ({"max_shift": -1}, "max_shift"), ({"noise_std": -0.5}, "noise_std"), ({"mode": "wrap"}, "mode"),
])
def test_bad_settings_are_refused(bad: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        shift(input_shape=(1, 40), token_ids=False, **bad)  # type: ignore[arg-type]


def test_flip_is_refused_for_signals() -> None:
    with pytest.raises(ConfigError, match="flip"):
        shift(input_shape=(1, 40), token_ids=False, flip=True)
    assert shift(input_shape=(3, 8, 8), token_ids=False, flip=True).flip
    with pytest.raises(ConfigError, match=re.escape("needs signals (C, L) or images (C, H, W); this data's samples are (16,)")):
        shift(input_shape=(16,), token_ids=False)


@pytest.mark.parametrize("overrides, message", [
    (["augment.flip=true"], "augment.flip=true mirrors images"),
    (["data=text", "data.max_chars=4000", "data.seq_len=16", "model=char_lstm", "norm=none", "batch_size=8"],
     "this data's inputs are token ids, which it would move away from their targets"),
    # A source and decoder-input pair (2, L) looks like a signal: it was shifted, its targets not (noise: a traceback).
    (["data=seq2seq", "data.num_train=96", "data.num_val=16", "data.num_test=0", "model=seq2seq", "batch_size=32"],
     "this data's inputs are token ids"),
])
def test_a_shift_that_does_not_fit_the_data_is_refused_before_the_run_writes(
        make_cfg: Callable[..., DictConfig], tmp_path: Path, overrides: list[str], message: str) -> None:
    # Found at the first batch, it left .hydra/ and metrics.jsonl of a run that never trained.
    with pytest.raises(ConfigError, match=re.escape(message)):
        run(make_cfg("augment=shift", *overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_yaml_choices_build(make_cfg: Callable[..., DictConfig]) -> None:
    assert isinstance(build("augment", make_cfg().augment, input_shape=(1, 40), token_ids=False), NoAugment)
    node = make_cfg("augment=shift", "augment.max_shift=2").augment
    built = build("augment", node, input_shape=(1, 40), token_ids=False)
    assert isinstance(built, Shift) and built.max_shift == 2


class Recorder:
    """An augmentation that records the batches it is given and returns them unchanged."""

    name = "recorder"

    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.detach().clone())
        return x


def test_only_training_batches_are_augmented(make_cfg: Callable[..., DictConfig], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()

    def record(input_shape: tuple[int, ...], token_ids: bool, max_shift: int, noise_std: float, flip: bool,
               mode: str) -> Recorder:
        return recorder

    monkeypatch.setattr("trainer.tricks.augment.shift", record)
    cfg = make_cfg("augment=shift", "max_steps=3", "batch_size=32")
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "completed"
    # One call per training step, each with a training batch; evaluation (256 validation samples,
    # one batch) never calls it.
    assert len(recorder.batches) == 3 and all(b.shape[0] == 32 for b in recorder.batches)


def test_an_augmented_run_trains_and_is_reproducible(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    cfg = make_cfg("augment=shift", "augment.noise_std=0.1", "max_steps=4")
    first = run(cfg, tmp_path / "a")
    second = run(cfg, tmp_path / "b")
    assert first["status"] == "completed" and first["tricks"]["augment"] == "shift"
    assert first["final"] == second["final"]  # the draws follow the seed
