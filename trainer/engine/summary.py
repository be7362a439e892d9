"""summary.json: what a run ended as (status, final and best figures, the test split), what it
cost (time, throughput, memory), and what it was (device, precision, tricks, seed)."""
from __future__ import annotations

import platform
import resource
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig

from trainer.config import choices
from trainer.data.text import bits_per_char
from trainer.engine.parts import Parts
from trainer.tricks.norm import synchronises

if TYPE_CHECKING:
    from trainer.engine.loop import Trainer, TrainState


# Measured by some runs only: bits per character (data=text), a sequence decoder's own outputs (model=seq2seq).
OPTIONAL_METRICS = ("val_bpc", "val_token_acc", "val_seq_acc")


def _evaluated(row: dict[str, Any]) -> tuple[str, ...]:
    """What an evaluation measured (Trainer.evaluate): val_loss, val_acc, and the optional ones it has."""
    return ("val_loss", "val_acc", *(key for key in OPTIONAL_METRICS if key in row))


def best_epoch(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The epoch with the lowest validation loss (it exists for every task, accuracy does not)."""
    finite = [row for row in history if row["val_loss"] is not None and np.isfinite(row["val_loss"])]
    if not finite:
        return {}
    row = min(finite, key=lambda r: r["val_loss"])
    return {key: row[key] for key in ("epoch", "train_loss", *_evaluated(row))}


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()


def peak_memory(device: torch.device) -> dict[str, int | None]:
    """Peak resident memory of this process and, on CUDA, the peak bytes the allocator handed out."""
    return {
        "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux reports KiB
        "cuda_peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }


def summarise(cfg: DictConfig, parts: Parts, state: "TrainState", restored_best: bool, started: float) -> dict[str, Any]:
    last = state.history[-1] if state.history else {}
    return {
        "status": state.status,
        "message": state.message,
        "final": {key: last.get(key) for key in ("train_loss", *_evaluated(last))},
        "best": best_epoch(state.history),
        "restored_best_weights": restored_best,
        "epochs_run": len(state.history),
        "steps": state.step,
        "skipped_steps": state.skipped_steps + state.interval.skipped,  # the last, unlogged interval too
        "wall_s": round(state.train_s, 3),
        "total_wall_s": round(time.perf_counter() - started, 3),
        "samples_per_s": round(state.samples_seen / max(state.train_s, 1e-9), 1),
        "device": {"requested": cfg.device, "actual": str(parts.device), "name": _device_name(parts.device)},
        "precision": {"requested": parts.precision.requested, "actual": parts.precision.actual},
        # norm.sync as it took effect: false in one process or without batch norm, whatever was asked.
        "tricks": {**choices(cfg), **({"norm.sync": synchronises(parts.model)} if cfg.norm.name == "batchnorm" else {})},
        "params": parts.num_params,
        "seed": cfg.seed,
        "signal": state.signal,
        "memory": peak_memory(parts.device),
        "threads": parts.threads,
        "world_size": parts.distributed.world_size,
        "data": parts.data.describe(),
        "torch": torch.__version__,
    }


def evaluate_test(trainer: "Trainer", state: "TrainState") -> dict[str, float | None] | None:
    """The test split's loss and accuracy, measured once, on the weights the run ends with (the
    restored best under early stopping); None without a test split, or for a run that stopped
    unfinished (interrupted: it is resumed, and measured when it ends)."""
    data = trainer.data
    if not data.has_test or state.status == "interrupted":
        return None
    loss, acc = trainer.measure_split("test")
    decoded = trainer.decoded(data.x_test, data.y_test) if trainer.parts.decoding is not None else {}
    return {"loss": loss, "acc": acc, **({"bpc": bits_per_char(loss)} if data.char_lm else {}), **decoded}
