"""Shared fixtures: compose the real config from conf/, shrunk to run in seconds (helpers.py)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from helpers import CONF_DIR, SMALL

# One intra-op thread per process, here and in the `train` subprocesses the tests start: tests
# run several processes at once on 2 cores, and OpenMP threads that outnumber the cores spin
# against each other (seen here: steps 10-40x slower). The tiny test models gain nothing from more.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.fixture
def make_cfg() -> Callable[..., DictConfig]:
    def make(*overrides: str, small: bool = True) -> DictConfig:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("config", overrides=(SMALL if small else []) + list(overrides))

    return make


@pytest.fixture(autouse=True)
def data_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Data builders cache under TRAINER_DATA_DIR: keep tests out of the user's cache."""
    monkeypatch.setenv("TRAINER_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))
    # Runs count the train processes on the machine (trainer.threads=auto): not other sessions' tests.
    monkeypatch.setenv("TRAINER_PROCESSES_DIR", str(tmp_path_factory.getbasetemp() / "processes"))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run to read with task=export or task=tsne: cnn1d + batchnorm, 20 steps on the synthetic data."""
    from trainer.run import run

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[*SMALL, "max_steps=20", "log_every=10"])
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    run(cfg, run_dir)
    return run_dir
