"""Data-parallel training under torchrun: 2 CPU processes on gloo, one thread each.

The ranks are forked from this process with torchrun's environment (tests/ranks.py), so each
2-rank run costs seconds, not the ~10 s per process of starting Python and torch here; one slow
test runs the real `torchrun`.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch
from in_process import train_in_process
from ranks import Ranks, call_on_ranks, train_ranks
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from trainer.engine import checkpoint, distributed, launch, slurm

# A tiny run: 128 training samples, 8 steps of a global batch of 32 in 2 epochs; no batch
# statistics (norm=none), so 2 x 16 samples give the same gradient as 32 in one process; a
# constant LR, so that max_steps (which sets the schedule's length) may stop a run to resume.
BASE = ["data=synthetic", "data.num_train=128", "data.num_val=64", "data.num_test=64", "model=mlp",
        "model.width=32", "norm=none", "sched=constant", "device=cpu", "precision=fp32", "epochs=2", "log_every=2", "curves=false",
        "trainer.threads=1"]
PER_RANK = "batch_size=16"
# Every test gets the one-process reference run first: it also imports, in this process, what the forked ranks need.
pytestmark = pytest.mark.usefixtures("one_process")


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["kind"] == kind]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    payload, _path, _notices = checkpoint.latest_good(run_dir)
    assert payload is not None
    return payload["model"]


def assert_same_training(one: Path, two: Path) -> None:
    """Two runs took the same steps: their losses, gradient norms, validation figures and weights agree
    within float tolerance (sums over 2 x 16 samples are added in another order than over 32)."""
    for kind, keys in (("step", ("train_loss", "grad_norm")), ("epoch", ("train_loss", "val_loss", "val_acc"))):
        expected, got = records(one, kind), records(two, kind)
        assert [r["step"] for r in got] == [r["step"] for r in expected]
        for key in keys:
            assert [r[key] for r in got] == pytest.approx([r[key] for r in expected], rel=1e-4, abs=1e-6), (kind, key)
    weights_one, weights_two = final_weights(one), final_weights(two)
    for name, tensor in weights_one.items():
        torch.testing.assert_close(weights_two[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one process, batch 32. Run here first, it also loads every module the forked ranks use."""
    cwd = tmp_path_factory.mktemp("one")
    outcome = train_in_process([*BASE, "batch_size=32", "hydra.run.dir=run"], cwd)
    assert outcome.code == 0, outcome.stderr
    return cwd / "run"


@pytest.mark.parametrize("per_rank", [[PER_RANK], ["batch_size=8", "trainer.accumulate=2"]], ids=["batch", "accumulated"])
def test_two_ranks_train_as_one_process_with_the_global_batch(one_process: Path, tmp_path: Path, per_rank: list[str]) -> None:
    # A checkpoint every 2 steps under the shipped one-second floor: the ranks' clocks would each
    # decide alone, so a run of several processes writes every one due (steps 2 to 8, the last 2 kept).
    rank0, rank1 = train_ranks([*BASE, *per_rank, "checkpoint.every_steps=2"], tmp_path)
    assert (rank0.code, rank1.code) == (0, 0), rank0.stderr + rank1.stderr
    # One run folder for both ranks, though Hydra's ${now:} names it by each process's own clock.
    folders = [path for path in (tmp_path / "outputs").glob("*/*")]
    assert len(folders) == 1 and folders[0].is_dir()
    assert_same_training(one_process, folders[0])
    summary = json.loads((folders[0] / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 8 and summary["world_size"] == 2
    assert [entry["step"] for entry in checkpoint.read_index(folders[0] / checkpoint.FOLDER)["checkpoints"]] == [6, 8]
    assert summary["test"]["acc"] == pytest.approx(json.loads((one_process / "summary.json").read_text())["test"]["acc"])
    # Rank 0 alone shows the run; rank 1 prints nothing.
    assert f"run folder {folders[0]}" in rank0.stdout
    assert rank1.stdout == "" and rank1.stderr == ""


def test_resume_auto_under_two_ranks(one_process: Path, tmp_path: Path) -> None:
    first = train_ranks([*BASE, PER_RANK, "max_steps=4", "hydra.run.dir=run"], tmp_path)
    assert [outcome.code for outcome in first] == [0, 0]
    # Another number of processes would change the global batch: refused, naming both counts.
    refused = train_in_process([*BASE, PER_RANK, "hydra.run.dir=run", "resume=auto"], tmp_path)
    assert refused.code == 2
    assert refused.stderr.startswith("error: cannot resume: the checkpoint was trained by 2 process(es), this run has 1;")
    assert "resume it with processes=2" in refused.stderr and len(refused.stderr.splitlines()) == 1
    resumed = train_ranks([*BASE, PER_RANK, "hydra.run.dir=run", "resume=auto"], tmp_path)
    assert [outcome.code for outcome in resumed] == [0, 0], resumed[0].stderr + resumed[1].stderr
    assert "resuming" in resumed[0].stdout and "from step 4" in resumed[0].stdout
    assert_same_training(one_process, tmp_path / "run")


def test_a_batchnorm_run_of_two_ranks_records_the_evaluation_its_checkpoint_gives(tmp_path: Path) -> None:
    """Each rank's running statistics move with its own part of the last batch: the evaluation of
    rank 1's shard used statistics no checkpoint holds, so the recorded val_loss was not that of the
    weights written (about 0.1% off here), and best.pt was chosen by it."""
    from hydra import compose, initialize_config_dir

    from helpers import CONF_DIR
    from trainer.engine.smoke_check import check_round_trip

    args = [*BASE, PER_RANK, "norm=batchnorm", "max_steps=4"]
    ranks = train_ranks([*args, "hydra.run.dir=run"], tmp_path)
    assert [outcome.code for outcome in ranks] == [0, 0], ranks[0].stderr + ranks[1].stderr
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=args)
    assert "reloaded" in check_round_trip(cfg, tmp_path / "run")  # one process, the checkpoint's weights and statistics


def test_smoke_with_two_processes_trains_two_ranks_and_checks_their_run(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`smoke=true processes=2` smoke-ran one process: the process group, the sharded batches and
    the all-reduces went unchecked. The ranks are forked here instead of started by the elastic
    launcher (fresh interpreters, several seconds each; the slow test below runs the real one)."""
    from hydra import compose, initialize_config_dir

    from helpers import CONF_DIR
    from trainer.engine import smoke

    started: list[dict] = []

    def forked_ranks(processes: int, overrides: list[str], run_dir: Path, resume: str | None) -> dict:
        outcomes = train_ranks([*overrides, f"hydra.run.dir={run_dir}"], tmp_path, world_size=processes)
        assert [outcome.code for outcome in outcomes] == [0] * processes, outcomes[0].stderr + outcomes[1].stderr
        started.append(json.loads((run_dir / "summary.json").read_text()))
        return started[-1]

    monkeypatch.setattr(launch, "train_processes", forked_ranks)
    overrides = [*BASE, PER_RANK, "norm=batchnorm", "smoke=true", "processes=2"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    verdict = smoke.smoke_run(cfg, overrides)
    assert verdict.startswith("smoke ok: 4 steps in 2 epochs on 2 processes") and "reloaded" in verdict, verdict
    [summary] = started
    assert summary["world_size"] == 2 and summary["steps"] == 4  # shrunk: 2 epochs of 2 global batches
    assert not smoke.is_smoke_rank()  # the mark was for the ranks only


@pytest.mark.slow
def test_smoke_with_two_processes_runs_the_real_launcher(tmp_path: Path) -> None:
    result = _train([*BASE, PER_RANK, "smoke=true", "processes=2"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "on 2 processes" in result.stdout.splitlines()[-1]
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("summary.json"))


def slurm_task(rank: int, world_size: int, _port: int, job_id: int) -> dict[str, str]:
    """What srun gives task `rank` of a one-node job of `world_size` tasks: no torchrun variable."""
    return {"SLURM_JOB_ID": str(job_id), "SLURM_STEP_ID": "0", "SLURM_NTASKS": str(world_size), "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "localhost"}


def job_with_a_free_port() -> int:
    """A job id whose rendezvous port (engine/slurm.py derives it from the id) is free here."""
    for job_id in range(os.getpid(), os.getpid() + slurm.PORT_SPAN):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", slurm.master_port(str(job_id))))
            except OSError:
                continue
        return job_id
    raise AssertionError("no free port in engine/slurm.py's range")


def test_the_tasks_of_a_slurm_job_train_as_torchruns_workers(one_process: Path, tmp_path: Path) -> None:
    # `srun --ntasks=2 train ...`: the ranks and the rendezvous come from SLURM's variables alone.
    rank0, rank1 = train_ranks([*BASE, PER_RANK], tmp_path, env=partial(slurm_task, job_id=job_with_a_free_port()))
    assert (rank0.code, rank1.code) == (0, 0), rank0.stderr + rank1.stderr
    folders = list((tmp_path / "outputs").glob("*/*"))
    assert len(folders) == 1  # one run folder, rank 0's
    assert_same_training(one_process, folders[0])
    summary = json.loads((folders[0] / "summary.json").read_text())
    assert (summary["status"], summary["world_size"]) == ("completed", 2)
    assert rank1.stdout == "" and rank1.stderr == ""


# Started in every interpreter on PYTHONPATH: a task of submitit's local executor gets the SLURM
# variables srun would give the same task on a cluster (the local executor sets its own names).
AS_SLURM_TASKS = """import os
if "SUBMITIT_LOCAL_GLOBALID" in os.environ:
    os.environ.update(SLURM_JOB_ID=os.environ["SUBMITIT_LOCAL_JOB_ID"], SLURM_STEP_ID="0",
                      SLURM_NTASKS=os.environ["SUBMITIT_LOCAL_NTASKS"],
                      SLURM_PROCID=os.environ["SUBMITIT_LOCAL_GLOBALID"], SLURM_LOCALID=os.environ["SUBMITIT_LOCAL_LOCALID"],
                      SLURM_NODEID="0", SLURM_JOB_NODELIST="localhost")
"""


@pytest.mark.slow
def test_the_submitit_launcher_trains_each_job_on_its_tasks(one_process: Path, tmp_path: Path) -> None:
    # Hydra's submitit launcher as on SLURM (pickled job, one process per task running the job
    # function, hydra.launcher.tasks_per_node=2), on submitit's local executor instead of sbatch.
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(AS_SLURM_TASKS)
    command = ["-m", *BASE, PER_RANK, "seed=0,1", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
               "hydra.launcher.timeout_min=10", "hydra.sweep.dir=sweep"]
    first = _train(command, tmp_path, extra_path=tmp_path / "site")
    assert first.returncode == 0, first.stderr
    jobs = sorted(path for path in (tmp_path / "sweep").iterdir() if (path / "summary.json").is_file())
    summaries = [json.loads((job / "summary.json").read_text()) for job in jobs]
    assert [(s["status"], s["world_size"], s["seed"]) for s in summaries] == [("completed", 2, 0), ("completed", 2, 1)]
    assert_same_training(one_process, jobs[0])  # the 2 tasks of job seed=0 trained as one process at the global batch
    assert (tmp_path / "sweep" / "report.md").is_file()
    written = {job: (job / "summary.json").stat().st_mtime_ns for job in jobs}
    again = _train(command, tmp_path, extra_path=tmp_path / "site")  # both finished: every task skips them
    assert again.returncode == 0, again.stderr
    assert {job: (job / "summary.json").stat().st_mtime_ns for job in jobs} == written


@pytest.mark.parametrize(("override", "failing"), [
    (["data._target_=failing_rank_data.build"], 1),  # rank 1 alone cannot read its data
    (["optim.lr=0"], 0),  # every rank refuses the value: rank 0 alone says so
    (["smoke=true"], 0),  # one-process commands, refused under torchrun
    (["-m", "seed=0,1"], 0),
    (["processes=3"], 0),  # torchrun started 2
    (["norm=batchnorm", "norm.sync=true"], 0),  # PyTorch's SyncBatchNorm refuses CPU tensors
])
def test_an_error_on_any_rank_stops_every_rank_with_one_line(tmp_path: Path, override: list[str], failing: int) -> None:
    flags = [arg for arg in override if arg.startswith("-")]  # Hydra's options come before the overrides
    outcomes = train_ranks([*flags, *BASE, PER_RANK, *(arg for arg in override if arg not in flags)], tmp_path, timeout=60)
    assert [outcome.code for outcome in outcomes] == [2, 2]
    lines = [line for outcome in outcomes for line in outcome.stderr.splitlines()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and outcomes[failing].stderr == lines[0] + "\n"
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()  # no run folder left behind


def test_sigterm_on_one_rank_stops_every_rank_after_the_same_step(tmp_path: Path) -> None:
    # One long epoch (about 600 steps): the signal arrives mid-epoch, and the interrupt writes the only checkpoint.
    job = Ranks([*BASE, PER_RANK, "data.num_train=20000", "epochs=1", "log_every=1", "hydra.run.dir=run"], tmp_path)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while not (metrics.exists() and '"kind": "step"' in metrics.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(job.processes[1].pid, signal.SIGTERM)  # one rank only, as on a node that is preempted first
    outcomes = job.wait()
    assert [outcome.code for outcome in outcomes] == [128 + signal.SIGTERM] * 2
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    listed = checkpoint.read_index(tmp_path / "run" / "checkpoints")["checkpoints"]
    assert summary["status"] == "interrupted" and 0 < summary["steps"] < 600
    assert [entry["step"] for entry in listed] == [summary["steps"]]
    assert summary["message"] == f"stopped by SIGTERM at step {summary['steps']}"


# A stand-in for torchrun's agent: it starts a "rank" (this test's own code, under the agent's
# TORCHELASTIC_RUN_ID) and passes its lines on; the rank notes a SIGTERM in a file, as train's
# handler would stop the run.
AGENT = """
import os, subprocess, sys, time
rank = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env={**os.environ, "TORCHELASTIC_RUN_ID": "x"},
                        stdout=subprocess.PIPE, text=True)
print(rank.stdout.readline(), end="", flush=True)
time.sleep(120)
"""
RANK = """
import os, pathlib, signal, sys, time
def note(*_):
    # Written aside, then renamed: the test, polling, never reads a file that is still empty.
    pathlib.Path(sys.argv[1] + ".tmp").write_text("SIGTERM")
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    sys.exit(143)
signal.signal(signal.SIGTERM, note)
from trainer.engine import distributed
distributed.follow_agent()
print("ready", flush=True)
time.sleep(120)
"""


def test_the_printed_train_command_trains_on_as_many_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    # The diagnosis's "try: train ..." line under torchrun: one process would halve the global batch.
    two = distributed.Context(rank=0, world_size=2)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert distributed.train_overrides(["seed=1"], two) == ["processes=2", "seed=1"]
    assert distributed.train_overrides(["processes=2", "seed=1"], two) == ["processes=2", "seed=1"]
    assert distributed.train_overrides(["seed=1"], distributed.Context()) == ["seed=1"]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # one process on each of 2 machines: no `train` says that
    assert distributed.train_overrides(["seed=1"], two) == ["seed=1"]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")  # SLURM's tasks: resubmitted, not pasted
    assert distributed.train_overrides(["seed=1"], two) == ["seed=1"]


def test_a_rank_gets_sigterm_when_its_agent_is_killed(tmp_path: Path) -> None:
    # SIGKILL on torchrun (or on `train processes=N`) must not leave its ranks training on, orphaned.
    noted = tmp_path / "noted"
    rank = f"import sys; sys.argv.append({str(noted)!r}); exec({RANK!r})"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    agent = subprocess.Popen([sys.executable, "-c", AGENT, rank], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert agent.stdout is not None and agent.stdout.readline() == "ready\n"
        agent.kill()
        agent.wait()
        deadline = time.monotonic() + 30
        while not noted.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert noted.exists() and noted.read_text() == "SIGTERM"
    finally:
        agent.kill()


@pytest.mark.slow
def test_the_real_torchrun_writes_one_run_folder(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "trainer.cli", *BASE, PER_RANK],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    folders = list((tmp_path / "outputs").glob("*/*"))
    assert len(folders) == 1
    assert json.loads((folders[0] / "summary.json").read_text())["world_size"] == 2
    assert result.stdout.count("completed: ") == 1  # rank 0's closing line only


def _all_reduces_in_one_accumulated_step(ranks: distributed.Context, skip_sync: bool) -> int:
    """Three micro-batches through DDP as the loop runs them (with no_sync before the last one, or
    without); how many gradient all-reduces they made."""
    torch.manual_seed(0)
    ddp = ranks.data_parallel(torch.nn.Linear(4, 2), torch.device("cpu"))
    calls = []

    def counting(state, bucket):  # noqa: ANN001, ANN202 - DDP reads the hook's annotations: none, or the real types
        calls.append(bucket.index())
        return default_hooks.allreduce_hook(None, bucket)

    ddp.register_comm_hook(None, counting)
    for micro in range(3):
        with ranks.no_sync(ddp, last=micro == 2 or not skip_sync):
            ddp(torch.randn(8, 4)).sum().backward()
    return len(calls)


def test_accumulation_all_reduces_once_per_step() -> None:
    assert call_on_ranks(partial(_all_reduces_in_one_accumulated_step, skip_sync=True)) == [1, 1]
    assert call_on_ranks(partial(_all_reduces_in_one_accumulated_step, skip_sync=False)) == [3, 3]  # what no_sync saves


def test_a_resumed_run_with_dropout_ends_as_the_uninterrupted_one(tmp_path: Path) -> None:
    # Every rank draws its dropout masks from the same seeded stream (rank 0's per-layer probe gives
    # back what it draws), so the one random state a checkpoint holds continues every rank.
    dropout = [*BASE, PER_RANK, "regularisation=dropout", "deterministic=true"]
    assert [o.code for o in train_ranks([*dropout, "hydra.run.dir=whole"], tmp_path)] == [0, 0]
    assert [o.code for o in train_ranks([*dropout, "max_steps=4", "hydra.run.dir=parts"], tmp_path)] == [0, 0]
    assert [o.code for o in train_ranks([*dropout, "hydra.run.dir=parts", "resume=auto"], tmp_path)] == [0, 0]
    for kind in ("step", "epoch"):
        assert records(tmp_path / "parts", kind) == [
            {**record, "elapsed": pytest.approx(record["elapsed"], abs=1e3), "samples_per_s": pytest.approx(0, abs=1e9)}
            if "samples_per_s" in record else {**record, "elapsed": pytest.approx(record["elapsed"], abs=1e3)}
            for record in records(tmp_path / "whole", kind)]
    for name, tensor in final_weights(tmp_path / "whole").items():
        torch.testing.assert_close(final_weights(tmp_path / "parts")[name], tensor, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(("overrides", "status", "epochs"), [
    # The first evaluation is the best; the second improves by less than min_delta: stop after epoch 2.
    (["early_stopping=val_loss", "early_stopping.patience=1", "early_stopping.min_delta=1000", "epochs=5"],
     "early_stopped", 2),
    (["optim=sgd", "optim.lr=1e30"], "diverged", 0),  # the NaN guard, on losses averaged over the ranks
])
def test_every_rank_stops_at_the_same_point(tmp_path: Path, overrides: list[str], status: str, epochs: int) -> None:
    outcomes = train_ranks([*BASE, PER_RANK, *overrides, "hydra.run.dir=run"], tmp_path, timeout=60)
    assert [outcome.code for outcome in outcomes] == [0, 0], outcomes[0].stderr + outcomes[1].stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["status"], summary["epochs_run"]) == (status, epochs)


def test_processes_is_checked_before_anything_starts(tmp_path: Path) -> None:
    outcome = train_in_process([*BASE, "processes=0"], tmp_path)
    assert (outcome.code, outcome.stderr) == (2, "error: processes=0 must be an integer >= 1\n")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_processes_run_stopped_while_its_ranks_start_exits_as_interrupted_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: signal.Signals) -> None:
    """The signal reaches the agent before any rank wrote a summary (the ranks still importing torch):
    the shell's 143 or 130 and one line, as for a run stopped later; no traceback, no empty folder."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.launcher import api

    def stopped_agent(*_args: object) -> object:
        def launch_ranks(*_args: object) -> None:
            raise SignalException(f"Process {os.getpid()} got signal: {signum}", sigval=signum)
        return launch_ranks

    monkeypatch.setattr(api, "elastic_launch", stopped_agent)
    outcome = train_in_process([*BASE, PER_RANK, "processes=2", "hydra.run.dir=run"], tmp_path)
    assert (outcome.code, outcome.stderr) == (128 + signum, f"interrupted: stopped by {signum.name} before the run wrote its summary\n")
    assert not (tmp_path / "run").exists()


def test_a_rank_interrupted_while_it_joins_its_group_exits_130_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C reaches every rank of a terminal's process group, most likely while they import torch
    and join the group (seconds): rank 0 says `interrupted`, the others nothing; no tracebacks."""
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(distributed, "setup", interrupted)
    for rank in ("0", "1"):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", rank)
        outcome = train_in_process([*BASE, "hydra.run.dir=run"], tmp_path)
        assert (outcome.code, outcome.stderr) == (130, "interrupted\n" if rank == "0" else "")
    assert not (tmp_path / "run").exists()


def test_each_process_trains_the_job_in_its_folder() -> None:
    folder = Path("multirun/x/norm=none,seed=0")
    assert launch.worker_args(["norm=none"], folder, None) == [
        "-m", "trainer.cli", "norm=none", "hydra.run.dir='multirun/x/norm=none,seed=0'"]
    assert launch.worker_args(["norm=none"], folder, "auto")[-1] == "resume=auto"  # a sweep continuing the job


def _train(args: list[str], cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    tests = Path(__file__).parent
    paths = [*([str(extra_path)] if extra_path else []), str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    return subprocess.run([sys.executable, "-m", "trainer.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_a_sweep_of_two_process_jobs_runs_job_after_job_and_resumes(tmp_path: Path) -> None:
    command = ["-m", *BASE, PER_RANK, "processes=2", "seed=0,1", "hydra.sweep.dir=sweep"]
    first = _train(command, tmp_path)
    assert first.returncode == 0, first.stderr
    summaries = [json.loads(path.read_text()) for path in sorted((tmp_path / "sweep").glob("*/summary.json"))]
    assert [(s["status"], s["world_size"], s["seed"]) for s in summaries] == [("completed", 2, 0), ("completed", 2, 1)]
    assert first.stdout.count("completed: ") == 2 and (tmp_path / "sweep" / "report.md").is_file()
    again = _train(command, tmp_path)
    assert again.returncode == 0 and again.stdout.count("skipped ") == 2


@pytest.mark.slow
def test_ranks_of_a_sigkilled_processes_run_checkpoint_and_resume_auto_ends_it(tmp_path: Path) -> None:
    args = [*BASE, PER_RANK, "processes=2", "data.num_train=20000", "epochs=1", "log_every=1", "hydra.run.dir=run"]
    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, "-m", "trainer.cli", *args], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics, summary = tmp_path / "run" / "metrics.jsonl", tmp_path / "run" / "summary.json"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and '"kind": "step"' in metrics.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    parent.kill()
    parent.wait()
    while not summary.exists() and time.monotonic() < deadline:  # the orphaned ranks' interrupt
        time.sleep(0.1)
    stopped = json.loads(summary.read_text())
    assert stopped["status"] == "interrupted" and 0 < stopped["steps"] < 600, stopped
    resumed = _train([*args, "resume=auto"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    ended = json.loads(summary.read_text())
    assert (ended["status"], ended["world_size"], ended["steps"]) == ("completed", 2, 625)


@pytest.mark.slow
def test_processes_ends_with_the_failed_ranks_line(tmp_path: Path) -> None:
    result = _train([*BASE, PER_RANK, "processes=2", "data._target_=failing_rank_data.build"], tmp_path)
    assert result.returncode == 2
    assert result.stderr == "error: data.path=/shared/set is not readable on this node (failing_rank_data)\n"
    assert not (tmp_path / "outputs").exists()
