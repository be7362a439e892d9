"""What a run leaves in its folder: `metrics.jsonl` (a line per log interval and per epoch) and
`summary.json` (written atomically, so a reader never sees half of it); `write_atomic`, the one
way any file of the project is replaced (records, checkpoints, the .hydra record, exports)."""
from __future__ import annotations

import fcntl
import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from trainer import parent_locks
from trainer.errors import ConfigError
from trainer.observe.history import read_json

# A run's own files, and what the tool tasks leave (task=NAME writes NAME.json). checkpoints/ alone
# (a run's kept without its records) counts too: a new run there would write its own step_N.pt and
# best.pt over them and drop the rest from their index.
RUN_FILES = ("metrics.jsonl", "summary.json", "checkpoints", "lr_find.json", "check_init.json", "export.json",
             "tsne.json", "sample.json")
CLAIM = ".claimed"
# What the `logger=` choices write (trainer.observe.loggers): part of one attempt of a run.
LOGGER_FILES = ("metrics.csv", "layers.csv", "tensorboard")
# The rest of what a run (curves, a character LM's vocabulary and samples) or a tool task writes:
# a folder holding any of them (the user's own curves.png, say) is not one to write a run into.
OUTPUT_FILES = ("curves.png", "vocab.json", "samples.txt", *LOGGER_FILES, "lr_find.png", "init_check.png",
                "inference.pt", "tsne.png")


def json_line(record: dict[str, Any]) -> str:
    """`record` as one line of JSON, a non-finite float as null. Encoded as it is first, and walked
    by json_safe only where that wrote a NaN or an infinity: the walk doubled the cost of an epoch's
    per-layer record (about 150 us on cnn1d), and nearly every record is finite."""
    line = json.dumps(record)
    return json.dumps(json_safe(record)) if "NaN" in line or "Infinity" in line else line


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
        self.file.write(json_line(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def write_atomic(path: Path, content: bytes | str | Callable[[IO[bytes]], Any]) -> None:
    """Put `content` (bytes, text as UTF-8, or a function that writes to the open file) in a
    temporary file beside `path`, fsync it, rename it over `path`, then fsync the folder so the
    rename survives a power cut too: a kill leaves the old file or the new one under the final
    name, never half of one. If the write fails the temporary file is removed and the error raised."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with temporary.open("wb") as file:
            if callable(content):
                content(file)
            else:
                file.write(content.encode() if isinstance(content, str) else content)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(folder: Path) -> None:
    """Make a rename in `folder` durable."""
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """`payload` as indented JSON (NaN and infinity as null; anything else JSON lacks as its str)."""
    write_atomic(path, json.dumps(json_safe(payload), indent=2, default=str) + "\n")


def previous_run(run_dir: Path) -> Path | None:
    """The first file of an earlier run found in `run_dir`, if any: such a folder is never reused."""
    for name in RUN_FILES:
        if (run_dir / name).exists():
            return run_dir / name
    return None


def check_unused(run_dir: Path, resuming: bool = False) -> None:
    """Refuse a folder that already holds a run, or a file this command would write (OUTPUT_FILES):
    its files, and its .hydra/ record, stay as they are. `resuming`: resume=auto found no good checkpoint there. A training attempt that never finished
    (killed before its first checkpoint) is then no refusal: the run starts afresh and sets the
    attempt aside (run_folder.set_aside), so a preemptible job can always be launched again."""
    existing = previous_run(run_dir)
    if existing is None:
        if (output := next((name for name in OUTPUT_FILES if (run_dir / name).exists()), None)) is not None:
            raise ConfigError(f"{run_dir} holds {output}, which this command would overwrite; choose another folder "
                              "(hydra.run.dir=...)")
        return
    if resuming and unfinished_attempt(run_dir):
        return
    if resuming:
        raise ConfigError(f"{run_dir} already holds a run ({existing.name}) and no good checkpoint to continue "
                          "it from (resume=auto); choose another folder (hydra.run.dir=...)")
    raise ConfigError(f"{run_dir} already holds a run ({existing.name}); choose another folder "
                      "(hydra.run.dir=...) or continue it with resume=auto")


def unfinished_attempt(run_dir: Path) -> bool:
    """Whether `run_dir` holds a training attempt that did not finish: no summary, or one that says
    interrupted (a run without checkpoints), or one that cannot be read (it is set aside, not lost),
    and no tool task's result."""
    if any((run_dir / name).exists() for name in RUN_FILES if name.endswith(".json") and name != "summary.json"):
        return False
    summary = read_json(run_dir / "summary.json")
    return summary is None or summary.get("status") == "interrupted"


def write_lines_atomic(path: Path, lines: list[str]) -> None:
    """Replace `path` with `lines`, atomically."""
    write_atomic(path, "".join(line + "\n" for line in lines))


@contextmanager
def claim(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` for this process while the block runs: a second process that tries to claim
    it (two `train` commands on one hydra.run.dir, two `resume=auto` of one run) is refused.

    An exclusive, non-blocking flock on `run_dir/.claimed`: the kernel drops it when this process
    ends, however it ends, so a killed run never leaves its folder locked (a forked child does not
    hold it: trainer.parent_locks). If the block wrote no run (it stopped on a config error), or
    stopped in a folder that held a run before (refused there), the claim file and a folder made
    here are removed again."""
    made = not run_dir.exists()
    held = previous_run(run_dir) is not None
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
    parent_locks.hold(file.fileno())
    ended = False
    try:
        yield
        ended = True
    finally:
        parent_locks.release(file.fileno())
        if previous_run(run_dir) is None or (held and not ended):  # nothing of a run written: leave the folder as it was
            if created:
                path.unlink(missing_ok=True)
            if made and not any(run_dir.iterdir()):
                run_dir.rmdir()
        file.close()
