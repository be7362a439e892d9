"""A model's loop over time steps, marked for the per-layer statistics.

A decoder fed its own predictions (scheduled sampling, model=seq2seq) runs its layers once per
time step inside one forward. trainer/observe/layer_stats.py reports a layer called twice at two
depths (a shared activation) once per call, but the calls of a step loop are one layer at one
depth: inside `time_steps()` they make one row, over every step's outputs.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

_loops = 0        # step loops entered so far: tells one loop's steps from the next loop's
_open: list[int] = []  # the loops being run now, innermost last


@contextmanager
def time_steps() -> Iterator[None]:
    """Around a loop that runs the same layers once per time step."""
    global _loops
    _loops += 1
    _open.append(_loops)
    try:
        yield
    finally:
        _open.pop()


def current_loop() -> int | None:
    """The innermost step loop being run (an id), or None outside any."""
    return _open[-1] if _open else None
