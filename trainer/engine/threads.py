"""How many intra-op threads torch uses (`trainer.threads`).

Several processes that each run as many threads as there are cores spin against each other:
measured on a 2-core CPU, two concurrent runs were 10-40x slower. `auto` therefore shares the
cores this process may use among the `train` processes running on the machine (each holds a
lock file in a shared folder while it lives) and the jobs a sweep runs at once, and a run
re-divides at every epoch end (`rebalance`), so the first of two runs gives up its share when
the second starts, and takes it back when that one ends.
"""
from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

import torch

from hydra.core.hydra_config import HydraConfig

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
    return Path(folder) if folder else Path(tempfile.gettempdir()) / f"trainer-processes-{os.getuid()}"


_joined: dict[Path, int] = {}  # registry folder -> this process's locked file descriptor, held until exit


def running_processes() -> int:
    """How many `train` processes on this machine hold a lock in the registry, this one included
    (it joins on its first call). A file whose lock can be taken belongs to a process that ended
    (the kernel drops a dead process's locks, however it died): it is removed, not counted."""
    folder = registry()
    if folder not in _joined:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(folder / f"{os.getpid()}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        _joined[folder] = descriptor
    live = 0
    for file in folder.glob("*.lock"):
        if file.name == f"{os.getpid()}.lock":
            live += 1
            continue
        try:
            descriptor = os.open(file, os.O_RDWR)
        except FileNotFoundError:  # removed by another process as we listed
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            live += 1  # its process holds it: running
        else:
            file.unlink(missing_ok=True)  # a process that ended
        finally:
            os.close(descriptor)
    return live


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
