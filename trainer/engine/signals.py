"""SIGINT, SIGTERM and SIGUSR2 while training: the first asks the loop to stop once the step in
progress is done (it then checkpoints and ends with status interrupted), a second stops at once.
SIGUSR2 is SLURM's warning ahead of a job's time limit (`sbatch --signal`; the submitit launcher
sends it `signal_delay_s` early), which would otherwise end the process without a checkpoint."""
from __future__ import annotations

import signal
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


class StopSignals:
    """While entered, `received` is the first stop signal that arrived (None: none yet)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            raise KeyboardInterrupt  # a second signal: stop at once
        self.received = signum  # the first: finish this step, checkpoint, stop

    def __enter__(self) -> "StopSignals":
        self._previous = {}
        try:
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._on_signal)
        except ValueError:  # not the main thread (a launcher's worker): leave signals alone
            pass
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "signal"
