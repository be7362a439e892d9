"""How many intra-op threads torch uses (`trainer.threads`).

Several processes that each run as many threads as there are cores spin against each other:
measured on a 2-core CPU, two concurrent runs were 10-40x slower. `auto` therefore shares the
cores this process may use among the jobs a sweep runs at once.
"""
from __future__ import annotations

import os

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


def resolve(setting: int | str) -> int:
    """`trainer.threads`: a count, or auto: $OMP_NUM_THREADS when set (by the user, or by joblib in
    its workers), else the available cores divided by the jobs running at once, at least 1."""
    if setting == "auto":
        if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
            return int(os.environ["OMP_NUM_THREADS"])
        cores = available_cores()
        return max(cores // parallel_jobs(cores), 1)
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ConfigError(f"trainer.threads={setting} must be an integer >= 1, or auto")
    return setting
