"""distill=soft: the loss is Hinton et al.'s mix of the hard-label loss and T^2 * KL to the teacher's
softened outputs; the teacher is loaded safely, frozen, and must fit the data."""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from rich.console import Console
from torch import nn

from in_process import train_in_process
from trainer.engine import checkpoint
from trainer.engine.loop import Trainer
from trainer.engine.parts import Parts, build_data, build_parts
from trainer.errors import ConfigError
from trainer.observe.display import PlainDisplay
from trainer.run import run
from trainer.tricks.distill import HardLoss, SoftLoss, Teacher, build, load_teacher, soft_target_loss

CPU = torch.device("cpu")


def identity_teacher() -> Teacher:
    """A 'teacher' whose logits are its inputs, so a test chooses them directly."""
    return Teacher(model=nn.Identity(), path=Path("teacher.pt"), sha256="0" * 64)


def hand_loss(student: list[list[float]], teacher: list[list[float]], labels: list[int], temperature: float,
              alpha: float) -> float:
    """The formula written out with Python floats, one sample at a time."""
    import math

    def softmax(row: list[float], t: float) -> list[float]:
        exps = [math.exp(v / t) for v in row]
        return [e / sum(exps) for e in exps]

    total_hard, total_kl = 0.0, 0.0
    for s, v, y in zip(student, teacher, labels):
        total_hard += -math.log(softmax(s, 1.0)[y])
        p, q = softmax(v, temperature), softmax(s, temperature)
        total_kl += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    n = len(labels)
    return (1 - alpha) * total_hard / n + alpha * temperature**2 * total_kl / n


@pytest.mark.parametrize(("temperature", "alpha"), [(1.0, 0.5), (4.0, 0.5), (2.0, 0.9), (10.0, 1.0)])
def test_loss_equals_the_formula_computed_by_hand(temperature: float, alpha: float) -> None:
    student = [[1.0, -0.5, 2.0], [0.2, 0.3, -1.0]]
    teacher = [[3.0, 0.0, 1.0], [-1.0, 2.5, 0.5]]
    labels = [2, 1]
    losses = SoftLoss(nn.CrossEntropyLoss(), identity_teacher(), temperature, alpha)(
        torch.tensor(student, dtype=torch.float64), torch.tensor(labels), torch.tensor(teacher, dtype=torch.float64))
    assert losses.objective.item() == pytest.approx(hand_loss(student, teacher, labels, temperature, alpha), rel=1e-12)
    # the figure reported as train_loss: the hard-label term alone
    assert losses.hard.item() == pytest.approx(hand_loss(student, teacher, labels, temperature, 0.0), rel=1e-12)


def test_alpha_zero_is_the_hard_label_loss_exactly() -> None:
    generator = torch.Generator().manual_seed(0)
    logits, teacher_logits = torch.randn(8, 5, generator=generator), torch.randn(8, 5, generator=generator) * 3
    labels = torch.randint(0, 5, (8,), generator=generator)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)  # whatever the regularisation group built
    student_soft, student_hard = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    soft = SoftLoss(criterion, identity_teacher(), 4.0, 0.0)(student_soft, labels, teacher_logits).objective
    hard = HardLoss(criterion)(student_hard, labels, teacher_logits).objective
    soft.backward()
    hard.backward()
    assert torch.equal(soft, hard) and torch.equal(student_soft.grad, student_hard.grad)
    # and the teacher does change the loss once alpha > 0
    assert not torch.equal(SoftLoss(criterion, identity_teacher(), 4.0, 0.5)(logits, labels, teacher_logits).objective, hard)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 10.0])
def test_soft_term_gradient_is_t_times_the_difference_of_softened_probabilities(temperature: float) -> None:
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(4, 6, generator=generator, dtype=torch.float64).requires_grad_()
    teacher = torch.randn(4, 6, generator=generator, dtype=torch.float64) * 2
    soft_target_loss(student, teacher, temperature).backward()
    q, p = F.softmax(student.detach() / temperature, dim=1), F.softmax(teacher / temperature, dim=1)
    # d(T^2 KL)/dz = T^2 * (1/T) (q - p), per sample, averaged over the batch of 4 (Hinton et al., eq. 2).
    assert torch.allclose(student.grad, temperature * (q - p) / 4, rtol=1e-10, atol=1e-12)


def test_t_squared_keeps_the_soft_gradient_the_same_size_at_high_temperature() -> None:
    """For zero-mean logits and large T, T * (q - p) tends to (z - v) / N: independent of T.
    Without the T^2 factor the gradient would shrink like 1/T^2 (100x from T=10 to T=100)."""
    generator = torch.Generator().manual_seed(2)
    student = torch.randn(1, 10, generator=generator, dtype=torch.float64)
    teacher = torch.randn(1, 10, generator=generator, dtype=torch.float64)
    student, teacher = student - student.mean(), teacher - teacher.mean()
    limit = (student - teacher) / 10
    norms = []
    for temperature in (10.0, 100.0):
        logits = student.clone().requires_grad_()
        soft_target_loss(logits, teacher, temperature).backward()
        norms.append(logits.grad.norm().item())
        # the error of the limit shrinks like 1/T
        assert (logits.grad - limit).norm() / limit.norm() < (0.1 if temperature == 10 else 0.01)
    assert norms[1] == pytest.approx(norms[0], rel=0.1)


def test_sequence_logits_average_the_soft_term_over_positions_as_cross_entropy_does() -> None:
    generator = torch.Generator().manual_seed(4)
    student, teacher = torch.randn(3, 5, 7, generator=generator), torch.randn(3, 5, 7, generator=generator)  # (N, C, L)
    per_position = [soft_target_loss(student[:, :, t], teacher[:, :, t], 2.0) for t in range(7)]
    assert soft_target_loss(student, teacher, 2.0).item() == pytest.approx(torch.stack(per_position).mean().item(), rel=1e-6)


def test_positions_past_a_sequence_end_count_nowhere_in_the_soft_term() -> None:
    # The hard loss ignores targets of -100 (a seq2seq target past its EOS); the soft term averaged them in too.
    generator = torch.Generator().manual_seed(5)
    student, teacher = torch.randn(2, 5, 6, generator=generator), torch.randn(2, 5, 6, generator=generator)
    targets = torch.tensor([[1, 2, 3, -100, -100, -100], [4, 0, -100, -100, -100, -100]])
    labelled = [soft_target_loss(student[n:n + 1, :, t], teacher[n:n + 1, :, t], 2.0)
                for n in range(2) for t in range(6) if targets[n, t] >= 0]
    expected = torch.stack(labelled).mean().item()
    assert soft_target_loss(student, teacher, 2.0, targets).item() == pytest.approx(expected, rel=1e-6)
    assert soft_target_loss(student, teacher, 2.0).item() != pytest.approx(expected, rel=1e-3)


def test_soft_term_is_computed_in_float32_under_autocast() -> None:
    generator = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(16, 10, generator=generator), torch.randn(16, 10, generator=generator)
    low_student, low_teacher = student.bfloat16(), teacher.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = soft_target_loss(low_student, low_teacher, 4.0)
    reference = soft_target_loss(low_student.double(), low_teacher.double(), 4.0)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)


def test_bad_settings_are_one_line_errors(make_cfg: Callable[..., DictConfig]) -> None:
    data = build_data(make_cfg().data)
    criterion = nn.CrossEntropyLoss()
    cases = [
        ({"name": "soft"}, "distill=soft needs distill.teacher="),
        ({"name": "soft", "teacher": "x", "temperature": 0}, "distill.temperature=0 must be"),
        ({"name": "soft", "teacher": "x", "alpha": 1.5}, "distill.alpha=1.5 must be in [0, 1]"),
        ({"name": "hard"}, "distill='hard' is unknown; valid: none, soft"),
        ({"name": "soft", "teacher": "no/such/run"}, "distill.teacher=no/such/run does not exist"),
    ]
    for settings, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)) as error:
            build(criterion=criterion, data=data, device=CPU, **settings)
        assert "\n" not in str(error.value)


def test_a_folder_without_checkpoints_is_named(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"distill.teacher={tmp_path} holds no usable checkpoint"):
        load_teacher(str(tmp_path), build_data(make_cfg().data), CPU)


def test_teacher_is_loaded_frozen_in_eval_mode(make_cfg: Callable[..., DictConfig], trained_run: Path) -> None:
    import hashlib

    teacher = load_teacher(str(trained_run), build_data(make_cfg().data), CPU)
    assert not teacher.model.training and all(not module.training for module in teacher.model.modules())
    assert all(not p.requires_grad for p in teacher.model.parameters())
    assert teacher.path.parent.name == "checkpoints"
    assert teacher.sha256 == hashlib.sha256(teacher.path.read_bytes()).hexdigest()
    by_file = load_teacher(str(teacher.path), build_data(make_cfg().data), CPU)  # a checkpoint file names it too
    assert by_file.sha256 == teacher.sha256


@pytest.mark.parametrize(("override", "message"), [
    ("data.num_classes=3", "the teacher is 4 classes with inputs of shape (1, 40), the student's data is 3 classes"),
    ("data.length=24", "the student's data is 4 classes with inputs of shape (1, 24)"),
])
def test_a_teacher_that_does_not_fit_the_data_is_refused(make_cfg: Callable[..., DictConfig], trained_run: Path,
                                                         override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        load_teacher(str(trained_run), build_data(make_cfg(override).data), CPU)
    assert "\n" not in str(error.value) and str(trained_run) in str(error.value)


def test_resuming_with_another_teacher_file_is_refused() -> None:
    loss = SoftLoss(nn.CrossEntropyLoss(), identity_teacher(), 4.0, 0.5)
    loss.load_state_dict(loss.state_dict())  # the same teacher: fine
    with pytest.raises(ConfigError, match="is not the one this run was distilled from"):
        loss.load_state_dict({"teacher": "old.pt", "sha256": "f" * 64})


# ---- in a run ------------------------------------------------------------------------------------

def distilled(teacher: Path, *more: str) -> list[str]:
    return ["distill=soft", f"distill.teacher={teacher}", *more]


def fit(parts: Parts) -> Trainer:
    trainer = Trainer(parts, PlainDisplay(Console(file=io.StringIO())), [], torch.Generator().manual_seed(0))
    trainer.fit()
    return trainer


def test_training_never_touches_the_teacher(make_cfg: Callable[..., DictConfig], trained_run: Path) -> None:
    parts = build_parts(make_cfg(*distilled(trained_run), "max_steps=4"))
    teacher = parts.loss.teacher.model
    before = {key: value.clone() for key, value in teacher.state_dict().items()}  # batch-norm statistics too
    in_optimizer = {id(p) for group in parts.optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in teacher.parameters()}
    student_before = [p.detach().clone() for p in parts.model.parameters()]
    fit(parts)
    assert all(torch.equal(before[key], value) for key, value in teacher.state_dict().items())
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert not any(module.training for module in teacher.modules())
    assert any(not torch.equal(a, b) for a, b in zip(student_before, parts.model.parameters()))


def test_the_teacher_changes_the_training_not_the_start_or_the_validation_metric(
        make_cfg: Callable[..., DictConfig], trained_run: Path) -> None:
    alone, taught = build_parts(make_cfg("max_steps=4")), build_parts(make_cfg(*distilled(trained_run), "max_steps=4"))
    # Loading the teacher draws no random number: the student starts from the same weights.
    assert all(torch.equal(a, b) for a, b in zip(alone.model.parameters(), taught.model.parameters()))
    fit(alone)
    trainer = fit(taught)
    assert any(not torch.equal(a, b) for a, b in zip(alone.model.parameters(), taught.model.parameters()))
    data = taught.data
    with torch.no_grad():
        logits = taught.model.eval()(data.x_val)
    expected = F.cross_entropy(logits, data.y_val).item(), (logits.argmax(1) == data.y_val).float().mean().item()
    metrics = trainer.evaluate()  # the student's plain cross-entropy and accuracy, not the distillation loss
    assert metrics["val_loss"] == pytest.approx(expected[0], rel=1e-5) and metrics["val_acc"] == pytest.approx(expected[1])


def test_a_student_checkpoint_names_its_teacher_but_holds_none_of_its_weights(
        make_cfg: Callable[..., DictConfig], trained_run: Path, tmp_path: Path) -> None:
    run(make_cfg(*distilled(trained_run)), tmp_path / "taught")
    run(make_cfg(), tmp_path / "alone")

    def latest(run_dir: Path) -> dict:
        index = checkpoint.read_index(run_dir / checkpoint.FOLDER)
        return torch.load(run_dir / checkpoint.FOLDER / index["checkpoints"][-1]["file"], weights_only=True)

    taught, alone = latest(tmp_path / "taught"), latest(tmp_path / "alone")
    teacher = load_teacher(str(trained_run), build_data(make_cfg().data), CPU)
    assert taught["distill"] == {"teacher": str(teacher.path), "sha256": teacher.sha256} and alone["distill"] == {}
    assert taught.keys() == alone.keys() and taught["model"].keys() == alone["model"].keys()


def test_resuming_refuses_a_teacher_whose_file_changed(make_cfg: Callable[..., DictConfig], trained_run: Path,
                                                      tmp_path: Path) -> None:
    import shutil

    teacher = tmp_path / "teacher"
    shutil.copytree(trained_run, teacher)
    run(make_cfg(*distilled(teacher), "max_steps=2"), tmp_path / "student")
    payload = checkpoint.latest_good(teacher)[0]
    payload["model"] = {key: value + 1 if value.is_floating_point() else value for key, value in payload["model"].items()}
    index = checkpoint.read_index(teacher / checkpoint.FOLDER)
    for entry in index["checkpoints"]:  # rewritten in place, hashes listed, as if trained further
        checkpoint.Checkpointer(teacher, 1, 0, 5).write(payload, entry["step"])
    with pytest.raises(ConfigError, match="is not the one this run was distilled from"):
        # More epochs and steps: a resume with something left to train (one with nothing left changes nothing).
        run(make_cfg(*distilled(teacher), "epochs=3", "max_steps=4", f"resume={tmp_path / 'student'}"), tmp_path / "student")


def test_distillation_composes_with_bf16_accumulation_and_clipping(make_cfg: Callable[..., DictConfig],
                                                                  trained_run: Path, tmp_path: Path) -> None:
    summary = run(make_cfg(*distilled(trained_run), "precision=bf16", "trainer.accumulate=2", "batch_size=16",
                           "clipping=norm"), tmp_path / "run")
    assert summary["status"] == "completed" and summary["tricks"]["distill"] == "soft"
    assert summary["precision"]["actual"] == "bf16"


@pytest.mark.parametrize(("teacher", "message"), [
    ("no/such/run", "error: distill.teacher=no/such/run does not exist"),
    ("TRAINED", "error: distill.teacher=TRAINED does not fit this data: the teacher is 4 classes"),
])
def test_the_command_refuses_a_bad_teacher_in_one_line(trained_run: Path, tmp_path: Path, teacher: str,
                                                       message: str) -> None:
    teacher = teacher.replace("TRAINED", str(trained_run))
    outcome = train_in_process(["data=synthetic", "data.num_classes=3", "epochs=1", "device=cpu",
                                *distilled(Path(teacher)), f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    lines = outcome.stderr.strip().splitlines()
    assert outcome.code == 2 and len(lines) == 1 and lines[0].startswith(message.replace("TRAINED", str(trained_run)))
    assert not (tmp_path / "run").exists()


def test_fp16_on_the_cpu_runs_an_lstm_teacher_in_fp32_with_a_notice(make_cfg: Callable[..., DictConfig],
                                                                    tmp_path: Path) -> None:
    """The teacher runs under the student's autocast: an LSTM teacher's first forward raised a
    traceback (no float16 CPU LSTM kernel) even when the student has no LSTM."""
    run(make_cfg("model=rnn", "max_steps=2"), tmp_path / "teacher")
    outcome = train_in_process(["data=synthetic", "epochs=1", "max_steps=2", "device=cpu", "curves=false",
                                "model=cnn1d", "precision=fp16", *distilled(tmp_path / "teacher"),
                                f"hydra.run.dir={tmp_path / 'student'}"], tmp_path)
    assert outcome.code == 0, outcome.stderr
    assert "precision=fp16 cannot run the distillation teacher's LSTM on the cpu" in outcome.stdout
    assert "completed:" in outcome.stdout
