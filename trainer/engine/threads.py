"""How many intra-op threads torch uses (`trainer.threads`).

Several processes that each run as many threads as there are cores spin against each other:
measured on a 2-core CPU, two concurrent runs were 10-40x slower. `auto` therefore shares the
cores this process may use among the `train` processes running on the machine (each holds a
lock file in a shared folder while it lives) and the jobs a sweep runs at once, and a run
re-divides at epoch ends, at most once a second (`rebalance`), so the first of two runs gives up its share when
the second starts, and takes it back when that one ends.
"""
from __future__ import annotations

import fcntl
import os
import secrets
import sys
import tempfile
from pathlib import Path

import torch

from hydra.core.hydra_config import HydraConfig

from trainer import parent_locks
from trainer.errors import ConfigError


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parallel_jobs(cores: int) -> int:
    """How many jobs run at once: the joblib launcher's n_jobs in a sweep that uses it, else 1."""
    if not HydraConfig.initialized():
        return 1
    launcher = HydraConfig.get().get("launcher") or {}
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return 1
    n_jobs = launcher.get("n_jobs") or 1
    return n_jobs if n_jobs > 0 else max(cores + 1 + n_jobs, 1)  # joblib's convention: -1 is every core


def registry() -> Path:
    """The folder of the running processes' lock files: $TRAINER_PROCESSES_DIR, else one per user
    in the temporary folder (every process of a user on this machine finds the same one)."""
    folder = os.environ.get("TRAINER_PROCESSES_DIR")
    # expanduser: a quoted "~/..." would otherwise make a folder named "~" wherever the run starts.
    return Path(folder).expanduser() if folder else Path(tempfile.gettempdir()) / f"trainer-processes-{os.getuid()}"


_joined: dict[Path, Path] = {}  # registry folder -> this process's lock file, its descriptor held until exit
_unusable: set[Path] = set()  # registry folders that failed once: noticed once, not retried


def _join(folder: Path) -> Path:
    """Lock a file of this process's own in the registry, held until the process ends. The name
    holds a random part besides the pid: processes in other PID namespaces (containers sharing
    /tmp) can have the same pid, and a blocking lock on their file would hang this run. A forked
    child (a DataLoader worker, which outlives a SIGKILLed run by seconds) does not hold it, so
    it is never counted as a running process: trainer.parent_locks."""
    folder.mkdir(parents=True, exist_ok=True)
    own = folder / f"{os.getpid()}-{secrets.token_hex(4)}.lock"
    descriptor = os.open(own, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        own.unlink(missing_ok=True)
        raise
    parent_locks.hold(descriptor)
    return own


def _is_live(file: Path) -> bool:
    """Whether another process holds this lock file. One that cannot be opened or locked (another
    user's, a file system without flock) cannot be told: it is not counted."""
    try:
        descriptor = os.open(file, os.O_RDWR | os.O_NONBLOCK)  # never waits (a FIFO in its place)
    except OSError:  # removed by another process as we listed, or not ours to open
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True  # its process holds it: running
    except OSError:
        return False
    else:
        try:
            file.unlink(missing_ok=True)  # a process that ended
        except OSError:
            pass  # a sticky folder that is not ours to clean: it stays, uncounted
        return False
    finally:
        os.close(descriptor)


def running_processes() -> int:
    """How many `train` processes on this machine hold a lock in the registry, this one included
    (it joins on its first call). A file whose lock can be taken belongs to a process that ended
    (the kernel drops a dead process's locks, however it died): it is removed, not counted.
    Counting only shares the cores, so it never fails a run: where the registry cannot be used
    (a file in its place, read-only, no permission, a full disk, no flock) this process counts
    alone, with one notice line."""
    folder = registry()
    if folder in _unusable:
        return 1
    try:
        if folder not in _joined:
            _joined[folder] = _join(folder)
        others = [file for file in folder.glob("*.lock") if file != _joined[folder]]
    except OSError as error:
        _unusable.add(folder)
        _joined.pop(folder, None)
        if os.environ.get("RANK", "0") == "0":  # under torchrun each rank would say it: rank 0 speaks
            print(f"notice: trainer.threads=auto counts this process alone: the registry of running train processes "
                  f"{folder} is unusable ({error.strerror or error}); set TRAINER_PROCESSES_DIR to a writable folder",
                  file=sys.stderr)
        return 1
    return 1 + sum(_is_live(file) for file in others)


def _omp_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def resolve(setting: int | str) -> int:
    """`trainer.threads`: a count, or auto: $OMP_NUM_THREADS when set (by the user, or by joblib in
    its workers), else the available cores divided by the `train` processes running on this
    machine or the jobs a sweep runs at once, whichever is more, at least 1."""
    running = running_processes()  # every run joins, whatever its setting, so the others count it
    if setting == "auto":
        if (omp := _omp_threads()) is not None:
            return omp
        cores = available_cores()
        return max(cores // max(parallel_jobs(cores), running), 1)
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ConfigError(f"trainer.threads={setting} must be an integer >= 1, or auto")
    return setting


def rebalance(setting: int | str) -> None:
    """At an epoch end: under auto, set torch's threads to this process's share now (a run that
    started alone shrinks when another starts, and grows back when it ends)."""
    if setting != "auto" or _omp_threads() is not None:
        return
    threads = resolve(setting)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
