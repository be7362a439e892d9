"""trainer.threads: torch's intra-op threads, shared among the jobs that run at once (auto), set
for every run, recorded in summary.json, and not part of what a sweep job is."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from helpers import CONF_DIR
from trainer.engine import threads
from trainer.engine.parts import build_parts
from trainer.errors import ConfigError
from trainer.run import run
from trainer.sweep import jobs as sweep


@pytest.fixture(autouse=True)
def one_thread_after() -> Iterator[None]:
    yield
    torch.set_num_threads(1)  # as conftest set it for the rest of the tests


@pytest.fixture
def eight_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 8)


def in_sweep(*overrides: str) -> None:
    """Make HydraConfig what a job of `train -m ... overrides` sees."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        HydraConfig.instance().set_config(compose("config", overrides=list(overrides), return_hydra_config=True))


@pytest.fixture
def clean_hydra() -> Iterator[None]:
    yield
    HydraConfig.instance().cfg = None


@pytest.mark.usefixtures("eight_cores", "clean_hydra")
@pytest.mark.parametrize(("launcher", "expected"), [
    ([], 8),                                                                  # one run, or the basic launcher: all cores
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=4"], 2),                # four jobs at once share 8 cores
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=-1"], 1),               # joblib's -1: one job per core
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=16"], 1),               # more jobs than cores: at least 1
])
def test_auto_shares_the_cores_among_parallel_jobs(launcher: list[str], expected: int) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    in_sweep(*launcher)
    assert threads.resolve("auto") == expected


def test_auto_takes_omp_num_threads_when_set(eight_cores: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.resolve("auto") == 3
    assert threads.resolve(5) == 5  # a count wins over everything


@pytest.mark.parametrize("bad", [0, -1, "many", 1.5, True])
def test_bad_values_are_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match=f"trainer.threads={bad} must be an integer >= 1, or auto"):
        threads.resolve(bad)  # type: ignore[arg-type]


def test_each_run_sets_and_records_its_threads(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    build_parts(make_cfg("trainer.threads=2"))
    assert torch.get_num_threads() == 2
    summary = run(make_cfg("trainer.threads=1"), tmp_path)  # the next job in the same process
    assert torch.get_num_threads() == 1 and summary["threads"] == 1


def test_threads_are_not_part_of_a_jobs_fingerprint(make_cfg: Callable[..., DictConfig]) -> None:
    assert sweep.fingerprint(make_cfg("trainer.threads=1")) == sweep.fingerprint(make_cfg("trainer.threads=auto"))
    assert sweep.fingerprint(make_cfg("seed=1")) != sweep.fingerprint(make_cfg("seed=2"))


def _another_run() -> "subprocess.Popen[str]":
    """A process that joins the registry of running train processes (as a run does) and stays."""
    code = ("from trainer.engine import threads; threads.running_processes(); print('joined', flush=True); "
            "import sys; sys.stdin.read()")
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "joined"
    return process


@pytest.mark.usefixtures("eight_cores")
def test_auto_shares_the_cores_among_running_train_processes() -> None:
    assert threads.resolve("auto") == 8  # alone
    other = _another_run()
    try:
        assert threads.running_processes() == 2
        assert threads.resolve("auto") == 4
        assert threads.resolve(3) == 3  # a count is a count
    finally:
        other.kill()  # however it ends, the kernel drops its lock
        other.wait()
    assert threads.resolve("auto") == 8
    assert [file.name for file in threads.registry().glob("*.lock")] == [f"{os.getpid()}.lock"]  # its file removed


@pytest.mark.usefixtures("eight_cores")
def test_a_run_gives_up_its_share_when_another_starts_and_takes_it_back() -> None:
    threads.rebalance("auto")
    assert torch.get_num_threads() == 8
    other = _another_run()
    try:
        threads.rebalance("auto")
        assert torch.get_num_threads() == 4
        threads.rebalance(2)  # a count is never changed
        assert torch.get_num_threads() == 4
    finally:
        other.stdin.close()  # type: ignore[union-attr]
        other.wait()
    threads.rebalance("auto")
    assert torch.get_num_threads() == 8
