"""`processes=N`: a run, or each job of a sweep, starts its own process group on this machine.

`train processes=2 ...` trains as `torchrun --standalone --nproc_per_node=2 -m trainer.cli ...`
does (the same elastic agent, torch.distributed.launcher, with a local rendezvous), from inside
`train`: so a sweep (`train -m processes=2 seed=0,1`) runs its multi-process jobs one after the
other, each with a process group of its own, and skips or continues them as it does any job; and
the command ends as `train` ends: 2 after the one line of the rank that stopped on a user error
(torchrun would add its own report and exit 1), the interrupted run's 130 or 143 after a signal.
Each process gets the machine's cores shared out (OMP_NUM_THREADS = cores / N) unless set.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from trainer.engine.threads import available_cores


def quiet_agent_logs() -> None:
    """The elastic agent logs each worker it stops and each failure; the rank that failed has said why."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def worker_args(overrides: list[str], run_dir: Path, resume: str | None) -> list[str]:
    """`python ARGS` for each process: this job's overrides, in this job's folder (quoted: a sweep
    job's folder name holds '=' and ','), continuing it when the sweep continues it (resume=auto)."""
    args = ["-m", "trainer.cli", *overrides, f"hydra.run.dir='{run_dir}'"]
    if resume == "auto" and not any(arg.startswith("resume=") for arg in overrides):
        args.append("resume=auto")
    return args


def train_processes(processes: int, overrides: list[str], run_dir: Path, resume: str | None) -> dict[str, Any]:
    """Train one run on `processes` processes of this machine, started by torch's elastic launcher
    (torchrun's agent, in this process, with a local rendezvous); the summary rank 0 wrote.

    The ranks print and write as under torchrun; this process only waits. A rank's user error ends
    it with PeerFailed (that rank printed the line), a signal with the interrupted run's summary."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from trainer.engine.distributed import PeerFailed

    quiet_agent_logs()
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = threads or str(max(available_cores() // processes, 1))  # the workers' share
    code = 0
    try:
        elastic_launch(config, sys.executable)(*worker_args(overrides, run_dir, resume))
    except ChildFailedError as error:
        _rank, failure = error.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
    except SignalException as error:  # this process was stopped: the agent stopped the ranks first
        code = 128 + int(error.sigval)
    finally:
        if threads is None:
            del os.environ["OMP_NUM_THREADS"]
    # The folder the ranks trained in: this job's, or the run that resume=FILE|DIR continued.
    folder = run_dir if resume in (None, "auto") else Path(resume) if Path(resume).is_dir() else Path(resume).parent.parent
    summary = folder / "summary.json"
    if code == 0 or (code in (130, 143) and summary.is_file()):
        return json.loads(summary.read_text())
    if code in (130, 143):  # stopped while the ranks were still starting (importing, building): no summary yet
        raise StoppedBeforeSummary(code)
    if code == 2:
        raise PeerFailed("a rank stopped on an error")
    raise RuntimeError(f"a rank of the run ended with exit code {code}; its output is above")


class StoppedBeforeSummary(Exception):
    """Ctrl-C or SIGTERM stopped the process group before rank 0 wrote the run's summary (its ranks
    were still starting up: importing torch, building the run); `code` is the shell's 130 or 143."""

    def __init__(self, code: int) -> None:
        super().__init__(f"stopped by {'SIGINT' if code == 130 else 'SIGTERM'} before the run wrote its summary")
        self.code = code
