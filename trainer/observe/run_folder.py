"""A run folder's life: which folders this command may remove, and Hydra's `.hydra/` record.

Hydra makes the run folder (and any missing parents, `outputs/DATE/`) before the task runs. When
the command then stops on a user error, or writes nothing (`task=plan`, a resume that continues
another folder), the CLI removes what this command made, so no empty run is left behind. A folder
that existed before the command (the user's own `hydra.run.dir=~/exp1`, the working folder with
`hydra.run.dir=.`, a sweep job's folder from an earlier attempt) is never removed, whatever it holds.

Hydra would also write `.hydra/` (config.yaml, hydra.yaml, overrides.yaml) into the folder before
the task can check whether the folder already holds a run, relabelling that run with a command
that is then refused. So `hydra.output_subdir` is null (conf/config.yaml) and `write_record`
writes the record here, only once the folder is claimed for a new run.

A sweep folder is noted as the multirun starts (RunFolderCallback): when it ends, or stops on an
error, its multirun.yaml is put back, and a command whose every job was refused leaves the folder
exactly as it found it (or removes it, when it made it).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from trainer.observe.records import LOGGER_FILES, write_atomic

RECORD = ".hydra"
# What this project itself puts in a run folder before a run writes anything of its own.
OWN_FILES = {RECORD, ".claimed"}

SWEEP_RECORD = "multirun.yaml"  # Hydra's record of the command that made a sweep folder (its basic sweeper's)
SEARCH_RECORD = "optimization_results.yaml"  # the Optuna sweeper's, which writes no multirun.yaml
# A sweep job's record of its configuration (trainer.sweep.jobs). Inside .hydra/ so that a fresh
# job folder still holds only Hydra's files: the CLI removes such a folder again when the job
# stops on a config error.
RESUME_RECORD = Path(RECORD) / "resume.json"
FAILED_MARKS = ".failed"  # one empty file per failed job (trainer.sweep.jobs), read when the sweep ends
# What a sweep command writes in its folder whether or not any job runs.
SWEEP_OWN = {SWEEP_RECORD, FAILED_MARKS}
# What one attempt of a run writes (checkpoints/ is trainer.engine.checkpoint's folder); moved aside
# together before a sweep job's rerun or a resume=auto that starts afresh, so the new attempt
# starts clean and the old one stays readable.
ATTEMPT_FILES = ("metrics.jsonl", "summary.json", "error.txt", "checkpoints", "curves.png", "vocab.json", "samples.txt",
                 *LOGGER_FILES)
PREVIOUS = "previous"

_existed: set[Path] = set()  # folders that existed when this command started


@dataclass
class _Sweep:
    """A sweep folder as this command found it: what a refused command must leave as it was."""

    folder: Path
    record: bytes | None  # an earlier sweep's multirun.yaml
    times: dict[Path, tuple[int, int]]  # (atime, mtime) in ns of the folder and its record
    contents: dict[str, tuple[int, int]]  # see _contents


_sweep: _Sweep | None = None
_recorded = False  # whether the callback ran: without it no folder counts as made by this command


def _absolute(folder: Path | str) -> Path:
    return Path(os.path.abspath(folder))  # like Hydra's output_dir: relative to the working folder, no symlink resolution


def remember_existing(folder: Path | str, depth: int = 0) -> None:
    """Note `folder`, its parents and (down to `depth` levels) its subfolders that exist now."""
    global _recorded
    _recorded = True
    folder = _absolute(folder)
    _existed.update(parent for parent in (folder, *folder.parents) if parent.is_dir())
    pending = [(folder, depth)]
    while pending:
        current, levels = pending.pop()
        if levels and current.is_dir():
            for child in current.iterdir():
                if child.is_dir() and not child.is_symlink():
                    _existed.add(child)
                    pending.append((child, levels - 1))


def note_job_folder(job_dir: Path) -> None:
    """In a launcher's worker process (joblib's, submitit's), which never saw the sweep start: note
    what existed as the job begins, so a job refused there is removed like one run in the main
    process. Hydra has just made the job folder if missing: an empty one is this command's; the
    folders above it (the sweep folder, which the main process settles) existed."""
    global _recorded
    if _sweep is not None:  # the main process: on_multirun_start noted it all before Hydra made anything
        return
    _recorded = True
    folder = _absolute(job_dir)
    _existed.update(parent for parent in folder.parents if parent.is_dir())
    if folder.is_dir() and any(folder.iterdir()):
        _existed.add(folder)


def made_by_this_command(folder: Path | str) -> bool:
    return _recorded and _absolute(folder) not in _existed


class RunFolderCallback(Callback):
    """Notes which folders exist before Hydra makes the run folder (single run) or the sweep's
    job folders (multirun: the sweep folder and two levels below, where job folders live)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _existed.clear()  # a new command (tests run several in one process)
        remember_existing(str(config.hydra.run.dir))
        share_run_dir(config)  # after rank 0 noted what existed: the other ranks make the folder once they know it

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _sweep
        _existed.clear()
        folder = _absolute(str(config.hydra.sweep.dir))
        refuse_foreign_sweep_folder(folder)
        remember_existing(folder, depth=2)
        # Marks an earlier command left when it ended without reading them (it crashed): not this command's.
        shutil.rmtree(folder / FAILED_MARKS, ignore_errors=True)
        record = folder / SWEEP_RECORD
        _sweep = _Sweep(folder, record.read_bytes() if record.is_file() else None,
                        {path: (path.stat().st_atime_ns, path.stat().st_mtime_ns) for path in (folder, record) if path.exists()},
                        _contents(folder))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Put back the multirun.yaml of the sweep that made this folder: Hydra's launcher rewrites
        it with every command aimed at the folder, even one whose jobs are all skipped or refused.
        The folder's record stays the first command's; each job's .hydra/ records that job."""
        settle_sweep(refused_sweep(config))


def refuse_foreign_sweep_folder(folder: Path) -> None:
    """Stop (one line, exit 2) before anything is written when hydra.sweep.dir names a folder that
    holds files but is no sweep's: the working folder (hydra.sweep.dir=.), a project's. A sweep
    would write its job folders, multirun.yaml, report.md, report.csv and report.png among the
    user's files, overwriting any of the same name, and a refused command would have to note every
    file below it to show it changed nothing."""
    if not folder.is_dir() or not any(folder.iterdir()) or _holds_a_sweep(folder):
        return
    print(f"error: hydra.sweep.dir={folder} holds files and is not a sweep's folder (no {SWEEP_RECORD}, "
          f"{SEARCH_RECORD} or job folder); a sweep writes its jobs and report there: give a new or empty "
          f"folder, e.g. hydra.sweep.dir={folder / 'sweep'}", file=sys.stderr)
    raise SystemExit(2)


def _holds_a_sweep(folder: Path) -> bool:
    """Whether an earlier sweep wrote in `folder`: its sweeper's record, or a job folder (one level
    down) with a job's record, as a sweep killed before its sweeper wrote a record leaves."""
    if (folder / SWEEP_RECORD).is_file() or (folder / SEARCH_RECORD).is_file():
        return True
    return any((child / RESUME_RECORD).is_file() for child in folder.iterdir() if child.is_dir())


def _contents(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file (size, mtime in ns) and folder ((-1, 0)) under `folder`, by relative path, but
    the sweep command's own records (SWEEP_OWN)."""
    found: dict[str, tuple[int, int]] = {}
    for root, folders, files in os.walk(folder):
        if root == str(folder):
            folders[:] = [name for name in folders if name not in SWEEP_OWN]
            files = [name for name in files if name not in SWEEP_OWN]
        for name in folders:
            found[os.path.relpath(os.path.join(root, name), folder)] = (-1, 0)
        for name in files:
            try:
                stat = os.lstat(os.path.join(root, name))
            except FileNotFoundError:  # removed as we walked
                continue
            found[os.path.relpath(os.path.join(root, name), folder)] = (stat.st_size, stat.st_mtime_ns)
    return found


def refused_sweep(config: DictConfig) -> bool:
    """Whether this multirun was refused: some job failed (a bad value, a foreign finished run)
    and none changed anything in the sweep folder (none trained, crashed or was set aside), so the
    folder must be left exactly as it was, its report included. Smoke jobs keep nothing anyway."""
    if _sweep is None or config.get("smoke"):
        return False
    marks = _sweep.folder / FAILED_MARKS
    return marks.is_dir() and any(marks.iterdir()) and _contents(_sweep.folder) == _sweep.contents


def settle_stopped_sweep() -> None:
    """A multirun that stopped on an error before it ended (a job's override that does not
    compose, a sweeper that raised): settled as at its end, refused if it changed nothing."""
    if _sweep is not None:
        with contextlib.suppress(OSError):  # best effort: the error that stopped the sweep is the one to report
            settle_sweep(_contents(_sweep.folder) == _sweep.contents)


def settle_sweep(refused: bool) -> None:
    """At the end of a multirun, or when it stopped on an error: multirun.yaml back as it was,
    byte for byte and with its times, and the failed-job marks cleared (the report callback has
    read them). A refused command's folder is then as it found it (its times too), or removed with
    the parents this command made for it."""
    global _sweep
    if _sweep is None:
        return
    sweep, _sweep = _sweep, None
    if not sweep.folder.is_dir():  # never made (a file in its place): nothing of this command's is there
        return
    record, earlier = sweep.folder / SWEEP_RECORD, sweep.record
    if earlier is not None and (not record.is_file() or record.read_bytes() != earlier):
        write_atomic(record, lambda file: file.write(earlier))
    shutil.rmtree(sweep.folder / FAILED_MARKS, ignore_errors=True)
    if refused and made_by_this_command(sweep.folder):
        record.unlink(missing_ok=True)
        discard_if_unused(sweep.folder)
        return
    for path, times in sweep.times.items():
        if path != sweep.folder or refused:
            with contextlib.suppress(OSError):
                os.utime(path, ns=times)


def _under_torchrun() -> bool:
    """Without importing torch (the CLI's --help and its refusals stay fast): torchrun's variables are set."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def share_run_dir(config: DictConfig) -> None:
    """Under torchrun every rank composes its own config, and `${now:}` in hydra.run.dir resolves to
    each process's own clock: every rank would make a run folder of its own. Rank 0's folder is
    given to every rank here, before Hydra resolves it to make the folder."""
    if not _under_torchrun():
        return
    from trainer.engine import distributed

    ranks = distributed.current()
    if not ranks.enabled:
        return
    folder = ranks.broadcast_text(str(config.hydra.run.dir) if ranks.is_main else "")
    with read_write(config.hydra.run):
        config.hydra.run.dir = folder


def discard_if_unused(run_dir: Path) -> None:
    """Remove `run_dir` if this command made it and it holds nothing but this project's own files,
    then the empty parents this command made for it; a folder that existed before is left as it was."""
    folder = _absolute(run_dir)
    if not folder.is_dir() or not made_by_this_command(folder):
        return
    if {path.name for path in folder.iterdir()} - OWN_FILES:
        return
    shutil.rmtree(folder, ignore_errors=True)
    for parent in folder.parents:
        if not made_by_this_command(parent):
            break
        try:
            parent.rmdir()  # only if empty: another run may have started in outputs/DATE/ meanwhile
        except OSError:
            break


def set_aside(run_dir: Path) -> Path | None:
    """Move an unfinished attempt's files into previous/N/ (N = 1, 2, ...: one past the highest there,
    so a deleted earlier attempt frees no number a later one holds) so the run can start again."""
    present = [run_dir / name for name in ATTEMPT_FILES if (run_dir / name).exists()]
    if not present:
        return None
    taken = [int(path.name) for path in (run_dir / PREVIOUS).glob("*") if path.name.isdigit()]
    target = run_dir / PREVIOUS / str(max(taken, default=0) + 1)
    target.mkdir(parents=True)
    for path in present:
        shutil.move(str(path), target / path.name)
    return target


def write_record(run_dir: Path, cfg: DictConfig) -> None:
    """Write Hydra's record of this job (config.yaml, hydra.yaml, overrides.yaml) into `run_dir/.hydra`,
    as Hydra would have: only when `run_dir` is this Hydra job's own folder (not a resumed one, not
    a test calling `run` without Hydra)."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if _absolute(hydra_cfg.runtime.output_dir) != _absolute(run_dir):
        return
    folder = run_dir / RECORD
    folder.mkdir(parents=True, exist_ok=True)
    for name, node in (("config.yaml", cfg), ("hydra.yaml", OmegaConf.create({"hydra": hydra_cfg})),
                       ("overrides.yaml", hydra_cfg.overrides.task)):
        text = OmegaConf.to_yaml(node)
        write_atomic(folder / name, lambda file: file.write(text.encode()))
