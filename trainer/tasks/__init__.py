"""Tools that use a config's parts without (or before) a training run: `task=lr_find` (the LR
range test), `task=check_init` (one batch through the fresh model, per-layer statistics) and
`task=plan` (what a config would do and cost, checked without training); and tools that read a
trained run (`resume=RUN_DIR`): `task=export` (an inference file, batch norm folded) and
`task=tsne` (t-SNE of the penultimate-layer features) and `task=sample` (text from a character LM). Each module has the
task function and a `render` that turns its result into a rich renderable for the console."""
from __future__ import annotations

# task=NAME, with the one line `train --help` shows; export and tsne take their settings from the
# config node of the same name (`export.fold_bn`, `tsne.perplexity`).
TASKS = {
    "train": "train (the default)",
    "lr_find": "LR range test: lr_find.png and a suggested optim.lr",
    "check_init": "one batch through the fresh model: per-layer statistics, vanishing/exploding layers flagged",
    "plan": "check a config and estimate its cost without training (exit 2 on errors)",
    "export": "resume=RUN_DIR: inference.pt (weights_only) with conv/linear + batch norm folded, checked and timed",
    "tsne": "resume=RUN_DIR: tsne.png, t-SNE of the penultimate-layer validation features per perplexity (extra: tsne)",
    "sample": "resume=RUN_DIR: samples.txt, text from a character LM run (data=text model=char_lstm)",
}

# The tasks that build the config's own fresh model: a checkpoint named with resume= would be ignored.
FRESH_MODEL_TASKS = ("lr_find", "check_init")

import io
import sys
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from trainer.errors import ConfigError


def run_task(cfg: DictConfig, run_dir: Path, smoke: bool = False) -> int:
    """Run `cfg.task` (not train) and return the exit code: plan exits 2 when the config has errors.

    `smoke` (smoke=true, in a temporary folder that is removed afterwards): the LR range test and
    export's check run on fewer steps and samples (trainer.engine.smoke; the config's shrink does
    the rest), and the result is rendered but not shown, nor the folder: they would name files
    that are gone.

    lr_find, check_init, export and tsne write their picture or file and a JSON result into the
    run folder; plan writes nothing."""
    from rich.console import Console

    from trainer.config import check_numbers
    from trainer.engine.parts import build_parts, check_setting_nodes  # torch loads here
    from trainer.observe.records import check_unused, claim, write_json_atomic
    from trainer.observe.run_folder import write_record

    if cfg.task not in TASKS:
        raise ConfigError(f"task={cfg.task!r} is unknown; valid: {', '.join(TASKS)}")
    check_numbers(cfg)  # export and tsne build no parts, so the rule for every number is applied here
    check_setting_nodes(cfg)  # nor the check that their settings node holds the keys they take
    if cfg.task in FRESH_MODEL_TASKS and cfg.resume not in (None, "auto"):  # auto: nothing to continue
        raise ConfigError(f"task={cfg.task} measures the config's freshly initialised model and does not read "
                          f"resume={cfg.resume}; leave resume= out")
    console = Console()
    shown = Console(file=io.StringIO()) if smoke else console
    limits = _smoke_limits(cfg.task) if smoke else {}
    if cfg.task == "plan":
        from trainer.tasks.plan import error_lines, plan, render

        report = plan(cfg, run_dir)
        console.print(render(report))
        for line in error_lines(report):
            print(line, file=sys.stderr)
        return 0 if report.ok else 2
    with claim(run_dir):  # like a training run: never in a folder that holds a run, never two at once
        check_unused(run_dir)
        if cfg.task in ("export", "tsne", "sample"):  # these read a trained run and its own config, not the command's
            result, render = _on_trained_run(cfg, run_dir, limits)
        else:
            parts = build_parts(cfg)
            if cfg.task == "lr_find":
                from trainer.tasks.lr_find import lr_find, render

                result = lr_find(parts, run_dir, **limits)
            else:
                from trainer.tasks.check_init import check_init, render

                result = check_init(parts, run_dir)
        write_record(run_dir, cfg)
        shown.print(render(result))
        write_json_atomic(run_dir / f"{cfg.task}.json", result)
    if not smoke:
        console.print(f"written to {run_dir}")
    return 0


def _smoke_limits(task: str) -> dict[str, int]:
    """What smoke=true shrinks in a task beyond its config: the LR range test's steps, and the
    validation samples export checks and times the folded model on."""
    from trainer.engine.smoke import SMOKE_LR_FIND_STEPS, SMOKE_VAL_SAMPLES

    return {"lr_find": {"num_steps": SMOKE_LR_FIND_STEPS}, "export": {"check_samples": SMOKE_VAL_SAMPLES}}.get(task, {})


def _on_trained_run(cfg: DictConfig, run_dir: Path,
                    limits: dict[str, int]) -> tuple[dict[str, Any], Callable[[dict[str, Any]], Any]]:
    """export, tsne or sample of the run `resume=` names; their settings are the `export:` / `tsne:` /
    `sample:` config nodes."""
    settings = OmegaConf.to_container(cfg[cfg.task], resolve=True)
    assert isinstance(settings, dict)
    if cfg.task == "export":
        from trainer.tasks.export import export, render

        return export(cfg.resume, run_dir, **settings, **limits), render
    if cfg.task == "sample":
        from trainer.tasks.sample import render, sample_run

        return sample_run(cfg.resume, run_dir, seed=cfg.seed, **settings), render
    from trainer.tasks.tsne import render, tsne

    return tsne(cfg.resume, run_dir, seed=cfg.seed, **settings), render
