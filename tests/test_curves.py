"""curves.png from metrics.jsonl: a full run, and the awkward ones (epoch lines only, one point,
None and non-finite values, a half-written last line, a missing file)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
from omegaconf import DictConfig

from trainer.observe.curves import PlotError, draw_curves, plot_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write(path: Path, records: list[dict[str, Any]], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records) + tail)
    return path


def full_run() -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for step in range(1, 41):
        records.append({"kind": "step", "epoch": (step - 1) // 10 + 1, "step": step, "train_loss": 2.0 / step,
                        "lr": 0.01 * min(step / 5, 1), "grad_norm": 1.0 / step, "grad_norm_max": 2.0 / step})
        if step % 10 == 0:
            records.append({"kind": "epoch", "epoch": step // 10, "step": step, "train_loss": 2.0 / step,
                            "val_loss": 2.5 / step, "val_acc": 0.5 + step / 100, "lr": 0.01, "grad_norm": 1.0 / step})
    records.append({"kind": "layers", "epoch": 4, "step": 40, "layers": []})
    return records


def test_full_run_draws_four_labelled_panels_with_log_axes(tmp_path: Path) -> None:
    metrics = write(tmp_path / "metrics.jsonl", full_run())
    plot_curves(metrics, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_SIGNATURE

    steps = [r for r in full_run() if r["kind"] == "step"]
    epochs = [r for r in full_run() if r["kind"] == "epoch"]
    loss, acc, lr, grad = draw_curves(steps, epochs).axes
    titles = ["loss", "validation accuracy", "learning rate", "gradient norm"]
    assert [ax.get_title() for ax in (loss, acc, lr, grad)] == titles
    assert (loss.get_yscale(), acc.get_yscale(), lr.get_yscale(), grad.get_yscale()) == ("log", "linear", "log", "log")
    labels = {"train (per log interval)", "train (epoch mean)", "validation"}
    assert {line.get_label() for line in loss.get_lines()} == labels
    assert all(ax.get_xlabel() == "optimizer step" for ax in (loss, acc, lr, grad))
    assert all(ax.get_legend() is not None for ax in (loss, acc, lr, grad))


def test_epoch_lines_only_single_point_none_and_nan(tmp_path: Path) -> None:
    records = [{"kind": "epoch", "epoch": 1, "step": 3, "train_loss": 1.0, "val_loss": None, "val_acc": None,
                "lr": 0.0, "grad_norm": None}]
    metrics = write(tmp_path / "metrics.jsonl", records, tail='{"kind": "step", "step": 4, "train_lo')  # killed mid-line
    plot_curves(metrics, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_SIGNATURE

    loss, acc, lr, grad = draw_curves([{"kind": "step", "step": 1, "train_loss": float("nan"), "lr": 1e-3}], records).axes
    assert len(loss.get_lines()) == 1 and list(loss.get_lines()[0].get_xdata()) == [3.0]  # the nan point is dropped
    assert acc.texts and grad.texts  # "no accuracy", "no gradient norm" notes instead of empty axes
    assert lr.get_yscale() == "log"  # from the step line's positive LR


def test_empty_and_missing_metrics(tmp_path: Path) -> None:
    plot_curves(write(tmp_path / "metrics.jsonl", []), tmp_path / "curves.png")
    assert (tmp_path / "curves.png").exists()
    with pytest.raises(PlotError, match="cannot read"):
        plot_curves(tmp_path / "absent.jsonl", tmp_path / "other.png")
    with pytest.raises(PlotError, match="cannot write"):
        plot_curves(tmp_path / "metrics.jsonl", tmp_path / "no" / "such" / "dir.png")


def test_a_run_titles_its_curves_with_its_configuration(make_cfg: Callable[..., DictConfig], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.run

    titles: list[str] = []
    monkeypatch.setattr(trainer.run, "plot_curves", lambda metrics, out, title="": titles.append(title))
    trainer.run.run(make_cfg("init=he", "seed=3", "curves=true"), tmp_path / "run")
    assert "init=he" in titles[0] and "seed=3" in titles[0] and "run" not in titles[0].split()
