"""Checkpoints: written atomically, verified on load, never loaded with pickled code, and hashed and
written to disk off the training thread.

`Checkpointer.save` serialises the state on the training thread (the bytes are the snapshot, so
training may go on changing its tensors) and hands them to a background thread, which hashes them
(SHA-256), writes them to a temporary file that is flushed and fsynced, then renames it into place;
only then does `checkpoints/index.json` (itself written the same way) list it with its hash.
Why the split: pickling holds the GIL, and on a CPU run a background thread pickling makes the
training thread wait for the GIL after each operation it ran without it, which measured costlier
than pickling inline; the hash and the disk work release the GIL and overlap training for free.
One write at a time: the next save, and `close` at the end of a run, wait for the one before.
A file the index does not vouch for, or whose bytes no longer match, is never resumed from:
`resume=auto` falls back to the previous good one, so a kill during a write loses only that write.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from trainer.errors import TrainerError
from trainer.observe.records import fsync_directory, write_atomic

if TYPE_CHECKING:
    from trainer.engine.loop import Trainer

FOLDER = "checkpoints"
INDEX = "index.json"
BEST = "best.pt"


class CheckpointError(TrainerError):
    """A checkpoint cannot be written, found, verified or safely loaded."""


def _write_atomic(path: Path, data: bytes) -> None:
    """records.write_atomic (fsynced file and folder), failing as a CheckpointError."""
    try:
        write_atomic(path, data)
    except OSError as error:
        raise CheckpointError(f"could not write {path}: {error.strerror or error}; earlier checkpoints are intact") from None


def _link_atomic(source: Path, path: Path, data: bytes) -> None:
    """Make `path` the same file as `source` (a hard link: no second copy of the bytes), atomically:
    link to a temporary name, then rename over `path`. Where hard links are not supported, write
    `data` (source's bytes) instead."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:  # a file system without hard links (some network and FAT mounts)
        _write_atomic(path, data)
        return
    os.replace(temporary, path)
    fsync_directory(path.parent)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_index(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / INDEX).read_text())
    except (OSError, ValueError):
        return {"checkpoints": [], "best": None}


def serialise(payload: dict[str, Any]) -> bytes:
    """`payload` as torch.save's bytes: a copy that shares nothing with the live training state."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


class BackgroundWriter:
    """Runs one piece of work at a time on a thread of its own; an error it raised is raised
    again by the next `submit` or `wait`, on the caller's thread."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, work: Callable[[], None]) -> None:
        self.wait()
        # A daemon: should the process end without waiting (a crash elsewhere), an unfinished write
        # leaves only a temporary file, never a half file under a checkpoint's name.
        self._thread = threading.Thread(target=self._run, args=(work,), name="checkpoint-writer", daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as error:  # handed to the training thread by wait()
            self._error = error

    def wait(self) -> None:
        """Block until the work in flight is done; raise its error, if it had one."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


class CheckpointPolicy(Protocol):
    """What the loop asks of checkpointing: whether one is due, to save one, and to wait for the
    writes in flight (as training ends, so that the last write counts in the training time)."""

    def due_at_step(self, step: int) -> bool: ...

    def due_at_epoch(self, epoch: int) -> bool: ...

    def save(self, trainer: "Trainer", best: bool) -> None: ...

    def wait(self) -> None: ...


class NoCheckpoints:
    """The policy when nothing is checkpointed (checkpoint.every_epochs=0 and every_steps=0, or a
    trainer built for a check): never due, and a best or interrupted state is not saved either."""

    def due_at_step(self, step: int) -> bool:
        return False

    def due_at_epoch(self, epoch: int) -> bool:
        return False

    def save(self, trainer: "Trainer", best: bool) -> None:
        pass

    def wait(self) -> None:
        pass


class Checkpointer:
    """Writes `step_NNNNNNNN.pt` files under run_dir/checkpoints, keeping the last `keep_last` and `best.pt`.

    Args:
        every_epochs: checkpoint at every N-th epoch end (0: never).
        every_steps: checkpoint every N optimizer steps (0: never).
        keep_last: recent checkpoints kept; older ones are deleted once a newer one is safely listed.
        min_interval_s: a checkpoint due by `every_epochs` or `every_steps` is skipped when the
            last save was less than this many seconds ago (0: every one due is written). A
            checkpoint costs a few milliseconds of the training thread (measured 5-7 ms on a
            small CPU model), a tenth of a 0.1 s epoch; a kill loses at most this many seconds
            more. The saves the loop makes whatever is due (a best epoch, the last, an early
            stop, an interrupt) are never skipped.
        clock: seconds, for the interval (time.monotonic; a test's fake).
    """

    def __init__(self, run_dir: Path, every_epochs: int, every_steps: int, keep_last: int,
                 min_interval_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        for key, value in (("every_epochs", every_epochs), ("every_steps", every_steps)):
            if not isinstance(value, int) or value < 0:
                raise CheckpointError(f"checkpoint.{key}={value} must be an integer >= 0")
        if not isinstance(keep_last, int) or keep_last < 1:
            raise CheckpointError(f"checkpoint.keep_last={keep_last} must be an integer >= 1")
        if isinstance(min_interval_s, bool) or not isinstance(min_interval_s, (int, float)) or not 0 <= min_interval_s < float("inf"):
            raise CheckpointError(f"checkpoint.min_interval_s={min_interval_s} must be a number of seconds >= 0 "
                                  "(0: every checkpoint due is written)")
        self.folder = run_dir / FOLDER
        self.every_epochs, self.every_steps, self.keep_last = every_epochs, every_steps, keep_last
        self.min_interval_s, self.clock = float(min_interval_s), clock
        self.last_save = clock()  # the run's start: the first periodic checkpoint comes min_interval_s in
        self.writer = BackgroundWriter()

    @property
    def enabled(self) -> bool:
        """Off when both intervals are 0: then not even best.pt is written."""
        return bool(self.every_epochs or self.every_steps)

    def due_at_step(self, step: int) -> bool:
        return bool(self.every_steps) and step % self.every_steps == 0 and self._interval_passed()

    def due_at_epoch(self, epoch: int) -> bool:
        return bool(self.every_epochs) and epoch % self.every_epochs == 0 and self._interval_passed()

    def _interval_passed(self) -> bool:
        return self.clock() - self.last_save >= self.min_interval_s

    def save(self, payload: dict[str, Any], step: int, best: bool = False) -> None:
        """Serialise `payload` now and write it in the background (after the write before)."""
        self.last_save = self.clock()
        data, epoch = serialise(payload), payload["train_state"]["epoch"]
        self.writer.submit(lambda: self.write_bytes(data, step, epoch, best))

    def wait(self) -> None:
        """Until the checkpoint in flight is on disk and listed; raises a failed write's CheckpointError."""
        self.writer.wait()

    close = wait  # at the end of a run: nothing may be left in flight

    def write(self, payload: dict[str, Any], step: int, best: bool = False) -> Path:
        """Serialise, hash and write `payload` as step `step`'s checkpoint, then list it."""
        return self.write_bytes(serialise(payload), step, payload["train_state"]["epoch"], best)

    def write_bytes(self, data: bytes, step: int, epoch: int, best: bool = False) -> Path:
        """Hash and write serialised `data` as step `step`'s checkpoint, then list it (any thread)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        digest = _digest(data)
        index = read_index(self.folder)
        name = f"step_{step:08d}.pt"
        _write_atomic(self.folder / name, data)
        entries = [e for e in index["checkpoints"] if e["file"] != name]
        entries.append({"file": name, "sha256": digest, "step": step, "epoch": epoch})
        index["checkpoints"], stale = entries[-self.keep_last :], entries[: -self.keep_last]
        if best:  # the same bytes: a second name for the file, not a second write
            # The new file is listed before best.pt names it, so best.pt always holds bytes the
            # index lists (as best, or as a checkpoint): read or killed at any point, it verifies.
            self._write_index(index)
            _link_atomic(self.folder / name, self.folder / BEST, data)
            index["best"] = {"file": BEST, "sha256": digest, "step": step}
        self._write_index(index)
        for entry in stale:  # deleted only once the index no longer lists them
            (self.folder / entry["file"]).unlink(missing_ok=True)
        return self.folder / name

    def _write_index(self, index: dict[str, Any]) -> None:
        _write_atomic(self.folder / INDEX, json.dumps(index, indent=1).encode())


# How a file torch.save wrote begins: a zip archive (PyTorch 1.6 and later), or a pickle (the legacy format).
TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80")


def load(path: Path, expected_sha256: str | set[str] | None = None) -> dict[str, Any]:
    """Load a checkpoint with weights_only=True: tensors and plain containers only, no code runs.
    Its bytes must hash to `expected_sha256` (or to one of a set of them) when one is given."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"resume={path} cannot be read: {error.strerror or error}") from None
    expected = {expected_sha256} if isinstance(expected_sha256, str) else expected_sha256
    if expected is not None and _digest(data) not in expected:
        raise CheckpointError(f"{path} is corrupted: its bytes do not match the hash recorded when it was written")
    if not data.startswith(TORCH_SAVE_MAGIC):  # a summary.json or notes.txt: torch's unpickler calls that pickled code
        raise CheckpointError(f"{path} is not a checkpoint (torch.save did not write it); give a run folder "
                              f"or one of its {FOLDER}/*.pt files")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for pickled code, RuntimeError for a damaged archive
        reason = "it carries pickled code, which is never run" if "weights_only" in str(error) else "it is truncated or damaged"
        raise CheckpointError(f"{path} was refused: {reason}") from None
    if not isinstance(payload, dict) or "train_state" not in payload:
        raise CheckpointError(f"{path} is not a trainer checkpoint (no train_state); for weights only use init=pretrained")
    return payload


def latest_good(run_dir: Path) -> tuple[dict[str, Any] | None, Path | None, list[str]]:
    """The newest checkpoint under run_dir/checkpoints that verifies, with notices for the ones skipped."""
    folder = run_dir / FOLDER
    notices: list[str] = []
    for entry in reversed(read_index(folder)["checkpoints"]):
        path = folder / entry["file"]
        try:
            return load(path, entry["sha256"]), path, notices
        except CheckpointError as error:
            notices.append(f"skipped {error}")
    return None, None, notices


def run_folder(spec: str, path: Path) -> Path:
    """The run folder a checkpoint file `path` (named by `resume=spec`) belongs to, where a run
    resumed from it continues: RUN for RUN/checkpoints/FILE, a folder this module wrote (it holds
    index.json). A file anywhere else (~/Downloads/ckpt.pt, a user's own checkpoints/ folder)
    belongs to no run: continuing "its" folder would write a run's files into the folder two
    levels up (a home folder), or over another run kept there."""
    if path.parent.name == FOLDER and (path.parent / INDEX).is_file():
        return path.parent.parent
    raise CheckpointError(f"resume={spec} is not in a run's {FOLDER}/ folder (one with {INDEX}), so there is no run "
                          f"to continue; give a run folder, a checkpoint under RUN/{FOLDER}/, or auto (a new run from "
                          f"its weights: init=pretrained init.path={spec})")


def resolve(spec: str, run_dir: Path) -> tuple[dict[str, Any] | None, Path | None, list[str]]:
    """The checkpoint `resume=spec` names: auto (this run folder's latest good one, or none), a run folder, or a file."""
    if spec == "auto":
        return latest_good(run_dir)
    path = Path(spec).expanduser()
    if path.is_dir():
        payload, found, notices = latest_good(path)
        if payload is None:
            raise CheckpointError(f"resume={spec} holds no usable checkpoint under {FOLDER}/ ({'; '.join(notices) or 'none written'})")
        return payload, found, notices
    if not path.is_file():
        raise CheckpointError(f"resume={spec} does not exist; give a checkpoint file, a run folder, or auto")
    index = read_index(path.parent)
    listed = {e["file"]: e["sha256"] for e in index["checkpoints"]}
    if path.name == BEST and index["best"]:
        # best.pt was the index's best or, renamed before the index caught up, a listed checkpoint.
        return load(path, {index["best"]["sha256"], *listed.values()}), path, []
    return load(path, listed.get(path.name)), path, []
