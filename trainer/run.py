"""run(cfg, run_dir) -> summary: compose the parts a config names, fit, write the summary.

The Hydra entry point (`trainer.cli`) only calls this; tests call it directly with a composed
config and a temporary folder.
"""
from __future__ import annotations

import os
import platform
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from trainer.config import build, choices
from trainer.data import DataSplits
from trainer.display import PlainDisplay, make_display
from trainer.errors import ConfigError
from trainer.loop import Trainer, steps_per_epoch
from trainer.records import MetricsLog, previous_run, write_json_atomic

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(requested: str) -> torch.device:
    if requested not in DEVICES:
        raise ConfigError(f"device={requested!r} is unknown; valid: {', '.join(DEVICES)}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible; use device=auto or device=cpu")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def check_top_level(cfg: DictConfig) -> None:
    """The top-level keys' ranges; each group's builder checks its own keys."""
    for key in ("epochs", "batch_size", "log_every"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"{key}={cfg[key]} must be an integer >= 1")
    if cfg.max_steps is not None and (not isinstance(cfg.max_steps, int) or cfg.max_steps < 1):
        raise ConfigError(f"max_steps={cfg.max_steps} must be an integer >= 1, or null")
    if not isinstance(cfg.seed, int):
        raise ConfigError(f"seed={cfg.seed} must be an integer")
    if not isinstance(cfg.deterministic, bool):
        raise ConfigError(f"deterministic={cfg.deterministic} must be true or false")
    if cfg.norm.name == "batchnorm" and cfg.batch_size < 2:
        raise ConfigError(
            f"batch_size={cfg.batch_size} with norm=batchnorm: batch statistics need at least 2 samples; "
            "use norm=layernorm or a larger batch"
        )


class Run:
    """Everything a config builds, ready to fit."""

    def __init__(self, cfg: DictConfig, display: PlainDisplay, metrics_log: MetricsLog) -> None:
        check_top_level(cfg)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.notices: list[str] = []
        data: DataSplits = build("data", cfg.data)
        _check_data(data, cfg.batch_size)
        # Seed after the data is built, so the model's initial weights depend on the seed alone.
        seed_everything(cfg.seed, cfg.deterministic)
        regularisation = build("regularisation", cfg.regularisation)
        norm = build("norm", cfg.norm)
        model = build("model", cfg.model, input_shape=data.input_shape, num_outputs=data.num_outputs, norm=norm,
                      dropout=regularisation.dropout, input_dropout=regularisation.input_dropout)
        build("init", cfg.init, model=model)
        self.model = model.to(self.device)
        self.data = data.to(self.device)
        optimizer = build("optim", cfg.optim, model=self.model)
        per_epoch = steps_per_epoch(len(data.x_train), cfg.batch_size)
        total = min(cfg.epochs * per_epoch, cfg.max_steps) if cfg.max_steps else cfg.epochs * per_epoch
        schedule = build("sched", cfg.sched, optimizer=optimizer, total_steps=total, steps_per_epoch=per_epoch)
        self.precision = build("precision", cfg.precision, device=self.device)
        if self.precision.notice:
            self.notices.append(self.precision.notice)
        early_stopping = build("early_stopping", cfg.early_stopping)
        if early_stopping.monitor == "val_acc" and data.task != "classification":
            raise ConfigError(f"early_stopping=val_acc needs a classification task; data={cfg.data.name} is "
                              f"{data.task}: use early_stopping=val_loss")
        generator = torch.Generator().manual_seed(cfg.seed)
        self.trainer = Trainer(
            model=self.model, data=self.data, optimizer=optimizer, schedule=schedule, precision=self.precision,
            clipping=build("clipping", cfg.clipping), criterion=regularisation.criterion(data.task),
            penalty=regularisation.penalty(self.model), early_stopping=early_stopping,
            batch_size=cfg.batch_size, epochs=cfg.epochs, max_steps=cfg.max_steps, log_every=cfg.log_every,
            display=display, metrics_log=metrics_log, generator=generator,
        )

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _check_data(data: DataSplits, batch_size: int) -> None:
    if len(data.x_train) == 0 or len(data.x_val) == 0:
        raise ConfigError("the data set has an empty training or validation split")
    if len(data.x_train) < batch_size:
        raise ConfigError(f"batch_size={batch_size} is larger than the training set ({len(data.x_train)} samples)")


def _best(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The epoch with the lowest validation loss (accuracy breaks no ties: loss exists for every task)."""
    finite = [row for row in history if row["val_loss"] is not None and np.isfinite(row["val_loss"])]
    if not finite:
        return {}
    row = min(finite, key=lambda r: r["val_loss"])
    return {key: row[key] for key in ("epoch", "train_loss", "val_loss", "val_acc")}


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train as `cfg` says, writing metrics.jsonl and summary.json to `run_dir`; return the summary."""
    run_dir = Path(run_dir)
    existing = previous_run(run_dir)
    if existing is not None:
        raise ConfigError(f"{run_dir} already holds a run ({existing.name}); choose another folder (hydra.run.dir=...)")
    run_dir.mkdir(parents=True, exist_ok=True)
    display = make_display()
    started = time.perf_counter()
    metrics_log = MetricsLog(run_dir / "metrics.jsonl")
    try:
        parts = Run(cfg, display, metrics_log)
    except BaseException:
        metrics_log.close()
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # nothing trained: leave no half-written run
        raise
    for notice in parts.notices:
        display.notice(notice)
    trainer = parts.trainer
    tricks = choices(cfg)
    display.start(trainer.total_steps, cfg.epochs, _header(tricks, parts, trainer.total_steps))
    try:
        result = trainer.fit()
    finally:
        display.close()
        metrics_log.close()
    last = result.history[-1] if result.history else {}
    summary = {
        "status": result.status,
        "message": result.message,
        "final": {key: last.get(key) for key in ("train_loss", "val_loss", "val_acc")},
        "best": _best(result.history),
        "restored_best_weights": result.restored_best,
        "epochs_run": result.epochs_run,
        "steps": result.steps,
        "wall_s": round(result.wall_s, 3),
        "total_wall_s": round(time.perf_counter() - started, 3),
        "samples_per_s": round(result.samples_seen / max(result.wall_s, 1e-9), 1),
        "device": {"requested": cfg.device, "actual": str(parts.device),
                   "name": torch.cuda.get_device_name(parts.device) if parts.device.type == "cuda" else platform.processor() or platform.machine()},
        "precision": {"requested": parts.precision.requested, "actual": parts.precision.actual},
        "tricks": tricks,
        "params": parts.num_params,
        "seed": cfg.seed,
        "torch": torch.__version__,
    }
    write_json_atomic(run_dir / "summary.json", summary)
    display.finish(summary, str(run_dir))
    return summary


def _header(tricks: dict[str, str], parts: Run, total_steps: int) -> str:
    chosen = " ".join(f"{group}={choice}" for group, choice in tricks.items())
    return (f"{chosen}\n{parts.num_params:,} parameters, {total_steps} steps on {parts.device} "
            f"({parts.precision.actual})")
