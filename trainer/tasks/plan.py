"""`task=plan`: what a config would run and what it would cost, checked without training.

Builds every part as a run would (so every config error a run would hit is reported here, as an
error rather than an exit), counts parameters, estimates memory per batch (parameters +
gradients + optimizer state + activations, the activations measured with one forward of one
batch), and warns about combinations that run but do not do what the user likely meant.
"""
from __future__ import annotations

import math
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from torch import nn
from torch.optim import Optimizer

from trainer.config import choices
from trainer.data import DataSplits
from trainer.data.streamed import StreamedSplits
from trainer.engine import checkpoint
from trainer.engine.parts import Parts, build_parts
from trainer.engine.resume import check_resumable
from trainer.errors import TrainerError
from trainer.tricks.sched import resolve_warmup

# BatchNorm's batch statistics get noisy in small batches: its ImageNet error rises steeply below
# 8 samples per batch (Wu & He 2018, "Group Normalization", fig. 1).
SMALL_BATCHNORM_BATCH = 8
# Warmup is a short ramp (Goyal et al. 2017: 5 of 90 epochs); past half of training it is most of the run.
MAX_WARMUP_FRACTION = 0.5
# Optimizer state tensors kept per parameter tensor, same size and dtype (torch's implementations).
ADAM_SLOTS = 2  # exp_avg, exp_avg_sq (+1 for amsgrad's max_exp_avg_sq)


@dataclass
class PlanReport:
    """Args:
        tricks: the choice of every group (trainer.config.choices).
        params: parameter count (None when the config does not build).
        trainable_params: those with requires_grad.
        steps_per_epoch: optimizer steps per epoch.
        total_steps: optimizer steps the run would take.
        evaluations: validation passes (one per epoch started).
        device: the device a run would use.
        precision: {"requested", "actual"}.
        memory: bytes: params, grads, optimizer, activations (one batch's layer outputs, which
            backward keeps), total (their sum), data (the data set, held on the device).
        warnings: combinations that run but likely not as meant.
        errors: what stops the run (the one-line config errors a run would print).
    """

    tricks: dict[str, str] = field(default_factory=dict)
    params: int | None = None
    trainable_params: int | None = None
    steps_per_epoch: int | None = None
    total_steps: int | None = None
    evaluations: int | None = None
    device: str | None = None
    precision: dict[str, str] | None = None
    memory: dict[str, int] | None = None
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def optimizer_slots(optimizer: Optimizer) -> int:
    """State tensors per parameter that `optimizer` keeps (a parameter-sized buffer each)."""
    defaults = optimizer.defaults
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return ADAM_SLOTS + int(bool(defaults.get("amsgrad")))
    if isinstance(optimizer, torch.optim.SGD):
        return int(defaults.get("momentum", 0) > 0)  # the momentum buffer
    if isinstance(optimizer, torch.optim.RMSprop):
        return 1 + int(defaults.get("momentum", 0) > 0) + int(bool(defaults.get("centered")))
    return ADAM_SLOTS  # unknown: assume Adam-like


def activation_bytes(model: nn.Module, x: torch.Tensor, parts: Parts) -> int:
    """Bytes of every leaf module's output for batch `x`: what backward keeps for the gradient
    (an upper bound: in-place and fused ops keep less). Measured with no gradient and in eval
    mode, so nothing in the model changes; the model's mode is restored."""
    total = 0

    def count(_module: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal total
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()

    leaves = [module for module in model.modules() if not list(module.children())]
    handles = [module.register_forward_hook(count) for module in leaves]
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.no_grad(), parts.precision.autocast():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
    return total


def held_bytes(data: DataSplits | StreamedSplits) -> int:
    """Bytes the data set holds on the device: every split of data in memory; none streamed from disk."""
    if isinstance(data, StreamedSplits):
        return 0
    splits = (data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test)
    return sum(t.numel() * t.element_size() for t in splits if t is not None)


def memory(parts: Parts) -> dict[str, int]:
    """The memory estimate, in bytes, for one training step at cfg.batch_size."""
    params = list(parts.model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    trainable = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    batch = parts.data.head("train", parts.settings.batch_size)[0]
    activations = activation_bytes(parts.model, batch, parts) + batch.numel() * batch.element_size()
    optimizer = optimizer_slots(parts.optimizer) * trainable
    data = held_bytes(parts.data)
    return {"params": param_bytes, "grads": trainable, "optimizer": optimizer, "activations": activations,
            "total": param_bytes + trainable + optimizer + activations, "data": data}


def warnings_for(cfg: DictConfig, parts: Parts, evaluations: int) -> list[str]:
    """Combinations that run but likely do not do what was meant."""
    found = list(parts.notices)  # fallbacks: tf32 on a CPU, channels_last on 1-D data, ...
    if cfg.norm.name == "batchnorm" and cfg.batch_size < SMALL_BATCHNORM_BATCH:
        found.append(f"batch_size={cfg.batch_size} with norm=batchnorm: batch statistics of fewer than "
                     f"{SMALL_BATCHNORM_BATCH} samples are noisy; norm=groupnorm or norm=layernorm do not "
                     "depend on the batch")
    if cfg.init.name == "zeros":
        found.append("init=zeros: every unit of a layer starts identical and gets the same gradient, so they never "
                     "differ (no symmetry breaking); use init=he or init=default")
    monitor = parts.early_stopping.monitor
    patience = cfg.early_stopping.get("patience")
    if monitor is not None and patience is not None and evaluations <= patience:
        found.append(f"early_stopping.patience={patience} but the run evaluates only {evaluations} time(s): "
                     "it can never stop early; train longer or lower the patience")
    if cfg.sched.name == "plateau":
        sched_patience = cfg.sched.get("patience", 0)
        if evaluations <= sched_patience:
            found.append(f"sched=plateau with sched.patience={sched_patience} but only {evaluations} evaluation(s): "
                         "the LR is never lowered")
        if monitor is not None and patience is not None and patience <= sched_patience:
            found.append(f"early_stopping.patience={patience} <= sched.patience={sched_patience}: training stops "
                         "before the plateau schedule can lower the LR; make early_stopping.patience larger")
    if "warmup_steps" in cfg.sched or "warmup_fraction" in cfg.sched:
        warmup = resolve_warmup(cfg.sched.get("warmup_steps"), cfg.sched.get("warmup_fraction"), parts.total_steps)
        if warmup > MAX_WARMUP_FRACTION * parts.total_steps:
            found.append(f"warmup takes {warmup} of {parts.total_steps} steps ({warmup / parts.total_steps:.0%}): "
                         "most of the run is spent below the base LR")
    if parts.precision.scaler.is_enabled() and not parts.optimizer.defaults.get("fused"):
        # GradScaler.step checks an unfused optimizer's gradients for inf on the host before stepping.
        found.append(f"precision={parts.precision.actual} with optim={cfg.optim.name}: torch has no fused kernel for it, "
                     "so the loss scaler waits for the device every step; optim=adam, adamw, sgd, momentum or "
                     "nesterov avoid that")
    if cfg.max_steps and cfg.max_steps < parts.steps_per_epoch:
        found.append(f"max_steps={cfg.max_steps} ends training before the first epoch does "
                     f"({parts.steps_per_epoch} steps per epoch)")
    return found


def plan(cfg: DictConfig, run_dir: Path = Path(".")) -> PlanReport:
    """Check `cfg` and estimate its cost without training (no optimizer step is taken).

    Args:
        cfg: the composed config.
        run_dir: the run folder, where `resume=auto` looks for a checkpoint.

    Returns:
        A PlanReport; a config a run would refuse gives `errors` (with the run's one-line message)
        and only the fields known before the failure.
    """
    report = PlanReport(tricks=choices(cfg))
    try:
        parts = build_parts(cfg)
        check_resume(cfg, run_dir)
    except TrainerError as error:
        report.errors.append(str(error))
        return report
    report.params = parts.num_params
    report.trainable_params = sum(p.numel() for p in parts.model.parameters() if p.requires_grad)
    report.steps_per_epoch = parts.steps_per_epoch
    report.total_steps = parts.total_steps
    report.evaluations = math.ceil(parts.total_steps / parts.steps_per_epoch)
    report.device = str(parts.device)
    report.precision = {"requested": parts.precision.requested, "actual": parts.precision.actual}
    try:
        report.memory = memory(parts)
    except torch.cuda.OutOfMemoryError:
        report.errors.append(f"one forward of batch_size={cfg.batch_size} runs out of GPU memory; lower batch_size "
                             "or use trainer.accumulate")
    report.warnings = warnings_for(cfg, parts, report.evaluations)
    if report.memory and parts.device.type == "cuda":
        available = torch.cuda.get_device_properties(parts.device).total_memory
        needed = report.memory["total"] + report.memory["data"]
        if needed > available:
            report.errors.append(f"about {_size(needed)} needed, the GPU has {_size(available)}: lower batch_size "
                                 "(trainer.accumulate keeps the effective batch) or use a smaller model")
    return report


def check_resume(cfg: DictConfig, run_dir: Path) -> None:
    """What a run checks of `resume=` before it trains: that it names a usable checkpoint, and that
    this config may continue it. Read only: nothing is claimed, moved or written."""
    if not cfg.resume:
        return
    payload, _found, _notices = checkpoint.resolve(str(cfg.resume), run_dir)
    if payload is not None:  # resume=auto in a folder without a checkpoint starts afresh
        check_resumable(payload["config"], cfg)


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return f"{count:.1f} GiB"


def render(report: PlanReport) -> RenderableType:
    """Tricks, size, steps and memory as a table; warnings in yellow (errors: `error_lines`)."""
    table = Table(title="plan", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("tricks", " ".join(f"{group}={choice}" for group, choice in report.tricks.items()))
    if report.params is not None:
        table.add_row("parameters", f"{report.params:,} ({report.trainable_params:,} trainable)")
        table.add_row("steps", f"{report.total_steps} ({report.steps_per_epoch} per epoch, "
                               f"{report.evaluations} evaluations)")
        table.add_row("device", f"{report.device}, precision {report.precision['actual']}"  # type: ignore[index]
                                f" (requested {report.precision['requested']})")  # type: ignore[index]
    if report.memory:
        m = report.memory
        table.add_row("memory per step (estimate)",
                      f"{_size(m['total'])} = params {_size(m['params'])} + grads {_size(m['grads'])} + optimizer "
                      f"{_size(m['optimizer'])} + activations {_size(m['activations'])}; data {_size(m['data'])}")
    lines: list[RenderableType] = [table]
    lines += [Text(f"warning: {w}", style="yellow") for w in report.warnings]
    # Errors are not drawn here: the CLI prints them as it prints every error, one line each on stderr.
    if report.ok and not report.warnings:
        lines.append(Text("no problems found", style="green"))
    return Group(*lines)


def error_lines(report: PlanReport) -> list[str]:
    """The errors as the CLI prints every error: `error: ...`, one line each, unwrapped."""
    return [f"error: {' '.join(error.split())}" for error in report.errors]
