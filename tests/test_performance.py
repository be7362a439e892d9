"""The performance switches change speed or memory, never the maths."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import pytest
import torch
from omegaconf import DictConfig
from rich.console import Console

from trainer.engine.loop import Trainer
from trainer.engine.parts import build_parts
from trainer.observe.display import PlainDisplay
from trainer.run import run

EXACT = ["norm=none", "sched=constant", "data.num_train=128", "checkpoint.every_epochs=0", "log_every=5"]


def test_accumulation_equals_the_big_batch(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    big = build_parts(make_cfg(*EXACT, "batch_size=32"))
    small = build_parts(make_cfg(*EXACT, "batch_size=16", "trainer.accumulate=2"))
    assert small.steps_per_epoch == big.steps_per_epoch == 4
    losses = []
    for parts in (big, small):
        trainer = Trainer(parts, PlainDisplay(Console(file=io.StringIO())), [], torch.Generator().manual_seed(0))
        for step in range(3):
            trainer.train_step(torch.arange(step * 32, (step + 1) * 32))
        losses.append(torch.stack(trainer.meter.losses))
    for (name, a), b in zip(big.model.state_dict().items(), small.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    assert not torch.equal(big.model.head.weight, build_parts(big.cfg).model.head.weight)  # it did train


def test_channels_last_applies_to_2d_conv_nets(make_cfg: Callable[..., DictConfig]) -> None:
    parts = build_parts(make_cfg("model=cnn", "data.image_size=8", "trainer.channels_last=true"))
    conv = next(m for m in parts.model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    one_d = build_parts(make_cfg("trainer.channels_last=true"))
    assert any("2-D images only" in notice for notice in one_d.notices)


def test_summary_records_peak_memory(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    summary = run(make_cfg(), tmp_path / "run")
    assert summary["memory"]["host_peak_rss_bytes"] > 10 * 2**20
    assert summary["memory"]["cuda_peak_bytes"] is None or summary["memory"]["cuda_peak_bytes"] > 0


@pytest.mark.slow
def test_compile_trains_like_eager(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    eager = run(make_cfg(*EXACT, "max_steps=8", "epochs=2"), tmp_path / "eager")
    compiled = run(make_cfg(*EXACT, "max_steps=8", "epochs=2", "trainer.compile=true"), tmp_path / "compiled")
    assert compiled["status"] == "completed"
    assert compiled["final"]["val_loss"] == pytest.approx(eager["final"]["val_loss"], rel=1e-3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_uses_fused_optimizer_and_records_cuda_memory(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    parts = build_parts(make_cfg("device=cuda"))
    assert parts.optimizer.defaults.get("fused") is True
    summary = run(make_cfg("device=cuda", "precision=bf16"), tmp_path / "run")
    assert summary["precision"]["actual"] == "bf16" and summary["memory"]["cuda_peak_bytes"] > 0
