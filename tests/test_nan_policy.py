"""A non-finite loss or gradient is caught in the step: stop ends the run with the last finite
weights and says at which step; skip leaves the weights untouched by that step and counts it."""
from __future__ import annotations

import io
from typing import Callable

import torch
from omegaconf import DictConfig
from rich.console import Console

from trainer.engine.loop import Trainer
from trainer.engine.parts import build_parts
from trainer.observe.display import PlainDisplay

POISONED = ["norm=none", "sched=constant", "batch_size=32", "data.num_train=128", "max_steps=null",
            "epochs=1", "log_every=2", "checkpoint.every_epochs=0"]


def poisoned_trainer(make_cfg: Callable[..., DictConfig], policy: str) -> Trainer:
    """Samples 64..95 (the third batch of the first epoch's shuffled order) hold a NaN."""
    parts = build_parts(make_cfg(*POISONED, f"nan_policy={policy}"))
    trainer = Trainer(parts, PlainDisplay(Console(file=io.StringIO())), [], torch.Generator().manual_seed(0))
    order = torch.randperm(128, generator=torch.Generator().manual_seed(0))
    parts.data.x_train[order[64:96]] = float("nan")
    return trainer


def test_stop_ends_with_the_step_and_the_last_finite_weights(make_cfg: Callable[..., DictConfig]) -> None:
    state = poisoned_trainer(make_cfg, "stop").fit()
    assert state.status == "diverged"
    assert "non-finite loss nan at step 3" in state.message


def test_stop_keeps_finite_weights(make_cfg: Callable[..., DictConfig]) -> None:
    trainer = poisoned_trainer(make_cfg, "stop")
    trainer.fit()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_skip_skips_the_update_and_counts_it(make_cfg: Callable[..., DictConfig]) -> None:
    trainer = poisoned_trainer(make_cfg, "skip")
    state = trainer.fit()
    assert state.skipped_steps == 1 and state.step == 4
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert state.history[0]["train_loss"] == state.history[0]["train_loss"]  # the NaN is kept out of the mean
