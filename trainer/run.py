"""run(cfg, run_dir) -> summary: build the parts a config names, fit, write the summary.

The Hydra entry point (`trainer.cli`) only calls this; tests call it directly with a composed
config and a temporary folder. With `resume=...` the run continues in the folder that holds
the checkpoint, from exactly where the checkpoint left it.
"""
from __future__ import annotations

import json
import platform
import random
import resource
import textwrap
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from trainer.config import choices, shipped_defaults
from trainer.data.seq2seq import IGNORE_INDEX
from trainer.data.text import bits_per_char
from trainer.engine import checkpoint, distributed
from trainer.engine.loop import Trainer, TrainState
from trainer.engine.parts import Parts, build_parts
from trainer.errors import ConfigError
from trainer.models.char_lm import CharLSTM
from trainer.observe import diagnosis
from trainer.observe import layer_stats
from trainer.observe.curves import PlotError, plot_curves
from trainer.observe.display import make_display
from trainer.observe.loggers import LoggerGroup, build_loggers
from trainer.observe.records import MetricsLog, check_unused, claim, write_json_atomic, write_lines_atomic
from trainer.observe.run_folder import write_record
from trainer.tasks.sample import write_samples
from trainer.tricks.precision import Precision

# Config keys that must match to resume: they shape the model, its data or the optimizer state.
# Anything else (epochs, max_steps, device, logging, checkpoint policy) may change, and so may
# `_target_`, a builder's import address: moving the code changes no experiment.
MUST_MATCH = ("data", "model", "norm", "regularisation", "optim.name", "sched.name", "precision.name",
              "batch_size", "trainer.accumulate", "distill", "teacher_forcing")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}


def check_resumable(saved: dict[str, Any], cfg: DictConfig) -> None:
    old, new = _flatten(saved), _flatten(OmegaConf.to_container(cfg, resolve=True))
    # A key the checkpoint does not know, at its shipped default, was added by an upgrade and
    # changes nothing (config.shipped_defaults).
    defaults = shipped_defaults(cfg)
    differing = sorted(
        key for key in set(old) | set(new)
        if any(key == m or key.startswith(m + ".") for m in MUST_MATCH) and old.get(key) != new.get(key)
        and not key.endswith("._target_") and not (key not in old and key in defaults and defaults[key] == new[key])
    )
    if differing:
        shown = ", ".join(f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in differing[:4])
        raise ConfigError(f"cannot resume: the config differs in keys that matter: {shown}; "
                          "resume with the original values (only epochs, max_steps, logging and the like may change)")


def check_world_size(saved: int, ranks: distributed.Context) -> None:
    """A run resumes with the number of processes it was trained with: batch_size is per process,
    so another number would change the global batch, and with it the run."""
    if saved == ranks.world_size:
        return
    how = ("with processes=1 and without torchrun" if saved == 1
           else f"with processes={saved} (or torchrun --nproc_per_node={saved}, in all across nodes)")
    raise ConfigError(f"cannot resume: the checkpoint was trained by {saved} process(es), this run has {ranks.world_size}; "
                      f"resume it {how}: batch_size is per process, so another count would change the global batch")


def rng_state(device: torch.device) -> dict[str, Any]:
    """The random states a resumed run needs. Of CUDA's, only the generator of the device in use:
    a checkpoint then resumes on the CPU, or where fewer GPUs are visible."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore `rng_state`'s states; a CUDA state only onto a CUDA device (a GPU checkpoint resumed
    on the CPU has no use for it, a CPU one on a GPU has none: that generator starts from the seed)."""
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if device.type != "cuda" or cuda is None:
        return
    if isinstance(cuda, list):  # an older checkpoint: every visible GPU's state; ours is the one in use
        index = device.index if device.index is not None else torch.cuda.current_device()
        cuda = cuda[index] if index < len(cuda) else None
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def precision_change(saved: str | None, precision: Precision, device: torch.device) -> str | None:
    """The one line to print when a checkpoint resumes in another precision than it was trained in
    (precision=auto on another device); None when it does not, or the checkpoint does not say."""
    if saved is None or saved == precision.actual:
        return None
    return (f"precision: the checkpoint was trained in {saved}, this run continues in {precision.actual} "
            f"(precision={precision.requested} on {device.type}), so it will not end exactly as an uninterrupted run")


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the records written up to the checkpoint's step; the rest is trained again."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    write_lines_atomic(path, kept)


# Measured by some runs only: bits per character (data=text), a sequence decoder's own outputs (model=seq2seq).
OPTIONAL_METRICS = ("val_bpc", "val_token_acc", "val_seq_acc")


def _evaluated(row: dict[str, Any]) -> tuple[str, ...]:
    """What an evaluation measured (Trainer.evaluate): val_loss, val_acc, and the optional ones it has."""
    return ("val_loss", "val_acc", *(key for key in OPTIONAL_METRICS if key in row))


def _best(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The epoch with the lowest validation loss (it exists for every task, accuracy does not)."""
    finite = [row for row in history if row["val_loss"] is not None and np.isfinite(row["val_loss"])]
    if not finite:
        return {}
    row = min(finite, key=lambda r: r["val_loss"])
    return {key: row[key] for key in ("epoch", "train_loss", *_evaluated(row))}


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()


def peak_memory(device: torch.device) -> dict[str, int | None]:
    """Peak resident memory of this process and, on CUDA, the peak bytes the allocator handed out."""
    return {
        "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux reports KiB
        "cuda_peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }


def summarise(cfg: DictConfig, parts: Parts, state: TrainState, restored_best: bool, started: float) -> dict[str, Any]:
    last = state.history[-1] if state.history else {}
    return {
        "status": state.status,
        "message": state.message,
        "final": {key: last.get(key) for key in ("train_loss", *_evaluated(last))},
        "best": _best(state.history),
        "restored_best_weights": restored_best,
        "epochs_run": len(state.history),
        "steps": state.step,
        "skipped_steps": state.skipped_steps + state.interval.skipped,  # the last, unlogged interval too
        "wall_s": round(state.train_s, 3),
        "total_wall_s": round(time.perf_counter() - started, 3),
        "samples_per_s": round(state.samples_seen / max(state.train_s, 1e-9), 1),
        "device": {"requested": cfg.device, "actual": str(parts.device), "name": _device_name(parts.device)},
        "precision": {"requested": parts.precision.requested, "actual": parts.precision.actual},
        "tricks": choices(cfg),
        "params": parts.num_params,
        "seed": cfg.seed,
        "signal": state.signal,
        "memory": peak_memory(parts.device),
        "threads": parts.threads,
        "world_size": parts.distributed.world_size,
        "torch": torch.__version__,
    }


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
                run_dir = found.parent.parent
            if ranks.is_main:  # rank 0 holds the folder for all ranks
                held.enter_context(claim(run_dir))
            payload, notices = None, []
            if cfg.resume:  # the latest checkpoint, read now that no other process can write one
                payload, _found, notices = checkpoint.resolve(str(cfg.resume), run_dir)
                if payload is not None:
                    check_resumable(payload["config"], cfg)
                    check_world_size(payload.get("world_size", 1), ranks)
            if payload is None and ranks.is_main:
                check_unused(run_dir)
        return _train(cfg, run_dir, payload, notices, started, overrides or [])


def _train(cfg: DictConfig, run_dir: Path, payload: dict[str, Any] | None, notices: list[str],
           started: float, overrides: list[str]) -> dict[str, Any]:
    ranks = distributed.current()
    main = ranks.is_main  # under torchrun rank 0 alone writes the run's files and shows it
    with ranks.all_or_none():  # every rank checks the config and builds its parts before rank 0 writes anything
        checkpointer = checkpoint.Checkpointer(run_dir, **cfg.checkpoint)
        parts = build_parts(cfg)
    display = make_display(quiet=not main)
    with ranks.all_or_none():
        if main and payload is None:  # a new run: Hydra's record of it; a resumed run keeps the record of its start
            write_record(run_dir, cfg)
            if parts.data.chars is not None:  # the meaning of its character ids, for whoever reads its outputs
                write_json_atomic(run_dir / "vocab.json", {"chars": parts.data.chars})
        elif main:
            _truncate_metrics(run_dir / "metrics.jsonl", payload["train_state"]["step"])
        metrics_log = MetricsLog(run_dir / "metrics.jsonl") if main else None
        extra_loggers = LoggerGroup(build_loggers(cfg.get("logger"), run_dir, parts.model) if main else [])
    config = OmegaConf.to_container(cfg, resolve=True)

    def save(trainer: Trainer, best: bool) -> None:
        state = trainer.state_dict()  # on every rank: it reads the metrics reduced across ranks
        if main:
            checkpointer.save({**state, "rng": rng_state(parts.device), "config": config,
                               "precision": parts.precision.actual, "chars": parts.data.chars,
                               "world_size": ranks.world_size}, trainer.state.step, best)

    trainer = Trainer(parts, display, [metrics_log, extra_loggers] if main else [], torch.Generator().manual_seed(cfg.seed),
                      checkpoint=save if checkpointer.enabled else None, due_at_step=checkpointer.due_at_step, due_at_epoch=checkpointer.due_at_epoch,
                      probes=[layers_probe] if main else [], wait_for_checkpoints=checkpointer.wait)
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
    diagnosis.with_commands(findings, overrides)
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
    display.finish(summary, str(run_dir))
    return summary


def evaluate_test(trainer: Trainer, state: TrainState) -> dict[str, float | None] | None:
    """The test split's loss and accuracy, measured once, on the weights the run ends with (the
    restored best under early stopping); None without a test split, or for a run that stopped
    unfinished (interrupted: it is resumed, and measured when it ends)."""
    data = trainer.data
    if not data.has_test or state.status == "interrupted":
        return None
    loss, acc = trainer.measure(data.x_test, data.y_test)
    return {"loss": loss, "acc": acc, **({"bpc": bits_per_char(loss)} if data.char_lm else {}),
            **trainer.decoded(data.x_test, data.y_test)}


START_SAMPLES = 256  # training samples the fresh model's loss is measured on: a stable mean, no time


@torch.no_grad()
def start_record(parts: Parts) -> dict[str, Any]:
    """Facts from before training, for the diagnosis: the training inputs' mean and std (are they
    standardised?), the chance-level loss and the fresh model's loss on training samples (does
    the init start near chance?). Measured in eval mode, so no BatchNorm statistic or RNG moves."""
    data, model = parts.data, parts.model
    x = data.x_train.float()
    features = data.x_train.is_floating_point()  # token ids are not features
    classification = data.task == "classification"
    if classification:  # predicting the class (or token) frequencies: the loss of a model that knows nothing
        labels = data.y_train[data.y_train != IGNORE_INDEX]  # (N,) or per position (N, L); padding is no class
        counts = torch.bincount(labels, minlength=data.num_outputs).float()
        p = counts[counts > 0] / counts.sum()
        chance = float(-(p * p.log()).sum())
    else:  # predicting the mean target
        chance = float(data.y_train.float().var(dim=0, unbiased=False).mean())
    sample_x, sample_y = data.x_train[:START_SAMPLES], data.y_train[:START_SAMPLES]
    model.eval()
    try:
        with parts.precision.autocast():
            out = model(sample_x).float()
        loss = F.cross_entropy(out, sample_y) if classification else F.mse_loss(out, sample_y)
    finally:
        model.train()
    return {"kind": "start", "epoch": 0, "step": 0, "task": data.task, "num_outputs": data.num_outputs,
            # Character and token ids are indices, not magnitudes: there is no scale to diagnose.
            "input_mean": float(x.mean()) if features else None, "input_std": float(x.std()) if features else None,
            "chance_loss": chance,
            "initial_loss": float(loss), "train_samples": len(data.x_train)}


LAYER_STATS_BATCH = 64  # validation samples for the per-layer statistics: enough for means and stds, cheap each epoch


def layers_probe(trainer: Trainer) -> dict[str, Any]:
    """Per-layer activation, weight and gradient statistics at an evaluation (one extra
    forward and backward on validation samples; no step, and the model is left as it was)."""
    parts, state = trainer.parts, trainer.state
    x, y = parts.data.x_val[:LAYER_STATS_BATCH], parts.data.y_val[:LAYER_STATS_BATCH]
    rows = layer_stats.collect(parts.model, x, y, parts.criterion, parts.precision)
    return {"kind": "layers", "epoch": state.epoch, "step": state.step, "layers": rows}


