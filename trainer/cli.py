"""The `train` command: Hydra composes the config, `trainer.run.run` does the work.

Errors a user can fix (a bad value, an unknown option, a missing file) are printed as one
line on stderr with exit code 2 and no traceback; the run folder Hydra made for a job that
failed that way is removed again, so no half-written run is left behind.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from trainer import sweep  # registers the resolvers that name sweep folders (also for --cfg)
from trainer.errors import TrainerError

CONF_DIR = str(Path(__file__).parent / "conf")
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention
HYDRA_FILES = {".hydra", "cli.log", "train.log"}
# Jobs of this process that stopped on a user error: a sweep runs the rest, then exits non-zero.
failed_jobs: list[str] = []


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    if sweep.takes_over():  # a sweep job is skipped if done, rerun if not, contained if it crashes
        return sweep.run_job(cfg, _hydra_main.__wrapped__, failed_jobs)
    from trainer.run import run  # torch loads here, not for --help
    from trainer.tasks import run_task

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        if cfg.task != "train":
            code = run_task(cfg, run_dir)
            discard_if_unused(run_dir)  # plan writes nothing
            if code:
                sys.exit(code)
            return None
        summary = run(cfg, run_dir)
    except TrainerError as error:
        # Reported here rather than raised: Hydra would add its own "Error executing job" line.
        discard_if_unused(run_dir)
        print(f"error: {one_line(error)}", file=sys.stderr)
        if hydra_cfg.mode != RunMode.MULTIRUN:
            sys.exit(EXIT_USAGE)
        sweep.record_failure(run_dir, failed_jobs)
        return None
    if summary["status"] == "interrupted":
        sys.exit(128 + (summary["signal"] or 2))  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    best = summary["best"].get("val_acc")
    return best if best is not None else summary["best"].get("val_loss")  # the objective a sweeper reads


def discard_if_unused(run_dir: Path) -> None:
    """Remove a run folder that holds nothing but Hydra's record of this job; anything more stays."""
    if run_dir.is_dir() and {path.name for path in run_dir.iterdir()} <= HYDRA_FILES:
        shutil.rmtree(run_dir, ignore_errors=True)


def one_line(error: BaseException) -> str:
    """Hydra's messages span several lines ("Could not find 'norm/foo' ... Available options: ...");
    fold them into one."""
    text = str(error).strip().split("Config search path")[0] or type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    head, rest = lines[0], lines[1:]
    if rest and rest[0].startswith("Available options"):
        return f"{head.rstrip('.')}; {rest[0].rstrip(':').lower()}: {', '.join(rest[1:])}"
    return re.sub(r"\s+", " ", " ".join(lines))


def main() -> None:
    if any(arg in ("--help", "-h") for arg in sys.argv[1:]):
        from trainer.help import catalogue

        print(catalogue(Path(CONF_DIR)))
        return
    # Let exceptions reach us instead of Hydra's own multi-line report, so we can shorten them.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _hydra_main()
        if failed_jobs:
            print(f"error: {len(failed_jobs)} job(s) failed: {', '.join(failed_jobs)}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except (TrainerError, HydraException, OmegaConfBaseException) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except OSError as error:  # an output folder that cannot be made or written, a full disk
        print(f"error: {error.strerror or error}: {error.filename or ''}".rstrip(": "), file=sys.stderr)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
