"""Early stopping (Prechelt 1998): stop after `patience` evaluations without an improvement larger
than `min_delta`, and end with the weights of the best evaluation, not the last."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from omegaconf import DictConfig
from torch import nn

from trainer.errors import ConfigError
from trainer.run import run
from trainer.tricks import early_stopping


def stop_index(hook: Any, values: list[float], monitor: str = "val_loss") -> int | None:
    """1-based number of the evaluation at which the hook says stop, or None if it never does."""
    model = nn.Linear(2, 1)
    for i, value in enumerate(values, start=1):
        metrics = {"val_loss": 0.0, "val_acc": 0.0, monitor: value}
        if hook.eval_end(metrics, model):
            return i
    return None


@pytest.mark.parametrize(
    ("values", "patience", "expected"),
    [
        ([1.0, 0.9, 0.95, 0.96, 0.97], 3, 5),
        ([1.0, 0.9, 0.95, 0.96, 0.97], 4, None),
        ([1.0, 0.9, 0.95, 0.96, 0.97], 1, 3),
        ([1.0, 0.9, 0.95, 0.8, 0.85, 0.86, 0.87], 3, 7),  # the improvement at 4 resets the count
        ([1.0, 1.0], 0, 2),  # patience 0: the first evaluation without improvement stops
        ([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], 1, None),
    ],
)
def test_stops_at_the_right_evaluation(values: list[float], patience: int, expected: int | None) -> None:
    hook = early_stopping.build(patience=patience, min_delta=0.0, restore_best_weights=False)
    assert stop_index(hook, values) == expected


def test_min_delta_improvement_too_small_does_not_reset_patience() -> None:
    values = [1.0, 0.99, 0.98, 0.97]  # each better by 0.01 only
    hook = early_stopping.build(patience=3, min_delta=0.05, restore_best_weights=False)
    assert stop_index(hook, values) == 4
    assert hook.best == 1.0  # 0.97 is 0.03 better, within min_delta: not a new best
    hook = early_stopping.build(patience=3, min_delta=0.0, restore_best_weights=False)
    assert stop_index(hook, values) is None  # without min_delta each one counts
    hook = early_stopping.build(patience=2, min_delta=0.05, restore_best_weights=False)
    assert stop_index(hook, [1.0, 0.98, 0.9, 0.89, 0.88]) == 5  # 0.9 is 0.1 better: resets; then two small
    assert hook.best == 0.9 and hook.best_epoch == 3


def test_val_acc_higher_is_better() -> None:
    hook = early_stopping.build(monitor="val_acc", patience=2, restore_best_weights=False)
    assert stop_index(hook, [0.5, 0.6, 0.7, 0.8], monitor="val_acc") is None
    hook = early_stopping.build(monitor="val_acc", patience=2, restore_best_weights=False)
    assert stop_index(hook, [0.5, 0.8, 0.7, 0.6], monitor="val_acc") == 4
    assert hook.best == 0.8 and hook.best_epoch == 2


def test_restore_best_loads_the_weights_of_the_best_evaluation() -> None:
    model = nn.Linear(3, 2)
    hook = early_stopping.build(patience=10, restore_best_weights=True)
    snapshots = []
    for i, loss in enumerate([1.0, 0.5, 0.7, 0.9]):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(i))  # distinct weights at each evaluation
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        hook.eval_end({"val_loss": loss}, model)
    assert torch.all(model.weight == 3.0)
    assert hook.restore_best(model) is True
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshots[1][key]), key  # evaluation 2, loss 0.5


def test_best_weights_are_a_copy_not_a_reference() -> None:
    model = nn.Linear(3, 2)
    hook = early_stopping.build(patience=5, restore_best_weights=True)
    hook.eval_end({"val_loss": 0.1}, model)
    saved = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)  # in-place training step after the best evaluation
    hook.restore_best(model)
    assert torch.equal(model.weight, saved)


def test_restore_best_off_keeps_no_copy() -> None:
    model = nn.Linear(3, 2)
    hook = early_stopping.build(patience=5, restore_best_weights=False)
    hook.eval_end({"val_loss": 0.1}, model)
    with torch.no_grad():
        model.weight.add_(1.0)
    after = model.weight.detach().clone()
    assert hook.restore_best(model) is False
    assert torch.equal(model.weight, after)


def test_none_never_stops() -> None:
    hook = early_stopping.none()
    model = nn.Linear(2, 1)
    assert not any(hook.eval_end({"val_loss": float(i)}, model) for i in range(100))
    assert hook.restore_best(model) is False
    assert hook.monitor is None


def test_missing_monitor_raises() -> None:
    hook = early_stopping.build(monitor="val_acc")
    with pytest.raises(ConfigError, match="early_stopping.monitor=val_acc"):
        hook.eval_end({"val_loss": 0.5, "val_acc": None}, nn.Linear(2, 1))


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"monitor": "train_loss"}, "early_stopping.monitor"), ({"patience": -1}, "early_stopping.patience"),
     ({"min_delta": -0.1}, "early_stopping.min_delta")],
)
def test_bad_args(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        early_stopping.build(**kw)


def test_state_dict_round_trip() -> None:
    model = nn.Linear(3, 2)
    hook = early_stopping.build(patience=3, restore_best_weights=True)
    for i, loss in enumerate([1.0, 0.9, 0.95]):  # best at 2 (weights 7), then one bad evaluation
        with torch.no_grad():
            model.weight.fill_(6.0 + i)
        hook.eval_end({"val_loss": loss}, model)
    with torch.no_grad():
        model.weight.fill_(-1.0)
    resumed = early_stopping.build(patience=3, restore_best_weights=True)
    resumed.load_state_dict(hook.state_dict())
    assert (resumed.best, resumed.best_epoch, resumed.bad_evaluations) == (0.9, 2, 1)
    # two more bad evaluations: 3 in all, the third stops, exactly as the uninterrupted hook would
    assert resumed.eval_end({"val_loss": 0.96}, model) is False
    assert resumed.eval_end({"val_loss": 0.97}, model) is True
    assert resumed.restore_best(model) is True
    assert torch.all(model.weight == 7.0)


def test_a_run_reports_the_restored_weights_metrics(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    # 64 samples and a wide MLP overfit: the run ends on later weights, then restores the best.
    summary = run(make_cfg("early_stopping=val_loss", "early_stopping.patience=2", "max_steps=null", "epochs=30",
                           "data.num_train=64", "model=mlp", "model.width=512", "norm=none", "sched=constant",
                           "checkpoint.every_epochs=0"), tmp_path / "run")
    assert summary["restored_best_weights"] is True
    assert summary["restored"]["val_loss"] == summary["best"]["val_loss"]
    assert summary["restored"]["val_acc"] == summary["best"]["val_acc"]


def test_stopped_says_whether_the_last_evaluation_stopped() -> None:
    for patience, values, stopped in [(2, [1.0, 1.1], False), (2, [1.0, 1.1, 1.2], True), (0, [1.0], False),
                                      (0, [1.0, 1.1], True), (2, [1.0, 1.1, 0.5, 0.6], False)]:
        hook = early_stopping.build(patience=patience, restore_best_weights=False)
        stop_index(hook, values)
        assert hook.stopped is stopped, (patience, values)
    assert early_stopping.none().stopped is False


def test_an_early_stopped_run_stays_stopped_when_resumed(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    """`resume=auto` on a run that early-stopped (a preemptible job launched again) must not train
    past the stop: it used to train another epoch, then stop again, each time it was launched."""
    overrides = ("early_stopping=val_loss", "early_stopping.patience=1", "max_steps=null", "epochs=30",
                 "data.num_train=64", "model=mlp", "model.width=512", "norm=none", "sched=constant")
    first = run(make_cfg(*overrides), tmp_path / "run")
    assert first["status"] == "early_stopped" and first["epochs_run"] < 30
    files = {path: path.read_bytes() for path in (tmp_path / "run").rglob("*") if path.is_file() and path.name != "summary.json"}
    again = run(make_cfg(*overrides, "resume=auto"), tmp_path / "run")
    assert (again["status"], again["message"], again["epochs_run"], again["steps"], again["best"]) == (
        first["status"], first["message"], first["epochs_run"], first["steps"], first["best"])
    assert {path: path.read_bytes() for path in files} == files
    assert sorted(files) == sorted(p for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != "summary.json")
