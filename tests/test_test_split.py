"""The test split: never selected on, evaluated once at the end of a run on the weights the run
ends with (after early stopping's restore), recorded in summary.json and in the sweep report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from omegaconf import DictConfig
from test_report import write_job

from trainer.engine.loop import Trainer
from trainer.run import run
from trainer.sweep import report
from trainer.tricks.early_stopping import EarlyStopping


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What a run measures, in order: 'val' and 'test' evaluations, 'restore' of the best weights."""
    seen: list[str] = []
    measure, restore = Trainer.measure, EarlyStopping.restore_best

    def spy_measure(self: Trainer, inputs: torch.Tensor, targets: torch.Tensor) -> Any:
        seen.append("test" if inputs is self.data.x_test else "val" if inputs is self.data.x_val else "other")
        return measure(self, inputs, targets)

    def spy_restore(self: EarlyStopping, model: torch.nn.Module) -> bool:
        restored = restore(self, model)
        seen.append("restore" if restored else "no restore")
        return restored

    monkeypatch.setattr(Trainer, "measure", spy_measure)
    monkeypatch.setattr(EarlyStopping, "restore_best", spy_restore)
    return seen


def test_test_split_is_evaluated_once_at_the_end(make_cfg: Callable[..., DictConfig], tmp_path: Path,
                                                 events: list[str]) -> None:
    summary = run(make_cfg("max_steps=null", "epochs=3", "data.num_train=64"), tmp_path)
    assert events == ["val", "val", "val", "test"]  # one validation per epoch, the test split once, last
    test = summary["test"]
    assert set(test) == {"loss", "acc"} and 0 <= test["acc"] <= 1 and test["loss"] > 0
    assert json.loads((tmp_path / "summary.json").read_text())["test"] == test
    epoch_lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert not any("test" in key for line in epoch_lines for key in line)  # nothing per epoch selects on it


def test_test_split_is_measured_on_the_restored_best_weights(make_cfg: Callable[..., DictConfig], tmp_path: Path,
                                                             events: list[str]) -> None:
    # A learning rate far too high: validation loss worsens after the first epoch, so early stopping
    # stops and restores epoch 1's weights.
    summary = run(make_cfg("max_steps=null", "epochs=8", "data.num_train=64", "early_stopping=val_loss",
                           "early_stopping.patience=1", "optim.lr=5", "sched=constant", "norm=none"), tmp_path)
    assert summary["status"] == "early_stopped" and summary["restored_best_weights"]
    # After the restore: the summary's `restored` validation, then the test split, once.
    assert events[-3:] == ["restore", "val", "test"] and events.count("test") == 1


def test_regression_and_data_without_a_test_split(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    summary = run(make_cfg("data=adding", "data.seq_len=8", "data.num_train=64", "data.num_val=16",
                           "data.num_test=8", "model=rnn", "norm=none"), tmp_path / "adding")
    assert summary["test"]["acc"] is None and summary["test"]["loss"] > 0
    assert run(make_cfg("data.num_test=0"), tmp_path / "none")["test"] is None


def test_report_has_test_columns(tmp_path: Path) -> None:
    for seed, acc in enumerate((0.7, 0.8)):
        folder = write_job(tmp_path, f"seed={seed}", ["data=synthetic", f"seed={seed}"])
        summary = json.loads((folder / "summary.json").read_text())
        (folder / "summary.json").write_text(json.dumps({**summary, "test": {"loss": 0.5, "acc": acc}}))
    built = report.build(tmp_path)
    text = report.markdown(built)
    header = next(line for line in text.splitlines() if line.startswith("| rank"))
    assert "test_acc" in header and "test_loss" in header
    assert "0.7500 ± 0.0707" in text  # the mean and std of the two test accuracies
    assert built.metric == "best_val_acc"  # ranked on validation, never on test
    report.write_csv(built, tmp_path / "report.csv")
    assert "test_acc_mean" in (tmp_path / "report.csv").read_text().splitlines()[0]


def test_report_without_test_figures_has_no_test_columns(tmp_path: Path) -> None:
    write_job(tmp_path, "seed=0", ["seed=0"])
    header = next(line for line in report.markdown(report.build(tmp_path)).splitlines() if line.startswith("| rank"))
    assert "test_" not in header


def test_smoke_run_reads_a_slice_of_the_test_split() -> None:
    from trainer.data import synthetic
    from trainer.engine.smoke import SMOKE_VAL_SAMPLES, slice_data

    data = synthetic.build(num_train=64, num_val=100, num_test=100)
    small = slice_data(data, step_batch=8)
    assert len(small.x_test) == len(small.y_test) == SMOKE_VAL_SAMPLES < 100
    assert slice_data(synthetic.build(num_test=0), step_batch=8).x_test is None
