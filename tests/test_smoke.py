"""Every choice of every group trains a few steps on the CPU through run(), the path `train` takes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import torch
from omegaconf import DictConfig

from helpers import group_choices
from fakes import make_images, write_hf, write_mnist
from trainer.config import GROUPS, build
from trainer.run import run

CHAR_LSTM = ["data.max_chars=3000", "data.seq_len=16", "model.embedding=4", "model.hidden=8", "model.layers=1",
             "sample.length=20"]
CHAR_PROBE = ["data.num_train=96", "data.num_val=16", "data.num_test=16", "data.snippet_len=16", "data.shuffle_tail=8",
              "model.embedding=4", "model.hidden=8", "model.layers=1"]
# What a choice needs beside it to run here: 2-D models need images; groupnorm needs a width its
# groups divide. Files for the downloadable sets are written by `prepare` below.
# The switches only a sequence decoder has run on the seq2seq task, small.
SEQ2SEQ = ["data=seq2seq", "model=seq2seq", "data.num_train=96", "data.num_val=16", "data.num_test=16", "model.hidden=16"]
COMPANIONS = {
    ("model", "cnn"): ["data.image_size=8"],
    ("model", "resnet18"): ["data.image_size=8", "model.width=8"],  # the real width is for the benchmark
    ("model", "seq2seq"): ["data=seq2seq", "data.num_train=128", "data.num_val=32", "data.num_test=32"],
    ("data", "adding"): ["data.num_train=128", "data.num_val=32", "data.seq_len=10"],
    ("data", "mnist1d"): ["data.num_samples=500"],
    ("data", "mnist"): ["model=cnn"],
    ("data", "fashion_mnist"): ["model=cnn"],
    ("data", "imagefolder"): ["model=cnn"],
    ("data", "hf"): ["model=cnn"],
    # The character models and data only go together (character ids in, per-character logits out).
    ("data", "text"): ["model=char_lstm", *CHAR_LSTM],
    ("data", "text_probe"): ["model=char_probe", *CHAR_PROBE],
    ("model", "char_lstm"): ["data=text", *CHAR_LSTM],
    ("model", "char_probe"): ["data=text_probe", *CHAR_PROBE],
    ("data", "seq2seq"): ["model=seq2seq"],
    ("decoding", "beam"): SEQ2SEQ,
    ("early_stopping", "val_seq_acc"): SEQ2SEQ,
    **{("teacher_forcing", choice): SEQ2SEQ for choice in ("linear", "exponential", "inverse_sigmoid")},
}
# CIFAR-10's loader verifies the archive's checksums, so no small fake can stand in for it:
# its offline error is tested in test_data.py and test_cli.py.
NEEDS_REAL_FILES = {("data", "cifar10")}
RUNNABLE = [(g, c) for g in GROUPS for c in group_choices(g) if (g, c) not in NEEDS_REAL_FILES]


def prepare(group: str, choice: str, tmp_path: Path, make_cfg: Callable[..., DictConfig]) -> list[str]:
    overrides = list(COMPANIONS.get((group, choice), []))
    if (group, choice) == ("data", "mnist"):
        write_mnist(tmp_path / "data", train=128, test=32)
        overrides += [f"data.root={tmp_path / 'data'}", "data.download=false"]
    if (group, choice) == ("data", "fashion_mnist"):
        write_mnist(tmp_path / "data", folder="FashionMNIST", train=128, test=32)
        overrides += [f"data.root={tmp_path / 'data'}", "data.download=false"]
    if (group, choice) == ("data", "imagefolder"):
        make_images(tmp_path / "images", {"cat": 60, "dog": 60})
        overrides += [f"data.path={tmp_path / 'images'}", "data.image_size=8"]
    if (group, choice) == ("data", "hf"):
        overrides += [f"data.path={write_hf(tmp_path, {'train': 96, 'validation': 24, 'test': 24})}"]
    if (group, choice) == ("data", "tensors"):
        generator = torch.Generator().manual_seed(0)
        arrays = {"x_train": torch.randn(96, 1, 40, generator=generator), "y_train": torch.arange(96) % 3,
                  "x_val": torch.randn(30, 1, 40, generator=generator), "y_val": torch.arange(30) % 3}
        torch.save(arrays, tmp_path / "arrays.pt")
        overrides += [f"data.path={tmp_path / 'arrays.pt'}"]
    if (group, choice) == ("init", "pretrained"):
        overrides += [f"init.path={save_weights(tmp_path, make_cfg)}"]
    if (group, choice) == ("distill", "soft"):
        run(make_cfg(), tmp_path / "teacher")  # a trained run on the same data to distil from
        overrides += [f"distill.teacher={tmp_path / 'teacher'}"]
    return overrides


def save_weights(tmp_path: Path, make_cfg: Callable[..., DictConfig]) -> Path:
    cfg = make_cfg()
    norm = build("norm", cfg.norm)
    model = build("model", cfg.model, input_shape=(1, 40), num_outputs=4, norm=norm, dropout=0.0, input_dropout=0.0)
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    return path


# Every data and model choice is smoke-run in the default run by tests/test_smoke_switch.py; here they are slow.
@pytest.mark.parametrize("group, choice", [(g, c) if g not in ("data", "model") else pytest.param(g, c, marks=pytest.mark.slow)
                                           for g, c in RUNNABLE])
def test_choice_trains(group: str, choice: str, tmp_path: Path, make_cfg: Callable[..., DictConfig]) -> None:
    cfg = make_cfg(f"{group}={choice}", *prepare(group, choice, tmp_path, make_cfg))
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "completed"
    assert summary["steps"] == 3
    assert summary["tricks"][group] == choice
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["tricks"][group] == choice
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if line["kind"] == "step"] == [1, 2, 3]
    epochs = [line for line in lines if line["kind"] == "epoch"]
    assert len(epochs) == 1 and epochs[0]["val_loss"] is not None
    layers = [line for line in lines if line["kind"] == "layers"]
    # One probe of the fresh model (epoch 0, for the diagnosis) and one per evaluation.
    assert [line["epoch"] for line in layers] == [0, 1] and all(line["layers"] for line in layers)


@pytest.mark.parametrize("curves", [True, False])
def test_curves_are_drawn_unless_switched_off(curves: bool, tmp_path: Path, make_cfg: Callable[..., DictConfig]) -> None:
    summary = run(make_cfg(f"curves={str(curves).lower()}"), tmp_path / "run")
    assert summary["status"] == "completed"
    assert (tmp_path / "run" / "curves.png").exists() is curves
