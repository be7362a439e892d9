"""`smoke=true`: shrink whatever configuration is given into a seconds-long check of every phase.

A smoke run builds the same parts a real run builds and goes through the same phases (build,
training steps, evaluation, schedule, early stopping, checkpoint write, metrics, summary,
diagnosis), but on a few batches: at most SMOKE_EPOCHS epochs of SMOKE_STEPS_PER_EPOCH steps,
batches of at most SMOKE_MAX_BATCH, SMOKE_VAL_SAMPLES validation samples, on the CPU unless a
device is named. It runs in a temporary folder that is removed afterwards (curves.png is not
drawn: that takes longer than the training, and a plotting error never fails a real run), loads the latest good checkpoint back (trainer/engine/smoke_check.py), and fails, as a
one-line error, on a non-finite loss, gradient or metric, or on any phase that raises: so a
config that would break in hour two of a real run breaks here.

`processes=N` (N > 1) smoke-runs N processes as the real run would (trainer/engine/launch.py): the
process group, the sharded batches, the gradient all-reduce and rank 0's files are phases too.
Each process is started with SMOKE_RANK set, which tells `train` to train the shrunk config in
the smoke run's folder; this process then checks what rank 0 wrote.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, ListConfig

from trainer.data import DataSplits
from trainer.data.streamed import StreamedSplits
from trainer.errors import ConfigError, TrainerError

SMOKE_EPOCHS = 2           # two, so the schedule, early stopping and "best" see more than one evaluation
SMOKE_STEPS_PER_EPOCH = 2  # training batches per epoch
SMOKE_MAX_BATCH = 16       # a ResNet-18 step on a CPU costs about a second per 32 images
SMOKE_VAL_SAMPLES = 16     # evaluation and the per-layer statistics (a forward and backward) read these: one small batch
SMOKE_LR_FIND_STEPS = 10   # task=lr_find: enough readings for its steepest-descent rule (>= 5)
# task=tsne: validation points, above the default perplexities (5, 30, 50; each must be below the
# count) and raised past a larger one; t-SNE's time grows with the points (2000 by default).
SMOKE_TSNE_POINTS = 64
SMOKE_SAMPLE_LENGTH = 32   # characters per sample a character LM (or task=sample) draws: 500 by default
# Set (to "1") for the processes a `smoke=true processes=N` run starts: each trains as one rank of the smoke run.
SMOKE_RANK = "TRAINER_SMOKE_RANK"


class SmokeFailure(TrainerError):
    """The smoke run found a problem: a non-finite figure, a failed phase, a checkpoint that does not load back."""


def shrink(cfg: DictConfig) -> DictConfig:
    """A copy of `cfg` that runs in seconds: fewer epochs, smaller batches, a step line each step,
    a checkpoint each epoch, and the CPU for device=auto. The data is sliced by `slice_data`."""
    if cfg.resume and cfg.task == "train":  # (task=export and tsne read the run resume= names)
        raise ConfigError(f"resume={cfg.resume} with smoke=true: a smoke run starts fresh in a temporary folder; "
                          "drop resume=")
    small = copy.deepcopy(cfg)
    small.epochs = min(cfg.epochs, SMOKE_EPOCHS)
    small.batch_size = min(cfg.batch_size, SMOKE_MAX_BATCH)
    small.log_every = 1
    if cfg.device == "auto":  # a CI runner's GPU (if any) is used only when asked for: device=cuda
        small.device = "cpu"
    small.checkpoint.every_epochs = 1  # the write and the load back are phases to check
    small.checkpoint.every_steps = min(cfg.checkpoint.every_steps, 1)
    # The tools shrink too; a value that is no count is left for the tool to refuse, as without smoke.
    # (`get`: `~tsne.max_points` leaves the tool its own default, which a smoke run keeps too.)
    tsne, sample = cfg.get("tsne") or {}, cfg.get("sample") or {}
    if _count(tsne.get("max_points")):
        small.tsne.max_points = min(tsne.max_points, max(SMOKE_TSNE_POINTS, _above_perplexities(tsne.get("perplexity"))))
    if _count(sample.get("length")):
        small.sample.length = min(sample.length, SMOKE_SAMPLE_LENGTH)
    return small


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _above_perplexities(perplexity: object) -> int:
    """The fewest points every perplexity asked for is below (0 when they are not numbers)."""
    values = list(perplexity) if isinstance(perplexity, (list, tuple, ListConfig)) else [perplexity]
    numbers = [value for value in values if isinstance(value, (int, float)) and not isinstance(value, bool)]
    return int(max(numbers)) + 1 if numbers else 0


def slice_data(data: DataSplits | StreamedSplits, step_batch: int) -> DataSplits | StreamedSplits:
    """The first SMOKE_STEPS_PER_EPOCH batches of the training set, and SMOKE_VAL_SAMPLES validation
    and test samples (the test split, evaluated once at the end, would otherwise be read whole)."""
    num_train = step_batch * SMOKE_STEPS_PER_EPOCH
    if isinstance(data, StreamedSplits):
        test = data.test.head(SMOKE_VAL_SAMPLES) if data.test is not None else None
        return dataclasses.replace(data, train=data.train.head(num_train), val=data.val.head(SMOKE_VAL_SAMPLES),
                                   test=test, heads={})
    test = {"x_test": data.x_test[:SMOKE_VAL_SAMPLES], "y_test": data.y_test[:SMOKE_VAL_SAMPLES]} if data.has_test else {}
    return dataclasses.replace(data, x_train=data.x_train[:num_train], y_train=data.y_train[:num_train],
                               x_val=data.x_val[:SMOKE_VAL_SAMPLES], y_val=data.y_val[:SMOKE_VAL_SAMPLES], **test)


def _where(error: BaseException) -> str:
    """`file.py:LINE in function`: the innermost frame, where a phase broke."""
    frame = traceback.extract_tb(error.__traceback__)[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"


def smoke_run(cfg: DictConfig, overrides: Sequence[str] = ()) -> str:
    """Smoke-run `cfg` (training, or its task) in a temporary folder; return the one-line verdict.
    `overrides`, the command's, are what the ranks of a multi-process run compose their config from.

    Raises TrainerError for bad input (as a real run would) and SmokeFailure for what the smoke
    run found, each a one-line message."""
    from trainer.engine.parts import check_top_level  # torch loads here
    from trainer.engine.smoke_check import check_round_trip, check_summary

    check_top_level(cfg)  # the user's own values, before shrinking changes them
    small = shrink(cfg)
    processes = small.processes  # check_top_level took it for an integer >= 1
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trainer-smoke-") as folder:
        run_dir = Path(folder) / "run"
        try:
            if small.task != "train":
                return _smoke_task(small, run_dir, started)
            if processes > 1:
                summary = _train_processes(processes, overrides, run_dir)
            else:
                from trainer.run import run

                summary = run(small, run_dir)
            check_summary(summary, run_dir)
            round_trip = check_round_trip(small, run_dir)
        except TrainerError:
            raise
        except Exception as error:  # a phase broke: one line naming where, as CI logs want it
            message = " ".join(str(error).split())  # one line, whatever the exception's text
            raise SmokeFailure(f"smoke run failed at {_where(error)}: {type(error).__name__}: {message}") from None
    best = summary["best"]
    figure = f"val_acc {best['val_acc']:.4f}" if best.get("val_acc") is not None else f"val_loss {best['val_loss']:.4g}"
    on = f" on {processes} processes" if processes > 1 else ""
    return (f"smoke ok: {summary['steps']} steps in {summary['epochs_run']} epochs{on} ({figure}), {round_trip}, "
            f"{time.perf_counter() - started:.1f}s")


def _train_processes(processes: int, overrides: Sequence[str], run_dir: Path) -> dict:
    """The smoke run trained by `processes` ranks started as `train processes=N` starts them, each
    told by SMOKE_RANK to shrink the config and train in `run_dir`; rank 0's summary."""
    from trainer.engine.launch import train_processes

    os.environ[SMOKE_RANK] = "1"  # inherited by the ranks the launcher starts
    try:
        return train_processes(processes, list(overrides), run_dir, None)
    finally:
        del os.environ[SMOKE_RANK]


def is_smoke_rank() -> bool:
    """Whether this process is a rank a `smoke=true processes=N` run started."""
    return os.environ.get(SMOKE_RANK) == "1"


def train_smoke_rank(cfg: DictConfig, run_dir: Path) -> None:
    """One rank of a multi-process smoke run: the shrunk config, trained in the smoke run's folder
    (the process that started the ranks checks the outcome and removes the folder)."""
    from trainer.run import run

    run(shrink(cfg), run_dir)


def _smoke_task(cfg: DictConfig, run_dir: Path, started: float) -> str:
    from trainer.tasks import run_task

    code = run_task(cfg, run_dir, smoke=True)
    if code:
        raise SmokeFailure(f"task={cfg.task} found errors (exit {code}); see its report above")
    return f"smoke ok: task={cfg.task}, {time.perf_counter() - started:.1f}s"

