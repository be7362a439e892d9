"""The `train` command end to end, in a subprocess, as a user runs it."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import group_choices
from trainer.config import GROUPS

TRAIN = str(Path(sys.executable).with_name("train"))
FAST = ["data=synthetic", "epochs=2", "log_every=5"]


def train(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TRAIN, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_run_writes_summary_and_metrics(tmp_path: Path) -> None:
    result = train(*FAST, "init=he", "sched=cosine", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr
    assert "epoch 2/2" in result.stdout  # plain per-epoch lines when stdout is a pipe
    assert re.search(r"best epoch \d \(lowest val_loss\): val_acc 0\.\d{4}", result.stdout)  # says what "best" is
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == 2
    assert set(summary["final"]) == set(summary["best"]) - {"epoch"} == {"train_loss", "val_loss", "val_acc"}
    assert summary["tricks"]["init"] == "he" and summary["tricks"]["sched"] == "cosine"
    assert summary["device"] == {**summary["device"], "requested": "auto"}
    assert summary["precision"]["requested"] == "auto"
    assert summary["params"] > 0 and summary["samples_per_s"] > 0 and summary["seed"] == 0
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [line for line in lines if line["kind"] == "epoch"]
    assert [line["epoch"] for line in epochs] == [1, 2]
    assert all({"train_loss", "val_loss", "val_acc", "lr", "grad_norm", "elapsed"} <= set(line) for line in epochs)
    assert any(line["kind"] == "step" and line["grad_norm"] > 0 for line in lines)
    record = tmp_path / "run" / ".hydra"
    assert (record / "config.yaml").exists() and (record / "hydra.yaml").exists()
    assert (record / "overrides.yaml").read_text().splitlines() == [f"- {arg}" for arg in (*FAST, "init=he", "sched=cosine")]
    assert not (tmp_path / "run" / "cli.log").exists()  # Hydra's job log goes to stdout


# test_sweep.py::test_sweep_reports_and_resumes runs a sweep through the console script in the default run.
@pytest.mark.slow
def test_multirun_runs_every_combination(tmp_path: Path) -> None:
    result = train("-m", *FAST, "epochs=1", "init=xavier,he", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 0, result.stderr
    # One folder per configuration, named by its overrides (trainer/sweep/jobs.py), not by job number.
    inits = {json.loads(path.read_text())["tricks"]["init"] for path in (tmp_path / "sweep").glob("*/summary.json")}
    assert inits == {"xavier", "he"}


# The hostile table (test_hostile.py) refuses a command against a finished run, byte for byte, in
# the default run, once through the console script too.
@pytest.mark.slow
def test_existing_run_is_never_clobbered(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert train(*FAST, "epochs=1", f"hydra.run.dir={run_dir}").returncode == 0
    before = (run_dir / "summary.json").read_bytes()
    again = train(*FAST, "epochs=1", f"hydra.run.dir={run_dir}")
    assert again.returncode == 2 and "already holds a run" in again.stderr
    assert (run_dir / "summary.json").read_bytes() == before


def test_help_lists_every_choice_with_its_settings() -> None:
    result = train("--help")
    assert result.returncode == 0
    sections = re.split(r"^  (\w+)$", result.stdout, flags=re.MULTILINE)
    listed = {sections[i]: sections[i + 1] for i in range(1, len(sections) - 1, 2)}
    for group in GROUPS:
        names = set(re.findall(r"^   [ *](\w+)", listed[group], flags=re.MULTILINE))
        assert names == set(group_choices(group)), group
    assert "max_norm=1.0" in listed["clipping"] and "*cosine_warmup" in listed["sched"]
    # Every name stands apart from its description, the longest preset's too.
    assert re.search(r"^    evidence_early_stopping \S", result.stdout, flags=re.MULTILINE)
