"""`smoke=true` (trainer/engine/smoke.py, smoke_check.py) and `train -m experiment=smoke_all` (the
every_choice sweeper): every data and model choice smoke-runs, planted failures exit non-zero
with one line, and nothing is left behind."""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from helpers import group_choices
from hydra_plugins.trainer_sweepers.every_choice import one_group_at_a_time
from test_smoke import COMPANIONS, NEEDS_REAL_FILES, prepare
from helpers import CONF_DIR
from trainer.engine import checkpoint
from trainer.engine.loop import Trainer
from trainer.engine.smoke import SmokeFailure, shrink, smoke_run
from trainer.engine.smoke_check import check_round_trip, check_summary
from trainer.errors import ConfigError, DataError
from trainer.observe.records import write_json_atomic
from trainer.run import run

TRAIN = str(Path(sys.executable).with_name("train"))
# The model tests use the fast generated data; the 2-D models get images, the encoder-decoder token pairs.
# What smoke_all leaves out: downloads, and choices that need the user's files.
SKIPPED = {"data=mnist", "data=fashion_mnist", "data=cifar10", "data=imagefolder", "data=hf", "data=tensors", "init=pretrained"}
IMAGES = {"cnn": ["data.image_size=8"], "resnet18": ["data.image_size=8", "model.width=8"], "seq2seq": ["data=seq2seq"]}


@pytest.fixture
def smoke_cfg() -> Callable[..., DictConfig]:
    """The full default config (not conftest's shrunk one) with smoke=true: the switch does the shrinking."""
    def make(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("config", overrides=["smoke=true", *overrides])

    return make


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the smoke run's temporary folder goes, to check that it is removed."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_shrink_caps_the_run_and_leaves_the_config_alone(smoke_cfg: Callable[..., DictConfig]) -> None:
    cfg = smoke_cfg("batch_size=128", "checkpoint.every_epochs=0")
    small = shrink(cfg)
    assert (small.epochs, small.batch_size, small.log_every, small.device) == (2, 16, 1, "cpu")
    assert small.checkpoint.every_epochs == 1
    assert (cfg.epochs, cfg.batch_size, cfg.device, cfg.checkpoint.every_epochs) == (60, 128, "auto", 0)
    assert shrink(smoke_cfg("device=cuda", "epochs=1")).device == "cuda"  # a named device is kept
    assert shrink(smoke_cfg("epochs=1")).epochs == 1


@pytest.mark.parametrize("choice", [c for c in group_choices("data") if ("data", c) not in NEEDS_REAL_FILES])
def test_every_data_choice_smoke_runs(choice: str, tmp_path: Path, temp_root: Path, make_cfg: Callable[..., DictConfig],
                                      smoke_cfg: Callable[..., DictConfig]) -> None:
    verdict = smoke_run(smoke_cfg(f"data={choice}", *prepare("data", choice, tmp_path, make_cfg)))
    # 60 epochs of the full data shrunk to 2 epochs of 2 batches, and the checkpoint loaded back.
    assert verdict.startswith("smoke ok: 4 steps in 2 epochs") and "step_00000004.pt reloaded" in verdict
    assert not list(temp_root.glob("trainer-smoke-*"))  # (torch may keep its own caches there)


@pytest.mark.parametrize("choice", group_choices("model"))
def test_every_model_choice_smoke_runs(choice: str, temp_root: Path, smoke_cfg: Callable[..., DictConfig]) -> None:
    verdict = smoke_run(smoke_cfg("data=synthetic", f"model={choice}", *IMAGES.get(choice, []),
                                  *COMPANIONS.get(("model", choice), [])))
    assert verdict.startswith("smoke ok: 4 steps in 2 epochs") and "step_00000004.pt reloaded" in verdict
    assert not list(temp_root.glob("trainer-smoke-*"))  # (torch may keep its own caches there)


def test_tasks_smoke_run(smoke_cfg: Callable[..., DictConfig]) -> None:
    assert smoke_run(smoke_cfg("data=synthetic", "task=lr_find")).startswith("smoke ok: task=lr_find")
    with pytest.raises(SmokeFailure, match="task=plan found errors"):  # plan's own check fails the smoke run
        smoke_run(smoke_cfg("data=synthetic", "task=plan", "optim.lr=-1"))


def test_non_finite_loss_fails(smoke_cfg: Callable[..., DictConfig]) -> None:
    with pytest.raises(SmokeFailure, match="smoke run diverged: non-finite"):
        smoke_run(smoke_cfg("data=synthetic", "optim.lr=1e30"))
    with pytest.raises(SmokeFailure, match="non-finite"):  # skipping the updates does not hide it
        smoke_run(smoke_cfg("data=synthetic", "optim.lr=1e30", "nan_policy=skip"))


def test_skipped_steps_fail_except_fp16s_calibration(tmp_path: Path) -> None:
    summary = {"status": "completed", "message": None, "skipped_steps": 2, "precision": {"actual": "fp32"},
               "final": {"val_loss": 1.0}, "best": {"val_loss": 1.0}}
    write_json_atomic(tmp_path / "summary.json", summary)
    with pytest.raises(SmokeFailure, match=r"2 step\(s\) with a non-finite loss or gradient"):
        check_summary(summary, tmp_path)
    check_summary({**summary, "precision": {"actual": "fp16"}}, tmp_path)  # the scaler finding its scale
    with pytest.raises(SmokeFailure, match="final val_loss is nan"):
        check_summary({**summary, "skipped_steps": 0, "final": {"val_loss": float("nan")}}, tmp_path)


def test_broken_or_nan_data_file_fails(tmp_path: Path, smoke_cfg: Callable[..., DictConfig]) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a tensor file")
    with pytest.raises(DataError, match="could not be read"):
        smoke_run(smoke_cfg("data=tensors", f"data.path={broken}"))
    x_train = torch.randn(96, 1, 40)
    x_train[90, 0, 3] = float("nan")  # beyond the slice a smoke run trains on: the whole file is checked
    torch.save({"x_train": x_train, "y_train": torch.arange(96) % 3, "x_val": torch.randn(30, 1, 40),
                "y_val": torch.arange(30) % 3}, tmp_path / "nan.pt")
    with pytest.raises(DataError, match="non-finite"):
        smoke_run(smoke_cfg("data=tensors", f"data.path={tmp_path / 'nan.pt'}"))


def test_a_phase_that_raises_fails_with_one_line_naming_where(monkeypatch: pytest.MonkeyPatch,
                                                               smoke_cfg: Callable[..., DictConfig]) -> None:
    def broken_evaluate(self: Trainer) -> None:
        raise RuntimeError("shapes do not match\n(second line)")

    monkeypatch.setattr(Trainer, "evaluate", broken_evaluate)
    with pytest.raises(SmokeFailure) as caught:
        smoke_run(smoke_cfg("data=synthetic"))
    assert str(caught.value) == ("smoke run failed at test_smoke_switch.py:{} in broken_evaluate: RuntimeError: "
                                 "shapes do not match (second line)").format(broken_evaluate.__code__.co_firstlineno + 1)


def test_resume_is_refused(smoke_cfg: Callable[..., DictConfig]) -> None:
    with pytest.raises(ConfigError, match="resume=auto with smoke=true"):
        smoke_run(smoke_cfg("resume=auto"))


def test_round_trip_catches_a_checkpoint_that_does_not_reproduce_its_run(
        tmp_path: Path, smoke_cfg: Callable[..., DictConfig]) -> None:
    small = shrink(smoke_cfg("data=synthetic"))
    run_dir = tmp_path / "run"
    run(small, run_dir)
    assert "reloaded" in check_round_trip(small, run_dir)
    payload, found, _ = checkpoint.latest_good(run_dir)
    assert payload is not None and found is not None
    for tensor in payload["model"].values():
        if tensor.is_floating_point():
            tensor.mul_(3.0)  # other weights, written as a valid, hashed checkpoint
    writer = checkpoint.Checkpointer(run_dir, every_epochs=1, every_steps=0, keep_last=2)
    writer.save(payload, payload["train_state"]["step"])
    writer.close()  # written in the background
    with pytest.raises(SmokeFailure, match="does not reproduce its run"):
        check_round_trip(small, run_dir)
    for path in (run_dir / "checkpoints").glob("step_*.pt"):
        path.write_bytes(b"damaged")
    with pytest.raises(SmokeFailure, match="no checkpoint that loads back"):
        check_round_trip(small, run_dir)


def test_every_choice_varies_one_group_at_a_time() -> None:
    jobs = one_group_at_a_time(
        base=["experiment=smoke_all", "data=adding", "seed=3"],
        defaults={"data": "adding", "model": "cnn1d", "experiment": "smoke_all"},
        options={"data": ["adding", "mnist", "synthetic"], "model": ["cnn", "cnn1d", "mlp"],
                 "experiment": ["ablate_norm", "smoke_all"]},
        skip=["experiment", "data=mnist"],
        companions={"model=cnn": ["data=synthetic", "data.image_size=16"]},
    )
    assert jobs == [
        ["experiment=smoke_all", "data=adding", "seed=3"],
        ["experiment=smoke_all", "seed=3", "data=synthetic"],
        # the companion replaces the command's data=adding rather than contradicting it
        ["experiment=smoke_all", "seed=3", "data=synthetic", "data.image_size=16", "model=cnn"],
        ["experiment=smoke_all", "data=adding", "seed=3", "model=mlp"],
    ]


def test_smoke_all_composes_with_the_every_choice_sweeper() -> None:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["experiment=smoke_all"], return_hydra_config=True)
    assert cfg.smoke is True
    assert cfg.hydra.sweeper._target_.endswith("every_choice.EveryChoiceSweeper")
    assert "data=cifar10" in cfg.hydra.sweeper.skip and "experiment" in cfg.hydra.sweeper.skip


def train(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TRAIN, *args], capture_output=True, text=True, timeout=900, cwd=cwd)


@pytest.mark.slow  # a real subprocess; the in-process planted-NaN tests stay in the default run
def test_cli_planted_nan_exits_2_with_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    result = train("smoke=true", "data=synthetic", "optim.lr=1e30", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: smoke run diverged: non-finite loss") and result.stderr.count("\n") == 1
    assert not any(tmp_path.iterdir())  # no outputs/ folder


@pytest.mark.slow
def test_cli_smoke_with_multirun_names_the_failed_job(tmp_path: Path) -> None:
    result = train("-m", "smoke=true", "data=synthetic", "optim.lr=0.001,1e30", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                   cwd=tmp_path)
    assert result.returncode == 2
    assert "smoke: 1 of 2 jobs passed" in result.stdout
    failed = [line for line in result.stderr.splitlines() if line.startswith("error: 1 job(s) failed:")]
    assert len(failed) == 1 and "optim.lr=1e+30" in failed[0] and "optim.lr=0.001" not in failed[0]
    assert "Traceback" not in result.stderr
    assert {path.name for path in (tmp_path / "sweep").iterdir()} == {"multirun.yaml"}  # no job folders kept


@pytest.mark.slow
def test_cli_smoke_all_runs_every_choice(tmp_path: Path) -> None:
    result = train("-m", "experiment=smoke_all", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    launched = re.findall(r"#\d+ : (.*)", result.stdout)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        defaults = compose("config")
    for group in ("data", "model", "init", "norm", "regularisation", "optim", "sched", "clipping", "precision",
                  "early_stopping", "augment", "logger"):
        default = defaults[group].name if group != "logger" else "console"
        for choice in set(group_choices(group)) - {default}:
            if f"{group}={choice}" not in SKIPPED:
                # the varied choice comes last, after the overrides it needs (model=cnn: data=synthetic ...)
                assert [line.split()[-1] for line in launched].count(f"{group}={choice}") == 1, f"{group}={choice}"
    jobs = result.stdout.count("smoke ok:")
    assert f"smoke: {jobs} of {jobs} jobs passed" in result.stdout and jobs > 40


def test_a_smoke_run_never_names_its_temporary_folder(temp_root: Path, smoke_cfg: Callable[..., DictConfig],
                                                      trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The folder is removed when the smoke run ends: a path into it would name files that are gone."""
    smoke_run(smoke_cfg("data=synthetic", "model=mlp"))
    for task in ("export", "tsne", "lr_find", "check_init"):
        run = [f"resume={trained_run}"] if task in ("export", "tsne") else []  # the others build a fresh model
        assert smoke_run(smoke_cfg("data=synthetic", f"task={task}", *run)).startswith("smoke ok")
    out = capsys.readouterr()
    assert "completed: 2 epochs" in out.out  # the training run's closing line, without its folder
    assert str(temp_root) not in out.out + out.err and "trainer-smoke-" not in out.out + out.err
    assert not list(temp_root.glob("trainer-smoke-*"))


def test_the_tools_shrink_like_training(smoke_cfg: Callable[..., DictConfig], trained_run: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.engine import smoke
    from trainer.tasks import export as export_module
    from trainer.tasks import tsne as tsne_module

    small = shrink(smoke_cfg())
    assert (small.tsne.max_points, small.sample.length) == (smoke.SMOKE_TSNE_POINTS, smoke.SMOKE_SAMPLE_LENGTH)
    assert shrink(smoke_cfg("tsne.perplexity=[5,100]")).tsne.max_points == 101  # each perplexity below the points
    assert shrink(smoke_cfg("tsne.max_points=20", "tsne.perplexity=10")).tsne.max_points == 20  # never more
    assert "max_points" not in shrink(smoke_cfg("~tsne.max_points")).tsne  # removed: the tool's own default

    checked: list[int] = []
    monkeypatch.setattr(export_module, "time_inference", lambda models, x, batch_size: checked.append(len(x)) or (1.0, 1.0))
    smoke_run(smoke_cfg("data=synthetic", "task=export", f"resume={trained_run}"))
    assert checked == [smoke.SMOKE_VAL_SAMPLES]  # not export's 1000

    embedded: list[int] = []
    real = tsne_module.tsne
    monkeypatch.setattr(tsne_module, "tsne", lambda *args, **kwargs: embedded.append(kwargs["max_points"]) or real(*args, **kwargs))
    smoke_run(smoke_cfg("data=synthetic", "task=tsne", f"resume={trained_run}"))
    assert embedded == [smoke.SMOKE_TSNE_POINTS]  # not the config's 2000
