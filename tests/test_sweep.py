"""Resumable sweeps and ablation presets: folder names, skipping finished jobs, rerunning
unfinished ones, containing a crash, every preset composing, and real `train -m` runs."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from helpers import CONF_DIR
from helpers import group_choices
from in_process import train_in_process
from trainer.sweep import jobs as sweep
from trainer.sweep.report import METRICS

TRAIN = str(Path(sys.executable).with_name("train"))
TESTS = Path(__file__).parent
# tests/ first (for crashing_data), then whatever the caller set (a worktree running its own trainer).
WITH_TESTS = {"PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
FAST = ["data=synthetic", "epochs=1", "log_every=5"]
# Choices a preset leaves out, and why (the preset's header says so too).
NOT_ABLATED = {"init": {"pretrained"}, "early_stopping": {"val_seq_acc"}}  # needs a weights file; a seq2seq task


def train(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TRAIN, *args], capture_output=True, text=True, timeout=180, cwd=cwd,
                          env={**os.environ, **(env or {})})


def hydra_cfg(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


# --- folder names -----------------------------------------------------------------------------

def test_sweep_folder_is_named_by_the_command() -> None:
    one = sweep.sweep_name(sweep.command_overrides(["norm=none,layernorm", "seed=0,1"]))
    assert one == sweep.sweep_name(sweep.command_overrides(["seed=0,1", "norm=none,layernorm"]))  # order-free
    assert one.startswith("norm=none,layernorm_seed=0,1-") and len(one.rsplit("-", 1)[1]) == 8
    assert one != sweep.sweep_name(sweep.command_overrides(["norm=none,layernorm", "seed=0,1,2"]))
    assert sweep.sweep_name(sweep.command_overrides([])).startswith("default-")


def test_a_late_multirun_flag_still_sweeps(tmp_path: Path) -> None:
    # `train epochs=1 -m seed=0,1`: Hydra's parser took the overrides after -m for unrecognized arguments.
    outcome = train_in_process([*FAST, "-m", "optim.lr=0", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert outcome.code == 2 and "usage:" not in outcome.stderr
    assert "error: 2 job(s) failed" in outcome.stderr  # both jobs were composed, and refused for their lr
    assert not (tmp_path / "sweep").exists()


def test_job_folder_is_named_by_the_overrides_that_vary() -> None:
    command = sweep.command_overrides(["epochs=2", "norm=none,layernorm", "seed=0,1"])
    assert sweep.job_name(command, ["epochs=2", "norm=layernorm", "seed=1"]) == "norm=layernorm,seed=1"
    # hydra.sweep.dir given by hand: the command is not known to the job, so all overrides name it.
    assert sweep.job_name(sweep.command_overrides(["epochs=2", "seed=1"]), ["epochs=2", "seed=1"]) == "epochs=2,seed=1"
    unsafe = sweep.job_name(command, ["init=pretrained", "init.path=/a/b.pt"])
    assert "/" not in unsafe and unsafe.startswith("init.path=_a_b.pt,init=pretrained-")


def test_experiment_composes_its_sweep_folder() -> None:
    cfg = hydra_cfg("experiment=ablate_norm")
    assert str(cfg.hydra.sweep.dir).startswith("multirun/experiment=ablate_norm-")
    assert cfg.epochs == 15  # the preset's value wins over config.yaml's


# --- skip, refuse, set aside, contain a crash (in process) -------------------------------------

def finished_job(job_dir: Path, cfg: DictConfig, status: str = "completed") -> None:
    job_dir.mkdir(parents=True)
    (job_dir / "metrics.jsonl").write_text("{}\n")
    (job_dir / "summary.json").write_text(json.dumps({"status": status, "best": {"val_acc": 0.5, "val_loss": 1.0}}))
    (job_dir / ".hydra").mkdir()
    record = {"config": sweep.fingerprint(cfg), "settings": sweep.settings(cfg)}
    (job_dir / sweep.RESUME_RECORD).write_text(json.dumps(record))


def test_finished_job_is_skipped_with_its_objective(tmp_path: Path) -> None:
    cfg, failed = OmegaConf.create({"seed": 0}), []
    finished_job(tmp_path / "job", cfg)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "job").iterdir()}
    assert sweep.resume_job(tmp_path / "job", cfg, lambda _: pytest.fail("must not train"), failed) == 0.5  # best val_acc
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "job").iterdir()} == before and not failed


def test_a_skipped_job_returns_todays_objective_not_the_one_saved_when_it_finished(tmp_path: Path) -> None:
    """A char LM finished while its objective was val_acc, saved then in its record; a sweep
    rerun now minimises val_bpc, and must be told the job's val_bpc (the summary has both)."""
    cfg, job = OmegaConf.create({"seed": 0}), tmp_path / "job"
    finished_job(job, cfg)
    (job / "summary.json").write_text(json.dumps({"status": "completed", "best": {"val_bpc": 2.25, "val_acc": 0.4}}))
    (job / sweep.RESUME_RECORD).write_text(json.dumps({"config": sweep.fingerprint(cfg), "objective": 0.4,
                                                       "settings": sweep.settings(cfg)}))
    assert sweep.resume_job(job, cfg, lambda _: pytest.fail("must not train"), []) == 2.25


def test_finished_job_of_another_configuration_is_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    finished_job(tmp_path / "job", OmegaConf.create({"seed": 0, "optim": {"lr": 0.1}}))
    failed: list[str] = []
    now = OmegaConf.create({"seed": 1, "optim": {"lr": 0.1}, "logger": "csv"})
    assert sweep.resume_job(tmp_path / "job", now, lambda _: pytest.fail("must not train"), failed) is None
    assert failed == ["job"]
    assert "holds a finished run of another configuration (logger (new), seed 0 -> 1); it is kept" in capsys.readouterr().err
    assert json.loads((tmp_path / "job" / "summary.json").read_text())["status"] == "completed"


def test_unfinished_attempt_is_set_aside_and_rerun(tmp_path: Path) -> None:
    cfg, job = OmegaConf.create({"seed": 0}), tmp_path / "job"
    finished_job(job, cfg, status="interrupted")
    (job / "checkpoints").mkdir()
    (job / "tensorboard").mkdir()  # the loggers' files are the attempt's too: the rerun's must not mix with them
    (job / "metrics.csv").write_text("kind,epoch\n")
    (job / "curves.png").write_bytes(b"PNG")  # drawn for an interrupted run too

    def task(_: Any) -> float:
        assert not (job / "summary.json").exists() and not (job / "checkpoints").exists()
        assert not (job / "metrics.csv").exists() and not (job / "tensorboard").exists()
        (job / "summary.json").write_text(json.dumps({"status": "completed", "best": {}}))
        return 0.5

    assert sweep.resume_job(job, cfg, task, []) == 0.5
    assert sorted(p.name for p in (job / "previous" / "1").iterdir()) == [
        "checkpoints", "curves.png", "metrics.csv", "metrics.jsonl", "summary.json", "tensorboard"]
    record = json.loads((job / sweep.RESUME_RECORD).read_text())
    assert record == {"config": sweep.fingerprint(cfg), "settings": sweep.settings(cfg)}


def test_an_attempt_is_set_aside_past_the_highest_kept_one(tmp_path: Path) -> None:
    """previous/1 deleted (to free space), previous/2 kept: the next attempt goes to previous/3;
    counting the folders named previous/2 again, and the job failed on it at every rerun."""
    cfg, job = OmegaConf.create({"seed": 0}), tmp_path / "job"
    finished_job(job, cfg, status="interrupted")
    (job / "previous" / "2").mkdir(parents=True)
    assert sweep.resume_job(job, cfg, lambda _: 0.5, []) == 0.5
    assert sorted(path.name for path in (job / "previous").iterdir()) == ["2", "3"]
    assert (job / "previous" / "3" / "summary.json").is_file()


@pytest.mark.parametrize("resume", [None, "auto"], ids=["no resume", "resume=auto in the command"])
def test_interrupted_attempt_with_a_checkpoint_continues_from_it(resume: str | None, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Also under `train -m ... resume=auto` (a preemptible sweep launched again), which set the
    checkpoint aside and trained the job from the start."""
    cfg, job = OmegaConf.create({"seed": 0, "resume": resume}), tmp_path / "job"
    finished_job(job, cfg, status="interrupted")
    (job / "checkpoints").mkdir()
    (job / "checkpoints" / "index.json").write_text(json.dumps({"checkpoints": [{"file": "step_00000004.pt"}], "best": None}))

    def task(job_cfg: DictConfig) -> float:
        assert job_cfg.resume == "auto"  # run() then continues from the latest good checkpoint
        assert (job / "checkpoints").exists() and (job / "metrics.jsonl").exists()
        return 0.5

    assert sweep.resume_job(job, cfg, task, []) == 0.5
    assert not (job / "previous").exists() and cfg.resume == resume
    assert "continuing job from its latest checkpoint" in capsys.readouterr().out


def test_target_is_not_part_of_the_configuration(tmp_path: Path) -> None:
    """`_target_` is where a builder lives, not what the job is: moving it orphans no finished job,
    also one recorded while `_target_` still counted (its fingerprint then differs)."""
    before = OmegaConf.create({"seed": 0, "data": {"_target_": "trainer.data.old_place.build", "num_train": 8}})
    moved = OmegaConf.create({"seed": 0, "data": {"_target_": "trainer.data.new_place.build", "num_train": 8}})
    assert sweep.fingerprint(before) == sweep.fingerprint(moved)
    finished_job(tmp_path / "job", before)
    old_record = {"config": "0123456789abcdef", "objective": 0.75,  # records then kept the objective
                  "settings": {**sweep.settings(before), "data._target_": '"trainer.data.old_place.build"'}}
    (tmp_path / "job" / sweep.RESUME_RECORD).write_text(json.dumps(old_record))
    failed: list[str] = []
    assert sweep.resume_job(tmp_path / "job", moved, lambda _: pytest.fail("must not train"), failed) == 0.5
    assert not failed


@pytest.mark.parametrize("label_noise, skipped", [(0.0, True), (0.2, False)])
def test_a_key_added_by_an_upgrade_counts_only_when_set(tmp_path: Path, label_noise: float, skipped: bool,
                                                        make_cfg: Callable[..., DictConfig],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A job finished before `data.label_noise` existed (its record lacks the key) is still this
    job while the key holds its shipped default, 0.0; set to anything else, it is another job."""
    now = make_cfg(f"data.label_noise={label_noise}")
    finished_job(tmp_path / "job", now)
    before_upgrade = {key: value for key, value in sweep.settings(now).items() if key != "data.label_noise"}
    record = {"config": "0123456789abcdef", "objective": 0.75, "settings": before_upgrade}
    (tmp_path / "job" / sweep.RESUME_RECORD).write_text(json.dumps(record))
    failed: list[str] = []
    result = sweep.resume_job(tmp_path / "job", now, lambda _: pytest.fail("must not train"), failed)
    assert (result, failed) == ((0.5, []) if skipped else (None, ["job"]))
    if not skipped:
        assert "another configuration (data.label_noise (new))" in capsys.readouterr().err


def test_crash_is_contained_and_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "job").mkdir()
    failed: list[str] = []

    def task(_: Any) -> float:
        raise RuntimeError("boom")

    assert sweep.resume_job(tmp_path / "job", OmegaConf.create({}), task, failed) is None
    assert failed == ["job"] and "RuntimeError: boom" in (tmp_path / "job" / "error.txt").read_text()
    assert "error: job job crashed" in capsys.readouterr().err


def test_outside_a_multirun_the_job_function_runs_as_is() -> None:
    """The sweep wraps the job function (no call back into the CLI): a single run reaches it
    directly, once, with its config, and gets its result."""
    calls: list[Any] = []
    cfg = OmegaConf.create({"seed": 0})
    assert sweep.resumable(lambda c: calls.append(c) or 0.25)(cfg) == 0.25
    assert calls == [cfg]


def test_failures_are_marked_for_the_process_that_ends_the_sweep(tmp_path: Path) -> None:
    """Under the joblib launcher jobs run in worker processes: their failures reach the parent
    through marks in the sweep folder, which the report callback reads, and a rerun clears them."""
    failed_jobs = sweep.failed_jobs

    sweep_dir = tmp_path / "sweep"
    crashing = sweep_dir / "seed=1"
    (crashing / ".hydra").mkdir(parents=True)
    (crashing / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    worker_failures: list[str] = []  # a worker's own list: the parent never sees it

    def task(_: Any) -> float:
        raise RuntimeError("boom")

    assert sweep.resume_job(crashing, OmegaConf.create({}), task, worker_failures) is None
    assert sweep.marked_failures(sweep_dir) == ["seed=1"]
    before = list(failed_jobs)
    try:
        sweep.ReportCallback(plot=False).on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}}))
        assert failed_jobs == [*before, "seed=1"]
    finally:
        failed_jobs[:] = before
    assert sweep.resume_job(crashing, OmegaConf.create({}), lambda _: 0.5, []) == 0.5  # the rerun succeeds
    assert sweep.marked_failures(sweep_dir) == []


# --- presets and plugins -----------------------------------------------------------------------

# The one-group ablations; the evidence presets (tests/test_evidence.py) sweep across groups.
PRESETS = sorted(path.stem for path in (Path(CONF_DIR) / "experiment").glob("ablate_*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_sweeps_every_choice_of_its_group(preset: str) -> None:
    group = preset.removeprefix("ablate_")
    params = hydra_cfg(f"experiment={preset}").hydra.sweeper.params
    assert set(params) == {group, "seed"}
    assert set(str(params[group]).split(",")) == set(group_choices(group)) - NOT_ABLATED.get(group, set())
    assert str(params.seed) == "0,1,2"


def test_optuna_search_composes() -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = hydra_cfg("hparams_search=optuna")
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.hydra.sweeper.direction == "maximize"
    assert hydra_cfg("hparams_search=optuna", "hydra.sweeper.direction=minimize").hydra.sweeper.direction == "minimize"
    assert set(cfg.hydra.sweeper.params) == {"optim.lr", "optim.weight_decay", "regularisation.dropout"}
    assert str(cfg.hydra.sweeper.params["optim.lr"]).startswith("tag(log")
    assert cfg.regularisation.name == "dropout"


@pytest.mark.parametrize("launcher, target", [("joblib", "JoblibLauncher"), ("slurm", "SlurmLauncher")])
def test_launchers_compose(launcher: str, target: str) -> None:
    pytest.importorskip({"joblib": "hydra_plugins.hydra_joblib_launcher", "slurm": "hydra_plugins.hydra_submitit_launcher"}[launcher])
    cfg = hydra_cfg(f"hydra/launcher={launcher}", "experiment=ablate_clipping")
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":
        assert str(cfg.hydra.launcher.submitit_folder).startswith(str(cfg.hydra.sweep.dir))


# --- real sweeps, in a subprocess as a user runs them -------------------------------------------

def test_sweep_reports_and_resumes(tmp_path: Path) -> None:
    # Two jobs: a sweep of every combination of two keys is test_cli.py's (slow).
    args = ["-m", *FAST, "norm=none,layernorm"]
    first = train(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    [sweep_dir] = (tmp_path / "multirun").iterdir()
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["norm=layernorm", "norm=none"]
    assert {"report.md", "report.csv", "report.png"} <= {p.name for p in sweep_dir.iterdir()}
    assert "norm=layernorm" in (sweep_dir / "report.md").read_text() and "norm=none" in first.stdout

    (sweep_dir / "norm=none" / "summary.json").unlink()
    kept = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/*") if p.name in ("summary.json", "metrics.jsonl")}
    again = train("-m", "norm=none,layernorm", *FAST, cwd=tmp_path)  # same command, reordered
    assert again.returncode == 0, again.stderr
    assert [p.name for p in (tmp_path / "multirun").iterdir()] == [sweep_dir.name]
    # Killed after its last checkpoint: it continues from there (tests/test_kill_resume.py: exactly).
    assert again.stdout.count("skipped ") == 1 and "continuing norm=none" in again.stdout
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in kept.items() if "norm=none" not in str(path))
    assert json.loads((sweep_dir / "norm=none" / "summary.json").read_text())["status"] == "completed"
    assert not (sweep_dir / "norm=none" / "previous").exists()


@pytest.mark.slow  # two real sweeps; test_sweep_reports_and_resumes covers the path in the default run
def test_preset_runs_end_to_end(tmp_path: Path) -> None:
    result = train("-m", "experiment=ablate_clipping", "data=synthetic", "epochs=1", "max_steps=2", "seed=0",
                   "hydra.callbacks.report.metric=best_val_loss", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [sweep_dir] = (tmp_path / "multirun").iterdir()
    assert sweep_dir.name.startswith("data=synthetic_epochs=1_experiment=ablate_clipping_")
    text = (sweep_dir / "report.md").read_text()
    assert "Ranked by **best_val_loss**" in text
    assert all(f"clipping={choice}" in text for choice in ("none", "norm", "value"))


def test_crashing_job_does_not_stop_the_others_or_the_report(tmp_path: Path) -> None:
    result = train("-m", *FAST, "max_steps=2", "data._target_=crashing_data.build", "data.seed=0,1", cwd=tmp_path,
                   env=WITH_TESTS)
    assert result.returncode == 2 and "RuntimeError: crashing_data" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: 1 job(s) failed: data.seed=1"
    [sweep_dir] = (tmp_path / "multirun").iterdir()
    assert json.loads((sweep_dir / "data.seed=0" / "summary.json").read_text())["status"] == "completed"
    assert "| data.seed=1 | crashed |" in (sweep_dir / "report.md").read_text()


@pytest.mark.slow
def test_failed_job_under_the_joblib_launcher_fails_the_sweep(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    result = train("-m", *FAST, "max_steps=2", "data._target_=crashing_data.build", "data.seed=0,1,2",
                   "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", cwd=tmp_path,
                   env=WITH_TESTS)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: 1 job(s) failed: data.seed=1"
    [sweep_dir] = (tmp_path / "multirun").iterdir()
    assert "| data.seed=1 | crashed |" in (sweep_dir / "report.md").read_text()
    summaries = [json.loads((sweep_dir / f"data.seed={seed}" / "summary.json").read_text()) for seed in (0, 2)]
    assert all(s["status"] == "completed" and s["threads"] == 1 for s in summaries)  # 2 cores / 2 jobs, or OMP's 1


def test_another_command_into_a_sweep_folder_leaves_its_record(tmp_path: Path) -> None:
    """Hydra rewrites multirun.yaml whenever a sweep starts in the folder; the record of the sweep
    that made it comes back byte for byte, whether the later command's jobs run or are skipped."""
    sweep_dir = tmp_path / "sweep"
    first = train_in_process(["-m", *FAST, "max_steps=2", "curves=false", "seed=0", f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    assert first.code == 0, first.stderr
    record = (sweep_dir / "multirun.yaml").read_bytes()
    for _ in range(2):  # the second time, its job is skipped
        other = train_in_process(["-m", *FAST, "max_steps=2", "curves=false", "seed=1", f"hydra.sweep.dir={sweep_dir}"], tmp_path)
        assert other.code == 0, other.stderr
        assert (sweep_dir / "multirun.yaml").read_bytes() == record
    assert "skipped" in other.stdout and len([p for p in sweep_dir.iterdir() if p.is_dir()]) == 2


def test_bad_report_metric_stops_before_any_job(tmp_path: Path) -> None:
    result = train("-m", *FAST, "hydra.callbacks.report.metric=accuracy", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: hydra.callbacks.report.metric=accuracy is unknown; valid: " + ", ".join(METRICS)]
    assert not list(tmp_path.glob("multirun/*/*/summary.json"))


@pytest.mark.slow
def test_optuna_search_runs_and_resumes(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    args = ["-m", "hparams_search=optuna", *FAST, "max_steps=3", "hydra.sweeper.n_trials=2"]
    first = train(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    [sweep_dir] = (tmp_path / "multirun").iterdir()
    best = (sweep_dir / "optimization_results.yaml").read_text()
    assert (sweep_dir / "report.md").exists()
    again = train(*args, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("skipped ") == 2
    assert (sweep_dir / "optimization_results.yaml").read_text() == best


# --- the search's direction follows the metric its jobs return ----------------------------------

def _tensors_file(folder: Path, targets: "Any") -> Path:
    import torch

    file = folder / "arrays.pt"
    torch.save({"x_train": torch.randn(8, 3), "y_train": targets, "x_val": torch.randn(4, 3),
                "y_val": targets[:4]}, file)
    return file


@pytest.mark.parametrize(("overrides", "metric"), [
    ([], "val_acc"),                                                   # mnist1d: classification
    (["data=synthetic"], "val_acc"),
    (["data=timing"], "val_acc"),
    (["data=seq2seq", "data.num_train=64", "data.num_val=16", "data.num_test=0"], "val_acc"),
    (["data=adding", "data.num_train=64", "data.num_val=16"], "val_loss"),    # regression
    (["data=text", "data.max_chars=4000", "data.seq_len=16"], "val_bpc"),     # the character LM
    (["data=tensors", "data.path=FLOAT"], "val_loss"),                 # float targets: regression
    (["data=tensors", "data.path=INT"], "val_acc"),
])
def test_the_optuna_direction_follows_the_metric_each_job_returns(
        overrides: list[str], metric: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The direction is read from the config before any job runs; the data, built, must agree."""
    import torch

    from trainer.engine.parts import build_data
    from trainer.observe.metrics import objective
    from trainer.sweep.direction import objective_metric

    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    monkeypatch.setenv("TRAINER_DATA_DIR", str(tmp_path / "data"))
    files = {"FLOAT": lambda: _tensors_file(tmp_path, torch.randn(8, 1)),
             "INT": lambda: _tensors_file(tmp_path, torch.tensor([0, 1] * 4))}
    overrides = [f"data.path={files[o.split('=')[1]]()}" if o.startswith("data.path=") else o for o in overrides]
    cfg = hydra_cfg("hparams_search=optuna", *overrides)
    assert objective_metric(cfg.data) == metric
    assert cfg.hydra.sweeper.direction == ("maximize" if metric == "val_acc" else "minimize")
    if overrides[:1] == []:
        return  # mnist1d is generated by its package: the synthetic cases stand for classification
    data = build_data(cfg.data)
    best = {"val_loss": 0.5, "val_acc": None if data.task == "regression" else 0.9,
            "val_bpc": 0.7 if data.char_lm else None}
    assert objective(best) == best[metric]  # the number the job returns is that metric


@pytest.mark.parametrize(("show", "data", "direction"), [
    ("hydra", "synthetic", "maximize"), ("hydra", "text", "minimize"), ("all", "text", "minimize")])
def test_the_shown_resolved_config_holds_the_search_direction(show: str, data: str, direction: str,
                                                               tmp_path: Path) -> None:
    """`train --cfg hydra --resolve hparams_search=optuna` prints the hydra node alone: Hydra deletes
    the job's keys before resolving, so the direction cannot come from an interpolation of `data`."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    shown = train_in_process(["--cfg", show, "--resolve", "hparams_search=optuna", f"data={data}"], tmp_path)
    assert shown.code == 0, shown.stderr
    assert f"    direction: {direction}\n" in shown.stdout
    job = train_in_process(["--cfg", "job", "--resolve", "hparams_search=optuna", f"data={data}"], tmp_path)
    assert job.code == 0 and "direction" not in job.stdout, job.stderr  # the job's config has no hydra node


def test_the_direction_without_a_config_to_read_says_what_to_set() -> None:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf.errors import InterpolationResolutionError

    HydraConfig.instance().cfg = None  # type: ignore[assignment]  # as outside any train command
    alone = OmegaConf.create({"hydra": {"sweeper": {"direction": "${objective_direction:}"}}})
    with pytest.raises(InterpolationResolutionError, match="set hydra.sweeper.direction=maximize or minimize"):
        OmegaConf.resolve(alone)


def test_the_report_names_a_job_refused_on_a_config_error_by_its_configuration(tmp_path: Path) -> None:
    """A job refused on a bad value leaves no folder; its row and the list of varying overrides come
    from its failure mark. It used to have no overrides at all: its row read "all jobs" and every
    override of the other jobs counted as varying, so each row listed the whole command."""
    sweep_dir = tmp_path / "sweep"
    outcome = train_in_process(["-m", *FAST, "max_steps=2", "curves=false", "model=mlp", "model.width=16", "optim.lr=0.01,0",
                                "+hydra.callbacks.report.plot=false", f"hydra.sweep.dir={sweep_dir}"], tmp_path)
    assert outcome.code == 2 and "optim.lr=0 must be > 0" in outcome.stderr, outcome.stderr
    with (sweep_dir / "report.csv").open() as file:
        rows = {row["configuration"]: row for row in csv.DictReader(file)}
    assert set(rows) == {"optim.lr=0.01", "optim.lr=0"}
    assert rows["optim.lr=0"]["n_failed"] == "1" and rows["optim.lr=0.01"]["n_failed"] == "0"
    assert "the overrides that vary across the sweep, seed excluded: optim.lr)" in (sweep_dir / "report.md").read_text()


def test_a_sweep_whose_jobs_continued_other_folders_writes_no_report(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`train -m resume=runs/a,runs/b epochs=100`: each job continues its run there and leaves no
    folder in the sweep's; the report callback raised "holds no sweep jobs", which Hydra printed as
    a two-line UserWarning."""
    monkeypatch.setattr(sweep, "failed_jobs", [])  # this sweep's: none failed (the list is the process's)
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "multirun.yaml").write_text("hydra: {}\n")
    sweep.ReportCallback(plot=False).on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}}))
    assert capsys.readouterr().out == f"no report: no job of this sweep kept a run in {tmp_path / 'sweep'}\n"
    assert [path.name for path in (tmp_path / "sweep").iterdir()] == ["multirun.yaml"]


# --- a refused sweep command changes nothing --------------------------------------------------

def _state(folder: Path) -> dict[str, tuple[bytes, int] | str]:
    """Every file's bytes and mtime, and every folder (with the sweep folder's own mtime): what
    "left exactly as it was" means."""
    state: dict[str, tuple[bytes, int] | str] = {".": str(folder.stat().st_mtime_ns)}
    for path in sorted(folder.rglob("*")):
        state[str(path.relative_to(folder))] = (path.read_bytes(), path.stat().st_mtime_ns) if path.is_file() else "folder"
    return state


REFUSED_SWEEPS = {
    "every job stops on a bad value": ["seed=0,1", "optim.lr=0"],
    "a swept choice that does not exist (after Hydra wrote multirun.yaml)": ["seed=0", "norm=none,batchnrom"],
    "a bad seed among good ones already finished": ["seed=0,x"],
}


@pytest.mark.parametrize("args", REFUSED_SWEEPS.values(), ids=REFUSED_SWEEPS.keys())
def test_a_refused_sweep_command_leaves_the_sweep_folder_exactly_as_it_was(args: list[str], tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    common = [*FAST, "max_steps=2", "curves=false", f"hydra.sweep.dir={sweep_dir}"]
    first = train_in_process(["-m", *common, "seed=0"], tmp_path)
    assert first.code == 0, first.stderr
    before = _state(sweep_dir)
    assert {"multirun.yaml", "report.md", "report.csv"} <= set(before)
    refused = train_in_process(["-m", *common, *args], tmp_path)
    assert refused.code == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("error: ")
    assert _state(sweep_dir) == before  # multirun.yaml, the report, the job: bytes and times; no .failed/ marks
    again = train_in_process(["-m", *common, "seed=0"], tmp_path)  # the refusal left no failure behind to report
    assert again.code == 0 and "skipped" in again.stdout, again.stderr


@pytest.mark.parametrize("args", list(REFUSED_SWEEPS.values())[:2], ids=list(REFUSED_SWEEPS)[:2])  # seed=0 would train
def test_a_refused_sweep_command_leaves_no_new_folder(args: list[str], tmp_path: Path) -> None:
    refused = train_in_process(["-m", *FAST, "max_steps=2", "curves=false", *args], tmp_path)
    assert refused.code == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert not (tmp_path / "multirun").exists()


def test_a_sweep_into_a_folder_of_other_files_is_refused_before_it_writes(tmp_path: Path) -> None:
    """hydra.sweep.dir=. in a project: its report.md, and a folder that happens to share the name
    of the sweep's failure marks, must not be overwritten or removed."""
    project = tmp_path / "project"
    (project / ".failed").mkdir(parents=True)
    (project / ".failed" / "notes.txt").write_text("mine\n")
    (project / "report.md").write_text("# my report\n")
    before = _state(project)
    refused = train_in_process(["-m", *FAST, "max_steps=2", "hydra.sweep.dir=.", "seed=0,1"], project)
    assert refused.code == 2 and "Traceback" not in refused.stderr, refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: hydra.sweep.dir={project} holds files and is not a sweep's folder") and "new or empty" in line
    assert _state(project) == before


@pytest.mark.parametrize("record", ["multirun.yaml", "optimization_results.yaml", "seed=0/.hydra/resume.json"])
def test_a_folder_an_earlier_sweep_wrote_in_is_a_sweep_folder(record: str, tmp_path: Path) -> None:
    """Hydra's basic sweeper leaves multirun.yaml, the Optuna sweeper optimization_results.yaml,
    and a sweep killed before either its jobs' records: a later command may add to each."""
    from trainer.observe.run_folder import refuse_foreign_sweep_folder

    (tmp_path / record).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / record).write_text("{}\n")
    (tmp_path / "report.md").write_text("# the sweep's report\n")
    refuse_foreign_sweep_folder(tmp_path)  # returns: no SystemExit
    (tmp_path / record).unlink()
    with pytest.raises(SystemExit):
        refuse_foreign_sweep_folder(tmp_path)


def test_a_sweep_into_an_empty_folder_runs(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    swept = train_in_process(["-m", *FAST, "max_steps=2", "curves=false", f"hydra.sweep.dir={tmp_path / 'empty'}", "seed=0"],
                             tmp_path)
    assert swept.code == 0, swept.stderr
    assert (tmp_path / "empty" / "multirun.yaml").is_file() and len(list((tmp_path / "empty").glob("*/summary.json"))) == 1


def test_a_search_whose_every_trial_is_refused_says_so_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    outcome = train_in_process(["-m", "hparams_search=optuna", *FAST, "max_steps=2", "curves=false", "optim.lr=0",
                                "hydra.sweeper.n_trials=2"], tmp_path)
    assert outcome.code == 2 and "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.stderr.strip().splitlines()[-1].startswith("error: every trial of the search failed: ")
    assert not (tmp_path / "multirun").exists()


def test_a_refusal_reads_the_shipped_defaults_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished job of another configuration recorded before an upgrade: the comparison and the
    refusal's list of differences come from one reading of the shipped config."""
    from trainer import config

    cfg = OmegaConf.create({"seed": 0, "norm": {"name": "none"}})
    finished_job(tmp_path / "job", cfg)
    record = json.loads((tmp_path / "job" / sweep.RESUME_RECORD).read_text())
    record["config"] = "an older digest"
    (tmp_path / "job" / sweep.RESUME_RECORD).write_text(json.dumps(record))
    calls = []
    real = config.shipped_defaults
    monkeypatch.setattr(config, "shipped_defaults", lambda cfg: calls.append(1) or real(cfg))
    now = OmegaConf.create({"seed": 1, "norm": {"name": "none"}})
    assert sweep.resume_job(tmp_path / "job", now, lambda _: pytest.fail("must not train"), []) is None
    assert len(calls) == 1


def test_a_worker_process_removes_the_job_folder_it_made_for_a_refused_job(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A launcher's worker (joblib) never sees the sweep start: it notes what existed as each job begins."""
    from trainer.observe import run_folder

    monkeypatch.setattr(run_folder, "_sweep", None)
    monkeypatch.setattr(run_folder, "_existed", set())
    monkeypatch.setattr(run_folder, "_recorded", False)
    sweep_dir = tmp_path / "sweep"
    new, earlier = sweep_dir / "seed=1", sweep_dir / "seed=0"
    (earlier / ".hydra").mkdir(parents=True)  # an earlier attempt's record: the folder is not this command's
    new.mkdir()  # as Hydra makes it just before the job
    for job in (new, earlier):
        run_folder.note_job_folder(job)
        (job / ".claimed").touch()
        run_folder.discard_if_unused(job)
    assert not new.exists() and earlier.is_dir() and sweep_dir.is_dir()


@pytest.mark.slow
def test_a_refused_sweep_under_the_joblib_launcher_changes_nothing(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep_dir = tmp_path / "sweep"
    common = [*FAST, "max_steps=2", "curves=false", f"hydra.sweep.dir={sweep_dir}"]
    assert train("-m", *common, "seed=0", cwd=tmp_path).returncode == 0
    before = _state(sweep_dir)
    refused = train("-m", *common, "seed=0,1", "optim.lr=0", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert _state(sweep_dir) == before  # no job folders left by the workers, no marks, no report


@pytest.mark.parametrize("where", ["file", "file/sub"])
def test_a_file_where_the_sweep_folder_goes_is_one_line_and_left_alone(where: str, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("the user's own file\n")
    outcome = train_in_process(["-m", *FAST, "max_steps=2", "curves=false", f"hydra.sweep.dir={tmp_path / where}"], tmp_path)
    assert outcome.code == 2 and "Traceback" not in outcome.stderr, outcome.stderr
    assert len(outcome.stderr.strip().splitlines()) == 1 and outcome.stderr.startswith("error: ")
    assert (tmp_path / "file").read_text() == "the user's own file\n"
