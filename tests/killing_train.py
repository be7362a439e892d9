"""`train`, killed with SIGKILL at a chosen point: `python tests/killing_train.py OVERRIDES...`.

KILL_AT (environment) names the point, counted within this process (1-based):

- `step:N`        right after the N-th optimizer step (mid-epoch unless N ends an epoch), once
                  the checkpoints due before it are on disk (they are written in the background:
                  on a loaded machine the kill could otherwise come before the first, leaving
                  nothing to resume);
- `checkpoint:N`  right after the N-th checkpoint is complete (file, best.pt, index written);
- `best:N`        right after the N-th best.pt is in place, before the index lists it;
- `writing:N`     during the N-th checkpoint file's write: half its bytes are in the temporary
                  file when the process dies.

SIGKILL is sent by the process to itself, so no handler runs and nothing is flushed, exactly as
when the kernel or a scheduler kills it; the point is exact instead of a race with a poller.
KILL_SIGNAL (environment, default SIGKILL) names another signal to send instead, such as SIGTERM:
the process then goes on, as a run told to stop by a scheduler does.
Without KILL_AT this is plain `train` (tests/test_kill_resume.py resumes with it too).
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

from trainer import cli
from trainer.engine import checkpoint
from trainer.engine.loop import Trainer

POINTS = ("step", "checkpoint", "best", "writing")


def die() -> None:
    os.kill(os.getpid(), signal.Signals[os.environ.get("KILL_SIGNAL") or "SIGKILL"])


def parse(spec: str) -> tuple[str, int]:
    point, _, count = spec.partition(":")
    if point not in POINTS or not count.isdigit() or int(count) < 1:
        raise SystemExit(f"KILL_AT={spec} must be POINT:N with POINT one of {', '.join(POINTS)} and N >= 1")
    return point, int(count)


def counting(function: Callable[..., Any], is_event: Callable[..., bool], count: int,
             before: Callable[..., None] | None = None, end: Callable[[], None] = die) -> Callable[..., Any]:
    """`function`, ending (`end`: dying) after (or, with `before`, instead of) its `count`-th call
    that `is_event`."""
    seen = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal seen
        if is_event(*args, **kwargs):
            seen += 1
            if seen == count and before is not None:
                before(*args, **kwargs)
                die()
        result = function(*args, **kwargs)
        if seen == count and is_event(*args, **kwargs):
            end()
        return result

    return wrapper


def half_written(path: Path, data: bytes) -> None:
    """What a kill in the middle of a write leaves: a temporary file holding the first half."""
    with path.with_name(f".{path.name}.tmp").open("wb") as file:
        file.write(data[: len(data) // 2])
        file.flush()
        os.fsync(file.fileno())


_checkpointers: list[checkpoint.Checkpointer] = []


def remember_checkpointers() -> None:
    made = checkpoint.Checkpointer.__init__

    def init(self: checkpoint.Checkpointer, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        _checkpointers.append(self)

    checkpoint.Checkpointer.__init__ = init  # type: ignore[method-assign]


def die_once_written() -> None:
    for checkpointer in _checkpointers:
        checkpointer.wait()
    die()


def install(point: str, count: int) -> None:
    if point == "step":
        remember_checkpointers()
        Trainer.train_step = counting(Trainer.train_step, lambda *a, **k: True, count, end=die_once_written)
    elif point == "checkpoint":  # write_bytes() returns once the file, best.pt and the index are in place
        checkpoint.Checkpointer.write_bytes = counting(checkpoint.Checkpointer.write_bytes, lambda *a, **k: True, count)
    elif point == "best":
        is_best = lambda source, path, *a, **k: Path(path).name == checkpoint.BEST
        checkpoint._link_atomic = counting(checkpoint._link_atomic, is_best, count)
    else:
        is_step_file = lambda path, *a, **k: Path(path).name.startswith("step_")
        checkpoint._write_atomic = counting(checkpoint._write_atomic, is_step_file, count, before=half_written)


if __name__ == "__main__":
    if os.environ.get("KILL_AT"):
        install(*parse(os.environ["KILL_AT"]))
    sys.argv[0] = "train"
    cli.main()
