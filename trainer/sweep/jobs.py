"""Resumable sweeps: where a multirun writes, which of its jobs a rerun skips, and the report.

Layout (set in conf/config.yaml's hydra.sweep): one folder per command, named after its
overrides plus a hash (`multirun/experiment=ablate_norm-1a2b3c4d/`), and one subfolder per
configuration, named after the overrides that vary (`norm=layernorm,seed=1/`). Running the same
command again therefore finds the same folders:

- a job whose folder holds a finished run (summary.json: completed, early_stopped or diverged)
  of the same configuration (its composed config, recorded in .hydra/resume.json) is skipped and
  returns its objective, read from its summary; a folder holding a finished run of another configuration is never
  touched: that job fails with a one-line error naming the keys that differ;
- a job whose folder holds an interrupted or killed attempt of the same configuration with a
  checkpoint continues from its latest good checkpoint (as `resume=auto` does);
- a job whose folder holds another unfinished attempt (crashed, or without a checkpoint) has that
  attempt (metrics.jsonl, summary.json, error.txt, checkpoints/) moved to previous/N/ and runs
  again from the start;
- a job that crashes (an unexpected exception) has its traceback written to error.txt and
  printed, and the sweep goes on;
- a job that fails (a crash, a config error, a foreign finished run) leaves a mark in the sweep
  folder's `.failed/`, which the report callback reads when the sweep ends, so the sweep exits
  non-zero also when the jobs ran in other processes (the joblib launcher's workers). A job
  clears its mark when it starts again, and the marks are cleared when the sweep ends; a command
  whose jobs were all refused, none run, writes no report (observe.run_folder.refused_sweep).

The resolvers are registered when this module is imported, which Hydra does when it builds the
report callback (hydra.callbacks.report), before it reads hydra.sweep.dir.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from trainer.config import added_at_default, flatten
from trainer.observe.history import read_json
from trainer.observe.metrics import objective
from trainer.observe.records import write_json_atomic
from trainer.observe.run_folder import (FAILED_MARKS, RESUME_RECORD, note_job_folder, refused_sweep, set_aside,
                                        write_record)
from trainer.sweep.direction import objective_direction

if TYPE_CHECKING:  # torch loads with training, not for the CLI's --help
    from trainer.engine.distributed import Context

# Outcomes of the configuration itself: a rerun would reproduce them, so it is skipped.
FINISHED = ("completed", "early_stopped", "diverged")
# Not part of what a job is: how many threads it used changes its speed, not its result.
NOT_CONFIGURATION = ("trainer.threads", "curves")  # how a job runs or what it draws, not what it is
MAX_NAME = 150  # well under the 255 bytes a folder name may have
SAFE_NAME = re.compile(r"[^A-Za-z0-9=,._+@-]")
# Jobs of this process that failed (a user error, a crash, a foreign finished run): the sweep runs
# the rest, then the CLI lists them and exits non-zero.
failed_jobs: list[str] = []


# --- folder names ---------------------------------------------------------------------------

def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _folder_name(text: str, always_hash: bool = False) -> str:
    """`text` as one folder name: unsafe characters (a '/' in a path value, quotes, brackets)
    become '_', and a hash of the original keeps two such names apart."""
    safe = SAFE_NAME.sub("_", text)
    if always_hash or safe != text or len(safe) > MAX_NAME:
        return f"{safe[:MAX_NAME]}-{_short_hash(text)}"
    return safe


def command_overrides(overrides: Sequence[str]) -> str:
    """The command line's overrides, sorted so that reordering them names the same sweep.

    Registered with use_cache=True: OmegaConf caches it by the argument's text
    (`${hydra.overrides.task}`), and Hydra copies the sweep's cache into every job's config (as it
    does for `${now:}`), so a job sees the command's overrides here, not its own."""
    return json.dumps(sorted(str(item) for item in overrides))


def sweep_name(command: str) -> str:
    """The sweep folder's name: the command's overrides and a hash of them (`default-...` for none)."""
    overrides = json.loads(command)
    return _folder_name("_".join(overrides) or "default", always_hash=True)


def job_name(command: str, job: Sequence[str]) -> str:
    """A job's folder name: its overrides that the command did not give verbatim, i.e. the ones
    that vary across the sweep (`norm=layernorm,seed=1`). All of them when none differ (a
    one-job sweep, or hydra.sweep.dir set by hand, where the command is not cached)."""
    given = set(json.loads(command))
    overrides = sorted(str(item) for item in job)
    varying = [item for item in overrides if item not in given] or overrides
    return _folder_name(",".join(varying) or "default")


def _register_resolvers() -> None:
    for name, function, cached in (("sweep_command", command_overrides, True),
                                   ("sweep_name", sweep_name, False),
                                   ("sweep_job_name", job_name, False),
                                   ("objective_direction", objective_direction, False)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function, use_cache=cached)


_register_resolvers()


# --- skipping, setting aside, containing crashes ---------------------------------------------

def settings(cfg: DictConfig) -> dict[str, str]:
    """The job's configuration as {dotted key: value as JSON}, interpolations unresolved:
    `${oc.env:TRAINER_DATA_DIR}` names where the data lives, not what the job is, so it must not
    make a job look new. Nor does `_target_`, the import address of a builder: moving the code
    changes no experiment."""
    flat = flatten(OmegaConf.to_container(cfg, resolve=False))
    return without_targets({key: json.dumps(value) for key, value in flat.items() if key not in NOT_CONFIGURATION})


def without_targets(flat: dict[str, str]) -> dict[str, str]:
    """`flat` less its `_target_` keys (records written before they were left out still have them)."""
    return {key: value for key, value in flat.items() if key.rsplit(".", 1)[-1] != "_target_"}


def fingerprint(cfg: DictConfig) -> str:
    return hashlib.sha256(json.dumps(settings(cfg), sort_keys=True).encode()).hexdigest()[:16]


def differences(before: dict[str, str], now: dict[str, str], shown: int = 3) -> str:
    """"epochs 15 -> 60, logger (new)": the keys whose value differs, for the error message."""
    keys = sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key))
    parts = [f"{key} (new)" if key not in before else f"{key} (gone)" if key not in now
             else f"{key} {before[key]} -> {now[key]}" for key in keys[:shown]]
    return ", ".join(parts) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


Task = Callable[[DictConfig], float | None]


def resumable(task: Task) -> Task:
    """`task` as a sweep runs it: in a multirun each job goes through `resume_job` (skipped if
    finished, continued or rerun if not, contained if it crashes); a single run calls `task` as is."""

    @functools.wraps(task)
    def job(cfg: DictConfig) -> float | None:
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            from trainer.engine import distributed

            job_dir = Path(HydraConfig.get().runtime.output_dir)
            note_job_folder(job_dir)  # before this job writes anything into it
            if distributed.current().enabled:
                return shared_job(job_dir, cfg, task, distributed.current())
            return resume_job(job_dir, cfg, task, failed_jobs)
        return task(cfg)

    return job


def shared_job(job_dir: Path, cfg: DictConfig, task: Task, ranks: Context) -> float | None:
    """A job the ranks of a process group train together (the tasks of a SLURM job under the
    submitit launcher). Rank 0 alone goes through `resume_job`, which reads and moves the job's
    files, and tells the others what it decided (train, with which `resume`, or not at all):
    ranks deciding on their own would race on those files and could disagree. Rank 0's result is
    the job's."""
    if ranks.is_main:
        started = False

        def announced(cfg: DictConfig) -> float | None:
            nonlocal started
            started = True
            ranks.broadcast_text(json.dumps({"train": True, "resume": cfg.get("resume")}))
            return task(cfg)

        try:
            return resume_job(job_dir, cfg, announced, failed_jobs)
        finally:
            if not started:  # skipped, refused, or failed before training: the others return too
                ranks.broadcast_text(json.dumps({"train": False}))
    decided = json.loads(ranks.broadcast_text(""))
    if not decided["train"]:
        return None
    cfg = copy.deepcopy(cfg)
    cfg.resume = decided["resume"]
    try:
        return task(cfg)
    except Exception:  # rank 0 reports the crash (error.txt, the failed mark); the traceback is this rank's
        traceback.print_exc()
        return None


def _mark(job_dir: Path) -> Path:
    return job_dir.parent / FAILED_MARKS / job_dir.name


def record_failure(job_dir: Path, failed: list[str] = failed_jobs, overrides: Sequence[str] = ()) -> None:
    """A job failed: list it for this process, and mark it for the process that ends the sweep. The
    mark holds the job's `overrides` (JSON): a job refused on a config error leaves no folder, and
    the report reads its configuration from here."""
    failed.append(job_dir.name)
    mark = _mark(job_dir)
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.write_text(json.dumps([str(item) for item in overrides]))


def marked_failures(sweep_dir: Path) -> list[str]:
    """The jobs of the sweep in `sweep_dir` that failed in their latest attempt, whichever process ran them."""
    folder = sweep_dir / FAILED_MARKS
    return sorted(mark.name for mark in folder.iterdir()) if folder.is_dir() else []


def marked_overrides(sweep_dir: Path, name: str) -> list[str]:
    """The overrides the failed job `name`'s mark holds (none for a mark without them)."""
    try:
        return list(json.loads((sweep_dir / FAILED_MARKS / name).read_text()))
    except (OSError, ValueError):
        return []


def resume_job(job_dir: Path, cfg: DictConfig, task: Task, failed: list[str]) -> float | None:
    """Skip, refuse, or run (after setting aside an unfinished attempt) the job in `job_dir`.

    Returns the job's objective (read from its summary, for a skipped job), or None for a job that failed; a
    failed job's folder name goes to `failed`, which the CLI reports at the end."""
    _mark(job_dir).unlink(missing_ok=True)  # this attempt decides whether the job failed
    digest, current = fingerprint(cfg), settings(cfg)
    summary = read_json(job_dir / "summary.json")
    record = read_json(job_dir / RESUME_RECORD) or {}
    recorded = record.get("settings")
    # A record of this digest is this configuration; one written while `_target_` still counted, or
    # before an upgrade added keys this job leaves at their defaults, matches on its settings. Read
    # once: a refusal names the differences from this same comparison.
    as_recorded = _as_recorded(recorded, current, cfg) if recorded is not None and record.get("config") != digest else None
    same = record.get("config") == digest or (as_recorded is not None and without_targets(recorded) == as_recorded)
    if summary is not None and summary.get("status") in FINISHED:
        if not same:
            why = differences(without_targets(recorded), as_recorded) if as_recorded is not None else "not recorded"
            print(f"error: {job_dir} holds a finished run of another configuration ({why}); it is kept: "
                  "run this sweep elsewhere with hydra.sweep.dir=DIR", file=sys.stderr)
            record_failure(job_dir, failed)
            return None
        print(f"skipped {job_dir.name}: already {summary['status']} in {job_dir}", flush=True)
        # What the job returns now, from its summary: an objective saved when the job finished
        # may be another metric's (a char LM's val_acc, before val_bpc became its objective).
        return objective(summary.get("best") or {})
    if same and _continuable(job_dir) and cfg.get("resume") in (None, "auto"):  # resume=auto: what continuing does
        print(f"continuing {job_dir.name} from its latest checkpoint", flush=True)
        cfg = copy.deepcopy(cfg)
        cfg.resume = "auto"
    else:
        moved = set_aside(job_dir)
        if moved is not None:
            print(f"rerunning {job_dir.name}: its unfinished attempt is kept in {moved}", flush=True)
        write_record(job_dir, cfg)  # a new attempt's record, so the report lists even a job that crashes before training
    _write_record(job_dir, {"config": digest, "settings": current})
    try:
        result = task(cfg)
    except Exception:  # a bug in one job: keep its traceback, let the other jobs and the report run
        text = traceback.format_exc()
        if job_dir.exists():
            (job_dir / "error.txt").write_text(text)
        print(text, file=sys.stderr)
        print(f"error: job {job_dir.name} crashed; traceback in {job_dir / 'error.txt'}", file=sys.stderr)
        record_failure(job_dir, failed)
        return None
    return result


def _as_recorded(recorded: dict[str, str], current: dict[str, str], cfg: DictConfig) -> dict[str, str]:
    """`current` less the keys the record does not know that hold their shipped default: keys an
    upgrade added, which change nothing until someone sets them."""
    added = added_at_default(cfg, recorded, current, encode=json.dumps)
    return {key: value for key, value in current.items() if key not in added}


def _continuable(job_dir: Path) -> bool:
    """An attempt that was interrupted or killed (not one that crashed: that one starts afresh)
    and left a checkpoint: the job continues from it, exactly as `train resume=auto` would."""
    from trainer.engine import checkpoint  # torch: only a job that runs needs it

    return not (job_dir / "error.txt").exists() and bool(checkpoint.read_index(job_dir / checkpoint.FOLDER)["checkpoints"])


def _write_record(job_dir: Path, record: dict[str, Any]) -> None:
    path = job_dir / RESUME_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)


# --- the report at the end of a multirun -----------------------------------------------------

class ReportCallback(Callback):
    """Writes report.md, report.csv and report.png in the sweep folder when a multirun ends.

    `metric` ranks the configurations (hydra.callbacks.report.metric=best_val_loss); null picks
    best_val_bpc for character LMs, else best_val_acc when the jobs have it, else best_val_loss."""

    def __init__(self, metric: str | None = None, plot: bool = True) -> None:
        from trainer.errors import ConfigError
        from trainer.sweep.report import check_metric

        try:
            check_metric(metric, option="hydra.callbacks.report.metric")  # before any job runs
        except ConfigError as error:
            # Raised, Hydra would wrap it in "Error in call to target ..."; say it as the CLI says user errors.
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        self.metric = metric
        self.plot = plot

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from trainer.sweep import report

        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        # Jobs run by a launcher's worker processes listed their failures there, not here: read the
        # marks (RunFolderCallback, whose end comes after this one's, clears them).
        failed_jobs.extend(name for name in marked_failures(sweep_dir) if name not in failed_jobs)
        if config.get("smoke"):  # smoke jobs keep no runs to report on
            return
        if refused_sweep(config):  # every job refused, none ran: the folder stays as it was, its report too
            return
        # Jobs that stopped on a config error leave no folder behind; list them with their overrides.
        missing = {name: marked_overrides(sweep_dir, name) for name in failed_jobs if not (sweep_dir / name).exists()}
        if not missing and not report.find_jobs(sweep_dir):  # every job continued another folder (resume=RUN,RUN)
            print(f"no report: no job of this sweep kept a run in {sweep_dir}", flush=True)
            return
        report.write_and_show(sweep_dir, self.metric, plot=self.plot, config_errors=missing)
