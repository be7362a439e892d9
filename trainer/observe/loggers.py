"""Extra metric sinks, one builder per `logger=` choice; several combine: `train 'logger=[tensorboard,csv]'`.

metrics.jsonl and the console view are always written (trainer.observe.records, trainer.observe.display); these
add TensorBoard event files and CSV tables. Every logger takes the records the loop emits:

    {"kind": "step", "epoch", "step", "train_loss", "lr", "grad_norm", "grad_norm_max",
     "clipped_fraction", "loss_scale", "skipped_steps", "samples_per_s", "elapsed"}
    {"kind": "epoch", "epoch", "step", "train_loss", "val_loss", "val_acc", "lr", "grad_norm", "elapsed"}
    {"kind": "layers", "epoch", "step", "layers": [trainer.observe.layer_stats.collect's dicts]}

Any value may be None (val_acc on a regression task, loss_scale outside fp16); a logger skips it.

Each YAML in conf/logger/ carries `# @package logger.<name>`, so one choice or a list of them
composes to a dict `{name: node}` under `cfg.logger`; `build_loggers` builds every node in it.

A resumed run (`resumed_at`: the checkpoint's step) keeps what its loggers wrote up to that step
and adds the rest, as metrics.jsonl does (trainer.engine.resume.truncate_metrics): the steps after
it are trained, and logged, again.
"""
from __future__ import annotations

import csv as csv_module
import io
import math
import warnings
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig
from torch import nn

from trainer.config import build, group_choices
from trainer.errors import ConfigError
from trainer.observe.records import write_atomic

LOGGERS = group_choices("logger")  # conf/logger/*.yaml
METRIC_COLUMNS = ("kind", "epoch", "step", "train_loss", "val_loss", "val_acc", "lr", "grad_norm", "grad_norm_max",
                  "clipped_fraction", "loss_scale", "skipped_steps", "samples_per_s", "elapsed")
LAYER_COLUMNS = ("epoch", "step", "name", "kind", "act_mean", "act_std", "dead_fraction", "weight_norm",
                 "grad_norm", "grad_std")
# Step-record fields written as TensorBoard scalars besides train/loss (tag: record key).
STEP_SCALARS = {"lr": "lr", "grad_norm": "grad_norm", "grad_norm_max": "grad_norm_max",
                "clipped_fraction": "clipped_fraction", "loss_scale": "loss_scale",
                "skipped_steps": "skipped_steps", "samples_per_s": "samples_per_s"}
LAYER_SCALARS = ("act_mean", "act_std", "dead_fraction", "grad_norm")


class Logger(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def _number(value: Any) -> float | None:
    """A record value as a float, or None for a missing or non-numeric one (NaN and inf are kept)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class TensorBoardLogger:
    """Scalars (train/loss, val/loss, val/acc, lr, grad_norm, ...) and per-layer statistics as
    TensorBoard event files under `run_dir/tensorboard` (`tensorboard --logdir outputs`).

    Args:
        run_dir: the run folder.
        model: when given, each "layers" record also writes a histogram of every parameter
            (weights/<name>). Not of gradients: at an evaluation the loop has cleared them, and
            the per-layer gradient norm and std are in the "layers" record's scalars.
        histograms: False skips the histograms (they are the largest part of the event file).
        resumed_at: a resumed run's checkpoint step: TensorBoard drops the earlier attempt's
            events after it (purge_step), which this run writes again.
    """

    def __init__(self, run_dir: Path, model: nn.Module | None = None, histograms: bool = True,
                 resumed_at: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when chosen

        self.log_dir = Path(run_dir) / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=None if resumed_at is None else resumed_at + 1)
        self.model = model if histograms else None
        self.last_step_record = -1  # the step of the latest "step" record: epoch records don't repeat its lr

    def _scalar(self, tag: str, value: Any, step: int) -> None:
        number = _number(value)
        if number is not None:
            self.writer.add_scalar(tag, number, step)

    def log(self, record: dict[str, Any]) -> None:
        kind, step = record.get("kind"), int(record.get("step") or 0)
        if kind == "step":
            self.last_step_record = step
            self._scalar("train/loss", record.get("train_loss"), step)
            for tag, key in STEP_SCALARS.items():
                self._scalar(tag, record.get(key), step)
        elif kind == "epoch":
            # The epoch's mean train loss has its own tag: train/loss holds the per-interval means.
            self._scalar("train/epoch_loss", record.get("train_loss"), step)
            self._scalar("val/loss", record.get("val_loss"), step)
            self._scalar("val/acc", record.get("val_acc"), step)
            self._scalar("epoch", record.get("epoch"), step)
            if step != self.last_step_record:  # no step line at this step (log_every > steps per epoch)
                self._scalar("lr", record.get("lr"), step)
                self._scalar("grad_norm", record.get("grad_norm"), step)
            self.writer.flush()  # a killed run keeps every finished epoch
        elif kind == "layers":
            self._layers(record.get("layers") or [], step)

    def _layers(self, layers: list[dict[str, Any]], step: int) -> None:
        for layer in layers:
            for key in LAYER_SCALARS:
                self._scalar(f"layers/{layer.get('name')}/{key}", layer.get(key), step)
        if self.model is None:
            return
        for name, parameter in self.model.named_parameters():
            self._histogram(f"weights/{name}", parameter, step)

    def _histogram(self, tag: str, tensor: Any, step: int) -> None:
        """A histogram of the finite values (np.histogram rejects NaN and inf: a diverged model has them)."""
        values = tensor.detach().float().reshape(-1)
        values = values[values.isfinite()].cpu()
        if values.numel():
            self.writer.add_histogram(tag, values, step)

    def close(self) -> None:
        self.writer.close()


class CSVLogger:
    """metrics.csv (a row per step and epoch record, METRIC_COLUMNS) and layers.csv (a row per layer
    per "layers" record, LAYER_COLUMNS), each with a fixed header so any tool can load them.
    Missing values are empty cells; every row is flushed, so a killed run keeps what it logged.
    A resumed run (`resumed_at`, its checkpoint's step) keeps the rows up to that step."""

    def __init__(self, run_dir: Path, resumed_at: int | None = None) -> None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.files = []
        self.metrics = self._open(Path(run_dir) / "metrics.csv", METRIC_COLUMNS, resumed_at)
        self.layers = self._open(Path(run_dir) / "layers.csv", LAYER_COLUMNS, resumed_at)

    def _open(self, path: Path, columns: tuple[str, ...], resumed_at: int | None) -> csv_module.DictWriter:
        # The header and the kept rows are written atomically first: a kill now loses no earlier row.
        text = io.StringIO()
        writer = csv_module.DictWriter(text, fieldnames=columns, extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(_rows_up_to(path, resumed_at) if resumed_at is not None else [])
        write_atomic(path, text.getvalue())
        file = path.open("a", newline="", encoding="utf-8")
        self.files.append(file)
        return csv_module.DictWriter(file, fieldnames=columns, extrasaction="ignore", restval="")

    def log(self, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        if kind in ("step", "epoch"):
            self.metrics.writerow({key: _cell(value) for key, value in record.items()})
            self.files[0].flush()
        elif kind == "layers":
            for layer in record.get("layers") or []:
                row = {**{key: _cell(value) for key, value in layer.items()},
                       "epoch": record.get("epoch"), "step": record.get("step")}
                self.layers.writerow(row)
            self.files[1].flush()

    def close(self) -> None:
        for file in self.files:
            file.close()


def _rows_up_to(path: Path, step: int) -> list[dict[str, str]]:
    """The rows of an earlier attempt's CSV file `path` logged at or before `step` (none if it is
    missing). Half a row (a run stopped mid-write), short of its last cells, is dropped."""
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as file:
        return [row for row in csv_module.DictReader(file)
                if None not in row.values() and int(row.get("step") or 0) <= step]


def _cell(value: Any) -> Any:
    """None as an empty cell; floats in full precision (repr), non-finite ones as nan / inf."""
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


class LoggerGroup:
    """Forwards each record to every logger. A logger that fails (a full disk, say) is reported
    once as a warning and dropped, so it never stops the training run."""

    def __init__(self, loggers: list[Logger]) -> None:
        self.loggers = list(loggers)
        self.failures: list[str] = []

    def _call(self, logger: Logger, method: str, *args: Any) -> bool:
        try:
            getattr(logger, method)(*args)
            return True
        except Exception as error:  # noqa: BLE001 - a sink must not end the run
            message = f"{type(logger).__name__} failed ({type(error).__name__}: {error}); it logs no more"
            self.failures.append(message)
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            return False

    def log(self, record: dict[str, Any]) -> None:
        self.loggers = [logger for logger in self.loggers if self._call(logger, "log", record)]

    def close(self) -> None:
        for logger in self.loggers:
            self._call(logger, "close")
        self.loggers = []


# Builders named by conf/logger/*.yaml; `run_dir` and `model` are passed at run time.

def console(run_dir: Path, model: nn.Module | None = None, resumed_at: int | None = None) -> None:
    """No extra logger: metrics.jsonl and the console view are always on."""
    return None


def tensorboard(run_dir: Path, model: nn.Module | None = None, histograms: bool = True,
                resumed_at: int | None = None) -> TensorBoardLogger:
    return TensorBoardLogger(run_dir, model, histograms, resumed_at)


def csv(run_dir: Path, model: nn.Module | None = None, resumed_at: int | None = None) -> CSVLogger:
    return CSVLogger(run_dir, resumed_at)


def build_loggers(cfg_logger: DictConfig | None, run_dir: Path, model: nn.Module | None = None,
                  resumed_at: int | None = None) -> list[Logger]:
    """Build the loggers `cfg.logger` names.

    Args:
        cfg_logger: `cfg.logger`: a dict of nodes keyed by choice (what `logger=a` or
            `logger=[a,b]` composes to), a single node with a `_target_`, or None (no extra logger).
        run_dir: the run folder the loggers write into.
        model: the (uncompiled) model, for parameter histograms.
        resumed_at: a resumed run's checkpoint step; None for a new run.
    """
    if cfg_logger is None:
        return []
    if "_target_" in cfg_logger:
        nodes = [cfg_logger]
    else:
        nodes = []
        for key in cfg_logger:
            if not isinstance(cfg_logger[key], DictConfig) or "_target_" not in cfg_logger[key]:
                raise ConfigError(f"logger.{key} is not a logger; choose with logger=NAME or "
                                  f"'logger=[NAME,NAME]' from: {', '.join(LOGGERS)}")
            nodes.append(cfg_logger[key])
    loggers = [build("logger", node, run_dir=Path(run_dir), model=model, resumed_at=resumed_at) for node in nodes]
    return [logger for logger in loggers if logger is not None]
