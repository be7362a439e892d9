"""`train-ddp --nproc_per_node=N [overrides]`: torchrun on one machine, ending as `train` ends.

`torchrun --standalone --nproc_per_node=N -m trainer.cli ...` trains the same way, but when a
worker stops it ends with its own report (a traceback and a table of the failed ranks) and exit
code 1, whatever the worker said. This runs torchrun itself (`torch.distributed.run`, the elastic
agent with a local rendezvous, as `--standalone`) and ends with the exit code of the rank that
stopped first: 2 after the one-line error that rank printed, 143 after SIGTERM, 130 after Ctrl-C.
Each process gets the machine's cores shared out (OMP_NUM_THREADS = cores / N) unless set.
"""
from __future__ import annotations

import logging
import os
import re
import sys

from trainer.engine.threads import available_cores

USAGE = "train-ddp --nproc_per_node=N [train overrides...]"
NPROC = re.compile(r"^--nproc[_-]per[_-]node=(?P<count>\d+)$")


def split_args(args: list[str]) -> tuple[int, list[str]]:
    """The process count and the arguments for `train`; a missing or bad count exits 2 with the usage."""
    match = NPROC.match(args[0]) if args else None
    if match is None or int(match["count"]) < 1:
        given = repr(args[0]) if args else "nothing"
        print(f"error: the first argument must be --nproc_per_node=N, N >= 1 processes on this machine (got {given}): "
              f"{USAGE}", file=sys.stderr)
        sys.exit(2)
    return int(match["count"]), args[1:]


def main() -> None:
    processes, train_args = split_args(sys.argv[1:])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(available_cores() // processes, 1)))
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # The agent logs each worker it stops and each failure; the rank that failed has said why.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    torchrun = parse_args(["--standalone", f"--nproc_per_node={processes}", "-m", "trainer.cli", *train_args])
    try:
        run(torchrun)
    except ChildFailedError as error:
        _rank, failure = error.get_first_failure()
        sys.exit(failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode)  # -15: killed by SIGTERM
    except SignalException as error:  # this launcher was stopped: the ranks were stopped (and checkpointed) first
        sys.exit(128 + int(error.sigval))


if __name__ == "__main__":
    main()
