"""Locks that a forked child lets go of.

A flock lasts while any process holds its file open, and a forked child (a DataLoader worker of a
streamed run) inherits every open descriptor. A worker outlives a SIGKILLed run by seconds (until
it notices), so a lock held through an inherited descriptor stays taken after its run died: the
run folder's claim (observe/records.py) refused an immediate `resume=auto`, and the registry of
running processes (engine/threads.py) counted one process too many.
"""
from __future__ import annotations

import os

_held: set[int] = set()  # the descriptors of this process's locks that its children must not keep


def hold(descriptor: int) -> None:
    """Let go of the lock on `descriptor` in every child forked from now on."""
    _held.add(descriptor)


def release(descriptor: int) -> None:
    """Before `descriptor` is closed: it is no longer this process's lock (the number may be reused)."""
    _held.discard(descriptor)


def _drop_in_child() -> None:
    """Each descriptor is pointed at /dev/null rather than closed, so the child's copy of a file
    object (or a later os.close) stays valid and never closes a descriptor the number is reused for."""
    if not _held:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    for descriptor in _held:
        os.dup2(null, descriptor)
    os.close(null)
    _held.clear()


os.register_at_fork(after_in_child=_drop_in_child)
