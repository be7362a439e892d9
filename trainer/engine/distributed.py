"""Data-parallel training across the processes `torchrun` starts, on PyTorch's own engine.

`torchrun --standalone --nproc_per_node=N -m trainer.cli ...` (or `train processes=N`, through
engine/launch.py) starts N copies of `train`, each with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT in its environment; on SLURM (`srun train ...`, or the submitit launcher) engine/slurm.py
writes the same variables from SLURM's, so a job's tasks join the same way. `setup` joins
them into one process group (gloo for CPU tensors, NCCL for CUDA ones, one GPU per local rank)
and `current()` answers, anywhere, which process this is. A plain `train` is world size 1: every
method here is then a no-op, and the loop runs exactly as it always did.

The rules every rank keeps, so that no rank is ever left waiting in a collective:
- the same steps in the same order: the data order is drawn from one seeded generator on every
  rank, each step's global batch is split into equal shares (`share`), and decisions (NaN guard,
  clipping, early stopping, best checkpoint) are taken on metrics reduced across ranks, so they
  come out the same everywhere;
- every user error before training is agreed (`all_or_none`): if any rank failed, every rank
  stops, and only the lowest failing rank says why;
- rank 0 alone writes (run folder record, metrics, checkpoints, summary, display).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from trainer.errors import ConfigError, TrainerError

# What torchrun (and any launcher following its env:// convention) sets in every worker.
LAUNCH_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# prctl's option: the signal this process gets when its parent dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1
# A rank whose peer died waits this long in a collective before giving up; torchrun usually ends
# the job sooner (it stops every worker as soon as one exits with an error).
TIMEOUT = timedelta(minutes=10)


class PeerFailed(TrainerError):
    """Another rank stopped on an error and said why; this rank stops too, silently (exit 2)."""


@dataclass(frozen=True)
class Context:
    """Which process this is among those training one run; world_size 1 for a plain `train`."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes and prints."""
        return self.rank == 0

    # ---- the data ---------------------------------------------------------------------------

    def share(self, index: torch.Tensor) -> torch.Tensor:
        """This rank's part of a step's global batch of sample indices: equal contiguous parts in
        rank order, so the ranks together see exactly the batch one process would."""
        return index.tensor_split(self.world_size)[self.rank] if self.enabled else index

    def shard(self, length: int) -> slice:
        """This rank's part of an evaluation set of `length` samples (parts differ by at most one)."""
        return slice(self.rank * length // self.world_size, (self.rank + 1) * length // self.world_size)

    # ---- reductions ---------------------------------------------------------------------------

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the ranks, in place (a NaN on one rank is a NaN on every rank)."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` averaged over the ranks, in place (gloo has no AVG: a sum, then a division)."""
        if self.enabled:
            self.sum(tensor).div_(self.world_size)
        return tensor

    def broadcast_text(self, text: str) -> str:
        """Rank 0's `text` on every rank (the run folder rank 0 chose)."""
        if not self.enabled:
            return text
        holder = [text if self.is_main else None]
        dist.broadcast_object_list(holder, src=0, device=torch.device("cpu"))
        return str(holder[0])

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @contextmanager
    def all_or_none(self) -> Iterator[None]:
        """Run the block on every rank and agree on its outcome: when it raised on any rank, it
        raises on every rank. The lowest rank that failed raises its own error (the one line the
        user sees); the others raise PeerFailed, which the CLI ends with exit 2 and no message.
        Without this a rank that stopped on a bad file would leave the others waiting forever in
        their first collective."""
        if not self.enabled:
            yield
            return
        try:
            yield
        except BaseException:
            if self._first_failure(failed=True) != self.rank:
                raise PeerFailed("another rank stopped on an error") from None
            raise
        first = self._first_failure(failed=False)
        if first is not None:
            raise PeerFailed(f"rank {first} stopped on an error")

    def _first_failure(self, failed: bool) -> int | None:
        """The lowest rank that failed, or None when none did."""
        tensor = torch.tensor([self.rank if failed else self.world_size], dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        first = int(tensor.item())
        return first if first < self.world_size else None

    # ---- the model ----------------------------------------------------------------------------

    def data_parallel(self, model: nn.Module, device: torch.device) -> nn.parallel.DistributedDataParallel | None:
        """`model` wrapped in DistributedDataParallel (gradients averaged across ranks during
        backward, the weights and buffers broadcast from rank 0 first); None for one process."""
        if not self.enabled:
            return None
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def share_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (batch norm's running statistics) on every rank, before an evaluation.
        DDP broadcasts them from rank 0 at the start of each training forward, but that forward then
        updates each rank's copy from its own part of the batch: without this each rank would
        measure its shard with statistics of its own, and the recorded evaluation would not be that
        of the model rank 0 checkpoints (tests/test_distributed.py)."""
        if self.enabled:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    @staticmethod
    def no_sync(ddp: nn.parallel.DistributedDataParallel | None, last: bool) -> AbstractContextManager:
        """Around a micro-batch's forward and backward: gradients are all-reduced once per optimizer
        step, with the last micro-batch, not after every one (DDP's no_sync)."""
        return ddp.no_sync() if ddp is not None and not last else nullcontext()

    def device(self, requested: torch.device) -> torch.device:
        """The device of this rank: with CUDA, the GPU of its local rank (one GPU per process)."""
        if not self.enabled or requested.type != "cuda":
            return requested
        if self.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {self.local_rank} was started but only {torch.cuda.device_count()} CUDA GPU(s) "
                              "are visible; start at most that many processes per machine (processes=N, torchrun's "
                              "--nproc_per_node, or SLURM's tasks per node, each seeing the node's GPUs), or train "
                              "on the CPU with device=cpu")
        return torch.device("cuda", self.local_rank)


class StopVote:
    """Agrees, every step, whether to stop (a signal reached some rank), without waiting for the
    other ranks in the step: each step posts this rank's signal number in an asynchronous
    all-reduce (MAX) and reads the result posted the step before, long complete by then. Every
    rank reads the same result at the same step, so all stop after the same step, one step after
    the first rank was signalled, and no step waits for a round trip of its own."""

    def __init__(self, ranks: Context) -> None:
        self.ranks = ranks
        self.posted: torch.Tensor | None = None
        self.work: dist.Work | None = None

    def __call__(self, signal: int | None) -> int | None:
        """This rank's `signal` (None: none) in, the signal the ranks agreed on at the previous step out."""
        if not self.ranks.enabled:
            return signal
        agreed = self.settle()
        self.posted = torch.tensor([signal or 0], dtype=torch.int64)
        self.work = dist.all_reduce(self.posted, op=dist.ReduceOp.MAX, async_op=True)
        return agreed

    def settle(self) -> int | None:
        """Wait for the vote in flight (at the end of training: nothing may be left in flight); its result."""
        if self.work is None or self.posted is None:
            return None
        self.work.wait()
        self.work = None
        return int(self.posted.item()) or None


_current = Context()


def launched() -> bool:
    """Whether torchrun (or a launcher like it) started this process as one of a group."""
    return all(key in os.environ for key in LAUNCH_ENV)


def current() -> Context:
    """This process's place in the group (`setup` decides it; world size 1 before, or without torchrun)."""
    return _current


def setup() -> Context:
    """Join the process group torchrun started this process in (a no-op without torchrun).

    One group carries both kinds of tensors: gloo the CPU ones (the run folder's name, the stop
    flags, CPU training), NCCL the CUDA ones. Each process uses the GPU of its local rank."""
    global _current
    if not launched() or dist.is_initialized():
        return _current
    follow_agent()
    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = torch.cuda.is_available()
    if cuda and local_rank < torch.cuda.device_count():
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=TIMEOUT)
    _current = Context(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)
    return _current


def train_overrides(overrides: list[str], ranks: Context) -> list[str]:
    """The command line's `overrides` as a `train` command needs them to train as this run does:
    under torchrun's N processes on one machine, with `processes=N` (batch_size is per process, so
    one process would halve the global batch). Several machines, or SLURM's tasks: as they are."""
    if not (ranks.enabled and "TORCHELASTIC_RUN_ID" in os.environ
            and os.environ.get("LOCAL_WORLD_SIZE") == str(ranks.world_size)):
        return overrides
    return [f"processes={ranks.world_size}", *(o for o in overrides if not o.startswith("processes="))]


def follow_agent() -> None:
    """A rank that torchrun's agent started (torchrun, `train processes=N`) gets SIGTERM when the
    agent dies, and so stops as on Ctrl-C: after the same step as the other ranks, with one
    checkpoint. Else a SIGKILLed agent would leave its ranks training on, unwatched, holding the
    run folder against `resume=auto`. (srun's tasks have no agent: SLURM ends them itself.)"""
    if "TORCHELASTIC_RUN_ID" in os.environ and sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def teardown() -> None:
    """Leave the process group (torch warns at exit about one left open)."""
    global _current
    if dist.is_initialized():
        dist.destroy_process_group()
    _current = Context()
