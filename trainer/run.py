"""run(cfg, run_dir) -> summary: build the parts a config names, fit, write the summary.

The Hydra entry point (`trainer.cli`) only calls this; tests call it directly with a composed
config and a temporary folder. With `resume=...` the run continues in the folder that holds
the checkpoint, from exactly where the checkpoint left it. It reads as the recipe: claim the
folder, (read the checkpoint), build, fit, summarise and diagnose; each step lives in engine/
or observe/.
"""
from __future__ import annotations

import textwrap
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from trainer.config import choices
from trainer.engine import checkpoint, distributed
from trainer.engine.checkpoint import NoCheckpoints
from trainer.engine.loop import Trainer
from trainer.engine.parts import Parts, build_parts
from trainer.engine.resume import (RunCheckpoints, check_not_rewinding, check_resumable, check_world_size, completed_summary,
                                    load_weights, precision_change, set_rng_state, truncate_metrics)
from trainer.engine.summary import evaluate_test, summarise
from trainer.models.char_lm import CharLSTM
from trainer.observe import diagnosis
from trainer.observe.curves import PlotError, plot_curves
from trainer.observe.display import make_display
from trainer.observe.loggers import LoggerGroup, build_loggers
from trainer.observe.probes import layers_probe, start_record
from trainer.observe.records import MetricsLog, check_unused, claim, write_json_atomic
from trainer.observe.run_folder import set_aside, write_record
from trainer.tasks.sample import write_samples


def curves_title(tricks: dict[str, str], cfg: DictConfig) -> str:
    """What was trained, for the figure: every group's choice and the seed, on as many lines as it takes."""
    chosen = " ".join(f"{group}={choice}" for group, choice in tricks.items())
    return textwrap.fill(f"{chosen} seed={cfg.seed}", width=100)


def _header(tricks: dict[str, str], parts: Parts) -> str:
    chosen = " ".join(f"{group}={choice}" for group, choice in tricks.items())
    return (f"{chosen}\n{parts.num_params:,} parameters, {parts.total_steps} steps on {parts.device} "
            f"({parts.precision.actual})")


def run(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Train as `cfg` says, writing metrics.jsonl, checkpoints/ and summary.json to the run folder;
    return the summary. The run folder is `run_dir`, or the resumed checkpoint's folder; this
    process holds it (records.claim) from the check that it holds no other run to the summary.
    `overrides` (the command line's) make the diagnosis's `train ...` commands complete."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    ranks = distributed.current()
    with ExitStack() as held:
        with ranks.all_or_none():  # under torchrun: a rank that stops here stops them all
            if cfg.resume and cfg.resume != "auto":  # the folder a checkpoint belongs to; a bad resume= is refused here
                _payload, found, _notices = checkpoint.resolve(str(cfg.resume), run_dir)
                assert found is not None  # resolve raises for a file or folder it cannot use
                run_dir = checkpoint.run_folder(str(cfg.resume), found)
            if ranks.is_main:  # rank 0 holds the folder for all ranks
                held.enter_context(claim(run_dir))
            payload, notices = None, []
            if cfg.resume:  # the latest checkpoint, read now that no other process can write one
                payload, _found, notices = checkpoint.resolve(str(cfg.resume), run_dir)
                if payload is not None:
                    check_resumable(payload["config"], cfg)
                    if cfg.resume != "auto" and not Path(str(cfg.resume)).expanduser().is_dir():  # a file named by hand
                        check_not_rewinding(payload, str(cfg.resume), run_dir)
                    check_world_size(payload.get("world_size", 1), ranks)
            if payload is None and ranks.is_main:
                check_unused(run_dir, resuming=cfg.resume == "auto")
        return _train(cfg, run_dir, payload, notices, started, overrides or [])


def _train(cfg: DictConfig, run_dir: Path, payload: dict[str, Any] | None, notices: list[str],
           started: float, overrides: list[str]) -> dict[str, Any]:
    ranks = distributed.current()
    main = ranks.is_main  # under torchrun rank 0 alone writes the run's files and shows it
    with ranks.all_or_none():  # every rank checks the config and builds its parts before rank 0 writes anything
        parts = build_parts(cfg)  # first: it checks that `checkpoint` holds the keys the Checkpointer takes
        checkpointer = checkpoint.Checkpointer(run_dir, **cfg.checkpoint)
        if ranks.enabled:
            # Each rank would read the interval off its own clock, and ranks that disagreed on a
            # checkpoint would disagree on the collective its state takes (the meter's read).
            checkpointer.min_interval_s = 0.0
        if payload is not None:
            load_weights(payload, parts.model, str(cfg.resume), run_dir)
    if payload is not None and (summary := completed_summary(payload, cfg, run_dir)) is not None:  # its record stays as it is
        if main:
            print(f"{run_dir} completed at step {summary['steps']}: nothing left to train "
                  "(more epochs or a higher max_steps continue it)", flush=True)
        return summary
    display = make_display(quiet=not main)
    resumed_at = None if payload is None else payload["train_state"]["step"]  # the step the checkpoint was taken at
    with ranks.all_or_none():
        if main and payload is None:  # a new run: Hydra's record of it; a resumed run keeps the record of its start
            if cfg.resume == "auto" and (moved := set_aside(run_dir)) is not None:  # check_unused let only an unfinished attempt by
                notices.append(f"no good checkpoint to continue from: starting afresh; the earlier attempt is kept in {moved}")
            write_record(run_dir, cfg)
            if parts.data.chars is not None:  # the meaning of its character ids, for whoever reads its outputs
                write_json_atomic(run_dir / "vocab.json", {"chars": parts.data.chars})
        elif main:
            truncate_metrics(run_dir / "metrics.jsonl", resumed_at)
        metrics_log = MetricsLog(run_dir / "metrics.jsonl") if main else None
        extra_loggers = LoggerGroup(build_loggers(cfg.get("logger"), run_dir, parts.model, resumed_at) if main else [])
    config = OmegaConf.to_container(cfg, resolve=True)

    # A checkpoint holds the config (to check a resume against), the precision trained in, a
    # character LM's vocabulary and the number of processes; both intervals 0: not even best.pt.
    saved_with = {"config": config, "precision": parts.precision.actual, "chars": parts.data.chars,
                  "world_size": ranks.world_size}
    policy = (RunCheckpoints(checkpointer, parts.device, saved_with, writes=main) if checkpointer.enabled
              else NoCheckpoints())
    trainer = Trainer(parts, display, [metrics_log, extra_loggers] if main else [], torch.Generator().manual_seed(cfg.seed),
                      checkpoints=policy, probes=[layers_probe] if main else [], watch_layers=main)
    if payload is not None:
        trainer.load_state_dict(payload)
        set_rng_state(payload["rng"], parts.device)
        notices.append(f"resuming {run_dir} from step {trainer.state.step} (epoch {trainer.state.epoch})")
        if (change := precision_change(payload.get("precision"), parts.precision, parts.device)) is not None:
            notices.append(change)
    for notice in parts.notices + notices:
        display.notice(notice)
    tricks = choices(cfg)
    display.start(parts.total_steps, cfg.epochs, _header(tricks, parts))
    try:
        if payload is None and metrics_log is not None:  # what the diagnosis needs from before the first step (a resumed run has it)
            metrics_log.log(start_record(parts))
            metrics_log.log({**layers_probe(trainer), "epoch": 0})
        state = trainer.fit()
    finally:
        display.close()
        if metrics_log is not None:
            metrics_log.close()
        extra_loggers.close()
        checkpointer.close()  # also when fit raised: nothing is left in flight
    ranks.barrier()  # no rank goes on (a resume= may read them) before rank 0's checkpoints are on disk
    restored = parts.early_stopping.restore_best(parts.model)
    summary = summarise(cfg, parts, state, restored, started)
    if restored:  # `final` is the last epoch trained; this is the model the run ends with
        summary["restored"] = trainer.evaluate()
    summary["test"] = evaluate_test(trainer, state)
    if not main:
        return summary
    findings = diagnosis.diagnose_file(run_dir / "metrics.jsonl", state.status, config)
    diagnosis.with_commands(findings, distributed.train_overrides(overrides, ranks))
    summary["diagnosis"] = diagnosis.to_dicts(findings)
    if parts.data.char_lm and isinstance(parts.model, CharLSTM) and state.status != "interrupted":
        summary["samples"] = write_samples(parts.model, parts.data.chars, run_dir, seed=cfg.seed,
                                           **cfg.sample)["file"]
    write_json_atomic(run_dir / "summary.json", summary)
    if cfg.get("curves", True) and not cfg.get("smoke"):  # drawing costs more than a smoke run's training; its errors never fail a run
        try:
            plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png", title=curves_title(tricks, cfg))
        except PlotError as error:
            display.notice(f"curves.png not written: {error}")
    display.show(diagnosis.panel(findings))
    for line in diagnosis.command_lines(findings):
        print(line, flush=True)
    display.finish(summary, None if cfg.get("smoke") else str(run_dir))  # a smoke run's folder is removed
    return summary
