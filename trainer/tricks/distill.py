"""Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural
Network"): a student learns from a trained teacher's softened outputs as well as from the labels.

One loss object per `distill=` choice, called as `loss(logits, targets, inputs)` by the training
step, so the loop never asks which one it holds. It returns `Losses(objective, hard)`: the loop
minimises the objective and reports the hard-label loss as `train_loss`, so that figure stays the
cross-entropy the validation loss, the diagnosis and an undistilled run measure (the T^2-scaled KL
is on another scale: a fresh student starts several times above its cross-entropy).

- `distill=none`: `HardLoss`, the hard-label loss alone (the regularisation group's criterion).
- `distill=soft`: `SoftLoss`, with T the temperature and alpha the weight of the soft term:

      loss = (1 - alpha) * hard_loss(student, labels)
             + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

  alpha weights the distillation (soft) term: alpha = 0 is the hard-label loss alone, alpha = 1
  the soft targets alone. The T^2 keeps the soft term's gradient about the same size whatever T
  (its gradient with respect to a student logit is T * (q - p), q and p the student's and the
  teacher's softened probabilities, and q - p shrinks like 1/T), as the paper recommends.

The teacher is a trained run of this tool (its folder, meaning its latest good checkpoint, or a
checkpoint file), loaded with `weights_only=True`, frozen (no parameter requires a gradient, none
is in the optimizer), in eval mode (batch norm uses its running statistics, dropout is off) and
run under no_grad. Only the run's own metrics change: validation and test stay the student's
plain cross-entropy and accuracy. A student checkpoint keeps the teacher's path and SHA-256, not
its weights: resuming loads the teacher again and refuses one whose bytes changed.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from trainer.data import DataSplits
from trainer.engine import checkpoint
from trainer.config import group_choices
from trainer.errors import ConfigError, TrainerError

CHOICES = group_choices("distill")  # conf/distill/*.yaml


class Losses(NamedTuple):
    """Args:
        objective: what the step minimises (before the regularisation penalty).
        hard: the hard-label loss alone, reported as train_loss.
    """

    objective: torch.Tensor
    hard: torch.Tensor


class HardLoss:
    """`distill=none`: the hard-label loss, nothing else."""

    def __init__(self, criterion: nn.Module, notice: str | None = None) -> None:
        self.criterion, self.notice = criterion, notice

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> Losses:
        hard = self.criterion(logits, targets)
        return Losses(hard, hard)

    @property
    def teacher_model(self) -> None:
        """No teacher runs beside the model."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass(frozen=True)
class Teacher:
    """Args:
        model: the trained model, frozen, in eval mode, on the student's device.
        path: the checkpoint file its weights came from.
        sha256: the hash of that file's bytes, kept in the student's checkpoints.
    """

    model: nn.Module
    path: Path
    sha256: str

    @torch.no_grad()
    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                     targets: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)) over the classes (dim 1, as for
    cross_entropy), averaged over the samples and, for sequence logits (N, C, L), the positions.
    `targets`: positions whose target is negative (cross_entropy's ignore_index, a seq2seq target
    past its end) count nowhere, as in the hard loss: the teacher's outputs there are no knowledge.

    Computed in float32 with autocast off: under fp16 or bf16 autocast the logits may arrive in
    low precision, and a difference of two nearly equal log-probabilities loses its digits there."""
    with torch.autocast(student_logits.device.type, enabled=False):
        student = F.log_softmax(_at_least_float32(student_logits) / temperature, dim=1)
        teacher = F.log_softmax(_at_least_float32(teacher_logits) / temperature, dim=1)
        # Positions become rows (a no-op for (N, C) logits); batchmean then sums each row's KL
        # divergence over the classes and averages the rows, as cross_entropy averages.
        classes = student.shape[1]
        student, teacher = student.movedim(1, -1).reshape(-1, classes), teacher.movedim(1, -1).reshape(-1, classes)
        if targets is not None:
            labelled = targets.reshape(-1) >= 0
            student, teacher = student[labelled], teacher[labelled]
        return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


class SoftLoss:
    """`distill=soft`: (1 - alpha) * hard loss + alpha * T^2 * KL(teacher softened || student softened)."""

    def __init__(self, criterion: nn.Module, teacher: Teacher, temperature: float, alpha: float) -> None:
        self.criterion, self.teacher, self.temperature, self.alpha = criterion, teacher, temperature, alpha
        self.notice: str | None = None

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> Losses:
        hard = self.criterion(logits, targets)
        soft = soft_target_loss(logits, self.teacher.logits(inputs), self.temperature, targets)
        return Losses((1 - self.alpha) * hard + self.alpha * soft, hard)

    @property
    def teacher_model(self) -> nn.Module:
        """The teacher runs under the student's autocast: the precision must suit it too."""
        return self.teacher.model

    def state_dict(self) -> dict[str, Any]:
        """Which teacher, not its weights: a resumed run loads it again from its file."""
        return {"teacher": str(self.teacher.path), "sha256": self.teacher.sha256}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Refuse to resume with a teacher whose bytes differ from the one the run started with."""
        if state.get("sha256") != self.teacher.sha256:
            raise ConfigError(
                f"cannot resume: the teacher {self.teacher.path} is not the one this run was distilled from "
                f"({state.get('teacher')}, SHA-256 {str(state.get('sha256'))[:12]}...); give that checkpoint as distill.teacher")


def _read_teacher_checkpoint(spec: str) -> tuple[dict[str, Any], Path]:
    """The checkpoint `distill.teacher=spec` names, verified and loaded with weights_only=True."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(f"distill.teacher={spec} does not exist; give a trained run's folder or one of its checkpoint files")
    try:
        if path.is_dir():
            payload, found, notices = checkpoint.latest_good(path)
            if payload is None or found is None:
                raise ConfigError(f"distill.teacher={spec} holds no usable checkpoint under {checkpoint.FOLDER}/ "
                                  f"({'; '.join(notices) or 'none written'}); give a trained run's folder or a checkpoint file")
            return payload, found
        payload, found, _ = checkpoint.resolve(str(path), Path("."))
    except checkpoint.CheckpointError as error:
        raise ConfigError(f"distill.teacher={spec}: {error}") from None
    assert payload is not None and found is not None  # resolve raises for anything but auto
    return payload, found


def load_teacher(spec: str, data: DataSplits, device: torch.device) -> Teacher:
    """The trained model `spec` names (a run folder or a checkpoint file), checked against the
    student's data (classification, the same classes and input shape), frozen, in eval mode."""
    # Imported here: engine.parts imports this module for the loss objects' types.
    from trainer.engine.parts import build_data
    from trainer.engine.trained import build_untrained

    payload, path = _read_teacher_checkpoint(spec)
    config = payload["config"]
    try:  # the teacher's own data, as it trained: its input shape and classes
        teacher_data = build_data(OmegaConf.create(config["data"]))
    except TrainerError as error:
        raise ConfigError(f"distill.teacher={spec}: its data ({config['data'].get('name')}) cannot be built "
                          f"to check it against the student's: {error}") from None
    teacher_view = (teacher_data.task, teacher_data.num_outputs, teacher_data.input_shape)
    student_view = (data.task, data.num_outputs, data.input_shape)
    if teacher_view != student_view:
        raise ConfigError(
            f"distill.teacher={spec} does not fit this data: the teacher is {_describe(*teacher_view)}, "
            f"the student's data is {_describe(*student_view)}; distil from a teacher trained on the same classes and input shape")
    model = build_untrained(config, teacher_data.input_shape, teacher_data.num_outputs)
    model.load_state_dict(payload["model"])
    model.requires_grad_(False)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    return Teacher(model=model.to(device).eval(), path=path.resolve(), sha256=sha256)


def _describe(task: str, num_outputs: int, input_shape: tuple[int, ...]) -> str:
    if task != "classification":
        return f"{task} with {num_outputs} outputs and inputs of shape {tuple(input_shape)}"
    return f"{num_outputs} classes with inputs of shape {tuple(input_shape)}"


def build(name: str, criterion: nn.Module, data: DataSplits, device: torch.device, teacher: str | None = None,
          temperature: float = 4.0, alpha: float = 0.5) -> HardLoss | SoftLoss:
    """Builder named by conf/distill/*.yaml; `criterion` (the hard-label loss), `data` and `device`
    are passed at run time. Every choice carries every field, so a sweep can switch
    `distill=none,soft` with one `distill.teacher=`; `none` uses none of them."""
    if name not in CHOICES:
        raise ConfigError(f"distill={name!r} is unknown; valid: {', '.join(CHOICES)}")
    if name == "none":
        notice = f"distill=none: distill.teacher={teacher} is not used (distill=soft uses it)" if teacher else None
        return HardLoss(criterion, notice)
    if name != "soft":  # a conf/distill/*.yaml without code here
        raise NotImplementedError(f"distill={name} has a YAML in conf/distill/ but no code in trainer/tricks/distill.py")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature <= 0:
        raise ConfigError(f"distill.temperature={temperature} must be a number > 0 (the seed list: about 1 to 10)")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 <= alpha <= 1:
        raise ConfigError(f"distill.alpha={alpha} must be in [0, 1]: the weight of the soft-target term (0: labels only)")
    if teacher in (None, ""):
        raise ConfigError("distill=soft needs distill.teacher=RUN_DIR_OR_CHECKPOINT: a trained run's folder or one of its checkpoint files")
    if data.task != "classification":
        raise ConfigError("distill=soft needs a classification task: soft targets are class probabilities; use distill=none")
    return SoftLoss(criterion, load_teacher(str(teacher), data, device), float(temperature), float(alpha))
