"""Run `train` as the ranks of a torchrun job, forked from the test process.

torchrun starts each rank as a fresh interpreter, and importing torch and the trainer costs
several seconds per process on this project's machine. The ranks here are forked from the test
process, which has imported both already, and get the environment torchrun gives its workers
(RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT): to `train` they are
torchrun's workers, joined by the same env:// rendezvous (or, with another `env`, a SLURM job's tasks). (tests/test_distributed.py also runs
the real torchrun once, marked slow.)
"""
from __future__ import annotations

import multiprocessing
import os
import socket
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from in_process import Outcome

from trainer import cli
import trainer.run  # noqa: F401  (imported once here, not in every fork)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    """What torchrun gives each of its workers on one machine."""
    return dict(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


Environment = Callable[[int, int, int], dict[str, str]]  # (rank, world size, a free port) -> a rank's variables


def _rank_main(rank: int, world_size: int, port: int, args: list[str], cwd: Path, logs: Path, env: Environment) -> None:
    """One rank: its launcher's environment, stdout and stderr to files, `train ARGS`; exits with its code."""
    os.environ.update(env(rank, world_size, port))
    for fd, name in ((1, "stdout"), (2, "stderr")):
        target = os.open(logs / f"{rank}.{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the process's own streams
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.chdir(cwd)
    sys.argv = ["train", *args]
    code = 0
    try:
        cli.main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:  # noqa: BLE001 - a crash is what the tests look for
        traceback.print_exc()
        code = 70
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # not the test process's exit handlers: this is a fork of it


class Ranks:
    """The forked ranks of one `train` command, started at once; `wait` collects their outcomes."""

    def __init__(self, args: list[str], cwd: Path, world_size: int = 2, env: Environment = torchrun_env) -> None:
        self.logs = Path(tempfile.mkdtemp(prefix="ranks-"))  # beside, not in, the folder the run writes to
        port = free_port()
        fork = multiprocessing.get_context("fork")
        self.processes = [fork.Process(target=_rank_main, args=(rank, world_size, port, args, cwd, self.logs, env))
                          for rank in range(world_size)]
        for process in self.processes:
            process.start()

    def wait(self, timeout: float = 120.0) -> list[Outcome]:
        """One Outcome per rank; a rank still running after `timeout` seconds (a hang) fails the test."""
        deadline = time.monotonic() + timeout
        for process in self.processes:
            process.join(max(deadline - time.monotonic(), 0.1))
        hung = [rank for rank, process in enumerate(self.processes) if process.is_alive()]
        for process in self.processes:
            if process.is_alive():
                process.kill()
                process.join()
        outcomes = [Outcome(process.exitcode, (self.logs / f"{rank}.stdout").read_text(),
                            (self.logs / f"{rank}.stderr").read_text())
                    for rank, process in enumerate(self.processes)]
        shutil.rmtree(self.logs)
        assert not hung, f"rank(s) {hung} still running after {timeout} s: {outcomes}"
        return outcomes


def train_ranks(args: list[str], cwd: Path, world_size: int = 2, timeout: float = 120.0,
                env: Environment = torchrun_env) -> list[Outcome]:
    """`torchrun --nproc_per_node=WORLD_SIZE -m trainer.cli ARGS` run from `cwd`, as forked ranks
    (another launcher's with `env`); one Outcome per rank."""
    return Ranks(args, cwd, world_size, env).wait(timeout)


def _call_on_rank(rank: int, world_size: int, port: int, function, results) -> None:  # noqa: ANN001
    os.environ.update(torchrun_env(rank, world_size, port))
    from trainer.engine import distributed

    try:
        results.put((rank, function(distributed.setup())))
    finally:
        distributed.teardown()
    os._exit(0)


def call_on_ranks(function, world_size: int = 2, timeout: float = 60.0) -> list:  # noqa: ANN001
    """`function(context)` on each of `world_size` forked ranks joined in a process group; its results in rank order."""
    fork = multiprocessing.get_context("fork")
    results = fork.SimpleQueue()
    port = free_port()
    processes = [fork.Process(target=_call_on_rank, args=(rank, world_size, port, function, results))
                 for rank in range(world_size)]
    for process in processes:
        process.start()
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(deadline - time.monotonic(), 0.1))
    for process in processes:
        if process.is_alive():
            process.kill()
    assert all(process.exitcode == 0 for process in processes), [process.exitcode for process in processes]
    return [value for _rank, value in sorted(results.get() for _ in processes)]
