"""Tools that use a config's parts without (or before) a training run: `task=lr_find` (the LR
range test), `task=check_init` (one batch through the fresh model, per-layer statistics) and
`task=plan` (what a config would do and cost, checked without training). Each module has the
task function and a `render` that turns its result into a rich renderable for the console."""
from __future__ import annotations

TASKS = ("train", "lr_find", "check_init", "plan")

import json
import sys
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console

from trainer.errors import ConfigError


def run_task(cfg: DictConfig, run_dir: Path) -> int:
    """Run `cfg.task` (not train) and return the exit code: plan exits 2 when the config has errors.

    lr_find and check_init write their picture and a JSON result into the run folder; plan
    writes nothing."""
    from trainer.parts import build_parts  # torch loads here
    from trainer.records import check_unused, claim
    from trainer.run_folder import write_record

    if cfg.task not in TASKS:
        raise ConfigError(f"task={cfg.task!r} is unknown; valid: {', '.join(TASKS)}")
    console = Console()
    if cfg.task == "plan":
        from trainer.tasks.plan import error_lines, plan, render

        report = plan(cfg)
        console.print(render(report))
        for line in error_lines(report):
            print(line, file=sys.stderr)
        return 0 if report.ok else 2
    with claim(run_dir):  # like a training run: never in a folder that holds a run, never two at once
        check_unused(run_dir)
        parts = build_parts(cfg)
        write_record(run_dir, cfg)
        if cfg.task == "lr_find":
            from trainer.tasks.lr_find import lr_find, render

            result = lr_find(parts, run_dir)
        else:
            from trainer.tasks.check_init import check_init, render

            result = check_init(parts, run_dir)
        console.print(render(result))
        (run_dir / f"{cfg.task}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    console.print(f"written to {run_dir}")
    return 0
