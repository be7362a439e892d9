"""trainer.threads: torch's intra-op threads, shared among the jobs that run at once (auto), set
for every run, recorded in summary.json, and not part of what a sweep job is."""
from __future__ import annotations

import os
import signal
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
    assert [file.name.split("-")[0] for file in threads.registry().glob("*.lock")] == [str(os.getpid())]  # its file removed


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


def _fresh_registry(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    monkeypatch.setenv("TRAINER_PROCESSES_DIR", str(folder))
    monkeypatch.setattr(threads, "_joined", {})
    monkeypatch.setattr(threads, "_unusable", set(), raising=False)


def _refuse_under(folder: Path, function: Callable[..., object], errno: int, why: str) -> Callable[..., object]:
    """`function`, failing with OSError(errno) for paths in the registry folder (and only there:
    the test's own files still open)."""
    def refusing(path: object, *args: object, **kwargs: object) -> object:
        if str(path).startswith(str(folder)):
            raise OSError(errno, why)
        return function(path, *args, **kwargs)

    return refusing


def _unusable_by_file(folder: Path, _monkeypatch: pytest.MonkeyPatch) -> None:
    folder.write_text("a file where the registry folder should be")


def _unusable_by_permission(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder.mkdir()  # as root chmod 0o500 denies nothing: the refusal is made where the run would meet it
    monkeypatch.setattr(os, "open", _refuse_under(folder, os.open, 13, "Permission denied"))


def _unusable_by_full_disk(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Path, "mkdir", _refuse_under(folder, Path.mkdir, 28, "No space left on device"))


def _unusable_by_read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Path, "mkdir", _refuse_under(folder, Path.mkdir, 30, "Read-only file system"))


def _no_flock(_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(*_args: object) -> None:
        raise OSError(37, "No locks available")

    monkeypatch.setattr(threads.fcntl, "flock", unsupported)


@pytest.mark.usefixtures("eight_cores")
@pytest.mark.parametrize("make_unusable", [_unusable_by_file, _unusable_by_permission, _unusable_by_full_disk,
                                           _unusable_by_read_only, _no_flock])
def test_an_unusable_registry_counts_this_process_alone_with_one_notice(
        make_unusable: Callable[[Path, pytest.MonkeyPatch], None], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "processes"
    _fresh_registry(monkeypatch, folder)
    make_unusable(folder, monkeypatch)
    before = folder.read_bytes() if folder.is_file() else None
    assert threads.resolve("auto") == 8  # alone: every core
    threads.rebalance("auto")  # every epoch end: no error, no second notice
    assert torch.get_num_threads() == 8
    notices = capsys.readouterr().err.splitlines()
    assert len(notices) == 1 and notices[0].startswith("notice: trainer.threads=auto counts this process alone")
    assert str(folder) in notices[0]
    assert before is None or folder.read_bytes() == before  # a file in its place is left as it was
    assert not list(tmp_path.glob("processes/*.lock"))  # no lock file left behind


@pytest.mark.usefixtures("eight_cores")
def test_lock_files_it_cannot_open_or_lock_are_not_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "processes"
    _fresh_registry(monkeypatch, folder)
    folder.mkdir()
    (folder / "1-dir.lock").mkdir()  # not a file: cannot be opened
    os.mkfifo(folder / "2-fifo.lock")  # opening it must not wait for a writer
    assert threads.running_processes() == 1
    assert threads.resolve("auto") == 8


@pytest.mark.usefixtures("eight_cores")
def test_a_locked_file_named_after_this_pid_does_not_hang_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another PID namespace (a container sharing /tmp) can hold a lock file named after this pid."""
    folder = tmp_path / "processes"
    _fresh_registry(monkeypatch, folder)
    other = _another_run()
    try:
        (theirs,) = folder.glob("*.lock")
        theirs.rename(folder / f"{os.getpid()}.lock")  # their lock moves with the file
        assert threads.running_processes() == 2  # counted, and this call returned
    finally:
        other.kill()
        other.wait()


FORKING_RUN = """
import os, signal, time
from trainer.engine import threads
threads.running_processes()  # joins the registry, as a run does
child = os.fork()
if child == 0:  # a DataLoader worker: it lingers after its parent dies
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)  # not the test's pipes, which would wait for it
    os.dup2(null, 2)
    time.sleep(30)
    os._exit(0)
print(child, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_forked_child_of_a_killed_run_is_not_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "processes"
    _fresh_registry(monkeypatch, folder)
    run_ = subprocess.run([sys.executable, "-c", FORKING_RUN], capture_output=True, text=True, timeout=60)
    child = int(run_.stdout)
    try:
        assert run_.returncode == -signal.SIGKILL, run_.stderr
        assert threads.running_processes() == 1  # at once: the child still sleeps, yet holds no lock
        assert [file.name.split("-")[0] for file in folder.glob("*.lock")] == [str(os.getpid())]
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_registry_under_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    _fresh_registry(monkeypatch, Path("~/processes"))
    assert threads.running_processes() == 1
    assert (tmp_path / "home" / "processes").is_dir() and not (tmp_path / "~").exists()


@pytest.mark.usefixtures("eight_cores")
def test_under_torchrun_only_rank_0_says_the_registry_is_unusable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "processes"
    _fresh_registry(monkeypatch, folder)
    folder.write_text("a file where the registry folder should be")
    monkeypatch.setenv("RANK", "1")
    assert threads.running_processes() == 1
    assert capsys.readouterr().err == ""


def test_a_run_rebalances_at_most_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the registry costs a small model's epoch end about 0.25 ms: the loop re-divides
    the cores at an epoch end only when a second has passed since it last did."""
    from types import SimpleNamespace

    from trainer.engine import loop

    calls: list[object] = []
    monkeypatch.setattr(threads, "rebalance", calls.append)
    clock = iter([0.5, 1.2, 1.9, 2.3])
    monkeypatch.setattr(loop.time, "monotonic", lambda: next(clock))
    trainer = SimpleNamespace(rebalanced=0.0, parts=SimpleNamespace(cfg=SimpleNamespace(trainer=SimpleNamespace(threads="auto"))))
    for _ in range(4):
        loop.Trainer._rebalance_threads(trainer)  # type: ignore[arg-type]
    assert calls == ["auto", "auto"]  # at 1.2 s and at 2.3 s, not at 0.5 s or 1.9 s
    assert trainer.rebalanced == 2.3
