"""Portable checkpoints: one written on a GPU resumes on the CPU (and the other way), one from a
machine with more GPUs resumes where fewer are visible, an optimizer keeps the implementation it
was built with, an empty scaler state loads into an enabled scaler, and a change of the actual
precision on resume is said in one line. No GPU here: the device states are simulated by editing
the checkpoint dict, as a GPU run would have written it."""
from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from omegaconf import DictConfig

from trainer.engine import checkpoint
from trainer.engine.loop import keep_implementation
from trainer.engine.resume import rng_state, set_rng_state
from trainer.run import run
from trainer.tricks.precision import Precision

CPU, GPU0, GPU1 = torch.device("cpu"), torch.device("cuda", 0), torch.device("cuda", 1)


def cuda_state(value: int) -> torch.Tensor:
    return torch.full((16,), value, dtype=torch.uint8)  # stands in for a CUDA generator's state


@pytest.fixture
def restored_cuda(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.Tensor, torch.device]]:
    """Records what set_rng_state hands to the CUDA generator (there is none here)."""
    calls: list[tuple[torch.Tensor, torch.device]] = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append((state, device)))
    return calls


def test_a_cpu_checkpoint_holds_no_cuda_state() -> None:
    assert rng_state(CPU)["cuda"] is None


def test_cuda_state_is_restored_onto_the_device_in_use_only(restored_cuda: list) -> None:
    state = rng_state(CPU)
    set_rng_state({**state, "cuda": cuda_state(7)}, CPU)  # a GPU checkpoint resumed on the CPU
    assert restored_cuda == []
    set_rng_state({**state, "cuda": cuda_state(7)}, GPU1)  # written on one GPU, resumed on another
    set_rng_state(state, GPU0)  # a CPU checkpoint on a GPU: that generator keeps its seed
    # An older checkpoint holding every visible GPU's state (4), resumed where 2 are visible.
    set_rng_state({**state, "cuda": [cuda_state(i) for i in range(4)]}, GPU1)
    assert [(int(s[0]), d) for s, d in restored_cuda] == [(7, GPU1), (1, GPU1)]


def test_python_random_state_round_trips_through_a_checkpoint_and_older_ones_still_load(tmp_path: Path) -> None:
    random.seed(5)
    state = rng_state(CPU)
    buffer = io.BytesIO()
    torch.save(state, buffer)  # one tensor, not 625 ints, yet weights_only loads it back
    saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    expected = [random.random() for _ in range(3)]
    set_rng_state(saved, CPU)
    assert [random.random() for _ in range(3)] == expected
    random.seed(5)
    older = {**state, "python": random.getstate()}  # a checkpoint from before: the plain tuple
    set_rng_state(older, CPU)
    assert [random.random() for _ in range(3)] == expected


def test_loading_an_optimizer_state_keeps_its_implementation() -> None:
    params = [torch.nn.Parameter(torch.ones(3))]
    optimizer = torch.optim.AdamW(params, lr=0.1, fused=True)
    params[0].grad = torch.ones(3)
    optimizer.step()
    saved = optimizer.state_dict()
    saved["param_groups"][0].update(fused=None, foreach=True, capturable=False)  # as another device built it
    optimizer.load_state_dict(keep_implementation(saved, optimizer))
    group = optimizer.param_groups[0]
    assert group["fused"] is True and group["foreach"] is None and group["lr"] == 0.1
    params[0].grad = torch.ones(3)
    optimizer.step()  # the fused kernel runs with the restored state


def test_an_empty_scaler_state_loads_into_an_enabled_scaler() -> None:
    fp16 = Precision("fp16", "fp16", "cpu")
    fp16.load_state_dict(Precision("auto", "fp32", "cpu").state_dict())  # {}: a CPU fp32 run's
    assert fp16.scaler.is_enabled() and fp16.scaler.get_scale() == 2.0**16  # a fresh calibration
    calibrated = {**fp16.state_dict(), "scale": 1024.0}
    fp16.load_state_dict(calibrated)
    assert fp16.scaler.get_scale() == 1024.0


def as_if_written_on_gpus(payload: dict[str, Any]) -> dict[str, Any]:
    """What a run on the second of two GPUs with precision=auto (fp16 there) writes."""
    optimizer = payload["optimizer"]
    groups = [{**group, "fused": None, "foreach": True} for group in optimizer["param_groups"]]
    return {**payload, "rng": {**payload["rng"], "cuda": [cuda_state(0), cuda_state(1)]},
            "optimizer": {**optimizer, "param_groups": groups}, "precision": "fp16",
            "scaler": {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                       "_growth_tracker": 5}}


def test_a_gpu_checkpoint_resumes_on_the_cpu_saying_the_precision_changed(
    make_cfg: Callable[..., DictConfig], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(make_cfg("max_steps=2", "epochs=2", "data.num_train=64"), tmp_path / "run")
    folder = tmp_path / "run" / checkpoint.FOLDER
    latest = checkpoint.read_index(folder)["checkpoints"][-1]["file"]
    payload = torch.load(folder / latest, weights_only=True)
    assert payload["precision"] == "fp32" and payload["rng"]["cuda"] is None
    torch.save(as_if_written_on_gpus(payload), folder / "from_gpu.pt")
    capsys.readouterr()
    resumed = run(make_cfg("max_steps=4", "epochs=2", "data.num_train=64", f"resume={folder / 'from_gpu.pt'}"),
                  tmp_path / "elsewhere")
    assert resumed["status"] == "completed" and resumed["steps"] == 4
    notes = [line for line in capsys.readouterr().out.splitlines() if "precision:" in line]
    assert notes == ["note: precision: the checkpoint was trained in fp16, this run continues in fp32 "
                     "(precision=auto on cpu), so it will not end exactly as an uninterrupted run"]
