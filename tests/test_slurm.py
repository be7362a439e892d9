"""SLURM without a cluster: a task's variables read as torchrun's (engine/slurm.py), the launcher
preset, and a sweep job that a SLURM job's tasks train together (rank 0 decides, sweep.shared_job).
The 2-task run itself, with fake SLURM variables, is in test_distributed.py beside the torchrun one."""
from __future__ import annotations

import json
import os
import signal
import time
from functools import partial
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from in_process import train_in_process
from omegaconf import DictConfig, OmegaConf
from ranks import call_on_ranks

from helpers import CONF_DIR
from trainer.engine import distributed, slurm
from trainer.engine.signals import StopSignals
from trainer.sweep import jobs as sweep

# What srun gives task 1 of a job of 2 nodes x 2 tasks (task 1: node 0's second task).
TASK = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "4", "SLURM_PROCID": "1", "SLURM_LOCALID": "1",
        "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "gpu[07-08]"}


@pytest.mark.parametrize(("nodelist", "first"), [
    ("localhost", "localhost"),
    ("node07", "node07"),
    ("node[01-03,07]", "node01"),  # ranges and single numbers, zero padding kept
    ("node[7,1-3]", "node7"),  # Slurm writes them sorted; the first written is the first host
    ("gpu5,node[01-02]", "gpu5"),  # a comma outside brackets separates hosts
    ("node[01-02],gpu5", "node01"),
    ("rack[2-3]-n[10-11]", "rack2-n10"),  # several brackets in one name
    ("gpu-[12]", "gpu-12"),
])
def test_the_first_host_of_a_node_list(nodelist: str, first: str) -> None:
    assert slurm.first_host(nodelist) == first


def test_a_task_reads_as_a_torchrun_worker() -> None:
    assert slurm.torchrun_env(dict(TASK)) == {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                                              "MASTER_ADDR": "gpu07", "MASTER_PORT": str(slurm.master_port("4242"))}
    # Every task of the job meets rank 0 at the same address; another job (an array task) elsewhere.
    assert {slurm.torchrun_env({**TASK, "SLURM_PROCID": str(rank)})["MASTER_PORT"] for rank in range(4)} == {
        str(slurm.master_port("4242"))}
    assert slurm.master_port("4243") != slurm.master_port("4242")
    assert all(slurm.PORT_BASE <= slurm.master_port(str(job)) < 32768 for job in (0, 4242, 10**9 + 7))


@pytest.mark.parametrize(("changes", "expected"), [
    ({"SLURM_STEP_NODELIST": "node[3-4]"}, {"MASTER_ADDR": "node3"}),  # the step's nodes (srun) over the job's
    ({"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}, {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}),  # the job's own
    ({"SLURM_LOCALID": "0", "SLURM_PROCID": "2", "SLURM_NODEID": "1"}, {"RANK": "2", "LOCAL_RANK": "0"}),  # node 1's first task
    ({"SLURM_STEP_NUM_TASKS": "2"}, {"WORLD_SIZE": "2"}),  # a step of 2 tasks in a job of 4: the step trains
])
def test_what_a_task_takes_from_where(changes: dict[str, str], expected: dict[str, str]) -> None:
    variables = slurm.torchrun_env({**TASK, **changes})
    assert {key: variables[key] for key in expected} == expected


@pytest.mark.parametrize("environ", [
    {**TASK, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"},  # torchrun's workers (srun torchrun ...): torchrun decides
    {**TASK, "WORLD_SIZE": "2"},
    {**TASK, "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"},  # a job of one task: a plain run
    {key: value for key, value in TASK.items() if key != "SLURM_PROCID"},
    # The batch script itself, or an salloc shell: SLURM_PROCID and the allocation's task count,
    # but no job step (srun) started it; joining would wait for tasks that never start.
    {key: value for key, value in TASK.items() if key != "SLURM_STEP_ID"},
    {**TASK, "SLURM_STEP_NUM_TASKS": "1"},  # an interactive step of one task inside a 4-task allocation
    {},  # no SLURM
])
def test_where_slurm_is_not_asked(environ: dict[str, str]) -> None:
    before = dict(environ)
    assert slurm.adopt(environ) is False and environ == before


def test_adopt_writes_torchruns_variables() -> None:
    environ = dict(TASK)
    assert slurm.adopt(environ) is True
    assert (environ["RANK"], environ["WORLD_SIZE"], environ["LOCAL_RANK"]) == ("1", "4", "1")
    assert slurm.adopt(environ) is False  # adopted once: torchrun's variables are now there


def test_slurms_time_limit_warning_stops_a_run_as_sigterm_does() -> None:
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGUSR2)  # submitit's --signal=USR2@signal_delay_s
        assert signals.received == signal.SIGUSR2 and signals.name == "SIGUSR2"


def test_the_preset_runs_a_process_per_gpu_on_each_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4",
                                           "hydra.launcher.nodes=2"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # the launcher's keys name hydra.* (the sweep folder)
    try:
        launcher = instantiate(cfg.hydra.launcher)
    finally:
        HydraConfig.instance().cfg = None  # type: ignore[assignment]
    params = launcher.params
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (2, 4, 4)
    assert params["setup"] == [f"export OMP_NUM_THREADS={params['cpus_per_task']}"]
    # The batch script submitit would hand sbatch (its executor wants an `srun` on PATH: a stand-in).
    (tmp_path / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    script = batch_script(params, tmp_path / "submitit")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --signal=USR2@120", "export OMP_NUM_THREADS=8"):
        assert line in script.splitlines(), line
    assert "\nsrun " in script  # one process per task, each with SLURM_PROCID and the rest


def batch_script(params: dict, folder: Path) -> str:
    """The sbatch file for `params`, the launcher's keys passed to submitit as the launcher does
    (hydra_submitit_launcher's BaseSubmititLauncher.launch), its logs in `folder`."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = dict(params)
    del params["submitit_folder"]  # the sweep folder's, relative to where the command runs
    executor = submitit.AutoExecutor(cluster="slurm", folder=folder,
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{key if key in base else f"slurm_{key}": value for key, value in params.items()})
    return executor._executor._make_submission_file_text("python -u -m submitit.core._submit FOLDER", "job")


def test_the_launcher_config_prints_without_a_cluster(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    shown = train_in_process(["hydra/launcher=slurm", "--cfg", "hydra", "-p", "hydra.launcher"], tmp_path)
    assert shown.code == 0, shown.stderr
    assert "SlurmLauncher" in shown.stdout and "tasks_per_node: ${.gpus_per_node}" in shown.stdout
    assert not list(tmp_path.iterdir())  # nothing submitted, nothing written
    with_m = train_in_process(["-m", "hydra/launcher=slurm", "--cfg", "hydra"], tmp_path)  # Hydra: a ValueError's traceback
    assert (with_m.code, with_m.stderr) == (
        2, "error: -m and --cfg do not go together; leave out -m: `train ... --cfg ...` shows what every job of the sweep gets\n")


# --- a sweep job trained by the tasks of one SLURM job (the submitit launcher) ---------------------------

CFG = OmegaConf.create({"seed": 0, "resume": None})


def _finished(job: Path) -> None:
    job.mkdir(parents=True)
    (job / "summary.json").write_text(json.dumps({"status": "completed", "best": {"val_acc": 0.5}}))
    (job / ".hydra").mkdir()
    (job / sweep.RESUME_RECORD).write_text(json.dumps({"config": sweep.fingerprint(CFG),
                                                       "settings": sweep.settings(CFG)}))


def _interrupted(job: Path) -> None:
    _finished(job)
    (job / "summary.json").write_text(json.dumps({"status": "interrupted", "best": {}}))
    (job / "checkpoints").mkdir()
    (job / "checkpoints" / "index.json").write_text(json.dumps({"checkpoints": [{"file": "step_00000004.pt"}], "best": None}))


def _shared_job(ranks: distributed.Context, job: Path) -> tuple[float | None, str | None]:
    """A rank's result, and the `resume` it trained with (None: it did not train)."""
    trained: list[DictConfig] = []

    def task(cfg: DictConfig) -> float:
        trained.append(cfg)
        if ranks.is_main:  # the run rank 0 writes as it trains: a rank deciding late by itself would skip the job
            (job / "summary.json").write_text(json.dumps({"status": "completed", "best": {"val_acc": 0.5}}))
        return 0.5

    if not ranks.is_main:
        time.sleep(0.3)  # rank 1 comes to the job after rank 0 has started it
    result = sweep.shared_job(job, CFG, task, ranks)
    return result, (trained[0].resume or "none") if trained else None


@pytest.mark.parametrize(("prepare", "trains", "result"), [
    (None, "none", 0.5),  # a new job: both train, from the start
    (_interrupted, "auto", 0.5),  # an interrupted one: both continue it (resume=auto)
    (_finished, None, 0.5),  # a finished one: neither trains; rank 0 returns its objective (best val_acc)
])
def test_the_tasks_of_a_job_follow_rank_0s_decision(tmp_path: Path, prepare, trains: str | None,  # noqa: ANN001
                                                      result: float) -> None:
    job = tmp_path / "job"
    if prepare is not None:
        prepare(job)
    rank0, rank1 = call_on_ranks(partial(_shared_job, job=job))
    assert rank0 == (result, trains) and rank1 == (result if trains else None, trains)
    assert (job / sweep.RESUME_RECORD).is_file()  # rank 0 recorded the job's configuration
    assert not (job / "previous").exists()  # the interrupted attempt continues in place
