"""Exact resume as a property: a real `train` killed with SIGKILL at any point of a run (right
after an epoch-end checkpoint, right after a best.pt write, mid-epoch, during a checkpoint write,
right after the last checkpoint) and resumed with resume=auto, once or several times, ends with
the same weights (torch.equal), metrics.jsonl and summary as the run never interrupted, in every
configuration whose state a checkpoint must carry. A checkpoint at every epoch end throughout
(the default's interval, without its one-second floor, which one test keeps). The points are hit
exactly: tests/killing_train.py kills itself."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer.engine import checkpoint

KILLING_TRAIN = str(Path(__file__).with_name("killing_train.py"))
# 192 samples in batches of 32: 6 steps per epoch, 4 epochs; deterministic on one CPU thread.
# Every epoch end checkpointed (min_interval_s=0): the kill points count checkpoints, and the
# shipped one-second floor would make which epochs have one depend on the machine's speed
# (test_the_shipped_floor_... kills a run under it).
RUN = ["data=synthetic", "data.num_train=192", "batch_size=32", "epochs=4", "log_every=4",
       "deterministic=true", "device=cpu", "curves=false",  # curves.png is drawn after training: a second a process
       "checkpoint.min_interval_s=0"]
TIMING = {"elapsed", "samples_per_s"}
SUMMARY_KEYS = ("status", "final", "best", "restored", "epochs_run", "steps", "skipped_steps", "restored_best_weights")

# The configurations whose state (schedule, early stopping, RNG draws, scaler, accumulation, teacher forcing) a
# checkpoint must carry for the resumed run to be exact.
CONFIGS = {
    "defaults": [],
    "plateau": ["sched=plateau"],
    "onecycle": ["sched=onecycle"],
    "early_stopping": ["early_stopping=val_loss"],
    "augment_shift": ["augment=shift"],
    "dropout": ["regularisation=dropout"],
    "nan_skip": ["nan_policy=skip"],
    "accumulate": ["trainer.accumulate=2", "batch_size=16"],  # 2 x 16: still 6 steps an epoch
    "bf16": ["precision=bf16"],
    # The scheduled-sampling step (the teacher-forcing ratio decays with it) and its per-token draws.
    "scheduled_sampling": ["data=seq2seq", "model=seq2seq", "data.num_val=32", "data.num_test=32", "model.hidden=16",
                           "teacher_forcing=inverse_sigmoid", "teacher_forcing.k=4"],
}
# Kill points, one KILL_AT per process (counted within that process; see killing_train.py); the
# run is resumed after each and finally runs to its end.
POINTS = {
    "epoch_end": ["checkpoint:1"],            # right after epoch 1's checkpoint
    "best": ["best:2"],                       # epoch 2's best.pt in place, the index listing it only as a checkpoint
    "mid_epoch": ["step:9"],                  # step 9 of 24, in epoch 2
    "writing": ["writing:2"],                 # half of epoch 2's checkpoint written
    "twice": ["checkpoint:2", "step:4"],      # killed, resumed, killed again mid-epoch, resumed
}
# Every kind of point in one run, resumed four times: best.pt at step 12 (resumed from step 12,
# which the index lists before best.pt names it), mid-epoch at step 19 (resumed from step 18),
# writing the step-24 checkpoint, and right after the last checkpoint (nothing left to train).
CHAIN = ["best:2", "step:7", "writing:1", "checkpoint:1"]
POINTS["all_four_in_turn"] = CHAIN


def killing_train(args: list[str], kill_at: str | None = None, signal_name: str = "SIGKILL") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILL_AT": kill_at or "", "KILL_SIGNAL": signal_name}
    return subprocess.run([sys.executable, KILLING_TRAIN, *args], capture_output=True, text=True, timeout=300, env=env)


def train(run_dir: Path, overrides: list[str], kill_at: str | None = None, signal_name: str = "SIGKILL") -> subprocess.CompletedProcess[str]:
    return killing_train([*RUN, *overrides, f"hydra.run.dir={run_dir}"], kill_at, signal_name)


def outcome(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor], dict[str, Any]]:
    """metrics.jsonl without timings, the last checkpoint's weights, and the summary's results."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]
    folder = run_dir / checkpoint.FOLDER
    latest = checkpoint.read_index(folder)["checkpoints"][-1]["file"]
    weights = torch.load(folder / latest, weights_only=True)["model"]
    summary = json.loads((run_dir / "summary.json").read_text())
    return records, weights, {key: summary.get(key) for key in SUMMARY_KEYS}


def assert_no_half_file_under_a_final_name(run_dir: Path) -> None:
    for path in (run_dir / checkpoint.FOLDER).glob("*.pt"):
        assert not path.name.startswith("."), path
        torch.load(path, weights_only=True)  # complete: a half-written file raises


def killed_and_resumed(run_dir: Path, overrides: list[str], kills: list[str]) -> None:
    for kill_at in kills:
        killed = train(run_dir, overrides + (["resume=auto"] if (run_dir / checkpoint.FOLDER).exists() else []), kill_at)
        assert killed.returncode == -9, f"KILL_AT={kill_at} never happened:\n{killed.stderr[-2000:]}"
        assert not (run_dir / "summary.json").exists()
        assert_no_half_file_under_a_final_name(run_dir)
    resumed = train(run_dir, overrides + ["resume=auto"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout


_references: dict[str, Path] = {}


@pytest.fixture
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The run never interrupted, per configuration, made once per test session."""
    def reference(config: str) -> Path:
        if config not in _references:
            run_dir = tmp_path_factory.mktemp(f"full-{config}") / "run"
            result = train(run_dir, CONFIGS[config])
            assert result.returncode == 0, result.stderr[-2000:]
            _references[config] = run_dir
        return _references[config]

    return reference


def assert_same_outcome(expected_dir: Path, got_dir: Path) -> None:
    (records, weights, summary), (expected_records, expected_weights, expected_summary) = outcome(got_dir), outcome(expected_dir)
    assert summary == expected_summary
    assert records == expected_records
    assert weights.keys() == expected_weights.keys()
    assert all(torch.equal(weights[key], expected_weights[key]) for key in weights)


# Slow: the default run's case is test_the_shipped_floor_killed_mid_epoch_resumes_exactly, which
# resumes from an epoch-end checkpoint (the bug) under the shipped checkpointing.
@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_defaults_killed_at_any_point_resume_exactly(uninterrupted: Any, tmp_path: Path, point: str) -> None:
    killed_and_resumed(tmp_path / "run", [], POINTS[point])
    assert_same_outcome(uninterrupted("defaults"), tmp_path / "run")


def test_the_shipped_floor_killed_mid_epoch_resumes_exactly(uninterrupted: Any, tmp_path: Path) -> None:
    """As shipped (checkpoint.min_interval_s=1.0), this sub-second run checkpoints only its best
    epochs (and, on a slow machine, an epoch a second), each at an epoch end (no every_steps):
    killed at step 9 it resumes from the latest, whose data order must carry on where the epoch
    left it (the issue's bug), and still ends as the run never interrupted."""
    killed_and_resumed(tmp_path / "run", ["checkpoint.min_interval_s=1.0"], ["step:9"])
    assert_same_outcome(uninterrupted("defaults"), tmp_path / "run")


# The conventions: a scheduler's SIGTERM exits 143, a Ctrl-C's SIGINT 130 (slow: the same path).
@pytest.mark.parametrize("signal_name, code", [("SIGTERM", 143), pytest.param("SIGINT", 130, marks=pytest.mark.slow)])
def test_a_signal_checkpoints_the_step_it_stopped_at_and_resumes_exactly(uninterrupted: Any, tmp_path: Path,
                                                                         signal_name: str, code: int) -> None:
    """Sent after step 9 (mid-epoch 2), the signal ends the run after that step with a checkpoint of
    it, status interrupted and the conventional exit code; resumed, it ends as never interrupted."""
    run_dir = tmp_path / "run"
    stopped = train(run_dir, [], "step:9", signal_name)
    assert stopped.returncode == code, stopped.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["signal"], summary["steps"]) == ("interrupted", signal.Signals[signal_name], 9)
    assert checkpoint.read_index(run_dir / checkpoint.FOLDER)["checkpoints"][-1]["step"] == 9
    resumed = train(run_dir, ["resume=auto"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_outcome(uninterrupted("defaults"), run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("config", [c for c in CONFIGS if c != "defaults"])
def test_every_configuration_killed_at_every_kind_of_point_resumes_exactly(uninterrupted: Any, tmp_path: Path, config: str) -> None:
    killed_and_resumed(tmp_path / "run", CONFIGS[config], CHAIN)
    assert_same_outcome(uninterrupted(config), tmp_path / "run")


@pytest.mark.slow
def test_killed_sweep_job_continues_from_its_checkpoint_exactly(uninterrupted: Any, tmp_path: Path) -> None:
    """Running a killed sweep's command again continues the job from its checkpoint (not from the
    start) and ends as the run never interrupted."""
    command = ["-m", *RUN, "seed=0", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    killed = killing_train(command, "checkpoint:2")
    assert killed.returncode == -9, killed.stderr[-2000:]
    again = killing_train(command)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "continuing" in again.stdout and "resuming" in again.stdout
    (job,) = [path.parent for path in (tmp_path / "sweep").glob("*/summary.json")]
    assert not (job / "previous").exists()
    assert_same_outcome(uninterrupted("defaults"), job)


# Exact resume under distillation (the teacher loaded again from its file, its hash checked): slow,
# about 20 s a point even on a quiet machine. In the default run, tests/test_distill.py checks that a
# checkpoint holds the teacher's path and hash and that a changed teacher is refused on resume.
@pytest.mark.slow
@pytest.mark.parametrize("kills", [POINTS["epoch_end"], CHAIN], ids=["epoch_end", "chain"])
def test_distilled_run_killed_resumes_exactly(trained_run: Path, tmp_path: Path, kills: list[str]) -> None:
    """The teacher: conftest's trained run, of the same synthetic data (its classes and input shape)."""
    overrides = ["distill=soft", f"distill.teacher={trained_run}"]
    assert train(tmp_path / "full", overrides).returncode == 0
    killed_and_resumed(tmp_path / "run", overrides, kills)
    assert_same_outcome(tmp_path / "full", tmp_path / "run")
