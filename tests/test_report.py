"""The sweep report from hand-written job folders: grouping by the overrides that vary (seed
excluded), mean and std over seeds, ranking, the noise rule, failed jobs, the files written."""
from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainer.errors import ConfigError
from trainer.sweep import report

# The module the `train-report` console script runs (test_packaging checks the script itself in a
# built wheel): an editable install made before the module moved would still name the old one.
TRAIN_REPORT = [sys.executable, "-m", "trainer.sweep.report"]


def write_job(sweep: Path, name: str, overrides: list[str], status: str | None = "completed",
              val_acc: float | None = 0.9, val_loss: float = 0.3, epochs: int = 3) -> Path:
    """A job folder as `train -m` leaves it; status None: no summary.json (running or killed)."""
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    lines = [{"kind": "step", "step": 1, "train_loss": 1.0}]
    for epoch in range(1, epochs + 1):
        acc = None if val_acc is None else val_acc - 0.1 * (epochs - epoch)
        lines.append({"kind": "epoch", "epoch": epoch, "val_loss": val_loss + 0.1 * (epochs - epoch), "val_acc": acc})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if status is not None:
        best = {"epoch": epochs, "train_loss": 0.2, "val_loss": val_loss, "val_acc": val_acc}
        summary: dict[str, Any] = {"status": status, "message": None, "final": {k: best[k] for k in best if k != "epoch"},
                                   "best": best, "epochs_run": epochs, "steps": 30, "wall_s": 2.0, "samples_per_s": 1000.0}
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """norm=a (3 seeds) best; norm=c (2 seeds) within noise of it; norm=b clearly worse, one of its
    seeds diverged; norm=d never finished; norm=e has one seed only; one job crashed."""
    accs = {"a": [0.90, 0.91, 0.92], "b": [0.80, 0.81], "c": [0.905, 0.915], "e": [0.85]}
    for norm, values in accs.items():
        for seed, acc in enumerate(values):
            write_job(tmp_path, f"norm={norm},seed={seed}", ["data=synthetic", f"norm={norm}", f"seed={seed}"], val_acc=acc)
    write_job(tmp_path, "norm=b,seed=2", ["data=synthetic", "norm=b", "seed=2"], status="diverged", val_acc=None)
    write_job(tmp_path, "norm=d,seed=0", ["data=synthetic", "norm=d", "seed=0"], status=None)
    crashed = write_job(tmp_path, "norm=d,seed=1", ["data=synthetic", "norm=d", "seed=1"], status=None)
    (crashed / "error.txt").write_text("Traceback (most recent call last):\nRuntimeError: boom\n")
    # An attempt set aside before a rerun is history, not a job of the sweep.
    write_job(crashed / "previous" / "1", "", ["data=synthetic", "norm=d", "seed=1"], status="interrupted")
    return tmp_path


def test_rows_group_by_varying_overrides_without_seed(sweep: Path) -> None:
    built = report.build(sweep)
    assert built.varying == ["norm", "seed"]  # data=synthetic is the same everywhere
    assert built.metric == "best_val_acc"
    assert [row.label for row in built.rows] == ["norm=a", "norm=c", "norm=e", "norm=b", "norm=d"]
    a = built.rows[0]
    assert len(a.ok) == 3 and not a.failed
    mean, std = a.stats["best_val_acc"]
    assert mean == pytest.approx(0.91) and std == pytest.approx(statistics.stdev([0.90, 0.91, 0.92]))
    assert a.stats["wall_s"] == (pytest.approx(2.0), pytest.approx(0.0))
    assert a.stats["epochs_to_best"][0] == 3


def test_noise_rule_marks_differences_within_the_seed_spread(sweep: Path) -> None:
    verdicts = {row.label: row.verdict for row in report.build(sweep).rows}
    # c: |0.91 - 0.91| <= max std; b: 0.805 is 0.105 below, far outside both stds; e: one seed.
    assert verdicts == {"norm=a": "best", "norm=c": "within noise", "norm=b": "worse", "norm=e": "? (1 seed)",
                        "norm=d": "no result"}


def test_failed_jobs_are_listed_not_dropped(sweep: Path) -> None:
    built = report.build(sweep)
    rows = {row.label: row for row in built.rows}
    assert [job.status for job in rows["norm=b"].failed] == ["diverged"]
    assert sorted(job.status for job in rows["norm=d"].failed) == ["crashed", "incomplete"]
    assert len(built.jobs) == 11  # previous/1 is not counted
    text = report.markdown(built)
    assert "## Failed or incomplete jobs" in text
    assert "| norm=d,seed=1 | crashed | RuntimeError: boom |" in text
    assert "| norm=b,seed=2 | diverged |" in text
    assert "Noise rule:" in text and "larger of the two standard deviations" in text


def test_files_written(sweep: Path) -> None:
    written = report.write(report.build(sweep))
    assert [path.name for path in written] == ["report.md", "report.csv", "report.png"]
    assert (sweep / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((sweep / "report.csv").open()))
    assert [row["configuration"] for row in rows] == ["norm=a", "norm=c", "norm=e", "norm=b", "norm=d"]
    assert rows[0]["norm"] == "a" and rows[0]["n_seeds"] == "3" and rows[0]["seeds"] == "0 1 2"
    assert float(rows[0]["best_val_acc_mean"]) == pytest.approx(0.91)
    assert rows[3]["n_failed"] == "1" and rows[3]["failed"] == "norm=b,seed=2:diverged"
    assert rows[4]["n_seeds"] == "0" and rows[4]["best_val_acc_mean"] == ""


def test_metric_chooses_the_ranking(sweep: Path) -> None:
    for label in ("a", "c", "e"):
        (sweep / f"norm={label},seed=0" / "summary.json").write_text(
            (sweep / f"norm={label},seed=0" / "summary.json").read_text().replace('"wall_s": 2.0', '"wall_s": 9.0'))
    built = report.build(sweep, metric="wall_s")  # lower is better
    assert built.rows[0].label == "norm=b" and built.rows[-1].label == "norm=d"
    with pytest.raises(ConfigError, match=r"^--metric=accuracy is unknown; valid: best_val_acc, "):
        report.build(sweep, metric="accuracy")


def test_regression_sweep_ranks_by_best_val_loss(tmp_path: Path) -> None:
    for i, loss in enumerate([0.5, 0.2]):
        write_job(tmp_path, str(i), [f"optim.lr={i}"], val_acc=None, val_loss=loss)
    built = report.build(tmp_path)
    assert built.metric == "best_val_loss" and built.rows[0].label == "optim.lr=1"
    assert "val_acc" not in report.markdown(built).split("| rank |")[1].splitlines()[0]


def test_train_report_command(sweep: Path, tmp_path: Path) -> None:
    result = subprocess.run([*TRAIN_REPORT, str(sweep), "--no-plot"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "norm=a" in result.stdout and (sweep / "report.md").exists() and not (sweep / "report.png").exists()
    for bad in (tmp_path / "nowhere", tmp_path / "norm=a,seed=0" / ".hydra"):
        result = subprocess.run([*TRAIN_REPORT, str(bad)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
