"""Nothing lost: a run killed at any point and resumed ends exactly like an uninterrupted one;
checkpoints are atomic, verified, and never run pickled code."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from fakes import PlantsMarker

from trainer.engine import checkpoint
from trainer.engine.loop import Trainer, TrainState
from trainer.engine.resume import check_resumable, truncate_metrics
from trainer.errors import ConfigError
from trainer.run import run

TRAIN = str(Path(sys.executable).with_name("train"))
# Deterministic, with dropout (so the RNG state matters) and a checkpoint every 4 steps:
# 2 epochs of 64 steps, slow enough (about a second) to be killed part-way.
RUN = ["data=synthetic", "data.num_train=2048", "model=mlp", "model.width=256", "batch_size=32", "epochs=2",
       "log_every=5", "deterministic=true", "checkpoint.every_steps=4", "checkpoint.min_interval_s=0", "regularisation=dropout", "device=cpu",
       "curves=false"]  # curves.png is drawn after training: a second a process
TIMING = {"elapsed", "samples_per_s"}


def train(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TRAIN, *args], capture_output=True, text=True, timeout=180)


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    index = checkpoint.read_index(run_dir / checkpoint.FOLDER)
    return torch.load(run_dir / checkpoint.FOLDER / index["checkpoints"][-1]["file"], weights_only=True)["model"]


def checkpointed_steps(run_dir: Path) -> list[int]:
    return [e["step"] for e in checkpoint.read_index(run_dir / checkpoint.FOLDER)["checkpoints"]]


def start_and_wait(run_dir: Path, past_step: int) -> subprocess.Popen[str]:
    """Start a run and return once it has checkpointed beyond `past_step` (it keeps running)."""
    process = subprocess.Popen([TRAIN, *RUN, f"hydra.run.dir={run_dir}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(step > past_step for step in checkpointed_steps(run_dir)):
        assert process.poll() is None, f"the run ended before step {past_step}: {process.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return process


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("full") / "run"
    result = train(*RUN, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    return run_dir


# Early, mid-epoch, just past the epoch boundary, late; one of them in the default run for time
# (tests/test_kill_resume.py kills the default, epoch-end checkpointing at every kind of point.)
@pytest.mark.parametrize("kill_after", [pytest.param(3, marks=pytest.mark.slow), pytest.param(40, marks=pytest.mark.slow), pytest.param(64, marks=pytest.mark.slow),
                                        pytest.param(100, marks=pytest.mark.slow)])
def test_sigkill_then_resume_matches_uninterrupted(uninterrupted: Path, tmp_path: Path, kill_after: int) -> None:
    run_dir = tmp_path / "run"
    process = start_and_wait(run_dir, kill_after)
    process.kill()  # SIGKILL: no handler runs, nothing is flushed
    process.wait()
    assert not (run_dir / "summary.json").exists()
    resumed = train(*RUN, "resume=auto", f"hydra.run.dir={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert records(run_dir) == records(uninterrupted)
    expected, got = final_weights(uninterrupted), final_weights(run_dir)
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["final"] == json.loads(
        (uninterrupted / "summary.json").read_text())["final"]


@pytest.mark.parametrize("length", [["epochs=3", "max_steps=null"], ["epochs=5", "max_steps=5"]], ids=["epochs", "max_steps"])
def test_the_last_epoch_is_checkpointed_whatever_the_interval(make_cfg: Callable[..., DictConfig], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch, length: list[str]) -> None:
    """checkpoint.every_epochs=2, 2 steps an epoch, and the run ends in epoch 3 (its last, or cut by
    max_steps), neither due nor best: it is written all the same, so the latest checkpoint (what
    task=export and a later resume read) holds the model the summary reports, not epoch 2's."""
    monkeypatch.setattr(Trainer, "_is_best", lambda self, metrics: False)
    run_dir = tmp_path / "run"
    summary = run(make_cfg(*length, "checkpoint.every_epochs=2", "data.num_train=64"), run_dir)
    assert summary["status"] == "completed" and summary["steps"] in (5, 6)
    assert checkpointed_steps(run_dir) == [4, summary["steps"]]


def test_a_periodic_checkpoint_within_min_interval_s_of_the_last_is_skipped(tmp_path: Path) -> None:
    """checkpoint.min_interval_s: due by every_epochs or every_steps, a checkpoint is written only
    when that many seconds have passed since the last save (the run's start before the first);
    any save, a best epoch's included, starts the interval again; 0 skips none."""
    now = [0.0]
    saver = checkpoint.Checkpointer(tmp_path, every_epochs=1, every_steps=5, keep_last=2, min_interval_s=1.0,
                                    clock=lambda: now[0])
    due = []
    for at, epoch in ((0.4, 1), (0.9, 2), (1.0, 3), (1.5, 4), (2.2, 5)):
        now[0] = at
        due.append(saver.due_at_epoch(epoch) and saver.due_at_step(epoch * 5))
        if due[-1]:
            saver.save({"train_state": {"epoch": epoch}}, epoch, best=False)
    saver.wait()
    assert due == [False, False, True, False, True]
    assert [entry["step"] for entry in checkpoint.read_index(tmp_path / checkpoint.FOLDER)["checkpoints"]] == [3, 5]
    now[0] = 3.0
    saver.save({"train_state": {"epoch": 6}}, 6, best=True)  # a best epoch's save, whatever was due
    now[0] = 3.5
    assert not saver.due_at_epoch(7)
    saver.wait()
    every = checkpoint.Checkpointer(tmp_path / "every", every_epochs=1, every_steps=0, keep_last=2, clock=lambda: now[0])
    assert every.due_at_epoch(1) and every.due_at_epoch(2)  # the default of a Checkpointer built by hand: 0


def test_the_default_run_skips_checkpoints_within_a_second_but_keeps_best_and_last(
        make_cfg: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As shipped (min_interval_s=1.0), a run whose epochs take a fraction of a second writes the
    best epochs and the last one, not every epoch; the same run with 0 writes every epoch. The
    clock stands still (a loaded machine could take a second over the run)."""
    init = checkpoint.Checkpointer.__init__
    monkeypatch.setattr(checkpoint.Checkpointer, "__init__", lambda self, *args, **kwargs: init(self, *args, **kwargs, clock=lambda: 0.0))
    best_epochs = {2, 5}
    monkeypatch.setattr(Trainer, "_is_best", lambda self, metrics: self.state.epoch in best_epochs)
    written = []
    monkeypatch.setattr(checkpoint.Checkpointer, "save",
                        lambda self, payload, step, best=False: written.append((payload["train_state"]["epoch"] - 1, best)))
    summary = run(make_cfg("epochs=8", "max_steps=null", "data.num_train=64", "checkpoint.min_interval_s=1.0"), tmp_path / "floored")
    assert summary["status"] == "completed"
    assert written == [(2, True), (5, True), (8, False)]
    written.clear()
    run(make_cfg("epochs=8", "max_steps=null", "data.num_train=64", "checkpoint.min_interval_s=0"), tmp_path / "every")
    assert written == [(epoch, epoch in best_epochs) for epoch in range(1, 9)]


def test_under_the_floor_an_early_stop_and_an_interrupt_are_still_checkpointed(
        make_cfg: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """min_interval_s skips only the periodic checkpoints: with the clock standing still and no
    best epoch after the first, the epoch early stopping ends at (4) and the step a signal stops
    at (9, mid-epoch 5 of 2 steps each) are written all the same."""
    from trainer.tricks.early_stopping import NoEarlyStopping

    init = checkpoint.Checkpointer.__init__
    monkeypatch.setattr(checkpoint.Checkpointer, "__init__", lambda self, *args, **kwargs: init(self, *args, **kwargs, clock=lambda: 0.0))
    monkeypatch.setattr(Trainer, "_is_best", lambda self, metrics: self.state.epoch == 1)
    written: list[int] = []
    monkeypatch.setattr(checkpoint.Checkpointer, "save", lambda self, payload, step, best=False: written.append(step))
    evaluations = iter(range(1, 100))
    monkeypatch.setattr(NoEarlyStopping, "eval_end", lambda self, metrics, model: next(evaluations) == 4)
    cfg = ("epochs=8", "max_steps=null", "data.num_train=64", "checkpoint.min_interval_s=1.0")  # 2 steps an epoch
    assert run(make_cfg(*cfg), tmp_path / "stopped")["status"] == "early_stopped"
    assert written == [2, 8]  # epoch 1 (best), epoch 4 (the early stop)
    written.clear()
    monkeypatch.setattr(NoEarlyStopping, "eval_end", lambda self, metrics, model: False)

    def signalled(self: Trainer) -> bool:
        self.signals.received = signal.SIGTERM if self.state.step == 9 else None
        return self.signals.received is not None

    monkeypatch.setattr(Trainer, "_stop_requested", signalled)
    assert run(make_cfg(*cfg), tmp_path / "interrupted")["status"] == "interrupted"
    assert written == [2, 9]  # epoch 1 (best), step 9 (the interrupt)


def test_a_completed_run_launched_again_with_resume_auto_is_left_exactly_as_it_was(
        make_cfg: Callable[..., DictConfig], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A preemptible job launched again after it finished: nothing to train, and its record (summary.json's
    timings and memory were measured again and rewritten) stays byte for byte; more epochs continue it."""
    run_dir, length = tmp_path / "run", ["epochs=2", "max_steps=null", "data.num_train=64"]
    finished = run(make_cfg(*length), run_dir)
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    again = run(make_cfg(*length, "resume=auto"), run_dir)
    assert again == finished and "nothing left to train" in capsys.readouterr().out
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == before
    assert run(make_cfg("epochs=3", "max_steps=null", "data.num_train=64", "resume=auto"), run_dir)["steps"] == 6


def test_a_run_resumed_with_max_steps_below_its_step_trains_nothing_more(make_cfg: Callable[..., DictConfig],
                                                                        tmp_path: Path) -> None:
    """Checkpointed at step 6 (2 steps an epoch, epochs=5 left unfinished by max_steps=6), resumed with
    max_steps=3: nothing is trained; it took one more step and logged a one-step epoch."""
    run_dir, length = tmp_path / "run", ["epochs=5", "data.num_train=64"]
    assert run(make_cfg(*length, "max_steps=6"), run_dir)["steps"] == 6
    before = (run_dir / "metrics.jsonl").read_text()
    resumed = run(make_cfg(*length, "max_steps=3", "resume=auto"), run_dir)
    assert (resumed["status"], resumed["steps"]) == ("completed", 6)
    assert (run_dir / "metrics.jsonl").read_text() == before
    assert checkpointed_steps(run_dir)[-1] == 6


def test_corrupted_latest_checkpoint_falls_back_to_previous(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    interrupted = run(make_cfg("max_steps=8", "checkpoint.every_steps=2", "epochs=3", "data.num_train=256"), run_dir)
    assert interrupted["status"] == "completed"
    (run_dir / "summary.json").unlink()
    folder = run_dir / checkpoint.FOLDER
    latest = folder / checkpoint.read_index(folder)["checkpoints"][-1]["file"]
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    latest.write_bytes(bytes(data))
    payload, path, notices = checkpoint.resolve("auto", run_dir)
    assert path is not None and path != latest and payload["train_state"]["step"] == 6
    assert "corrupted" in notices[0]


def test_truncated_checkpoint_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"train_state": {"epoch": 1}}, path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(checkpoint.CheckpointError, match="truncated or damaged"):
        checkpoint.resolve(str(path), tmp_path)


def test_checkpoint_with_pickled_code_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"train_state": {}, "model": PlantsMarker(marker)}, path)
    with pytest.raises(checkpoint.CheckpointError, match="pickled code"):
        checkpoint.resolve(str(path), tmp_path)
    assert not marker.exists()


def test_failing_write_leaves_no_partial_file_and_keeps_earlier_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saver = checkpoint.Checkpointer(tmp_path, every_epochs=1, every_steps=0, keep_last=2)
    payload = {"train_state": {"epoch": 1}, "model": {"w": torch.ones(3)}}
    saver.save(payload, step=1)
    saver.wait()

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(checkpoint.CheckpointError, match="No space left on device; earlier checkpoints are intact"):
        saver.save(payload, step=2)  # written in the background: its error comes with the wait
        saver.wait()
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / checkpoint.FOLDER).iterdir()) == ["index.json", "step_00000001.pt"]
    assert checkpoint.resolve("auto", tmp_path)[0]["model"]["w"].sum() == 3


def test_keeps_last_k_and_best(tmp_path: Path) -> None:
    saver = checkpoint.Checkpointer(tmp_path, every_epochs=1, every_steps=0, keep_last=2)
    for step in range(1, 6):
        saver.save({"train_state": {"epoch": step}}, step=step, best=step == 2)
    saver.close()
    names = sorted(p.name for p in (tmp_path / checkpoint.FOLDER).iterdir())
    assert names == ["best.pt", "index.json", "step_00000004.pt", "step_00000005.pt"]
    assert checkpoint.resolve(str(tmp_path / checkpoint.FOLDER / "best.pt"), tmp_path)[0]["train_state"]["epoch"] == 2


def test_best_verifies_at_every_point_of_its_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """resume=best.pt, read (or killed) between best.pt's rename and the index's update, loads the
    new best, and a flipped byte is still refused."""
    saver = checkpoint.Checkpointer(tmp_path, every_epochs=1, every_steps=0, keep_last=2)
    saver.write({"train_state": {"epoch": 1}}, step=1, best=True)
    write_atomic = checkpoint._write_atomic
    index_writes: list[Path] = []

    def killed_after_the_rename(path: Path, data: bytes) -> None:
        if path.name == checkpoint.INDEX:
            index_writes.append(path)
            if len(index_writes) == 2:  # the index update that follows best.pt's rename
                raise KeyboardInterrupt
        write_atomic(path, data)

    monkeypatch.setattr(checkpoint, "_write_atomic", killed_after_the_rename)
    with pytest.raises(KeyboardInterrupt):
        saver.write({"train_state": {"epoch": 2}}, step=2, best=True)
    best = tmp_path / checkpoint.FOLDER / checkpoint.BEST
    assert checkpoint.resolve(str(best), tmp_path)[0]["train_state"]["epoch"] == 2
    data = bytearray(best.read_bytes())
    data[len(data) // 2] ^= 0xFF
    best.unlink()  # a hard link: writing through it would damage step 2's file as well
    best.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="corrupted"):
        checkpoint.resolve(str(best), tmp_path)


def test_best_is_a_second_name_for_the_checkpoint_not_a_second_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saver = checkpoint.Checkpointer(tmp_path, every_epochs=1, every_steps=0, keep_last=2)
    saver.write({"train_state": {"epoch": 2}}, step=1, best=True)
    folder = tmp_path / checkpoint.FOLDER
    assert (folder / "best.pt").samefile(folder / "step_00000001.pt")

    def no_hard_links(source: Path, target: Path) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_hard_links)  # a file system without hard links: a copy instead
    saver.write({"train_state": {"epoch": 3}}, step=2, best=True)
    assert not (folder / "best.pt").samefile(folder / "step_00000002.pt")
    assert (folder / "best.pt").read_bytes() == (folder / "step_00000002.pt").read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "index.json", "step_00000001.pt", "step_00000002.pt"]


def test_resume_refuses_a_config_that_matters_and_allows_more_epochs(
    make_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    first = run(make_cfg("max_steps=null", "epochs=1"), run_dir)
    with pytest.raises(ConfigError, match=r"model.channels \(32 -> 16\)"):
        run(make_cfg("max_steps=null", "epochs=2", "model.channels=16", "resume=auto"), run_dir)
    longer = run(make_cfg("max_steps=null", "epochs=2", "resume=auto"), run_dir)
    assert longer["epochs_run"] == 2 and longer["steps"] == 2 * first["steps"]



def test_resume_ignores_target_a_builders_import_address(make_cfg: Callable[..., DictConfig]) -> None:
    cfg = make_cfg()
    saved = OmegaConf.to_container(cfg, resolve=True)
    saved["model"]["_target_"] = "trainer.models.old_place.build"  # the code moved since the checkpoint
    check_resumable(saved, cfg)
    saved["model"]["channels"] = 16
    with pytest.raises(ConfigError, match=r"model.channels \(16 -> 32\)"):
        check_resumable(saved, cfg)


def test_a_key_added_by_an_upgrade_blocks_resume_only_when_set(make_cfg: Callable[..., DictConfig]) -> None:
    """A checkpoint from before `data.label_noise` existed resumes while the key holds its shipped
    default; set to anything else, the data differ."""
    saved = OmegaConf.to_container(make_cfg(), resolve=True)
    del saved["data"]["label_noise"]
    check_resumable(saved, make_cfg())
    with pytest.raises(ConfigError, match=r"data.label_noise \(None -> 0.2\)"):
        check_resumable(saved, make_cfg("data.label_noise=0.2"))


def test_save_snapshots_the_state_and_writes_it_off_the_training_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """save() returns while the write is still held up; the checkpoint holds the state as it was at
    save(), though training went on changing its tensors in place meanwhile."""
    saver = checkpoint.Checkpointer(tmp_path, every_epochs=1, every_steps=0, keep_last=2)
    release, writers = threading.Event(), []
    write_atomic = checkpoint._write_atomic

    def held_up(path: Path, data: bytes) -> None:
        writers.append(threading.current_thread())
        release.wait(timeout=60)
        write_atomic(path, data)

    monkeypatch.setattr(checkpoint, "_write_atomic", held_up)
    weights = {"w": torch.ones(3)}
    saver.save({"train_state": {"epoch": 2}, "model": weights}, step=1)
    weights["w"].add_(1.0)  # the next training step
    assert not (tmp_path / checkpoint.FOLDER / "step_00000001.pt").exists()
    release.set()
    saver.wait()
    assert writers and threading.main_thread() not in writers
    assert torch.equal(checkpoint.resolve("auto", tmp_path)[0]["model"]["w"], torch.ones(3))


def test_train_state_history_round_trips_as_one_json_text_and_older_lists_load() -> None:
    rows = [{"kind": "epoch", "epoch": 1, "val_loss": 0.1 + 0.2, "val_acc": None, "grad_norm": float("nan")},
            {"kind": "epoch", "epoch": 2, "val_loss": float("inf"), "lr": 3e-4}]
    state = TrainState(history=rows)
    saved = state.to_dict()
    assert isinstance(saved["history"], str)  # pickled as one object, however long the run
    restored = TrainState.from_dict(saved).history
    assert json.dumps(restored) == json.dumps(rows) and restored[0]["val_loss"] == 0.1 + 0.2
    assert TrainState.from_dict({**saved, "history": rows}).history == rows  # a checkpoint from before


TINY = ("model=mlp", "model.width=16", "data.num_train=64", "data.num_val=32", "data.num_test=0")


def test_resume_auto_after_a_kill_before_the_first_checkpoint_starts_afresh(
    make_cfg: Callable[..., DictConfig], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A preemptible job killed (SIGKILL, the OOM killer) before its first checkpoint leaves its
    metrics.jsonl and no checkpoint: launched again with resume=auto it starts afresh, the killed
    attempt kept in previous/1/, instead of being refused with "continue it with resume=auto"."""
    run(make_cfg(*TINY), tmp_path / "run")
    (tmp_path / "run" / "summary.json").write_text("")  # damaged by hand, or by a disk that filled: kept, not a traceback
    for path in (tmp_path / "run" / checkpoint.FOLDER).iterdir():
        path.unlink()  # killed while the first checkpoint was a temporary file: an empty folder
    killed = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    summary = run(make_cfg(*TINY, "resume=auto"), tmp_path / "run")
    assert summary["status"] == "completed"
    assert "starting afresh; the earlier attempt is kept in" in capsys.readouterr().out
    assert (tmp_path / "run" / "previous" / "1" / "metrics.jsonl").read_bytes() == killed
    assert (tmp_path / "run" / "previous" / "1" / "summary.json").read_text() == ""
    assert [json.loads(line)["kind"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][0] == "start"


def test_resume_auto_on_a_finished_run_without_checkpoints_is_refused(make_cfg: Callable[..., DictConfig],
                                                                     tmp_path: Path) -> None:
    run(make_cfg(*TINY, "checkpoint.every_epochs=0"), tmp_path / "run")
    before = {path: path.read_bytes() for path in (tmp_path / "run").rglob("*") if path.is_file()}
    with pytest.raises(ConfigError, match="already holds a run .* and no good checkpoint to continue it from"):
        run(make_cfg(*TINY, "checkpoint.every_epochs=0", "resume=auto"), tmp_path / "run")
    assert {path: path.read_bytes() for path in (tmp_path / "run").rglob("*") if path.is_file()} == before


def test_resume_drops_the_half_line_a_run_stopped_mid_write_left(tmp_path: Path) -> None:
    """A full disk (or a power cut) can end metrics.jsonl with half a record: resuming keeps the
    whole records up to the checkpoint and drops that half, where it stopped with a JSONDecodeError."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "start"}\n{"kind": "step", "step": 5}\n{"kind": "step", "step": 10}\n{"kind": "st')
    truncate_metrics(path, 5)
    assert path.read_text() == '{"kind": "start"}\n{"kind": "step", "step": 5}\n'
