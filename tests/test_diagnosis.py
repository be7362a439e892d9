"""diagnose: each pathology fires on a scripted history, a healthy history gives no findings, and
real runs made to fail (huge LR, tiny LR, a big model on 32 samples) are diagnosed correctly."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import pytest
from omegaconf import DictConfig
from rich.console import Console

from trainer.diagnosis import diagnose, diagnose_file, panel, to_dicts



def history(train: list[float], val: list[float], acc: list[float] | None = None, lr: float = 1e-3,
            steps_per_epoch: int = 10) -> list[dict[str, Any]]:
    return [{"kind": "epoch", "epoch": i + 1, "step": (i + 1) * steps_per_epoch, "train_loss": t, "val_loss": v,
             "val_acc": acc[i] if acc else None, "lr": lr, "grad_norm": 1.0} for i, (t, v) in enumerate(zip(train, val))]


def step_lines(losses: list[float], lr: float = 1e-3, grad_norm: float = 1.0, **extra: Any) -> list[dict[str, Any]]:
    return [{"kind": "step", "epoch": 1, "step": i + 1, "train_loss": loss, "lr": lr, "grad_norm": grad_norm, **extra}
            for i, loss in enumerate(losses)]


HEALTHY_TRAIN = [1.2, 0.7, 0.45, 0.33, 0.27, 0.23, 0.21, 0.2]
HEALTHY_VAL = [1.1, 0.75, 0.5, 0.4, 0.36, 0.34, 0.335, 0.333]
HEALTHY_ACC = [0.55, 0.7, 0.8, 0.85, 0.87, 0.88, 0.885, 0.887]
HEALTHY_STEPS = [1.4 * 0.9 ** i + 0.05 * (-1) ** i for i in range(40)]  # noisy but falling


def kinds(findings: list[Any]) -> list[str]:
    return [finding.kind for finding in findings]


def test_healthy_history_has_no_findings() -> None:
    layers = [{"name": "body.3", "kind": "ReLU", "dead_fraction": 0.1}]
    steps = step_lines(HEALTHY_STEPS, clipped_fraction=0.3)
    assert diagnose(history(HEALTHY_TRAIN, HEALTHY_VAL, HEALTHY_ACC), steps, layers) == []
    assert diagnose([], []) == []  # nothing logged yet: nothing to say
    assert diagnose(history([1.4], [1.4]), step_lines([1.40, 1.395, 1.40])) == []  # a flat 3-step smoke run


def test_overfitting_names_the_epoch_it_began() -> None:
    train = [1.0, 0.6, 0.4, 0.25, 0.15, 0.08, 0.04, 0.02]
    val = [1.0, 0.7, 0.55, 0.5, 0.56, 0.62, 0.7, 0.8]
    findings = diagnose(history(train, val, [0.6] * 8), [])
    assert kinds(findings) == ["overfitting"]
    assert findings[0].evidence["began_epoch"] == 4
    assert findings[0].suggestion == "regularisation=dropout early_stopping=val_loss"
    # Two evaluations above the minimum are within noise; so is a rise of under 5%.
    assert diagnose(history(train[:6], val[:6]), []) == []
    assert diagnose(history(train, [1.0, 0.7, 0.55, 0.5, 0.51, 0.51, 0.52, 0.52]), []) == []


def test_underfitting() -> None:
    findings = diagnose(history([1.40, 1.20, 1.05, 0.95, 0.9], [1.4, 1.2, 1.1, 1.0, 0.95], [0.3, 0.4, 0.45, 0.5, 0.5]), [])
    assert kinds(findings) == ["underfitting"]
    assert findings[0].suggestion == "epochs=10"
    # The same loss ratio with a high accuracy: the loss just started low.
    assert diagnose(history([0.2, 0.18, 0.16, 0.15], [0.2] * 4, [0.95] * 4), []) == []


def test_divergence_non_finite_rising_or_by_status() -> None:
    steps = step_lines([1.4, 3.0, 40.0, None], lr=10.0)  # null: how metrics.jsonl writes a nan loss
    findings = diagnose(history([math.nan], [math.nan]), steps, status="diverged")
    assert kinds(findings) == ["divergence"]
    assert findings[0].evidence["first_non_finite_step"] == 4
    assert findings[0].suggestion == "optim.lr=1 clipping=norm"

    rising = diagnose([], step_lines([1.4, 1.6, 2.5, 3.5, 4.0, 5.0], lr=0.5))
    assert kinds(rising) == ["divergence"] and "rose from 1.4" in rising[0].message
    assert kinds(diagnose([], step_lines([1.4, 1.3]), status="diverged")) == ["divergence"]


def test_oscillation() -> None:
    findings = diagnose([], step_lines([1.4, 3.0, 0.9, 2.8, 0.8, 3.1, 1.0, 2.5, 0.7, 2.9], lr=0.3))
    assert kinds(findings) == ["oscillation"]
    assert findings[0].suggestion == "optim.lr=0.1 clipping=norm"
    # Near-zero single-batch losses jump by large factors but tiny amounts: not oscillation.
    assert diagnose([], step_lines([1.4, 0.5, 0.01, 0.2, 0.001, 0.3, 0.002, 0.25, 0.001, 0.2])) == []


def test_stall_from_a_tiny_lr_or_vanishing_gradients() -> None:
    flat = [1.386, 1.385, 1.387, 1.386, 1.385, 1.386]
    findings = diagnose(history(flat, flat, [0.25] * 6, lr=1e-7), step_lines(flat, lr=1e-7, grad_norm=0.5))
    assert kinds(findings) == ["stall"]
    assert findings[0].suggestion == "optim.lr=1e-5"
    vanishing = diagnose(history(flat, flat, lr=1e-3), step_lines(flat, grad_norm=1e-6))
    assert kinds(vanishing) == ["vanishing_gradients"]
    assert vanishing[0].suggestion == "init=he norm=batchnorm"
    # Flat after falling to under half its start: converged, not stalled.
    assert diagnose(history([0.2] * 4, [0.25] * 4, [0.95] * 4), step_lines([1.4, 0.2, 0.2, 0.2])) == []


def test_dead_units_and_clipping_every_step() -> None:
    layers = [{"kind": "layers", "epoch": 1, "step": 5, "layers": [{"name": "body.3", "kind": "ReLU", "dead_fraction": 0.9}]},
              {"kind": "layers", "epoch": 2, "step": 10, "layers": [
                  {"name": "body.3", "kind": "ReLU", "dead_fraction": 0.8},
                  {"name": "body.6", "kind": "ReLU", "dead_fraction": 0.3},
                  {"name": "body.4", "kind": "Linear", "dead_fraction": None}]}]
    findings = diagnose([], step_lines(HEALTHY_STEPS, grad_norm=5.0, clipped_fraction=0.97), layers)
    assert kinds(findings) == ["dead_units", "clipping"]
    assert findings[0].evidence["layers"] == {"body.3": 0.8}  # the last evaluation's
    assert findings[1].suggestion == "clipping.max_norm=5"


def test_findings_serialise_and_render() -> None:
    findings = diagnose(history([math.nan], [math.inf]), step_lines([1.0, math.inf]), status="diverged")
    text = json.dumps(to_dicts(findings), allow_nan=False)  # summary.json has no NaN
    assert json.loads(text)[0]["kind"] == "divergence"
    console = Console(record=True, width=140)
    console.print(panel(findings))
    console.print(panel([]))
    out = console.export_text()
    assert "divergence" in out and "clipping=norm" in out and "no problems found" in out


# Real runs made to fail, small enough for seconds each.
def _run(make_cfg: Callable[..., DictConfig], tmp_path: Path, *overrides: str) -> tuple[dict[str, Any], list[Any]]:
    from trainer.run import run

    cfg = make_cfg("data=synthetic", "device=cpu", "log_every=1", "max_steps=null", *overrides, small=False)
    summary = run(cfg, tmp_path / "run")
    findings = diagnose_file(tmp_path / "run" / "metrics.jsonl", summary["status"])
    if "diagnosis" in summary:  # once run() writes it, it must agree
        assert [d["kind"] for d in summary["diagnosis"]] == kinds(findings)
    return summary, findings


def test_real_run_huge_lr_diverges(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    _, findings = _run(make_cfg, tmp_path, "optim=sgd", "optim.lr=1e4", "model=mlp", "epochs=1", "batch_size=64")
    assert "divergence" in kinds(findings)


def test_real_run_tiny_lr_stalls(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    _, findings = _run(make_cfg, tmp_path, "optim.lr=1e-7", "model=mlp", "epochs=4", "batch_size=64")
    assert kinds(findings) == ["stall"]
    assert "too low" in findings[0].message


def test_real_run_big_model_on_32_samples_overfits(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    # 32 noisy samples, a 512-wide MLP, one full batch per epoch: the training loss goes to ~0 by
    # epoch 5 while the validation loss bottoms out around epoch 6 and then climbs for the rest.
    summary, findings = _run(make_cfg, tmp_path, "data.num_train=32", "model=mlp", "model.width=512",
                             "epochs=20", "batch_size=32", "log_every=5")
    assert summary["status"] == "completed"
    assert kinds(findings) == ["overfitting"]
    assert 3 <= findings[0].evidence["began_epoch"] <= 12
