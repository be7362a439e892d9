"""What a smoke run checks after training: every figure finite, the records written, and the
latest good checkpoint loading back, via the path `resume=` takes, into freshly built parts that
reproduce the evaluation recorded when it was written."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Console

from trainer.engine import checkpoint
from trainer.engine.loop import Trainer
from trainer.engine.parts import build_parts
from trainer.engine.smoke import SmokeFailure
from trainer.observe.display import PlainDisplay
from trainer.observe.history import read_json
from trainer.run import check_resumable, set_rng_state

PASSING = ("completed", "early_stopped")
# Evaluating the same weights on the same samples on the same device repeats the same float
# operations; the slack covers only a different batch split of the reduction.
TOLERANCE = 1e-5


def check_summary(summary: dict[str, Any], run_dir: Path) -> None:
    """The run ended well, with finite figures, and its summary.json says so."""
    if summary["status"] not in PASSING:
        raise SmokeFailure(f"smoke run {summary['status']}: {summary['message']}")
    if summary["skipped_steps"] and summary["precision"]["actual"] != "fp16":
        # fp16's scaler skips steps while it finds its scale; anything else skipping means NaN or inf.
        raise SmokeFailure(f"smoke run had {summary['skipped_steps']} step(s) with a non-finite loss or gradient "
                           "(skipped under nan_policy=skip)")
    for kind in ("final", "best"):
        for key, value in summary[kind].items():
            if isinstance(value, float) and not math.isfinite(value):
                raise SmokeFailure(f"smoke run's {kind} {key} is {value}")
    written = read_json(run_dir / "summary.json")
    if written is None or written.get("status") != summary["status"]:
        raise SmokeFailure(f"smoke run's summary.json in {run_dir} is missing or does not match the run")


def check_round_trip(cfg: DictConfig, run_dir: Path) -> str:
    """Load the latest good checkpoint into freshly built parts, as `resume=auto` does, and check
    that its weights give the validation figures recorded with it; returns what was checked."""
    payload, found, notices = checkpoint.latest_good(run_dir)
    if payload is None or found is None:
        raise SmokeFailure(f"smoke run wrote no checkpoint that loads back ({'; '.join(notices) or 'none written'})")
    check_resumable(payload["config"], cfg)
    parts = build_parts(cfg)
    trainer = Trainer(parts, PlainDisplay(Console()), [], torch.Generator())
    trainer.load_state_dict(payload)
    set_rng_state(payload["rng"], parts.device)
    recorded = trainer.state.history[-1]  # the evaluation that preceded the write
    again = trainer.evaluate()
    for key, value in again.items():
        if value is None:
            continue
        if not math.isclose(value, recorded[key], rel_tol=TOLERANCE, abs_tol=TOLERANCE):
            raise SmokeFailure(f"checkpoint {found.name} does not reproduce its run: {key} {value} after loading, "
                               f"{recorded[key]} when written")
    return f"checkpoint {found.name} reloaded (step {trainer.state.step}, val_loss {again['val_loss']:.4g} again)"

