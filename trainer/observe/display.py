"""What the user sees while a run trains: a rich live view on a terminal (progress bar with
epoch, step, loss, LR and throughput over a per-epoch table), plain per-epoch lines when the
output is a file or a pipe (CI, logs). Updated only at log intervals, never per step."""
from __future__ import annotations

import sys
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

EPOCH_COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc", "lr", "elapsed")
# Measured by some runs only: bits per character (data=text), a sequence decoder's own outputs (model=seq2seq).
OPTIONAL_COLUMNS = ("val_bpc", "val_token_acc", "val_seq_acc")


def columns(row: dict[str, Any]) -> tuple[str, ...]:
    """The epoch columns, with the optional ones the run measures after val_acc."""
    at = EPOCH_COLUMNS.index("val_acc") + 1
    return EPOCH_COLUMNS[:at] + tuple(key for key in OPTIONAL_COLUMNS if key in row) + EPOCH_COLUMNS[at:]


def _format(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "lr":
        return f"{value:.2e}"
    if key == "elapsed":
        return f"{value:.1f}s"
    if key == "val_acc":
        return f"{value:.4f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


class PlainDisplay:
    """One line per epoch on stdout."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.epochs = 0

    def start(self, total_steps: int, epochs: int, header: str) -> None:
        self.epochs = epochs
        print(header, flush=True)

    def notice(self, text: str) -> None:
        print(f"note: {text}", flush=True)

    def progress(self, step: int, epoch: int, train_loss: float, lr: float, samples_per_s: float) -> None:
        pass  # a log file gets the epoch lines; step-level figures are in metrics.jsonl

    def epoch_end(self, row: dict[str, Any]) -> None:
        fields = " ".join(f"{key} {_format(key, row.get(key))}" for key in columns(row)[1:])
        print(f"epoch {row['epoch']}/{self.epochs} step {row['step']} {fields}", flush=True)

    def close(self) -> None:
        pass

    def show(self, renderable: Any) -> None:
        self.console.print(renderable)

    def finish(self, summary: dict[str, Any], run_dir: str | None) -> None:
        """The closing line; `run_dir` None for a run in a temporary folder (smoke=true), which is gone
        by the time anyone reads it."""
        best = summary["best"]
        print(
            f"{summary['status']}: {summary['epochs_run']} epochs, {summary['steps']} steps in "
            f"{summary['wall_s']:.1f}s ({summary['samples_per_s']:.0f} samples/s); "
            # "best" is one epoch, the one early stopping would keep: its val_acc need not be the highest.
            f"best epoch {best.get('epoch', '-')} (lowest val_loss): val_acc "
            f"{_format('val_acc', best.get('val_acc'))} val_loss {_format('val_loss', best.get('val_loss'))}"
            + "".join(f" {key} {_format(key, best[key])}" for key in OPTIONAL_COLUMNS if key in best)
            + (f"; run folder {run_dir}" if run_dir is not None else ""),
            flush=True,
        )


class LiveDisplay(PlainDisplay):
    """A live progress bar over a growing per-epoch table."""

    def __init__(self, console: Console) -> None:
        super().__init__(console)
        self.table = Table(*EPOCH_COLUMNS, title="epochs", expand=False)
        self.bar = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[speed]} samples/s"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console,
        )
        self.task = self.bar.add_task("train", total=1, epoch="1", loss="-", lr="-", speed="-")
        self.live = Live(Group(self.table, self.bar), console=console, refresh_per_second=4,
                         vertical_overflow="visible")

    def start(self, total_steps: int, epochs: int, header: str) -> None:
        self.epochs = epochs
        self.console.print(header)
        self.bar.update(self.task, total=total_steps, epoch=f"1/{epochs}")
        self.live.start()

    def notice(self, text: str) -> None:
        self.console.print(f"[yellow]note:[/] {text}")

    def progress(self, step: int, epoch: int, train_loss: float, lr: float, samples_per_s: float) -> None:
        self.bar.update(self.task, completed=step, epoch=f"{epoch}/{self.epochs}", loss=f"{train_loss:.4f}",
                        lr=f"{lr:.2e}", speed=f"{samples_per_s:,.0f}")

    def epoch_end(self, row: dict[str, Any]) -> None:
        if len(columns(row)) > len(self.table.columns) and not self.table.rows:
            self.table = Table(*columns(row), title="epochs", expand=False)  # the first row says what is measured
            self.live.update(Group(self.table, self.bar))
        self.table.add_row(*(_format(key, row.get(key)) for key in columns(row)))
        self.bar.update(self.task, completed=row["step"], epoch=f"{row['epoch']}/{self.epochs}",
                        loss=_format("train_loss", row["train_loss"]), lr=_format("lr", row["lr"]))

    def close(self) -> None:
        self.live.stop()


class QuietDisplay(PlainDisplay):
    """Shows nothing: under torchrun, the ranks other than 0 (rank 0 shows the run)."""

    def start(self, total_steps: int, epochs: int, header: str) -> None:
        pass

    def notice(self, text: str) -> None:
        pass

    def epoch_end(self, row: dict[str, Any]) -> None:
        pass

    def show(self, renderable: Any) -> None:
        pass

    def finish(self, summary: dict[str, Any], run_dir: str | None) -> None:
        pass


def make_display(quiet: bool = False) -> PlainDisplay:
    console = Console(file=sys.stdout)
    if quiet:
        return QuietDisplay(console)
    return LiveDisplay(console) if console.is_terminal else PlainDisplay(console)
