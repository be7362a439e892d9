"""Loggers: TensorBoard events read back with TensorBoard's own reader, CSV files, and the
`logger=` group composing one or several loggers."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from helpers import GROUPS_DIR, group_choices
from trainer.errors import ConfigError
from trainer.run import run
from trainer.observe.loggers import LAYER_COLUMNS, METRIC_COLUMNS, CSVLogger, LoggerGroup, TensorBoardLogger, build_loggers

LAYERS = [
    {"name": "body.1", "kind": "Linear", "act_mean": 0.1, "act_std": 1.2, "dead_fraction": None,
     "weight_norm": 3.0, "grad_norm": 0.4, "grad_std": 0.01},
    {"name": "body.3", "kind": "ReLU", "act_mean": 0.5, "act_std": 0.7, "dead_fraction": 0.25,
     "weight_norm": None, "grad_norm": None, "grad_std": None},
]


def records() -> list[dict[str, Any]]:
    step = {"kind": "step", "epoch": 1, "step": 5, "train_loss": 1.5, "lr": 0.01, "grad_norm": 2.0,
            "grad_norm_max": 3.0, "clipped_fraction": 0.2, "loss_scale": None, "skipped_steps": 0,
            "samples_per_s": 1000.0, "elapsed": 0.5}
    later = {**step, "step": 10, "train_loss": 1.0, "lr": 0.02}
    epoch = {"kind": "epoch", "epoch": 1, "step": 10, "train_loss": 1.2, "val_loss": 1.1, "val_acc": 0.6,
             "lr": 0.02, "grad_norm": 2.0, "elapsed": 1.0}
    regression_epoch = {**epoch, "epoch": 2, "step": 20, "val_acc": None, "val_loss": float("nan")}
    return [step, later, epoch, {"kind": "layers", "epoch": 1, "step": 10, "layers": LAYERS}, regression_epoch]


def test_tensorboard_scalars_and_histograms_read_back(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    logger = TensorBoardLogger(tmp_path, model)
    for record in records():
        logger.log(record)
    logger.close()

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/acc", "lr", "grad_norm", "train/epoch_loss",
            "layers/body.3/dead_fraction"} <= scalars
    assert "loss_scale" not in scalars  # None values are skipped
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(5, 1.5), (10, 1.0)]
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("lr")] == [(5, 0.01), (10, 0.02), (20, 0.02)]
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("val/acc")] == [(10, 0.6)]
    assert math.isnan(events.Scalars("val/loss")[-1].value)  # a diverged value is kept, not dropped
    assert set(events.Tags()["histograms"]) == {"weights/weight", "weights/bias"}


def test_tensorboard_survives_a_diverged_model(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight[0] = float("nan")
        model.bias.fill_(float("inf"))
    logger = TensorBoardLogger(tmp_path, model)
    logger.log({"kind": "layers", "epoch": 1, "step": 1, "layers": LAYERS})  # np.histogram would reject nan/inf
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert events.Tags()["histograms"] == ["weights/weight"]  # the finite half; the all-inf bias is skipped


def test_csv_files_have_fixed_headers_and_empty_cells_for_none(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    for record in records():
        logger.log(record)
    logger.close()
    with (tmp_path / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert tuple(rows[0]) == METRIC_COLUMNS
    assert [row["kind"] for row in rows] == ["step", "step", "epoch", "epoch"]
    assert rows[0]["loss_scale"] == "" and rows[0]["val_loss"] == ""
    assert float(rows[2]["val_acc"]) == 0.6 and rows[3]["val_acc"] == "" and rows[3]["val_loss"] == "nan"
    with (tmp_path / "layers.csv").open() as file:
        layers = list(csv.DictReader(file))
    assert tuple(layers[0]) == LAYER_COLUMNS
    assert [(row["name"], row["step"], row["dead_fraction"]) for row in layers] == [
        ("body.1", "10", ""), ("body.3", "10", "0.25")]


def test_a_resumed_csv_logger_keeps_the_rows_up_to_its_checkpoint(tmp_path: Path) -> None:
    """Resumed from step 10 (where epoch 1 ended), metrics.csv and layers.csv keep the earlier
    attempt's rows up to it, drop the later ones (trained again), then add the new ones."""
    first = CSVLogger(tmp_path)
    for record in records():
        first.log(record)
    first.close()
    with (tmp_path / "layers.csv").open("a") as file:
        file.write("1,5,body.1,Lin")  # half a row: the run stopped mid-write
    resumed = CSVLogger(tmp_path, resumed_at=10)
    resumed.log({"kind": "epoch", "epoch": 2, "step": 20, "train_loss": 0.9})
    resumed.close()
    with (tmp_path / "metrics.csv").open() as file:
        assert [(row["kind"], row["step"], row["train_loss"]) for row in csv.DictReader(file)] == [
            ("step", "5", "1.5"), ("step", "10", "1.0"), ("epoch", "10", "1.2"), ("epoch", "20", "0.9")]
    with (tmp_path / "layers.csv").open() as file:
        assert [row["step"] for row in csv.DictReader(file)] == ["10", "10"]
    CSVLogger(tmp_path).close()  # a new run's logger starts its files afresh
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [",".join(METRIC_COLUMNS)]


def test_a_resumed_tensorboard_logger_drops_the_earlier_attempts_later_events(tmp_path: Path) -> None:
    first = TensorBoardLogger(tmp_path)
    for record in records():
        first.log(record)
    first.close()
    resumed = TensorBoardLogger(tmp_path, resumed_at=5)
    resumed.log({"kind": "step", "epoch": 1, "step": 10, "train_loss": 0.7, "lr": 0.03})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("train/loss")] == [(5, 1.5), (10, 0.7)]


def test_a_resumed_run_keeps_its_earlier_csv_rows(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    """`logger=csv` and resume=auto: metrics.csv holds every epoch, not only those after the resume."""
    small = ("logger=csv", "max_steps=null", "model=mlp", "model.width=16", "data.num_train=64", "data.num_val=32",
             "data.num_test=0", "batch_size=32")
    run(make_cfg(*small, "epochs=2"), tmp_path / "run")
    run(make_cfg(*small, "epochs=3", "resume=auto"), tmp_path / "run")
    with (tmp_path / "run" / "metrics.csv").open() as file:
        assert [row["epoch"] for row in csv.DictReader(file) if row["kind"] == "epoch"] == ["1", "2", "3"]


def _node(choice: str) -> DictConfig:
    """A logger YAML as the group composes it: the package header puts it under logger.<choice>."""
    return OmegaConf.load(GROUPS_DIR / "logger" / f"{choice}.yaml")


def test_every_logger_yaml_declares_its_package_and_builds(tmp_path: Path) -> None:
    for choice in group_choices("logger"):
        text = (GROUPS_DIR / "logger" / f"{choice}.yaml").read_text()
        assert text.splitlines()[0] == f"# @package logger.{choice}", "the header must be the first line"
        assert _node(choice).name == choice
        loggers = build_loggers(OmegaConf.create({choice: _node(choice)}), tmp_path / choice, nn.Linear(2, 2))
        assert len(loggers) == (0 if choice == "console" else 1)
        for logger in loggers:
            logger.close()


def test_build_loggers_takes_a_dict_a_single_node_or_none(tmp_path: Path) -> None:
    both = build_loggers(OmegaConf.create({"tensorboard": _node("tensorboard"), "csv": _node("csv")}), tmp_path)
    assert [type(logger) for logger in both] == [TensorBoardLogger, CSVLogger]
    single = build_loggers(_node("csv"), tmp_path / "single")
    assert [type(logger) for logger in single] == [CSVLogger]
    assert build_loggers(None, tmp_path) == []
    for logger in both + single:
        logger.close()
    with pytest.raises(ConfigError, match="logger.tensorbord is not a logger"):
        build_loggers(OmegaConf.create({"tensorbord": 1}), tmp_path)
    bad = OmegaConf.create({"csv": {**OmegaConf.to_container(_node("csv")), "every": 3}})
    with pytest.raises(ConfigError, match="logger.every is not a setting of logger=csv"):
        build_loggers(bad, tmp_path)


def test_logger_list_composes_with_hydra(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    defaults = yaml.safe_load((GROUPS_DIR / "config.yaml").read_text())["defaults"]
    in_defaults = any(isinstance(item, dict) and "logger" in item for item in defaults)
    prefix = "" if in_defaults else "+"  # until config.yaml's defaults list names the group
    cfg = make_cfg(f"{prefix}logger=[tensorboard,csv]", "logger.tensorboard.histograms=false")
    assert list(cfg.logger) == ["tensorboard", "csv"]
    loggers = build_loggers(cfg.logger, tmp_path, nn.Linear(2, 2))
    assert [type(logger) for logger in loggers] == [TensorBoardLogger, CSVLogger]
    assert loggers[0].model is None  # histograms=false
    for logger in loggers:
        logger.close()
    assert build_loggers(make_cfg(f"{prefix}logger=console").logger, tmp_path / "console") == []


def test_group_drops_a_failing_logger_and_keeps_the_rest(tmp_path: Path) -> None:
    class Broken:
        def log(self, record: dict[str, Any]) -> None:
            raise OSError("disk full")

        def close(self) -> None:
            pass

    kept = CSVLogger(tmp_path)
    group = LoggerGroup([Broken(), kept])
    with pytest.warns(RuntimeWarning, match="Broken failed"):
        group.log(records()[0])
    group.log(records()[1])
    group.close()
    assert group.loggers == [] and len(group.failures) == 1
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 3
