"""The `train` command: Hydra composes the config, `trainer.run.run` does the work.

Errors a user can fix (a bad value, an unknown option, a missing file) are printed as one
line on stderr with exit code 2 and no traceback; the run folder Hydra made for a job that
failed that way is removed again (only if this command made it: trainer.observe.run_folder), so no
half-written run is left behind and no folder of the user's is ever removed.
"""
from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from trainer.command_line import (CONF_DIR, MULTIRUN_FLAGS, check_one_mode, check_removals, multirun_first, one_line,
                                  unknown_key)
from trainer.engine import slurm
from trainer.errors import ConfigError, TrainerError
from trainer.observe.metrics import objective
from trainer.observe.run_folder import discard_if_unused, settle_stopped_sweep
from trainer.sweep import jobs as sweep  # registers the resolvers that name sweep folders (also for --cfg)

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention
# Jobs smoke-run (smoke=true) and those that passed, for a smoke sweep's closing line.
smoke_jobs: list[str] = []
smoke_passed: list[str] = []


def train_job(cfg: DictConfig) -> float | None:
    """One job: train (or smoke-run, or run a task) as `cfg` says; return the objective a sweeper
    reads. In a multirun, `sweep.resumable` wraps it: this function never sees a finished job."""
    try:
        return _job(cfg)
    except KeyboardInterrupt:  # Ctrl-C before the run wrote anything (torch importing, data loading): no empty folder left
        if os.environ.get("RANK", "0") == "0":  # under torchrun the ranks share rank 0's folder: rank 0's to remove
            discard_if_unused(Path(HydraConfig.get().runtime.output_dir))
        raise


def _job(cfg: DictConfig) -> float | None:
    from trainer.engine import distributed
    from trainer.run import run  # torch loads here, not for --help
    from trainer.tasks import run_task

    ranks = distributed.current()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        from trainer.engine.smoke import is_smoke_rank, train_smoke_rank

        smoke_rank = ranks.enabled and is_smoke_rank()  # one of the processes a `smoke=true processes=N` run started
        with ranks.all_or_none():
            refuse_under_torchrun(cfg, ranks.enabled and not smoke_rank)
        if cfg.smoke is True and smoke_rank:
            train_smoke_rank(cfg, run_dir)  # in the smoke run's folder: the process that started this one checks it
            return None
        if cfg.smoke is True:  # anything else is refused as a bad value by check_top_level
            from trainer.engine.smoke import smoke_run

            smoke_jobs.append(run_dir.name)
            print(smoke_run(cfg, list(hydra_cfg.overrides.task)), flush=True)
            smoke_passed.append(run_dir.name)
            discard_if_unused(run_dir)  # the smoke run's files lived in a temporary folder
            return None
        if cfg.task != "train":
            code = run_task(cfg, run_dir)
            discard_if_unused(run_dir)  # plan writes nothing
            if code:
                sys.exit(code)
            return None
        processes = requested_processes(cfg)
        if processes > 1 and not ranks.enabled:  # this process starts the run's own process group and waits
            from trainer.engine.launch import StoppedBeforeSummary, train_processes

            try:
                summary = train_processes(processes, list(hydra_cfg.overrides.task), run_dir, cfg.resume)
            except StoppedBeforeSummary as stopped:  # as a one-process run stopped that early: its exit code, no traceback
                discard_if_unused(run_dir)
                print(f"interrupted: {stopped}", file=sys.stderr)
                sys.exit(stopped.code)
        else:
            summary = run(cfg, run_dir, list(hydra_cfg.overrides.task))
        if ranks.is_main:  # under torchrun the ranks share rank 0's folder: only rank 0 may remove it
            discard_if_unused(run_dir)  # resume=DIR continued another folder: Hydra's new one stays empty
    except (TrainerError, OSError) as error:  # OSError: a folder that cannot be written (read-only, full)
        # Reported here rather than raised: Hydra would add its own "Error executing job" line.
        if ranks.is_main:
            discard_if_unused(run_dir)
        if not isinstance(error, distributed.PeerFailed):  # that rank's own error line is the one to read
            print(f"error: {one_line(error)}", file=sys.stderr)
        if hydra_cfg.mode != RunMode.MULTIRUN:
            sys.exit(EXIT_USAGE)
        sweep.record_failure(run_dir, overrides=hydra_cfg.overrides.task)
        return None
    if summary["status"] == "interrupted":
        sys.exit(128 + (summary["signal"] or 2))  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    return objective(summary["best"])


def in_process_group(job: Callable[[DictConfig], float | None]) -> Callable[[DictConfig], float | None]:
    """`job` as each task of a SLURM job runs it under Hydra's submitit launcher: every task is a
    fresh process that runs the job function alone (not `main`), so it joins the job's process
    group here, from SLURM's variables, and leaves it when the job ends. Where `main` ran first
    (a plain `train`, torchrun, `srun train`) the group, if any, is already joined."""

    @functools.wraps(job)
    def grouped(cfg: DictConfig) -> float | None:
        if not slurm.adopt():  # not a SLURM task, or one whose `main` adopted SLURM's variables already
            return job(cfg)
        from trainer.engine import distributed

        distributed.setup()
        try:
            return job(cfg)
        finally:
            distributed.teardown()

    return grouped


def _make_plugins_discoverable() -> None:
    """Let Hydra find this project's sweeper (hydra/sweeper=every_choice, experiment=smoke_all).
    Hydra discovers plugins by listing the folders of the `hydra_plugins` namespace package, and an
    editable install (`pip install -e .`, the README's) serves ours through an import hook that
    such a listing does not see: the sweeper imports but is not found. Putting the folder that
    holds our `hydra_plugins` on sys.path makes it a listed part of the namespace; in an ordinary
    install that folder is site-packages, already there."""
    import hydra_plugins
    import hydra_plugins.trainer_sweepers

    root = str(Path(hydra_plugins.trainer_sweepers.__file__).resolve().parents[2])
    if str(Path(root) / "hydra_plugins") not in list(hydra_plugins.__path__):
        sys.path.append(root)


_make_plugins_discoverable()


# In a multirun each job is skipped if finished, continued or rerun if not, and contained if it crashes.
_hydra_main = hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")(
    in_process_group(sweep.resumable(train_job)))


def requested_processes(cfg: DictConfig) -> int:
    """`processes`: an integer >= 1 (the run's own check, in build_parts, comes after the launch)."""
    processes = cfg.get("processes", 1)
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        raise ConfigError(f"processes={processes} must be an integer >= 1")
    return processes


def refuse_under_torchrun(cfg: DictConfig, distributed: bool) -> None:
    """Under torchrun only training runs: the tools and smoke runs are one-process commands."""
    if distributed and cfg.smoke is True:
        raise TrainerError("smoke=true does not run under torchrun; run it as a plain `train ... smoke=true`")
    if distributed and cfg.task != "train":
        raise TrainerError(f"task={cfg.task} does not run under torchrun; run it as a plain `train task={cfg.task} ...`")


def main() -> None:
    sys.argv[1:] = multirun_first(sys.argv[1:])
    if any(arg in ("--help", "-h") for arg in sys.argv[1:]):
        from trainer.help import catalogue

        print(catalogue(Path(CONF_DIR)))
        return
    # Let exceptions reach us instead of Hydra's own multi-line report, so we can shorten them.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sweep.failed_jobs.clear()
    # Under torchrun every rank runs this; errors that stop it here (a bad override) are the same on
    # every rank, so rank 0 alone prints them.
    slurm.adopt()  # `srun train ...`: SLURM's tasks join as torchrun's workers would
    speaks = os.environ.get("RANK", "0") == "0"
    group = None
    try:
        # Inside the try: a Ctrl-C while a rank imports torch (seconds) is an interruption like any other.
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun (or srun) started this process as one of a group
            from trainer.engine import distributed as group

            group.setup()
        if group is not None and set(MULTIRUN_FLAGS) & set(sys.argv[1:]):
            raise TrainerError("train -m does not run under torchrun or srun; sweep multi-process jobs with "
                               "`train -m processes=N ...`, on SLURM with `train -m hydra/launcher=slurm ...`")
        check_one_mode(sys.argv[1:])
        check_removals([arg for arg in sys.argv[1:] if not arg.startswith("-")])
        _hydra_main()
        if len(smoke_jobs) > 1:  # a smoke sweep: one line for the whole of it
            print(f"smoke: {len(smoke_passed)} of {len(smoke_jobs)} jobs passed", flush=True)
        if sweep.failed_jobs:
            print(f"error: {len(sweep.failed_jobs)} job(s) failed: {', '.join(sweep.failed_jobs)}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        if speaks:
            print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except (TrainerError, HydraException, OmegaConfBaseException) as error:
        if speaks:
            print(f"error: {unknown_key(error, sys.argv[1:]) or one_line(error)}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except ValueError as error:
        # Optuna's sweeper asks for the best trial when the search ends, and raises this when
        # every trial failed (each already said why, on its own line).
        if "No trials are completed yet" not in str(error):
            raise
        if speaks:
            failed = f": {', '.join(sweep.failed_jobs)}" if sweep.failed_jobs else ""
            print(f"error: every trial of the search failed{failed}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except OSError as error:  # an output folder that cannot be made or written, a full disk
        if speaks:
            print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    finally:
        settle_stopped_sweep()  # a multirun that stopped on an error: its folder's record put back
        if group is not None:
            group.teardown()


if __name__ == "__main__":
    main()
