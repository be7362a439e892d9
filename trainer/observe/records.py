"""What a run leaves in its folder: `metrics.jsonl` (a line per log interval and per epoch) and
`summary.json` (written atomically, so a reader never sees half of it)."""
from __future__ import annotations

import fcntl
import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from trainer.errors import ConfigError

# A run's own files, and what the tool tasks leave (task=NAME writes NAME.json).
RUN_FILES = ("metrics.jsonl", "summary.json", "lr_find.json", "check_init.json", "export.json", "tsne.json")
CLAIM = ".claimed"


def json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as null (a diverged run's loss, say)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


class MetricsLog:
    """Appends one JSON object per line and flushes it, so a killed run keeps what it logged."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("a", encoding="utf-8")

    def log(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(json_safe(record)) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def write_atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write` on a temporary file beside `path`, fsync it, then rename it over `path`: a kill
    leaves the old file or the new one under the final name, never half of one."""
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    write_atomic(path, lambda file: file.write((json.dumps(json_safe(payload), indent=2) + "\n").encode()))


def previous_run(run_dir: Path) -> Path | None:
    """The first file of an earlier run found in `run_dir`, if any: such a folder is never reused."""
    for name in RUN_FILES:
        if (run_dir / name).exists():
            return run_dir / name
    return None


def check_unused(run_dir: Path) -> None:
    """Refuse a folder that already holds a run: its files, and its .hydra/ record, stay as they are."""
    if (existing := previous_run(run_dir)) is not None:
        raise ConfigError(f"{run_dir} already holds a run ({existing.name}); choose another folder "
                          "(hydra.run.dir=...) or continue it with resume=auto")


def write_lines_atomic(path: Path, lines: list[str]) -> None:
    """Replace `path` with `lines` through a temporary file and a rename: never half-written."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("".join(line + "\n" for line in lines))
    temporary.replace(path)


@contextmanager
def claim(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` for this process while the block runs: a second process that tries to claim
    it (two `train` commands on one hydra.run.dir, two `resume=auto` of one run) is refused.

    An exclusive, non-blocking flock on `run_dir/.claimed`: the kernel drops it when this process
    ends, however it ends, so a killed run never leaves its folder locked. If the block wrote no
    run (it stopped on a config error), the claim file and a folder made here are removed again."""
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CLAIM
    created = not path.exists()
    file = path.open("a")
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        raise ConfigError(f"{run_dir} is in use by another train process; wait for it to end, "
                          "or choose another folder (hydra.run.dir=...)") from None
    try:
        yield
    finally:
        if previous_run(run_dir) is None:  # nothing of a run written: leave the folder as it was
            if created:
                path.unlink(missing_ok=True)
            if made and not any(run_dir.iterdir()):
                run_dir.rmdir()
        file.close()
